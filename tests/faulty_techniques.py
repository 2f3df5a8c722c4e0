"""Techniques that fail on purpose, for the executor tests. They reach worker processes through a
``bench.techniques`` entry point written by ``register_entry_points`` (a dist-info folder on PYTHONPATH)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.technique import Pipeline, Technique
from techniques.step_reduction import make_sampler

FAULTY = {"kill_self": "KillSelf", "memory_hog": "MemoryHog", "sleepy": "Sleepy"}


class _Faulty(Technique):
    description = "fails on purpose (tests)"

    @dataclass(frozen=True)
    class Params:
        pass

    def fault(self) -> None:
        raise NotImplementedError

    def pipeline(self, params, models, steps):
        denoiser = models["model"]
        ddim = make_sampler(denoiser, "ddim", steps)

        def sample(gens, callback=None):
            self.fault()
            return ddim(gens, callback)

        return Pipeline(sample=sample, networks={"model": denoiser})


class KillSelf(_Faulty):
    """Dies the way the kernel's OOM killer ends a process: SIGKILL, no exception, no record."""

    name = "kill_self"

    def fault(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


class MemoryHog(_Faulty):
    """Asks for far more memory than the machine has: a real allocation failure."""

    name = "memory_hog"

    def fault(self) -> None:
        torch.empty(1 << 50, dtype=torch.uint8)  # 1 PiB


class Sleepy(_Faulty):
    """Hangs far past any sensible timeout."""

    name = "sleepy"

    def fault(self) -> None:
        time.sleep(600)


def register_entry_points(site: Path) -> Path:
    """Make the faulty techniques installed for processes with ``site`` on PYTHONPATH; returns ``site``."""
    dist = site / "bench_faulty-0.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-faulty\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[bench.techniques]\n" + "".join(
        f"{name} = tests.faulty_techniques:{cls}\n" for name, cls in FAULTY.items()))
    return site
