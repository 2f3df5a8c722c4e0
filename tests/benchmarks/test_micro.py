"""Micro-benchmarks (pytest-benchmark): one denoiser call and one full sampler step of every registered technique at
batch 1 and 64 under the harness's bookkeeping (the forward hooks that count NFE and capture FLOP inputs, plus the
per-step callback), and beside each an A/B of bare and harnessed calls alternated in pairs (``extra_info``).
Excluded from the default test run; the tox environment saves the JSON under results/:

    tox -e benchmarks
    python tests/benchmarks/overhead_table.py results/benchmarks/micro.json

Models are the default sweep's (the shipped MNIST 16×16 zoo); CPU, 2 threads, no grad.
"""

from __future__ import annotations

import functools
import statistics
import time

import pytest
import torch

from bench import config as cfg
from bench import conformance, registry, sweep
from bench.measure.flops import CallRecorder
from bench.sampling import generators

TECHNIQUES = sorted(registry.available())
BATCHES = [1, 64]
ROUNDS = {1: 120, 64: 30}


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    with torch.no_grad():
        yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def pipelines():
    """Per technique: its default-params pipeline at 1 step and the main network's batch-1 inputs."""
    base = sweep.base_recipe(cfg.load())
    out = {}
    for name in TECHNIQUES:
        ctx = conformance.context(name, base)
        pipe = ctx.pipeline(ctx.technique.Params(), 1)
        recorder = CallRecorder(pipe.networks)
        pipe.sample(generators([0]), None)
        recorder.remove()
        main = "model" if "model" in recorder.first_inputs else next(iter(recorder.first_inputs))
        out[name] = (pipe, main, recorder.first_inputs[main])
    return out


def _paired(bare, harnessed, pipe, pairs: int) -> dict[str, float]:
    """Bare and harnessed calls alternated in pairs (hooks attached only for the harnessed one), so drift on a shared
    machine hits both alike; the overhead is the median of the per-pair ratios."""
    bare_s, harness_s = [], []
    for i in range(pairs):
        for mode in ("bare", "harness") if i % 2 else ("harness", "bare"):
            recorder = CallRecorder(pipe.networks) if mode == "harness" else None
            start = time.perf_counter()
            (harnessed if recorder else bare)()
            elapsed = time.perf_counter() - start
            if recorder:
                recorder.remove()
            (harness_s if recorder else bare_s).append(elapsed)
    ratios = [h / b for h, b in zip(harness_s, bare_s, strict=True)]
    return {"bare_median_ms": statistics.median(bare_s) * 1e3, "harness_median_ms": statistics.median(harness_s) * 1e3,
            "paired_ratio": statistics.median(ratios), "pairs": pairs}


def _measure(benchmark, pipe, bare, harnessed, batch: int, group: str) -> None:
    benchmark.group = group
    benchmark.extra_info.update(_paired(bare, harnessed, pipe, ROUNDS[batch]))
    recorder = CallRecorder(pipe.networks)  # pytest-benchmark's own statistics are of the harnessed call
    try:
        benchmark.pedantic(harnessed, rounds=ROUNDS[batch], warmup_rounds=3, iterations=1)
    finally:
        recorder.remove()


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", TECHNIQUES)
def test_denoiser_call(benchmark, pipelines, name, batch):
    pipe, main, inputs = pipelines[name]
    net = pipe.networks[main]
    args = tuple(a.expand(batch, *a.shape[1:]).contiguous() if torch.is_tensor(a) and a.ndim else a for a in inputs)
    call = functools.partial(net, *args)
    _measure(benchmark, pipe, call, call, batch, f"{name} denoiser call, batch {batch}")


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", TECHNIQUES)
def test_sampler_step(benchmark, pipelines, name, batch):
    pipe = pipelines[name][0]
    gens = generators(range(batch))
    _measure(benchmark, pipe, lambda: pipe.sample(gens, None), lambda: pipe.sample(gens, lambda info: None), batch,
             f"{name} one sampler step, batch {batch}")
