"""FLOPs: fvcore (with an SDPA handle, MACs × 2) cross-checked against torch's FlopCounterMode."""

import torch

from bench import recipes
from bench.measure.flops import fvcore_flops, torch_flops
from bench.model import DDPM_SCHEDULE, Denoiser, build_unet


def _baseline(resolution: int = 16) -> Denoiser:
    net = build_unet({"sample_size": resolution, "in_channels": 1, "out_channels": 1, **recipes.TINY_UNET})
    return Denoiser(net, "epsilon", DDPM_SCHEDULE, (1, resolution, resolution)).eval()


def test_fvcore_and_flopcountermode_agree_on_the_baseline() -> None:
    model = _baseline()
    inputs = (torch.randn(1, 1, 16, 16), torch.tensor([500]))
    fv, tf = fvcore_flops(model, inputs), torch_flops(model, inputs)
    # fvcore also counts group_norm and upsample, which FlopCounterMode does not: within 3%
    assert abs(fv - tf) / tf < 0.03, (fv, tf)
    assert fv >= tf


def test_attention_is_counted() -> None:
    from fvcore.nn import FlopCountAnalysis

    model = _baseline()
    inputs = (torch.randn(1, 1, 16, 16), torch.tensor([500]))
    without = FlopCountAnalysis(model, inputs).unsupported_ops_warnings(False).total() * 2
    assert fvcore_flops(model, inputs) > without  # the handle adds the SDPA MACs fvcore would skip


def test_flops_scale_with_batch_linearly() -> None:
    model = _baseline()
    one = fvcore_flops(model, (torch.randn(1, 1, 16, 16), torch.tensor([3])))
    four = fvcore_flops(model, (torch.randn(4, 1, 16, 16), torch.tensor([3, 3, 3, 3])))
    assert four == 4 * one
