"""Dual-output denoiser: the loss's stop-gradients, the ε_mix adapter and its ablation modes, the gate curve."""

from __future__ import annotations

import pytest
import torch

from bench import registry
from bench.model import DDPM_SCHEDULE, Denoiser
from bench.runner import load_source, model_sources
from bench.sampling import generators
from techniques.dual_output import GatedEpsilon, _alpha_bar_prev, _alphas_cumprod, dual_losses, split_heads


class FixedHeads(torch.nn.Module):
    """A stand-in network with chosen head outputs: x̂_0 = 0.3, ε̂ = x_t, gate logit = 0."""

    def forward(self, x, t):
        return torch.cat([torch.full_like(x, 0.3), x, torch.zeros_like(x[:, :1])], dim=1)


def _dual(net=None) -> Denoiser:
    return Denoiser(net or FixedHeads(), "dual", DDPM_SCHEDULE, (1, 4, 4))


def _training_batch():
    """ᾱ, four timesteps from clean to pure noise, x_0, ε, x_t and a random 3-channel network output."""
    ac = _alphas_cumprod(DDPM_SCHEDULE)
    t = torch.tensor([0, 10, 500, 999])
    x0, noise = torch.rand(4, 1, 4, 4) * 2 - 1, torch.randn(4, 1, 4, 4)
    x_t = ac[t].sqrt().view(-1, 1, 1, 1) * x0 + (1 - ac[t]).sqrt().view(-1, 1, 1, 1) * noise
    return ac, t, x0, noise, x_t, torch.randn(4, 3, 4, 4, requires_grad=True)


def test_posterior_mean_term_trains_only_the_gate() -> None:
    ac, t, x0, noise, x_t, out = _training_batch()
    losses = dual_losses(out, x0, x_t, noise, ac[t], _alpha_bar_prev(ac)[t])
    assert set(losses) == {"x0", "eps", "posterior_mean"}
    losses["posterior_mean"].backward()
    x0_grad, eps_grad, gate_grad = split_heads(out.grad, 1)
    assert x0_grad.abs().max() == 0 and eps_grad.abs().max() == 0
    assert gate_grad.abs().max() > 0


def test_modes_pick_the_heads() -> None:
    ac = _alphas_cumprod(DDPM_SCHEDULE)
    x, t = torch.randn(2, 1, 4, 4), torch.tensor(300)
    a, s = ac[300].sqrt(), (1 - ac[300]).sqrt()
    eps_only = GatedEpsilon(_dual(), "eps")(x, t)
    torch.testing.assert_close(eps_only, x)  # ε_mix = ε̂ when the gate is 0
    x0_only = GatedEpsilon(_dual(), "x0")(x, t)
    torch.testing.assert_close((x - s * x0_only) / a, torch.full_like(x, 0.3))  # x̂_0 recovered from ε_mix
    mixed = GatedEpsilon(_dual(), "dual")(x, t)  # sigmoid(0) = 1/2: halfway between the two x_0 estimates
    x0_eps = (x - s * x) / a
    torch.testing.assert_close((x - s * mixed) / a, 0.5 * 0.3 + 0.5 * x0_eps)


def test_balanced_gate_term_drops_the_c1_weighting_and_still_trains_only_the_gate() -> None:
    ac, t, x0, noise, x_t, out = _training_batch()
    losses = dual_losses(out, x0, x_t, noise, ac[t], _alpha_bar_prev(ac)[t], balanced=True)
    x0_hat, eps_hat, logit = split_heads(out.detach(), 1)
    s = (1 - ac[t]).sqrt().view(-1, 1, 1, 1)
    gate = torch.sigmoid(logit)
    mix = gate * x0_hat + (1 - gate) * (x_t - s * eps_hat) / ac[t].sqrt().view(-1, 1, 1, 1)
    assert losses["posterior_mean"].item() == pytest.approx(((mix - x0) ** 2).mean().item(), rel=1e-5)
    losses["posterior_mean"].backward()
    x0_grad, eps_grad, gate_grad = split_heads(out.grad, 1)
    assert x0_grad.abs().max() == 0 and eps_grad.abs().max() == 0
    assert gate_grad[3].abs().max() > 1e-6  # the gate now learns at t = 999 too


