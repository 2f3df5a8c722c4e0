"""The harness's one sampler loop, with one RNG per sample and a per-step callback.

Image i depends only on seed i (EDM's StackedRandomGenerator idea): initial noise and every ancestral noise draw come
from sample i's own CPU generator, so neither the batch size nor the device changes which image a seed gives.

What is promised is seed-only *up to kernel rounding*: batched matrix products and convolutions block and vectorise
their reductions by batch size, thread count and CPU (AVX2 vs AVX-512), so the same seed in another batch gives the same
image to within ``seed_only_tolerance`` (float), or ±1 in at most ``uint8_seed_only_pixels`` pixels (uint8), not bit
for bit. Where bit-identity matters (reusing a stored cell's quality) it is proven on the images themselves (the
runner's uint8 probe), never assumed. Every test and the contract check judge seed-independence by
``seed_only_mismatch`` alone.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.conditioning import at_step


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


# float32 rounds each operation to a relative ε = 2^-23. Another batch composition reorders the reductions of every
# matmul and convolution, which moves an output by O(√K)–O(K) ε for a reduction of length K (10^2–10^3 in these
# networks), a few hundred ε per network evaluation after a dozen layers; a sampler hands each evaluation's difference
# to the next, so over E evaluations of one image they add up at most linearly. Measured: 2e-6 to 2.2e-5 after 6–100
# evaluations of the tiny DiT (guided DDIM, w ≤ 4; AVX-512 and AVX2 kernels), 1.35e-5 after 6 on an AVX2 EPYC — 8× and
# more under the bound. A seed-dependence bug lies far above it at the step counts tests use: a batched RNG draw moves
# images by O(1), a batch-wide decision as small as nudging each step by 1e-3 × the batch mean by 7e-3 after 10 DDIM
# steps of the tiny U-Net, 23× the bound (tests/test_seed_only.py).
ROUNDING_PER_EVALUATION = 256 * 2.0 ** -23  # ≈ 3.05e-5


def seed_only_tolerance(evaluations: int) -> float:
    """atol = rtol within which one seed's image from two batch compositions agrees after ``evaluations`` network
    evaluations per image (a guided step counts two)."""
    return max(1, int(evaluations)) * ROUNDING_PER_EVALUATION


UINT8_SEED_ONLY_LEVELS = 1  # uint8 images ((x + 1)·127.5, rounded) of one seed differ by ±1 at most


def uint8_seed_only_pixels(n_pixels: int, evaluations: int) -> int:
    """How many of ``n_pixels`` uint8 pixels may differ (by ±1) between two batch compositions: a float difference δ
    crosses a rounding boundary only for pixels within δ·127.5 levels of one, a fraction δ·127.5 of them when
    fractional parts spread evenly."""
    return max(1, math.ceil(n_pixels * seed_only_tolerance(evaluations) * 127.5))


def seed_only_mismatch(a: torch.Tensor, b: torch.Tensor, evaluations: int) -> str | None:
    """None where ``a`` and ``b`` (the same seeds' images from two batch compositions) agree as promised, else why not.
    Float images are held to ``seed_only_tolerance``; uint8 images to ``UINT8_SEED_ONLY_LEVELS`` in at most
    ``uint8_seed_only_pixels`` pixels."""
    if a.shape != b.shape:
        return f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    tol = seed_only_tolerance(evaluations)
    if a.dtype == torch.uint8 or b.dtype == torch.uint8:
        diff = (a.int() - b.int()).abs()
        allowed, differing = uint8_seed_only_pixels(diff.numel(), evaluations), int((diff > 0).sum())
        worst = int(diff.max()) if diff.numel() else 0
        if worst > UINT8_SEED_ONLY_LEVELS or differing > allowed:
            return (f"uint8 images differ in {differing} of {diff.numel()} pixels, by up to {worst} levels (kernel "
                    f"rounding allows {allowed} pixels by ±{UINT8_SEED_ONLY_LEVELS} after {evaluations} evaluations)")
        return None
    a, b = a.double(), b.double()
    excess = (a - b).abs() - (tol + tol * b.abs())
    if bool((excess > 0).any()):
        return (f"images differ by up to {float((a - b).abs().max()):.3g}, over the kernel-rounding tolerance "
                f"{tol:.3g} (atol = rtol) after {evaluations} evaluations")
    return None


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
        at_step(i, len(scheduler.timesteps))
        model_output = denoiser(scheduler.scale_model_input(x, t), t).float()
        x = scheduler.step(model_output, t, x, **step_kwargs).prev_sample
        if callback is not None:
            callback(StepInfo(i, float(t), x))
    return x


class DiscreteSchedule:
    """ᾱ_t of a DDPM schedule on integer timesteps t = 0..T-1, with t = -1 meaning clean data (ᾱ = 1), and the DDIM
    arithmetic on it for techniques that step on grids of their own (distillation targets, truncated chains)."""

    def __init__(self, scheduler_config: dict[str, Any]) -> None:
        from diffusers import DDPMScheduler

        sched = DDPMScheduler.from_config(scheduler_config)
        self.num_train_timesteps = int(sched.config.num_train_timesteps)
        self.clip = bool(sched.config.clip_sample)
        self.clip_range = float(sched.config.clip_sample_range)
        self._alphas_cumprod = torch.cat([torch.ones(1), sched.alphas_cumprod.float()])

    def alpha_bar(self, t: torch.Tensor | int) -> torch.Tensor:
        return self._alphas_cumprod[torch.as_tensor(t) + 1]

    def a_s(self, t: torch.Tensor | int, like: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(√ᾱ_t, √(1-ᾱ_t)), shaped to broadcast against ``like`` (N×C×H×W) when given."""
        ab = self.alpha_bar(t)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        if like is not None:
            a, s = (v.reshape(-1, *[1] * (like.ndim - 1)).to(like.device, like.dtype) for v in (a, s))
        return a, s

    def trailing_grid(self, steps: int, start: int | None = None) -> list[int]:
        """``steps`` timesteps from ``start - 1`` down (diffusers' trailing spacing over [0, start)), then -1.

        Grids for n and 2n steps nest (every other point of the 2n grid is the n grid), which distillation needs."""
        start = self.num_train_timesteps if start is None else start
        points = np.round(np.arange(start, 0, -start / steps)).astype(int) - 1
        return [int(t) for t in points] + [-1]

    def diffuse(self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        a, s = self.a_s(torch.as_tensor(t).expand(x0.shape[0]), x0)
        return a * x0 + s * noise

    def predict(self, denoiser: torch.nn.Module, x: torch.Tensor, t: torch.Tensor | int,
                clip: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂_0, ε̂) from any of the denoiser's parameterisations. Clipping (the schedule's ``clip_sample`` unless
        ``clip`` says otherwise) clips x̂_0 only and keeps ε̂, exactly as diffusers' DDIM step does by default, so a
        DDIM chain here reproduces the step_reduction DDIM cells."""
        t = torch.as_tensor(t).expand(x.shape[0])
        a, s = self.a_s(t, x)
        out = denoiser(x, t.to(x.device)).float()
        kind = denoiser.prediction_type
        if kind == "epsilon":
            x0, eps = (x - s * out) / a, out
        elif kind == "v_prediction":
            x0, eps = a * x - s * out, a * out + s * x
        elif kind == "sample":
            x0, eps = out, (x - a * out) / s
        else:
            raise ValueError(f"cannot step a model predicting {kind!r}")
        if self.clip if clip is None else clip:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        return x0, eps

    def ddim_step(self, x0: torch.Tensor, eps: torch.Tensor, t_next: torch.Tensor | int) -> torch.Tensor:
        """x_{t_next} = a x̂_0 + s ε̂ (η = 0); ``t_next`` one timestep or one per sample."""
        a, s = self.a_s(torch.as_tensor(t_next).expand(x0.shape[0]), x0)
        return a * x0 + s * eps

    def ddim(self, denoiser: torch.nn.Module, x: torch.Tensor, grid: Sequence[int],
             callback: StepCallback | None = None) -> torch.Tensor:
        """Deterministic DDIM (η = 0) along ``grid`` (descending, ending at -1: clean data)."""
        for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
            at_step(i, len(grid) - 1)
            x0, eps = self.predict(denoiser, x, t)
            x = x0 if t_next < 0 else self.ddim_step(x0, eps, t_next)
            if callback is not None:
                callback(StepInfo(i, float(t), x))
        return x

    def ancestral(self, denoiser: torch.nn.Module, x: torch.Tensor, grid: Sequence[int], gens: list[torch.Generator],
                  callback: StepCallback | None = None) -> torch.Tensor:
        """DDPM ancestral sampling along ``grid``: x_s ~ q(x_s | x_t, x̂_0) (the posterior, σ² = β̃), fresh noise per
        sample from its own generator."""
        for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
            at_step(i, len(grid) - 1)
            x0, _ = self.predict(denoiser, x, t)
            if t_next < 0:
                x = x0
            else:
                ab_t, ab_s = self.alpha_bar(t), self.alpha_bar(t_next)
                alpha = ab_t / ab_s
                mean = (ab_s.sqrt() * (1 - alpha) / (1 - ab_t)) * x0 + (alpha.sqrt() * (1 - ab_s) / (1 - ab_t)) * x
                var = (1 - ab_s) / (1 - ab_t) * (1 - alpha)
                x = mean + var.sqrt() * noise_like(gens, x.shape[1:], x.device)
            if callback is not None:
                callback(StepInfo(i, float(t), x))
        return x
