"""Truncated diffusion: the prior's call is counted, T' = 0 is the prior alone, the GAN's training is on record."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.sampling import generators, noise_like
from techniques.truncation import CONVERGENCE_RULE, Truncation
from tests.conftest import TINY_CONFIG, run_cli


def _pipeline(tiny_base, params, steps):
    from bench import conformance

    ctx = conformance.context("truncation", tiny_base)
    return ctx.pipeline(params, steps), ctx.models(params)


@torch.no_grad()
def test_t_trunc_zero_is_the_vae_decoder_alone(tiny_base) -> None:
    params = Truncation.Params(prior="vae", t_trunc=0)
    pipe, models = _pipeline(tiny_base, params, 1)
    images = pipe.sample(generators(range(4)), None)
    decoded = models["prior"](noise_like(generators(range(4)), (models["prior"].config.latent_dim,), "cpu"))
    assert torch.equal(images, decoded.clamp(-1, 1))


def test_the_sweep_counts_the_prior_call_in_nfe_and_flops(tiny_sweep) -> None:
    _, df, _ = tiny_sweep
    row = df[df["technique"] == "truncation"].iloc[0]
    assert row["nfe"] == 4 and row["nfe_by_network"] == {"prior": 1, "model": 3}
    by_net = row["flops_per_call_by_network"]
    assert row["flops_per_image"] == pytest.approx(by_net["prior"] + 3 * by_net["model"])
    assert row["info"]["reverse_timesteps"] == [49, 32, 16]


@torch.no_grad()
def test_truncated_chain_starts_from_the_diffused_prior_sample(tiny_base) -> None:
    """With T' = 50 and one reverse step, the output is one DDIM step from x_50 = a x̂_0 + s ε: the same x̂_0 and ε
    the prior and the sample's generator give."""
    from bench.sampling import DiscreteSchedule

    pipe, models = _pipeline(tiny_base, Truncation.Params(prior="vae", t_trunc=50), 1)
    gens = generators(range(3))
    x0 = models["prior"].decoder(noise_like(gens, (models["prior"].config.latent_dim,), "cpu")).clamp(-1, 1)
    sch = DiscreteSchedule(models["model"].scheduler_config)
    x50 = sch.diffuse(x0, 49, noise_like(gens, x0.shape[1:], "cpu"))
    expected, _ = sch.predict(models["model"], x50, 49)
    assert torch.equal(pipe.sample(generators(range(3)), None), expected)


def test_tdpm_record_keeps_gan_curves_and_a_verdict(tiny_base) -> None:
    from bench import train

    recipe = Truncation().artifacts(Truncation.Params(prior="tdpm"), tiny_base)["tdpm"]
    record = train.ensure(recipe, progress=False).record
    assert record["convergence_rule"] == CONVERGENCE_RULE and isinstance(record["gan_converged"], bool)
    steps = [row[0] for row in record["gan_curve"]]
    assert steps[-1] == recipe.steps and len(record["gan_curve_columns"]) == len(record["gan_curve"][0])
    fid_steps = [s for s, _ in record["prior_fid_curve"]]
    assert fid_steps[0] == 0 and fid_steps[-1] == recipe.steps
    assert record["total_steps"] == recipe.steps + tiny_base.steps  # the warm start's training counts


