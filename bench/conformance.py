"""The technique contract as runnable checks, shared by the test suite and ``python -m bench check-technique``.

Every check is a function ``check(ctx)`` that raises ``ContractError`` with a message telling the technique's author
what to fix. ``run(name)`` trains the tiny models a technique needs (sklearn digits 8×8, seconds) into the zoo and
runs every check, collecting the results instead of stopping at the first failure.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from bench import registry, zoo
from bench.measure.flops import CallRecorder
from bench.sampling import generators, seed_only_mismatch
from bench.technique import Pipeline, ReportSection, Technique


class ContractError(AssertionError):
    """A technique breaks the contract; the message says what to change."""


@dataclass
class Context:
    """What the checks share: the technique, its base recipe and the models each parameter variant receives."""

    name: str
    technique: Technique
    base: zoo.Recipe
    _models: dict[str, Any] = field(default_factory=dict)

    def variants(self) -> Iterator[Any]:
        """Default params plus one variant per sampler and per mode, where the technique has those knobs."""
        from techniques.step_reduction import SAMPLERS

        fields = self.technique.param_fields()
        yield self.technique.Params()
        modes = getattr(inspect.getmodule(type(self.technique)), "MODES", ()) if "mode" in fields else ()
        candidates = [{"sampler": s} for s in SAMPLERS if "sampler" in fields and s != fields["sampler"]]
        candidates += [{"mode": m} for m in modes if m != fields["mode"]]
        candidates += [dict(change) for change in self.technique.contract_variants]
        for change in candidates:
            params = self.technique.Params(**change)
            try:
                self.technique.validate(params)  # a technique may support only some samplers
            except ValueError:
                continue
            yield params

    def models(self, params: Any) -> dict[str, Any]:
        """The models a sweep would hand the technique for ``params`` (trained through the zoo when missing)."""
        from bench.runner import load_source, model_sources

        out = {}
        for name, source in model_sources(self.technique, params, self.base).items():
            key = source.key
            if key not in self._models:
                self._models[key] = load_source(source, progress=False)[0]
            out[name] = self._models[key]
        return out

    def steps(self, params: Any, preferred: int) -> int:
        """``preferred`` when the technique samples ``params`` in that many steps, else the nearest count it does
        (distilled students exist only for their own counts; a prior alone runs one)."""
        schedule = self.base.schedule if self.base else {}
        for steps in sorted(range(1, 2 * preferred + 1), key=lambda n: (abs(n - preferred), n)):
            try:
                self.technique.validate_steps(params, steps, schedule)
                return steps
            except ValueError:
                continue
        raise ContractError(f"{params}: validate_steps() accepts no step count in 1..{2 * preferred}")

    def pipeline(self, params: Any, steps: int, guidance: Any = None) -> Pipeline:
        """The technique's pipeline; on a class-conditional base, conditioned as a sweep conditions it (labels by
        seed, ``guidance`` or none)."""
        from bench.conditioning import Guidance
        from bench.pipelines import conditioned_pipeline

        models = self.models(params)
        pipe = self.technique.pipeline(params, models, steps)
        if not isinstance(pipe, Pipeline):
            raise ContractError(f"pipeline() returned {type(pipe).__name__}; return a bench.technique.Pipeline")
        if models["model"].num_classes:
            pipe = conditioned_pipeline(pipe, models["model"], guidance or Guidance())
        return pipe


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ContractError(message)


def check_declaration(ctx: Context) -> None:
    """Name, description, frozen ``Params`` with a default for every field, a declared integer version."""
    t = ctx.technique
    _require(getattr(t, "name", None) == ctx.name,
             f"class attribute name = {getattr(t, 'name', None)!r}; set it to the registered name {ctx.name!r}")
    _require(bool(t.description), "set the class attribute description to one line saying what the technique does")
    _require(dataclasses.is_dataclass(t.Params) and t.Params.__dataclass_params__.frozen,
             "Params must be a @dataclass(frozen=True) nested in the technique class")
    missing = [f.name for f in dataclasses.fields(t.Params)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    _require(not missing, f"give every Params field a default (missing: {', '.join(missing)})")
    version = vars(type(t)).get("version")
    _require(type(version) is int and version >= 1,
             f"declare the class attribute version = 1 (an integer; bump it whenever a change can move a result), "
             f"not {version!r}")


def check_validate(ctx: Context) -> None:
    """The default Params pass ``validate()`` (which must raise ``ValueError`` naming a bad knob)."""
    try:
        ctx.technique.validate(ctx.technique.Params())
    except ValueError as exc:
        raise ContractError(f"validate() rejects the default Params: {exc}") from exc


def check_artifacts(ctx: Context) -> None:
    """Declared artifacts are zoo recipes with registered objectives."""
    from bench.train import OBJECTIVES

    declared = ctx.technique.artifacts(ctx.technique.Params(), ctx.base)
    _require(isinstance(declared, dict), "artifacts() must return a dict name → bench.zoo.Recipe")
    for name, recipe in declared.items():
        _require(name != "model", "artifacts() must not use the name 'model' (that is the base model)")
        _require(isinstance(recipe, zoo.Recipe), f"artifacts()[{name!r}] is {type(recipe).__name__}, not a Recipe")
        _require(recipe.objective in OBJECTIVES, f"artifacts()[{name!r}] uses objective {recipe.objective!r}, which "
                 "is not registered; decorate its class with @bench.train.register_objective")


def check_sampling(ctx: Context) -> None:
    """Every variant samples finite images of the model's shape, calls its networks at least once per step, calls
    the step callback in order, and keeps JSON-able info and observations."""
    for params in ctx.variants():
        steps = ctx.steps(params, 4)
        pipe = ctx.pipeline(params, steps)
        _require(bool(pipe.networks) and all(isinstance(n, torch.nn.Module) for n in pipe.networks.values()),
                 f"{params}: Pipeline.networks must name every torch module evaluated while sampling")
        recorder = CallRecorder(pipe.networks)
        seen: list[int] = []
        try:
            with torch.no_grad():
                x = pipe.sample(generators([0, 1, 2]), lambda info, seen=seen: seen.append(info.index))
        finally:
            recorder.remove()
        shape = (3, *ctx.models(params)["model"].image_shape)
        _require(torch.is_tensor(x) and tuple(x.shape) == shape, f"{params}: sample(generators, callback) must "
                 f"return N×C×H×W images, one per generator: expected {shape}, got {getattr(x, 'shape', type(x))}")
        _require(bool(torch.isfinite(x).all()), f"{params}: sampled images contain NaN or inf")
        _require(sum(recorder.calls.values()) >= steps, f"{params}: only {sum(recorder.calls.values())} network calls "
                 f"in {steps} steps; route every evaluation through a module listed in Pipeline.networks")
        _require(bool(seen) and seen == list(range(len(seen))),
                 f"{params}: call the step callback after every step with StepInfo(index=0, 1, ...); saw {seen}")
        try:
            json.dumps(pipe.info)
            if pipe.observe is not None:
                json.dumps(pipe.observe())
        except TypeError as exc:
            raise ContractError(f"{params}: Pipeline.info and observe() must be JSON-able: {exc}") from exc


def check_seed_determinism(ctx: Context) -> None:
    """Image i depends only on seed i — not on the batch it is in, nor on the other seeds (ancestral noise too) — up
    to kernel rounding, judged by ``bench.sampling.seed_only_mismatch`` over the evaluations the sampler made."""
    for params in ctx.variants():
        pipe = ctx.pipeline(params, ctx.steps(params, 5))
        recorder = CallRecorder(pipe.networks)
        try:
            with torch.no_grad():
                full = pipe.sample(generators([0, 1, 2, 3]), None)
                evaluations = sum(recorder.calls.values())  # per image: every call evaluates each image once
                part = pipe.sample(generators([2, 3]), None)
                other = pipe.sample(generators([7, 3]), None)
        finally:
            recorder.remove()
        hint = ("draw all randomness from the per-sample generators you are given (bench.sampling.noise_like), "
                "never from the global RNG or one batched draw")
        if pipe.batch_dependent:  # declared: the same batch must still give the same images
            with torch.no_grad():
                again = pipe.sample(generators([0, 1, 2, 3]), None)
            _require(torch.equal(full, again), f"{params}: the same batch twice gave different images")
            continue
        moved = seed_only_mismatch(part, full[2:], evaluations)
        _require(moved is None, f"{params}: images change with the batch they are in ({moved}); {hint}")
        moved = seed_only_mismatch(part[1], other[1], evaluations)
        _require(moved is None,
                 f"{params}: image for seed 3 changes with the other seeds in the batch ({moved}); {hint}")
        _require(not torch.allclose(full[0], full[1]), f"{params}: different seeds give the same image")


def check_model_kinds(ctx: Context) -> None:
    """The declared model kinds are known; on a class-conditional model (when declared) every variant samples each
    seed's own class deterministically, and guidance guides every step: two network evaluations (label and null
    class), or one of a guidance-distilled network given the scale."""
    from bench.conditioning import Guidance
    from bench.model import MODEL_KINDS

    kinds = tuple(ctx.technique.model_kinds)
    _require(bool(kinds) and set(kinds) <= set(MODEL_KINDS),
             f"model_kinds = {kinds!r}: declare a non-empty subset of {MODEL_KINDS}")
    if "class" not in kinds:
        return
    conditional = ctx if ctx.base.options.get("num_classes") else Context(
        ctx.name, ctx.technique, _tiny_base(conditional=True, arch=ctx.technique.contract_arch))
    for params in conditional.variants():
        steps = conditional.steps(params, 4)
        calls, patterns = [], []
        for guidance in (Guidance(), Guidance(scale=2.0)):
            pipe = conditional.pipeline(params, steps, guidance)
            recorder = CallRecorder(pipe.networks)
            with torch.no_grad():
                full = pipe.sample(generators([0, 1, 2, 3]), None)
                part = pipe.sample(generators([2, 3]), None)
            calls.append(sum(recorder.calls.values()) / 2)
            patterns.append(pipe.observe()["guidance_pattern"])
            recorder.remove()
            moved = None if pipe.batch_dependent else seed_only_mismatch(part, full[2:], int(calls[-1]))
            _require(moved is None,
                     f"{params}: on a class-conditional model, images change with the batch they are in ({moved})")
        unguided, guided = patterns
        _require(bool(unguided) and "u" * len(unguided) == unguided and len(guided) == len(unguided)
                 and "u" not in guided, f"{params}: the guidance pattern was {unguided!r} unguided and {guided!r} at "
                 "w = 2; route every network evaluation through the base Denoiser's call under the cell's guider")
        _require(calls[1] == calls[0] + guided.count("G"),
                 f"{params}: guidance at w = 2 ran {calls[1]:g} network evaluations per image against {calls[0]:g} "
                 f"unguided over the steps {guided!r}; every guided step (G) must evaluate the label and the null "
                 "class, a guidance-distilled network's (W) once")


def _tiny_base(conditional: bool = False, arch: str = "unet") -> zoo.Recipe:
    """The checks' base models: seconds-trained digits 8×8 ε-models (a U-Net, class-conditional when asked; or the
    class-conditional DiT, for techniques that need transformer blocks)."""
    from bench import recipes

    if arch == "dit":
        return recipes.denoiser_recipe("digits", 8, steps=40, arch="dit", conditioning="class")
    if conditional:
        return recipes.denoiser_recipe("digits", 8, steps=40, conditioning="class")
    return recipes.denoiser_recipe("digits", 8, steps=60)


def check_partial_work(ctx: Context) -> None:
    """A pipeline whose calls may skip work (``Pipeline.uncached``, a feature cache) changes what runs — fewer FLOPs
    over one image than as many full calls — and two identical batches give identical images (no state carried from
    one batch into the next)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    changed: dict[str, list[float]] = {}  # per setting but the sampler: the work each sampler's run did
    for params in ctx.variants():
        pipe = ctx.pipeline(params, ctx.steps(params, 10))
        if pipe.uncached is None:
            continue
        recorder = CallRecorder(pipe.networks)
        recorder.count_ran = True
        try:
            with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
                first = pipe.sample(generators([0, 1]), None)
            recorder.count_ran = False
            fraction = recorder.ran_fraction(pipe.uncached)
            with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
                again = pipe.sample(generators([0, 1]), None)
        finally:
            recorder.remove()
        _require(bool(fraction), f"{params}: no call of Pipeline.networks was counted while sampling")
        setting = {k: v for k, v in dataclasses.asdict(params).items()
                   if k not in ("sampler", "eta", "timestep_spacing")}
        changed.setdefault(json.dumps(setting, sort_keys=True, default=str), []).append(min(fraction.values()))
        _require(torch.equal(first, again), f"{params}: the same batch twice gave different images; reset the "
                 "cache's state before every sampler call")
    # a cache whose decisions depend on the images may skip nothing on one sampler's path; with none it is silent
    for setting, fractions in changed.items():
        _require(min(fractions) < 1.0, f"{setting}: every call ran its full work with every sampler; the cache "
                 "hooks changed nothing (a pattern that matches no module, a context never set?)")


