"""Claims from the papers and their verdicts on this harness's results.

A technique declares the claims its paper makes (``Technique.claims``), each tested once per recipe: the matched-
budget recipe the harness ships and the paper's own recipe (or the nearest one the budget allows, said so). A claim
names the cells it compares by store, technique, params and steps; the verdict comes from those stored cells:

- ``quality``: the candidate has the lower FID than the reference — paired bootstrap over the shared seeds and a
  resampled reference (``bench.compare.Comparer``): reproduced where the 95% interval of ΔFID lies below 0, not
  reproduced where it lies above, undecided where it spans 0.
- ``ratio``: a cost ratio candidate / reference (``params_total``, ``flops_per_image``) against the paper's ratio:
  reproduced where ours is at most 1.25× the paper's (the saving is at least four-fifths as large), not otherwise.
  Counts are exact: no interval.
- ``latency``: the candidate is faster per image on the same machine — ratio of medians with the bootstrap interval
  of both cells' raw batch times: reproduced where the interval lies below 1.
- ``gate``: the dual-output gate's shape from the candidate's observations — reproduced where the mean gate is at
  least 0.5 at the noisiest sampled timestep and below 0.5 at the cleanest (the paper's "x̂_0 at high noise, ε at
  low noise").

``python -m bench verdicts`` prints the table (Markdown, for the README); each technique's report section shows its
own rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.claims import CellRef, Claim

if TYPE_CHECKING:
    import pandas as pd

TESTS = ("quality", "ratio", "latency", "gate")
RATIO_TOLERANCE = 1.25
DEFAULT_HARDWARE = {"device": "cpu", "dtype": "float32", "threads": 2, "compile": False, "batch": 100}


@dataclass
class Verdict:
    claim: Claim
    result: str  # the measured value with its interval
    verdict: str  # reproduced | not reproduced | undecided
    why: str  # one line


def find(results: Path, ref: CellRef, cache: dict[str, pd.DataFrame]) -> pd.Series | None:
    """The ok cell ``ref`` names (fresh before stale, the default hardware point where a store swept hardware)."""
    import pandas as pd

    from bench import frames, store

    if ref.store not in cache:
        path = results / ref.store
        cache[ref.store] = frames.mark_stale(store.load(path)) if (path / "records").is_dir() else pd.DataFrame()
    df = cache[ref.store]
    if df.empty:
        return None
    rows = df[(df["status"] == "ok") & (df["technique"] == ref.technique) & (df["steps"] == ref.steps)]
    for key, value in ref.params.items():
        column = f"param_{key}"
        if column not in rows:
            return None
        rows = rows[rows[column] == value]
    if rows.empty:
        return None
    for key, value in DEFAULT_HARDWARE.items():
        narrower = rows[rows[key] == value] if key in rows else rows
        rows = narrower if not narrower.empty else rows
    if "stale" in rows:
        rows = rows.sort_values(["stale", "written_at"], ascending=[True, False])
    return rows.iloc[0]


def judge(claim: Claim, results: Path, cache: dict[str, pd.DataFrame] | None = None,
          comparer: Any = None) -> Verdict:
    """The verdict on ``claim`` from the stores under ``results``."""
    from bench import compare, stats

    cache = {} if cache is None else cache
    cand = find(results, claim.candidate, cache)
    ref = find(results, claim.reference, cache) if claim.reference is not None else None
    missing = [r for r, row in ((claim.candidate, cand), (claim.reference, ref)) if r is not None and row is None]
    if missing:
        return Verdict(claim, "—", "undecided", "not measured: no ok cell " + "; ".join(
            f"{r.describe()} in results/{r.store}" for r in missing))
    if claim.test == "quality":
        comparer = comparer or compare.Comparer()
        why = compare.comparable(ref, cand)
        if why:
            return Verdict(claim, "—", "undecided", why)
        d = comparer.compare(ref, cand)["fid"]
        result = f"ΔFID {d.delta:+.2f} [{d.low:+.2f}, {d.high:+.2f}] ({cand['fid']:.2f} vs {ref['fid']:.2f}, N={d.n})"
        if d.high < 0:
            return Verdict(claim, result, "reproduced", "the candidate's FID is lower; the paired interval excludes 0")
        if d.low > 0:
            return Verdict(claim, result, "not reproduced", "the candidate's FID is higher; the paired interval "
                                                            "excludes 0")
        return Verdict(claim, result, "undecided", f"the paired interval spans 0 at N = {d.n}")
    if claim.test == "ratio":
        ratio = float(cand[claim.metric]) / float(ref[claim.metric])
        result = f"{ratio:.2f}× {claim.metric} (paper {claim.paper_ratio:.2f}×)"
        if ratio <= claim.paper_ratio * RATIO_TOLERANCE:
            return Verdict(claim, result, "reproduced", f"within {RATIO_TOLERANCE:g}× of the paper's ratio or better")
        return Verdict(claim, result, "not reproduced", f"more than {RATIO_TOLERANCE:g}× the paper's ratio")
    if claim.test == "latency":
        a, b = compare.raw_latencies(ref), compare.raw_latencies(cand)
        if not a or not b:
            return Verdict(claim, "—", "undecided", "a cell has no raw batch times")
        ratio, low, high = stats.median_ratio(a, b)
        result = f"{ratio:.2f}× time per image [{low:.2f}, {high:.2f}]"
        if high < 1:
            return Verdict(claim, result, "reproduced", "faster; the interval lies below 1")
        if low > 1:
            return Verdict(claim, result, "not reproduced", "slower; the interval lies above 1")
        return Verdict(claim, result, "undecided", "the interval spans 1")
    if claim.test == "gate":
        observations = cand.get("observations")
        curve = observations.get("gate_curve") if isinstance(observations, dict) else None
        if not curve:
            return Verdict(claim, "—", "undecided", "the cell recorded no gate curve")
        (t_high, g_high), (t_low, g_low) = curve[0], curve[-1]
        result = f"gate {g_high:.2f} at t = {t_high:g}, {g_low:.2f} at t = {t_low:g}"
        if g_high >= 0.5 > g_low:
            return Verdict(claim, result, "reproduced", "x̂_0 head trusted at high noise, ε head at low noise")
        shape = "flat" if abs(g_high - g_low) < 0.1 else "t-dependent but not crossing 0.5 as the paper's"
        return Verdict(claim, result, "not reproduced", f"the gate is {shape}")
    raise ValueError(f"claim test {claim.test!r} is not one of {', '.join(TESTS)}")


def all_claims() -> list[tuple[str, Claim]]:
    """(technique, claim) for every registered technique's claims, in registry order."""
    from bench import registry

    return [(name, claim) for name in registry.available() for claim in registry.get(name).claims]


def table(results: Path, technique: str | None = None) -> pd.DataFrame:
    """The verdict table: one row per claim and recipe."""
    import pandas as pd

    from bench import compare

    cache: dict[str, pd.DataFrame] = {}
    comparer = compare.Comparer()
    rows = []
    for name, claim in all_claims():
        if technique is not None and name != technique:
            continue
        v = judge(claim, results, cache, comparer)
        rows.append({"technique": name, "claim (paper, number)": claim.claim, "recipe": claim.recipe,
                     "cells": claim.candidate.describe() + (f" vs {claim.reference.describe()}"
                                                            if claim.reference else "")
                     + f" (results/{claim.candidate.store})",
                     "result": v.result, "verdict": v.verdict, "why": v.why})
    return pd.DataFrame(rows, columns=["technique", "claim (paper, number)", "recipe", "cells", "result", "verdict",
                                       "why"])


def markdown(df: pd.DataFrame) -> str:
    """The table as GitHub Markdown (pipes escaped)."""
    columns = [c for c in df.columns if c != "cells"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(str(row[c]).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines)
