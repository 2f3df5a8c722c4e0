"""Harness latency for one cell against a bare timed loop of the same sampler, measured in one run.

    python tests/benchmarks/harness_overhead.py [--sampler ddim] [--steps 10] [--batch 100] [--threads 2]

The bare loop is the textbook diffusers loop on the raw UNet (no hooks, one batched randn) timed with
torch.utils.benchmark; the harness figure is the median batch latency a CellRunner stores for the same cell (per-sample
RNGs, forward hooks, the Denoiser wrapper). Bare runs are taken before and after the cell to bracket drift.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile

import torch
from torch.utils import benchmark

from bench import config as cfg
from bench import sweep, train
from bench.model import load_denoiser
from bench.runner import CellRunner
from bench.store import Store
from techniques.step_reduction import SAMPLERS


def bare_median_s(denoiser, sampler: str, steps: int, batch: int, runs: int) -> float:
    cls, overrides = SAMPLERS[sampler]
    config = {**denoiser.scheduler_config, **overrides, "timestep_spacing": "trailing"}
    unet = denoiser.net

    def loop() -> torch.Tensor:
        sched = cls.from_config(config)
        sched.set_timesteps(steps)
        x = torch.randn(batch, *denoiser.image_shape) * sched.init_noise_sigma
        for t in sched.timesteps:
            x = sched.step(unet(sched.scale_model_input(x, t), t).sample, t, x).prev_sample
        return x

    with torch.no_grad():
        loop()
        return benchmark.Timer("loop()", globals={"loop": loop}, num_threads=torch.get_num_threads()).timeit(
            runs).median


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    base = cfg.load()
    config = dataclasses.replace(
        base, technique=[cfg.TechniqueConfig(name="step_reduction", steps=[a.steps], params={"sampler": [a.sampler]},
                                             n_samples=a.batch)],
        hardware=cfg.HardwareConfig(batch=[a.batch], threads=[a.threads]),
        latency=cfg.LatencyConfig(min_repeats=a.repeats, min_seconds=0.0),
        quality=dataclasses.replace(base.quality, bootstrap=0))
    (cell,) = sweep.expand(config)
    with tempfile.TemporaryDirectory() as tmp:
        Store(tmp).prepare()
        runner = CellRunner(config, Store(tmp), progress=False)
        denoiser = load_denoiser(train.ensure(sweep.base_recipe(config)).path)
        before = bare_median_s(denoiser, a.sampler, a.steps, a.batch, a.repeats)
        record = runner.run(cell)
        after = bare_median_s(denoiser, a.sampler, a.steps, a.batch, a.repeats)
    harness = record["metrics"]["latency_batch_median_s"]
    bare = (before + after) / 2
    print(f"{a.sampler} {a.steps} steps, batch {a.batch}, {a.threads} threads")
    print(f"bare loop median   {bare * 1e3:8.2f} ms/batch  (before {before * 1e3:.2f}, after {after * 1e3:.2f})")
    print(f"harness cell median {harness * 1e3:8.2f} ms/batch  ({record['metrics']['latency_count']} samples)")
    print(f"ratio harness/bare  {harness / bare:.3f}")


if __name__ == "__main__":
    main()
