"""Latency as a value object built from raw samples: median, MAD and count (never a mean of means)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


def synchronize(device: str) -> None:
    """Wait for queued device work so a timer measures execution, not launch (pytorch/pytorch#21286)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def timed(fn: Callable[[], object], device: str) -> tuple[float, object]:
    """Seconds one call of ``fn`` takes, synchronised on both sides, and its result."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


@dataclass(frozen=True)
class Latency:
    values_s: tuple[float, ...]  # every raw sample, in seconds

    @classmethod
    def from_values(cls, values: list[float]) -> Latency:
        return cls(tuple(float(v) for v in values))

    @property
    def count(self) -> int:
        return len(self.values_s)

    @property
    def median_s(self) -> float:
        return statistics.median(self.values_s)

    @property
    def mad_s(self) -> float:
        """Median absolute deviation from the median."""
        med = self.median_s
        return statistics.median(abs(v - med) for v in self.values_s)


def repeat_until(fn: Callable[[], object], device: str, min_count: int, min_seconds: float,
                 already: list[float] | None = None) -> list[float]:
    """Time ``fn`` until at least ``min_count`` samples and ``min_seconds`` in total (counting ``already``)."""
    values = list(already or [])
    while len(values) < min_count or sum(values) < min_seconds:
        values.append(timed(fn, device)[0])
    return values
