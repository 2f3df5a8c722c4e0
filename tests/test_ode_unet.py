"""The continuous U-Net: time conditioning in every ODE function, solvers, FLOPs of every evaluation, matching."""

from __future__ import annotations

import math

import pytest
import torch

from bench import recipes
from bench.measure.flops import fvcore_flops
from bench.model import build_unet
from techniques.ode_unet import ContinuousUNet, ODEFunc, integrate, matched_config


@pytest.fixture(scope="module")
def ode_net() -> ContinuousUNet:
    torch.manual_seed(0)
    return ContinuousUNet(sample_size=8, **matched_config(recipes.TINY_UNET)).eval()


def _at(net: ContinuousUNet, t: int) -> torch.Tensor:
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return net(x, torch.full((2,), t))


def test_every_ode_function_is_conditioned_on_t(ode_net):
    assert (_at(ode_net, 10) - _at(ode_net, 900)).abs().max() > 1e-3
    funcs = [m for m in ode_net.modules() if isinstance(m, ODEFunc)]
    assert len(funcs) == 7  # 3 down, 1 middle, 3 up
    saved = [(f.film.weight.clone(), f.film.bias.clone()) for f in funcs]
    try:
        for f in funcs:
            f.film.weight.data.zero_()
            f.film.bias.data.zero_()
        # t enters only through FiLM: with every FiLM silenced the network ignores t (the authors' code's defect)
        assert torch.equal(_at(ode_net, 10), _at(ode_net, 900))
        for f, (w, b) in zip(funcs, saved, strict=True):  # each block alone carries t to the output
            f.film.weight.data.copy_(w)
            f.film.bias.data.copy_(b)
            assert (_at(ode_net, 10) - _at(ode_net, 900)).abs().max() > 1e-4
            f.film.weight.data.zero_()
            f.film.bias.data.zero_()
    finally:
        for f, (w, b) in zip(funcs, saved, strict=True):
            f.film.weight.data.copy_(w)
            f.film.bias.data.copy_(b)


@pytest.mark.parametrize(("solver", "steps", "expected"),
                         [("euler", 1, 2.0), ("midpoint", 1, 2.5), ("rk4", 1, 1 + 1 + 1 / 2 + 1 / 6 + 1 / 24),
                          ("euler", 64, (1 + 1 / 64) ** 64)])
def test_integrator_matches_its_solver_on_exponential_growth(solver, steps, expected):
    h = integrate(lambda y: y, torch.ones(1, dtype=torch.float64), solver, steps)
    assert h.item() == pytest.approx(expected, rel=1e-12)


def test_rk4_converges_to_the_exact_solution():
    assert abs(integrate(lambda y: y, torch.ones(1, dtype=torch.float64), "rk4", 8).item() - math.e) < 1e-5


def test_flops_count_every_ode_evaluation_and_parameters_do_not_change(ode_net):
    x, t = torch.zeros(1, 1, 8, 8), torch.full((1,), 500)
    params = sum(p.numel() for p in ode_net.parameters())
    flops = {}
    for solver, steps in [("euler", 1), ("midpoint", 1), ("rk4", 1), ("euler", 4)]:
        ode_net.set_solver(solver, steps)
        flops[solver, steps] = fvcore_flops(ode_net, (x, t))
        assert sum(p.numel() for p in ode_net.parameters()) == params
    ode_net.set_solver("rk4", 1)
    one_eval_per_block = flops["midpoint", 1] - flops["euler", 1]  # 7 extra evaluations of f
    assert one_eval_per_block > 0
    assert flops["rk4", 1] - flops["euler", 1] == 3 * one_eval_per_block
    assert flops["euler", 4] == flops["rk4", 1]  # four evaluations either way
    with pytest.raises(ValueError, match="solver"):
        ode_net.set_solver("rk45", 1)


def test_matched_to_the_baseline_unet_levels_widths_and_attention():
    config = matched_config(recipes.TINY_UNET)
    assert config["block_out_channels"] == recipes.TINY_UNET["block_out_channels"]
    assert config["attention_levels"] == [2]  # the baseline's AttnDownBlock2D is its third (lowest) level
    unet = build_unet({"sample_size": 16, "in_channels": 1, "out_channels": 1, **recipes.TINY_UNET})
    ode = ContinuousUNet(sample_size=16, **config)
    from diffusers.models.attention_processor import Attention

    def attention_resolutions(net, call):
        seen = []
        hooks = [m.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[-1]))
                 for m in net.modules() if isinstance(m, Attention)]
        with torch.no_grad():
            call()
        for h in hooks:
            h.remove()
        return set(seen)

    x, t = torch.zeros(1, 1, 16, 16), torch.full((1,), 3)
    assert attention_resolutions(unet, lambda: unet(x, t)) == attention_resolutions(ode, lambda: ode(x, t)) == {4}
    assert sum(p.numel() for p in ode.parameters()) < sum(p.numel() for p in unet.parameters())


def test_the_papers_pair_reproduces_its_parameter_and_flop_ratios():
    """The authors' proportions (every level but the deepest halved) against a U-Net of two ResNet blocks per level:
    their code gives 0.25x the parameters and 0.39x the MACs; the same pair here, counted by fvcore at batch 1."""
    paper = matched_config(recipes.TINY_UNET, "paper")
    assert paper["block_out_channels"] == [12, 24, 48] and paper["norm_num_groups"] == 4
    ode = ContinuousUNet(sample_size=16, **paper).eval()
    deep = build_unet({"sample_size": 16, "in_channels": 1, "out_channels": 1, **recipes.TINY_UNET,
                       "layers_per_block": 2}).eval()
    x, t = torch.zeros(1, 1, 16, 16), torch.full((1,), 500)
    params = sum(p.numel() for p in ode.parameters()) / sum(p.numel() for p in deep.parameters())
    flops = fvcore_flops(ode, (x, t)) / fvcore_flops(deep, (x, t))
    assert 0.21 < params < 0.26 and 0.36 < flops < 0.42, (params, flops)


def test_variants_have_their_own_artifacts_and_the_default_keeps_the_shipped_one():
    from bench import zoo
    from techniques.ode_unet import ODEUNet

    technique = ODEUNet()
    shallow, deep = recipes.denoiser_recipe(), recipes.denoiser_recipe(layers_per_block=2)
    assert deep.name.endswith("-lpb2") and deep.key != shallow.key
    default = technique.artifacts(ODEUNet.Params(), shallow)["ode"]
    assert zoo.find(default, [zoo.SHIPPED_ZOO]) is not None  # the variants left its address alone
    assert technique.artifacts(ODEUNet.Params(), deep)["ode"] == default  # one ODE block per level either way
    euler = technique.artifacts(ODEUNet.Params(train_solver="euler"), shallow)["ode"]
    paper = technique.artifacts(ODEUNet.Params(proportions="paper"), deep)["ode"]
    assert euler.network["solver"] == "euler" and euler.name.endswith("-odeunet-euler")
    assert paper.name.endswith("-odeunet-paper") and len({default.key, euler.key, paper.key}) == 3
    with pytest.raises(ValueError, match="proportions 'wide'"):
        technique.validate(ODEUNet.Params(proportions="wide"))