def check_report_sections(ctx: Context) -> None:
    """``report_sections`` accepts an empty frame of rows and returns a list of ``ReportSection``."""
    import pandas as pd

    sections = ctx.technique.report_sections(pd.DataFrame(columns=["technique", "status", "steps"]))
    _require(isinstance(sections, list) and all(isinstance(s, ReportSection) for s in sections),
             "report_sections(rows) must return a list of bench.technique.ReportSection (empty is fine)")


CHECKS: list[Callable[[Context], None]] = [check_declaration, check_validate, check_artifacts, check_sampling,
                                           check_seed_determinism, check_model_kinds, check_partial_work,
                                           check_report_sections]


@dataclass
class Outcome:
    check: str
    doc: str
    error: str | None = None  # None when it passed

    @property
    def passed(self) -> bool:
        return self.error is None


def context(name: str, base: zoo.Recipe | None = None) -> Context:
    """The checks' context for registered technique ``name`` over ``base`` (default: the tiny digits ε-model). A
    technique for conditional models only is checked on the tiny class-conditional twin unless ``base`` is one; a
    technique that needs transformer blocks (``contract_arch = "dit"``), on the tiny DiT."""
    technique = registry.get(name)
    arch = technique.contract_arch
    if arch != "unet" and (base is None or base.options.get("arch", "unet") != arch):
        base = _tiny_base(conditional=True, arch=arch)  # the network it needs, not the one the caller trained
    if "unconditional" not in technique.model_kinds and not (base and base.options.get("num_classes")):
        base = _tiny_base(conditional=True)
    return Context(name, technique, base or _tiny_base())


def run(name: str, base: zoo.Recipe | None = None) -> list[Outcome]:
    """Every check on technique ``name``; an unexpected exception is reported as a failure with its last frame."""
    ctx = context(name, base)
    outcomes = []
    for check in CHECKS:
        doc = " ".join((check.__doc__ or "").split("\n\n")[0].split())
        try:
            check(ctx)
            outcomes.append(Outcome(check.__name__, doc))
        except ContractError as exc:
            outcomes.append(Outcome(check.__name__, doc, str(exc)))
        except Exception as exc:  # noqa: BLE001 - an author's bug is a failed check, with where it happened
            where = traceback.extract_tb(exc.__traceback__)[-1]
            outcomes.append(Outcome(check.__name__, doc, f"raised {type(exc).__name__}: {exc} "
                                                         f"(at {where.filename}:{where.lineno})"))
    return outcomes
