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


def test_posterior_mean_term_trains_only_the_gate() -> None:
    ac = _alphas_cumprod(DDPM_SCHEDULE)
    t = torch.tensor([0, 10, 500, 999])
    x0, noise = torch.rand(4, 1, 4, 4) * 2 - 1, torch.randn(4, 1, 4, 4)
    x_t = ac[t].sqrt().view(-1, 1, 1, 1) * x0 + (1 - ac[t]).sqrt().view(-1, 1, 1, 1) * noise
    out = torch.randn(4, 3, 4, 4, requires_grad=True)
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


def test_gate_curve_and_fixed_gate_from_a_trained_dual_model(tiny_base) -> None:
    technique = registry.get("dual_output")
    params = technique.Params(mode="fixed_gate")
    models = {name: load_source(src, progress=False)[0]
              for name, src in model_sources(technique, params, tiny_base).items()}
    assert models["dual"].prediction_type == "dual" and models["dual"].net.config.out_channels == 3
    pipe = technique.pipeline(params, models, 6)
    table = dict(pipe.info["fixed_gate_calibration"]["gate_by_timestep"])
    assert len(table) == 6 and all(0 < g < 1 for g in table.values())
    with torch.no_grad():
        pipe.sample(generators([0, 1]), None)
    curve = pipe.observe()["gate_curve"]
    assert [t for t, _ in curve] == sorted(table, reverse=True)
    assert [g for _, g in curve] == pytest.approx([table[t] for t, _ in curve])  # the fixed gate is what ran
    assert pipe.observe()["gate_curve"] == []  # observations are since the last call
