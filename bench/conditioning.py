"""Each image's condition, fixed by its seed, and classifier-free guidance through diffusers' guiders.

A class-conditional model's image i gets label ``seed_i mod num_classes`` (class-balanced for any run of consecutive
seeds), so two cells' images stay paired seed by seed exactly as unconditional ones do; a text-conditioned one, the
prompt ``prompts[seed_i mod P]`` (``bench.text_to_image``), its condition the prompt's text-encoder states. The harness
sets the labels (and the cell's guider) around every sampler call; a conditional ``Denoiser`` reads them here, so every
technique's sampler is conditioned without knowing it. Guidance arithmetic is the guider's (``diffusers.guiders``); this
module only decides, per evaluation, whether the unconditional branch runs (the guider's ``num_conditions``), and counts
the guided and unguided steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch

# name in a sweep config → the diffusers guider class. Each combines (pred_cond, pred_uncond) of one evaluation
# pair and takes ``guidance_scale``, ``start`` and ``stop`` (fractions of the sampler's steps).
GUIDERS = {
    "cfg": "ClassifierFreeGuidance",  # Ho & Salimans 2022 (diffusers' form: uncond + w·(cond − uncond))
    "cfg_zero_star": "ClassifierFreeZeroStarGuidance",  # Fan et al. 2025
    "tangential": "TangentialClassifierFreeGuidance",  # Sadat et al. 2025
    "apg": "AdaptiveProjectedGuidance",  # Sadat et al. 2024 (keeps a momentum buffer: a fresh guider per batch)
}
LABEL_RULE = "label = seed mod num_classes"


@dataclass(frozen=True)
class Guidance:
    """A cell's guidance: the guider, its scale (1 = none: the conditional prediction alone) and the fraction of
    the sampler's steps [start, stop) on which it guides."""

    guider: str = "cfg"
    scale: float = 1.0
    start: float = 0.0
    stop: float = 1.0

    def validate(self) -> None:
        if self.guider not in GUIDERS:
            raise ValueError(f"guider {self.guider!r} is not one of {', '.join(GUIDERS)}")
        if not 0.0 <= self.start < self.stop <= 1.0:
            raise ValueError(f"guidance interval [{self.start}, {self.stop}) is not inside [0, 1] with start < stop")
        if self.scale < 0:
            raise ValueError(f"guidance scale {self.scale} is negative")

    @property
    def active(self) -> bool:
        return self.scale != 1.0

    def make(self) -> Any:
        import logging

        import diffusers.guiders

        cls = getattr(diffusers.guiders, GUIDERS[self.guider])
        # each guider warns on construction that guiders are experimental; once per batch would flood the sweep
        log = logging.getLogger("diffusers.guiders.guider_utils")
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            return cls(guidance_scale=self.scale, start=self.start, stop=self.stop)
        finally:
            log.setLevel(level)


@dataclass
class Conditions:
    """What the conditional denoiser evaluates in one sampler call: the batch's labels, the guider, the sampler's
    current step (published by the sampling loops, for the guider's start/stop), and what guidance did."""

    labels: torch.Tensor  # class labels, or a text model's prompt states (batch × tokens × width)
    guider: Any | None = None
    null: torch.Tensor | None = None  # the unconditional branch's condition, where not the null class (text: "")
    step: int | None = None
    num_steps: int | None = None
    guided: int = 0  # denoiser calls that guided: two evaluations (label, null class), or one of a guidance-distilled
    unguided: int = 0  # network given w; calls that did not guide (one evaluation)
    steps: list[str] = field(default_factory=list)  # per call: G guided, W guided by the network's w input, u not


_current: ContextVar[Conditions | None] = ContextVar("bench_conditions", default=None)
_branch: ContextVar[str] = ContextVar("bench_branch", default="cond")
# what a sweep's condition function returns for a batch's seeds: (condition, the unconditional branch's or None)
ConditionFn = Callable[[list[int], bool], tuple[torch.Tensor, "torch.Tensor | None"]]


def branch() -> str:
    """Which branch of a guided step the network evaluation now running belongs to: "cond", or "uncond" (the null
    class's or empty prompt's). Stateful accelerations (a cache) keep their state per branch by it: two calls of one
    step share a timestep, and one branch's features must never stand in for the other's."""
    return _branch.get()


def guiding() -> bool:
    """Whether the sampler call now running is guided (a guider that may evaluate the unconditional branch too):
    for an acceleration that must know, before the first evaluation, whether the calls come in pairs."""
    state = _current.get()
    return state is not None and state.guider is not None


