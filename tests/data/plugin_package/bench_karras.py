"""Karras sigmas: the EDM step schedule (Karras et al., NeurIPS 2022, Eq. 5) for σ-space samplers.

σ_i = (σ_max^(1/ρ) + i/(N−1) · (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ with ρ = 7 spends more of a small step budget at low
noise than uniform timestep spacing does. Training-free: the base model, another placement of the same N steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler

from bench.sampling import scheduler_loop
from bench.technique import Pipeline, Technique

SCHEDULERS = {
    "euler": (EulerDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                               "lower_order_final": True}),
}


class KarrasSigmas(Technique):
    name = "karras_sigmas"
    version = 1
    description = "EDM (Karras et al. 2022) sigma spacing, rho = 7, for Euler, Heun and DPM-Solver++ on the base model."

    @dataclass(frozen=True)
    class Params:
        sampler: str = "dpmpp_2m"  # euler | heun | dpmpp_2m

    def validate(self, params: Params) -> None:
        if params.sampler not in SCHEDULERS:
            raise ValueError(f"sampler {params.sampler!r} is not one of {', '.join(SCHEDULERS)}")

    def pipeline(self, params: Params, models: dict[str, Any], steps: int) -> Pipeline:
        denoiser = models["model"]
        denoiser.require_scheduler_output(self.name)
        cls, overrides = SCHEDULERS[params.sampler]
        config = {**denoiser.scheduler_config, **overrides, "use_karras_sigmas": True}

        def sample(gens, callback=None):
            return scheduler_loop(denoiser, cls.from_config(config), steps, gens, callback)

        return Pipeline(sample=sample, networks={"model": denoiser},
                        info={"scheduler": cls.__name__, "sigmas": "karras", "rho": 7})
