"""The one rule for "image i depends only on seed i": agreement up to kernel rounding, which separates what batched
kernels do on every CPU of this kind from what a seed-dependence bug does."""

from __future__ import annotations

import pytest
import torch

from bench.measure.flops import CallRecorder
from bench.sampling import (
    ROUNDING_PER_EVALUATION,
    generators,
    noise_like,
    seed_only_mismatch,
    seed_only_tolerance,
    uint8_seed_only_pixels,
)


def _ddim(denoiser, steps: int, batch_statistic: float = 0.0):
    """The harness's DDIM, optionally with a bug: each step nudged by the batch's mean (a batch-wide decision)."""
    from techniques.step_reduction import make_sampler

    sample = make_sampler(denoiser, "ddim", steps)

    def buggy(gens, callback=None):
        def nudge(info):
            info.x.add_(batch_statistic * info.x.mean(0, keepdim=True))

        return sample(gens, nudge)

    return sample if not batch_statistic else buggy


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp_2m"])
def test_batch_compositions_agree_within_the_rule(tiny_denoiser, sampler) -> None:
    from techniques.step_reduction import make_sampler

    sample = make_sampler(tiny_denoiser, sampler, 10)
    recorder = CallRecorder({"model": tiny_denoiser})
    with torch.no_grad():
        whole = sample(generators(range(8)))
        evaluations = recorder.calls["model"]
        part = sample(generators([6, 1]))
    recorder.remove()
    assert evaluations == 10
    assert seed_only_mismatch(part, whole[[6, 1]], evaluations) is None


def test_the_rule_refuses_a_batch_wide_decision_and_a_batched_draw(tiny_denoiser) -> None:
    with torch.no_grad():
        buggy = _ddim(tiny_denoiser, 10, batch_statistic=1e-3)
        whole, part = buggy(generators(range(8))), buggy(generators([6, 1]))
    assert "over the kernel-rounding tolerance" in seed_only_mismatch(part, whole[[6, 1]], 10)
    batched = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert seed_only_mismatch(batched[:2], noise_like(generators([0, 1]), (1, 8, 8), "cpu"), 10) is not None


def test_uint8_images_may_differ_by_one_level_in_a_few_pixels() -> None:
    a = torch.randint(0, 256, (4, 1, 16, 16), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    allowed = uint8_seed_only_pixels(a.numel(), 10)
    assert allowed == 40  # ⌈1024 × 10 × 256·2⁻²³ × 127.5⌉: 3.9 % of the pixels
    assert seed_only_mismatch(a, a.clone(), 10) is None
    b = a.clone().view(-1)
    flip = torch.nonzero((b > 0) & (b < 255)).view(-1)
    b[flip[:allowed]] += 1
    assert seed_only_mismatch(a, b.view_as(a), 10) is None
    b[flip[allowed]] += 1  # one pixel more than rounding explains
    assert "differ in" in seed_only_mismatch(a, b.view_as(a), 10)
    c = a.clone().view(-1)
    c[flip[0]] += 2 if c[flip[0]] < 254 else -2
    assert "by up to 2 levels" in seed_only_mismatch(a, c.view_as(a), 10)


def test_the_tolerance_grows_with_the_evaluations_and_stays_far_below_a_pixel() -> None:
    assert seed_only_tolerance(0) == seed_only_tolerance(1) == ROUNDING_PER_EVALUATION
    assert seed_only_tolerance(20) == 20 * seed_only_tolerance(1)
    assert seed_only_tolerance(10) < 0.5 / 127.5  # at the contract's step counts: under half a uint8 level
