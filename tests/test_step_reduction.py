"""Step reduction specifics: NFE per sampler, schedulers built from the model's own config."""

import pytest
import torch

from bench.measure.flops import CallRecorder
from bench.sampling import generators
from techniques.step_reduction import StepReduction


@pytest.mark.parametrize(("sampler", "steps", "nfe"), [("ddim", 10, 10), ("ddpm", 7, 7), ("heun", 5, 9),
                                                      ("dpmpp_3m", 6, 6), ("euler", 4, 4), ("unipc", 8, 8)])
def test_nfe_is_counted_not_assumed(sampler: str, steps: int, nfe: int, tiny_denoiser) -> None:
    pipe = StepReduction().pipeline(StepReduction.Params(sampler=sampler), {"model": tiny_denoiser}, steps)
    recorder = CallRecorder(pipe.networks)
    with torch.no_grad():
        pipe.sample(generators([0, 1]), None)
    assert recorder.calls["model"] == nfe  # Heun: 2N − 1


def test_ddim_eta_changes_images_and_eta_is_ddim_only(tiny_denoiser) -> None:
    tech = StepReduction()
    with torch.no_grad():
        a = tech.pipeline(tech.Params(sampler="ddim"), {"model": tiny_denoiser}, 10).sample(generators([0]), None)
        b = tech.pipeline(tech.Params(sampler="ddim", eta=1.0), {"model": tiny_denoiser}, 10).sample(
            generators([0]), None)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="eta applies to the ddim sampler only"):
        tech.validate(tech.Params(sampler="euler", eta=0.5))


def test_schedulers_use_the_models_betas(tiny_denoiser) -> None:
    from techniques.step_reduction import SAMPLERS

    for name, (cls, overrides) in SAMPLERS.items():
        sched = cls.from_config({**tiny_denoiser.scheduler_config, **overrides})
        assert sched.config.beta_end == tiny_denoiser.scheduler_config["beta_end"], name
        assert sched.config.beta_schedule == "linear", name