def _models(technique, params, base):
    return {name: load_source(src, progress=False)[0] for name, src in model_sources(technique, params, base).items()}


def test_time_only_gate_is_the_least_squares_mix_per_timestep_and_is_what_samples(tiny_base) -> None:
    technique = registry.get("dual_output")
    params = technique.Params(mode="fixed_gate")
    recipes = technique.artifacts(params, tiny_base)
    models = _models(technique, params, tiny_base)
    dual, gate = models["dual"], models["time_gate"]
    assert dual.prediction_type == "dual" and dual.net.config.out_channels == 3
    table = dict(gate.table)
    assert min(table) == 0 and max(table) == 999 and all(0.0 <= g <= 1.0 for g in table.values())
    # replay the fit's draws: each fitted r_t minimises the mixed x̂_0 error over every gate in [0, 1]
    from bench import data

    images = data.load(tiny_base.dataset, "train", tiny_base.resolution).images
    generator = torch.Generator().manual_seed(recipes["time_gate"].seed)
    x0 = images[torch.randperm(len(images), generator=generator)[:256]].float() / 127.5 - 1.0
    ac = _alphas_cumprod(dual.scheduler_config)
    for t in sorted(table):
        a, s = ac[t].sqrt(), (1 - ac[t]).sqrt()
        x_t = a * x0 + s * torch.randn(x0.shape, generator=generator)
        if t not in (0, 300, 990):
            continue
        with torch.no_grad():
            x0_hat, eps_hat, _ = split_heads(dual(x_t, t), 1)
        x0_eps = (x_t - s * eps_hat) / a
        errors = {r: ((r * x0_hat + (1 - r) * x0_eps - x0) ** 2).mean().item() for r in torch.linspace(0, 1, 21)}
        assert ((table[t] * x0_hat + (1 - table[t]) * x0_eps - x0) ** 2).mean().item() <= min(errors.values()) + 1e-7
    pipe = technique.pipeline(params, models, 6)
    with torch.no_grad():
        pipe.sample(generators([0, 1]), None)
    curve = pipe.observe()["gate_curve"]
    assert len(curve) == 6
    assert [g for _, g in curve] == pytest.approx([gate(torch.tensor([t])).item() for t, _ in curve])
    assert pipe.info["time_gate"] == sorted(gate.table, reverse=True)
    assert pipe.observe()["gate_curve"] == []  # observations are since the last call


def test_gate_fine_tune_moves_only_the_gate_and_warm_start_begins_at_the_baseline(tiny_base, tiny_denoiser) -> None:
    technique = registry.get("dual_output")
    scratch = _models(technique, technique.Params(), tiny_base)["dual"].net.state_dict()
    tuned = _models(technique, technique.Params(init="dual", gate_loss="balanced"), tiny_base)["dual"]
    changed = {k for k, v in tuned.net.state_dict().items() if not torch.equal(v, scratch[k])}
    assert changed == {"conv_out.weight", "conv_out.bias"}
    for name in changed:
        before, after = scratch[name], tuned.net.state_dict()[name]
        assert torch.equal(before[:2], after[:2]) and not torch.equal(before[2:], after[2:])  # x̂_0, ε̂ | gate
    from techniques.dual_output import DualOutputObjective

    warm = technique.artifacts(technique.Params(init="baseline", gate_loss="balanced"), tiny_base)["dual"]
    assert warm.lr == 2e-4 and warm.steps == round(tiny_base.steps * 0.5) and warm.name.endswith("-warm-balanced")
    start = DualOutputObjective().build(warm, (1, 8, 8), None)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([5, 400, 999])
    with torch.no_grad():
        eps_head = split_heads(start(x, t), 1)[1]
        torch.testing.assert_close(eps_head, tiny_denoiser(x, t))
    assert start.net.conv_out.bias[2].item() == 0.0  # the gate starts unbiased between the heads
