"""Micro-benchmarks (pytest-benchmark): one denoiser call and one full sampler step of every registered technique at
batch 1 and 64, bare and under the harness's bookkeeping (the forward hooks that count NFE and capture FLOP inputs,
plus the per-step callback). Excluded from the default test run; the tox environment saves the JSON under results/:

    tox -e benchmarks
    python tests/benchmarks/overhead_table.py results/benchmarks/micro.json

Models are the default sweep's (the shipped MNIST 16×16 zoo); CPU, 2 threads, no grad.
"""

from __future__ import annotations

import pytest
import torch

from bench import config as cfg
from bench import conformance, registry, sweep
from bench.measure.flops import CallRecorder
from bench.sampling import generators

TECHNIQUES = sorted(registry.available())
BATCHES = [1, 64]


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


def _harness(pipe):
    """The bookkeeping a timed cell carries: hooks on every network, and a callback (the runner passes None while
    timing; the benchmark passes a no-op one to bound its cost too)."""
    return CallRecorder(pipe.networks)


@pytest.mark.parametrize("mode", ["bare", "harness"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", TECHNIQUES)
def test_denoiser_call(benchmark, pipelines, name, batch, mode):
    pipe, main, inputs = pipelines[name]
    net = pipe.networks[main]
    args = tuple(a.expand(batch, *a.shape[1:]).contiguous() if torch.is_tensor(a) and a.ndim else a for a in inputs)
    benchmark.group = f"{name} denoiser call, batch {batch}"
    recorder = _harness(pipe) if mode == "harness" else None
    try:
        benchmark.pedantic(net, args=args, rounds=40 if batch == 1 else 15, warmup_rounds=3, iterations=1)
    finally:
        if recorder:
            recorder.remove()


@pytest.mark.parametrize("mode", ["bare", "harness"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", TECHNIQUES)
def test_sampler_step(benchmark, pipelines, name, batch, mode):
    pipe = pipelines[name][0]
    gens = generators(range(batch))
    benchmark.group = f"{name} one sampler step, batch {batch}"
    recorder = _harness(pipe) if mode == "harness" else None
    callback = (lambda info: None) if mode == "harness" else None
    try:
        benchmark.pedantic(lambda: pipe.sample(gens, callback), rounds=40 if batch == 1 else 15, warmup_rounds=3,
                           iterations=1)
    finally:
        if recorder:
            recorder.remove()
