"""Step reduction: training-free samplers over one trained model (DDPM, DDIM, DPM-Solver++, UniPC, Euler, Heun).

Every scheduler is built ``from_config`` of the model's own schedule (Heun's defaults are Stable Diffusion betas) and
driven by the harness's loop, which applies ``init_noise_sigma`` and ``scale_model_input`` (σ-space samplers need both).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from bench.sampling import StepCallback, scheduler_loop
from bench.technique import Pipeline, Technique

# name → (scheduler class, config overrides). DPM-Solver++ (Lu et al. 2022) multistep of order 2/3 with lower-order
# final steps, which stabilises few-step sampling.
SAMPLERS: dict[str, tuple[type, dict[str, Any]]] = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                               "lower_order_final": True}),
    "dpmpp_3m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 3,
                                               "lower_order_final": True}),
    "unipc": (UniPCMultistepScheduler, {"solver_order": 2}),
    "euler": (EulerDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
}
SPACINGS = ("leading", "trailing", "linspace")


class StepReduction(Technique):
    name = "step_reduction"
    version = 1
    description = "Training-free fast samplers over the base model (diffusers schedulers, harness loop)."

    @dataclass(frozen=True)
    class Params:
        sampler: str = "ddim"  # one of SAMPLERS
        eta: float = 0.0  # DDIM stochasticity η (0 = deterministic DDIM, 1 = DDPM-like); DDIM only
        timestep_spacing: str = "trailing"  # trailing starts at t = T-1, which few-step sampling needs

    def validate(self, params: Params) -> None:
        validate_sampler(params.sampler, params.eta, params.timestep_spacing)

    def pipeline(self, params: Params, models: dict[str, Any], steps: int) -> Pipeline:
        denoiser = models["model"]
        denoiser.require_scheduler_output(f"step_reduction ({params.sampler})")
        sample = make_sampler(denoiser, params.sampler, steps, params.eta, params.timestep_spacing)
        return Pipeline(sample=sample, networks={"model": denoiser},
                        info={"scheduler": SAMPLERS[params.sampler][0].__name__,
                              "timestep_spacing": params.timestep_spacing})


def validate_sampler(sampler: str, eta: float, timestep_spacing: str) -> None:
    """Raise ``ValueError`` naming the bad sampler setting (shared by techniques that drive these samplers)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is not one of {', '.join(SAMPLERS)}")
    if timestep_spacing not in SPACINGS:
        raise ValueError(f"timestep_spacing {timestep_spacing!r} is not one of {', '.join(SPACINGS)}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta {eta} is outside [0, 1]")
    if eta and sampler != "ddim":
        raise ValueError(f"eta applies to the ddim sampler only, not {sampler!r}")


def make_sampler(denoiser: Any, sampler: str, steps: int, eta: float = 0.0,
                 timestep_spacing: str = "trailing") -> Callable[..., torch.Tensor]:
    """``sample(generators, callback)`` for one of ``SAMPLERS`` over any module that predicts what its
    ``scheduler_config`` says, driven by the harness's loop."""
    cls, overrides = SAMPLERS[sampler]
    config = {**denoiser.scheduler_config, **overrides, "timestep_spacing": timestep_spacing}
    step_kwargs = {"eta": eta} if sampler == "ddim" else {}

    def sample(gens: list[torch.Generator], callback: StepCallback | None = None) -> torch.Tensor:
        scheduler = cls.from_config(config)  # fresh per run: multistep schedulers keep state
        return scheduler_loop(denoiser, scheduler, steps, gens, callback, **step_kwargs)

    return sample


StepReduction.model_kinds = ("unconditional", "class", "text")  # (samplers need only x_t and t)