def labels_for_seeds(seeds: Sequence[int], num_classes: int) -> torch.Tensor:
    return torch.tensor([int(s) % num_classes for s in seeds], dtype=torch.long)


@contextlib.contextmanager
def conditioned(labels: torch.Tensor, guidance: Guidance | None = None,
                null: torch.Tensor | None = None) -> Iterator[Conditions]:
    """Within the block a conditional ``Denoiser`` generates ``labels`` (one per batch row; a text model's prompt
    states), guided as ``guidance`` says (a fresh guider: some keep state across steps) against ``null`` (default:
    the null class)."""
    state = Conditions(labels=labels, guider=guidance.make() if guidance is not None and guidance.active else None,
                       null=null)
    token = _current.set(state)
    try:
        yield state
    finally:
        _current.reset(token)


def at_step(index: int, num_steps: int) -> None:
    """Tell the guider which sampler step the next evaluations belong to (the sampling loops call it)."""
    state = _current.get()
    if state is not None:
        state.step, state.num_steps = index, num_steps


def guided(denoiser: Any, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
    """A conditional denoiser's prediction: its network on the labels, combined by the guider with the null
    class's prediction where the guider guides this step."""
    state = _current.get()
    if class_labels is None:
        if state is None:
            raise RuntimeError("a class-conditional model was called without labels, outside bench.conditioning."
                               "conditioned")
        class_labels = state.labels
    labels = class_labels.to(x.device)
    if labels.shape[0] != x.shape[0]:
        raise RuntimeError(f"{labels.shape[0]} labels for a batch of {x.shape[0]} images")
    guider = state.guider if state is not None else None
    if guider is not None:
        guider.set_state(step=state.step if state.step is not None else 0,
                         num_inference_steps=state.num_steps, timestep=t)
    guides = guider is not None and guider.num_conditions == 2
    if state is not None:
        state.guided += guides
        state.unguided += not guides
        state.steps.append("W" if guides and denoiser.embeds_guidance else "G" if guides else "u")
    if denoiser.embeds_guidance:  # a guidance-distilled network: w is its input, one evaluation
        scale = float(guider.guidance_scale) if guides else 1.0
        if guides and type(guider).__name__ != GUIDERS["cfg"]:
            raise RuntimeError(f"a guidance-distilled network learned classifier-free guidance; it cannot take "
                               f"the {type(guider).__name__} guider")
        return denoiser.evaluation(x, t, labels, torch.full((x.shape[0],), scale, device=x.device))
    cond = denoiser.evaluation(x, t, labels)
    if not guides:
        return cond
    null = state.null.to(x.device) if state.null is not None else torch.full_like(labels, denoiser.null_class)
    token = _branch.set("uncond")
    try:
        uncond = denoiser.evaluation(x, t, null)
    finally:
        _branch.reset(token)
    return guider.forward(cond.float(), uncond.float()).pred.to(cond.dtype)


def class_condition(num_classes: int) -> ConditionFn:
    """Labels by seed; the null class (the guided call's default) for the unconditional branch."""
    return lambda seeds, guided: (labels_for_seeds(seeds, num_classes), None)


def conditional_sampler(sample: Callable[..., torch.Tensor], condition: int | ConditionFn,
                        guidance: Guidance | None) -> tuple[Callable[..., torch.Tensor], Callable[[], dict[str, Any]]]:
    """Wrap a technique's ``sample(generators, callback)``: each image's condition from its generator's seed
    (``condition``: a class count, or a function of the seeds), the cell's guider; and ``observe()``, the
    guided/unguided calls per image since the last ``observe``."""
    seen: dict[str, Any] = {}
    make = class_condition(condition) if isinstance(condition, int) else condition

    def run(gens: list[torch.Generator], callback: Any = None) -> torch.Tensor:
        labels, null = make([g.initial_seed() for g in gens], guidance is not None and guidance.active)
        with conditioned(labels, guidance, null) as state:
            out = sample(gens, callback)
        # every image of a sampler call goes through the same calls: per image = per call
        seen.update(guided_steps=state.guided, unguided_steps=state.unguided,
                    guidance_pattern="".join(state.steps))
        return out

    def observe() -> dict[str, Any]:
        out = dict(seen)
        seen.clear()
        return out

    return run, observe


def describe(num_classes: int, guidance: Guidance | None) -> dict[str, Any]:
    """What a record keeps about how its images were conditioned."""
    return {"kind": "class", "num_classes": num_classes, "null_class": num_classes, "labels": LABEL_RULE,
            **({"guidance": dataclasses.asdict(guidance)} if guidance is not None else {})}
