"""The technique plugin contract.

A technique is a class with a frozen ``Params`` dataclass (its knobs, each with a default), the extra zoo artifacts it
needs trained, and ``pipeline()``, which turns trained models into a sampler for one step count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from bench.sampling import StepCallback
from bench.zoo import Recipe


@dataclass
class ReportSection:
    """What a technique adds to the HTML report about its own rows: plain text (escaped by the report), matplotlib
    figures (embedded as SVG) and small tables."""

    title: str
    text: str = ""
    figures: list[Any] = field(default_factory=list)  # matplotlib.figure.Figure
    tables: list[Any] = field(default_factory=list)  # pandas.DataFrame


@dataclass
class Pipeline:
    """What a technique hands the harness for one cell."""

    # sample(generators, callback) → images in [-1, 1], one per generator (N×C×H×W)
    sample: Callable[[list[torch.Generator], StepCallback | None], torch.Tensor]
    # every network evaluated at sampling time; forward hooks on these count NFE and give FLOPs per call
    networks: dict[str, nn.Module]
    # facts worth keeping in the results row (e.g. the scheduler class and its spacing)
    info: dict[str, Any] = field(default_factory=dict)
    # what the technique saw while sampling since the last call (e.g. the mean gate per timestep), JSON-able; the
    # runner calls it before and after the timed loop and stores the second answer as the record's ``observations``
    observe: Callable[[], dict[str, Any]] | None = None
    # for a pipeline whose network calls may skip part of their work (a feature cache): a context in which every
    # call does its full work. The runner measures FLOPs per call and the denoiser-alone time under it, and counts
    # the FLOPs that actually ran over one image outside it, so FLOPs per image are what ran, not NFE × a full call.
    uncached: Callable[[], AbstractContextManager] | None = None
    # why an image depends on the other images of its batch, where it does (a cache deciding once per batch, as
    # First Block Cache does): the record keeps it, the report lists it, and the contract checks then ask only that
    # the same batch gives the same images. Empty for the pipelines the harness wants: image i from seed i alone.
    batch_dependent: str = ""
    # per network whose kernels the FLOP counters cannot trace but that does another network's multiply-adds (a
    # weight-only quantized copy: the same matmuls on weights stored in fewer bits), that other network: FLOPs
    # per call are counted on it with the same inputs (say so in ``info``).
    flops_counted_on: dict[str, nn.Module] = field(default_factory=dict)


class Technique:
    """Base class for technique plugins; see docs in README."""

    name: ClassVar[str]
    # The version of what the technique computes: stored cells of another version are stale (re-run by
    # ``--rerun-stale``). Bump it with every change that can move a result; ``tests/test_versions.py`` fails when the
    # code it depends on changes and it does not (``bench.fingerprint``). Every technique declares its own.
    version: ClassVar[int] = 1
    description: ClassVar[str] = ""
    # Params changes the contract suite exercises besides the defaults, every sampler and every mode (e.g. a second
    # method or prior the same class implements): {"method": "consistency"}.
    contract_variants: ClassVar[tuple[dict[str, Any], ...]] = ()
    # The paper's claims, each with the stored cells that test it, once per recipe (``bench.claims.Claim``):
    # ``python -m bench verdicts`` and the report judge them. A declaration, not behaviour: stating a claim never
    # marks stored results stale (``bench.fingerprint.DECLARATIONS``).
    claims: ClassVar[tuple[Any, ...]] = ()
    # The base models it can work on (``bench.model.MODEL_KINDS``); a cell on another kind is stored ``skipped``
    # with the reason. A declaration too: widening it does not mark results stale.
    model_kinds: ClassVar[tuple[str, ...]] = ("unconditional",)
    # Why the other kinds are not supported, in a clause (stored in their skipped cells' reason).
    model_kinds_reason: ClassVar[str] = ""
    # The network the contract checks run it on ("unet", or "dit" for one that needs transformer blocks); a model
    # it cannot run on is skipped at sweep time by raising ``bench.errors.Unsupported`` from ``pipeline()``.
    contract_arch: ClassVar[str] = "unet"
    # A training-free acceleration of the base model's own sampling (a cache, quantization): the report judges each
    # of its cells against simply taking fewer steps with the reference technique's samplers.
    accelerates: ClassVar[bool] = False

    @dataclass(frozen=True)
    class Params:
        pass

    def validate(self, params: Any) -> None:
        """Raise ``ValueError`` naming the parameter when ``params`` is not valid."""

    def max_steps(self, params: Any, base_schedule: dict[str, Any]) -> int:
        return int(base_schedule.get("num_train_timesteps", 1000))

    def validate_steps(self, params: Any, steps: int, base_schedule: dict[str, Any]) -> None:
        """Raise ``ValueError`` (finishing "steps N ...") when the technique cannot sample in ``steps`` steps; by
        default any count up to ``max_steps``. Distilled students, for one, exist only for the counts they learned."""
        limit = self.max_steps(params, base_schedule)
        if steps > limit:
            raise ValueError(f"exceeds {limit}")

    def artifacts(self, params: Any, base: Recipe) -> dict[str, Recipe]:
        """Extra zoo artifacts this technique needs besides the base model (name → recipe). ``base`` is the zoo's
        base recipe, or the import of a user's pretrained model (objective ``pretrained``, its network and schedule
        as found): derive from it, and the artifacts are addressed by the model they came from."""
        return {}

    def pipeline(self, params: Any, models: dict[str, Any], steps: int) -> Pipeline:
        """Build the sampler; ``models["model"]`` is the base ``Denoiser``, other keys as ``artifacts()`` named."""
        raise NotImplementedError

    def report_sections(self, rows: Any) -> list[ReportSection]:
        """Sections for the report from this technique's rows of the results store (a DataFrame with one row per
        cell, ``observations`` and ``info`` as dicts); the report knows nothing about any one technique."""
        return []

    @classmethod
    def param_fields(cls) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls.Params)}
