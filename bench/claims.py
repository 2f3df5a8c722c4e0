"""What a technique declares about its paper: claims and the stored cells that test them (``Technique.claims``).

Plain records with no behaviour, so declaring one imports nothing else; ``bench.verdicts`` judges them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CellRef:
    """The stored cell a claim reads: ``results/<store>``, its technique, params (a subset) and steps."""

    store: str
    technique: str
    steps: int
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        shown = " ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.technique} {shown} @{self.steps}".replace("  ", " ")


@dataclass(frozen=True)
class Claim:
    """One paper claim tested with one recipe."""

    claim: str  # the paper's claim with its number: "CD beats PD at 1 step (Song et al. 2023, CIFAR-10: 3.55 vs 8.34)"
    recipe: str  # which recipe this row runs: "ours (matched budget): …" or "paper's: …"
    test: str  # one of TESTS
    candidate: CellRef
    reference: CellRef | None = None  # None for ``gate``
    metric: str = "fid"  # ratio: the cost column
    paper_ratio: float | None = None  # ratio: the paper's candidate / reference