def test_gan_prior_emits_x_t_itself_and_is_judged_on_the_weights_the_sweep_samples(tiny_base) -> None:
    from bench import train
    from bench.sampling import DiscreteSchedule
    from techniques.truncation import GAN_EVAL_SUBSTEPS, PRIOR_EVAL_SEEDS, _PriorFID

    params = Truncation.Params(prior="gan", t_trunc=30, tdpm_t=30)
    recipe = Truncation().artifacts(params, tiny_base)["prior"]
    record = train.ensure(recipe, progress=False).record
    assert record["convergence_rule"] == CONVERGENCE_RULE and isinstance(record["gan_converged"], bool)
    assert "EMA" in record["prior_fid_measures"] and len(PRIOR_EVAL_SEEDS) >= 500
    assert [s for s, _ in record["prior_fid_curve"]][-1] == recipe.steps
    pipe, models = _pipeline(tiny_base, params, 2)
    prior, denoiser = models["prior"], models["model"]
    with torch.no_grad():
        # the verdict's last FID is the shipped (EMA) weights' FID: recomputed from the artifact, it is the same
        sch = DiscreteSchedule(denoiser.scheduler_config)
        x = prior(noise_like(generators(PRIOR_EVAL_SEEDS), denoiser.image_shape, "cpu"))
        chain = sch.ddim(denoiser, x, sch.trailing_grid(GAN_EVAL_SUBSTEPS, start=30))
        assert _PriorFID(recipe)(chain) == pytest.approx(record["prior_fid_curve"][-1][1], abs=1e-3)
        # sampling: x_T' straight from the generator (no re-noising), then the baseline's DDIM steps below T'
        x_t = prior(noise_like(generators(range(3)), denoiser.image_shape, "cpu"))
        expected = sch.ddim(denoiser, x_t, sch.trailing_grid(2, start=30))
        assert torch.equal(pipe.sample(generators(range(3)), None), expected)


def test_minibatch_std_lets_the_critic_see_a_batchs_diversity() -> None:
    from techniques.truncation import MinibatchStdDiscriminator

    critic = MinibatchStdDiscriminator(1, 8, width=8).eval()
    x = torch.randn(4, 1, 8, 8)
    collapsed = x[:1].expand(4, -1, -1, -1)  # the same image four times: zero spread within the group
    with torch.no_grad():
        assert not torch.allclose(critic(x)[0], critic(collapsed)[0])
        assert torch.allclose(critic(collapsed), critic(collapsed)[:1].expand(4))


@pytest.mark.parametrize(("params", "steps", "message"), [
    ('{ prior = ["gan"], t_trunc = [200] }', 5, "t_trunc 200 differs from tdpm_t 100"),
    ('{ prior = ["tdpm"], t_trunc = [200] }', 5, "t_trunc 200 exceeds tdpm_t 100"),
    ('{ t_trunc = [0] }', 5, "steps 5 must be 1 with t_trunc = 0"),
    ('{ t_trunc = [10] }', 20, "steps 20 exceeds t_trunc = 10"),
])
def test_impossible_truncations_are_one_config_error(tmp_path: Path, params: str, steps: int, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(TINY_CONFIG.read_text().split("[[technique]]")[0]
                      + f'[[technique]]\nname = "truncation"\nsteps = [{steps}]\nparams = {params}\n')
    result = run_cli("sweep", "--config", str(config), "--results", str(tmp_path / "r"), "--no-progress")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "r").exists()


def test_report_has_the_truncation_section_with_its_figure(tiny_sweep) -> None:
    root, _, _ = tiny_sweep
    html = (root / "report.html").read_text()
    start = html.index("truncation: FID against T")
    assert "<svg" in html[start:start + 200_000] and "prior train wall s" in html[start:]


@torch.no_grad()
def test_ancestral_chain_on_a_custom_grid_matches_diffusers_ddpm(tiny_denoiser) -> None:
    """The truncated ancestral chain is diffusers' DDPM posterior step (β̃ variance, clipped x̂_0) on the same
    timesteps with the same per-sample noise."""
    from diffusers import DDPMScheduler

    from bench.sampling import DiscreteSchedule

    sch = DiscreteSchedule(tiny_denoiser.scheduler_config)
    grid = sch.trailing_grid(3, start=50)
    x = noise_like(generators(range(4)), tiny_denoiser.image_shape, "cpu")
    ours = sch.ancestral(tiny_denoiser, x.clone(), grid, generators(range(10, 14)))
    reference = DDPMScheduler.from_config(tiny_denoiser.scheduler_config)
    reference.set_timesteps(timesteps=grid[:-1])
    gens, y = generators(range(10, 14)), x.clone()
    for t in reference.timesteps:
        y = reference.step(tiny_denoiser(y, t), t, y, generator=gens).prev_sample
    assert torch.allclose(ours, y, atol=1e-5)
