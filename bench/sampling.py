"""The harness's one sampler loop, with one RNG per sample and a per-step callback.

Image i depends only on seed i (EDM's StackedRandomGenerator idea): initial noise and every ancestral noise draw come
from sample i's own CPU generator, so neither the batch size nor the device changes which image a seed gives.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class StepInfo:
    """Passed to the per-step callback after each sampler step."""

    index: int  # 0-based step index
    timestep: float  # the scheduler's timestep (or sigma-mapped timestep) of this step
    x: torch.Tensor  # the sample after the step
    extras: dict[str, Any] | None = None  # technique-specific values (e.g. a gate)


StepCallback = Callable[[StepInfo], None]


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by the sample's own seed."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def noise_like(gens: list[torch.Generator], shape: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """A batch of standard normal tensors, row i drawn from ``gens[i]`` on the CPU, then moved to ``device``."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in gens]).to(device)


@functools.cache
def _step_accepts_generator(scheduler_cls: type) -> bool:
    return "generator" in inspect.signature(scheduler_cls.step).parameters


def scheduler_loop(denoiser: torch.nn.Module, scheduler: Any, steps: int, gens: list[torch.Generator],
                   callback: StepCallback | None = None, **step_kwargs: Any) -> torch.Tensor:
    """Sample with any diffusers scheduler: x_T = σ_init·z; for t: x ← step(denoiser(scale(x, t), t), t, x)."""
    device = next(denoiser.parameters()).device
    scheduler.set_timesteps(steps, device=device)
    x = noise_like(gens, denoiser.image_shape, device) * scheduler.init_noise_sigma
    if _step_accepts_generator(type(scheduler)):
        step_kwargs["generator"] = gens  # diffusers draws ancestral noise per batch row from a generator list
    for i, t in enumerate(scheduler.timesteps):
        model_output = denoiser(scheduler.scale_model_input(x, t), t).float()
        x = scheduler.step(model_output, t, x, **step_kwargs).prev_sample
        if callback is not None:
            callback(StepInfo(i, float(t), x))
    return x
