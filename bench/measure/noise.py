"""Is a timing trustworthy? Three independent signs that a latency was measured on a contended or unstable machine.

1. **Dispersion**: the timed batches disagree (MAD / median above ``DISPERSION_MAX``).
2. **Inconsistency**: the whole sampler's batch time disagrees with NFE × the denoiser-alone time of the same batch
   (ratio outside ``RATIO_RANGE``): one of the two figures was measured while something else ran.
3. **Contention**: other processes used the cores this process may run on (``OTHERS_CORES_MAX`` cores on average over
   the timed loop, from ``/proc/stat`` minus this process's own CPU time), or the hypervisor stole time from them
   (``STEAL_MAX`` of it).

The thresholds come from measurements (``docs/measurement-noise.md`` has the figures and the commands): in 167 cells of
the committed stores, run alone, dispersion stayed ≤ 0.14 and the ratio within 0.71–1.73; a cell timed beside a
busy process per core reads 1.0 core of others' CPU while a quiet one reads a few thousandths.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

DISPERSION_MAX = 0.15
RATIO_RANGE = (0.5, 2.0)
OTHERS_CORES_MAX = 0.3
STEAL_MAX = 0.05


def _cpu_jiffies(cpus: set[int]) -> tuple[float, float, float] | None:
    """(busy, steal, total) jiffies summed over ``cpus`` (Linux); None where /proc/stat is unreadable."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = steal = total = 0.0
    for line in lines:
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        v = [float(x) for x in fields[:8]] + [0.0] * max(0, 8 - len(fields))
        user, nice, system, idle, iowait, irq, softirq, st = v[:8]
        busy += user + nice + system + irq + softirq
        steal += st
        total += sum(v[:8])
    return (busy, steal, total) if total else None


class CpuMonitor:
    """Around a timed phase: how much CPU others took on this process's cores, the stolen fraction, the load."""

    def __init__(self) -> None:
        try:
            self.cpus = set(os.sched_getaffinity(0))
        except AttributeError:
            self.cpus = set(range(os.cpu_count() or 1))
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._start: tuple[Any, ...] | None = None
        self._result: dict[str, Any] = {}

    def __enter__(self) -> CpuMonitor:
        times = os.times()
        self._start = (time.perf_counter(), times.user + times.system, _cpu_jiffies(self.cpus))
        return self

    def __exit__(self, *exc: object) -> None:
        wall0, self0, jiffies0 = self._start
        times = os.times()
        wall = time.perf_counter() - wall0
        own = times.user + times.system - self0
        jiffies1 = _cpu_jiffies(self.cpus)
        result: dict[str, Any] = {"wall_s": wall, "cores": len(self.cpus),
                                  "own_cpu_cores": own / wall if wall > 0 else None,
                                  "others_cpu_cores": None, "steal_fraction": None,
                                  "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
        if jiffies0 and jiffies1 and wall > 0:
            busy = (jiffies1[0] - jiffies0[0]) / self.hz
            total = jiffies1[2] - jiffies0[2]
            result["others_cpu_cores"] = max(0.0, busy - own) / wall
            result["steal_fraction"] = (jiffies1[1] - jiffies0[1]) / total if total > 0 else 0.0
        self._result = result

    def result(self) -> dict[str, Any]:
        return dict(self._result)


def dispersion(values: list[float]) -> float:
    """MAD / median of the raw samples."""
    med = statistics.median(values)
    return statistics.median(abs(v - med) for v in values) / med if med > 0 else 0.0


def suspect_reasons(batch_times: list[float], expected_batch_s: float | None,
                    load: dict[str, Any]) -> list[str]:
    """Why a timing should not be trusted (empty when it passes every check)."""
    reasons = []
    if len(batch_times) >= 3 and (d := dispersion(batch_times)) > DISPERSION_MAX:
        reasons.append(f"batch times disperse: MAD/median {d:.2f} > {DISPERSION_MAX}")
    if expected_batch_s and batch_times:
        ratio = statistics.median(batch_times) / expected_batch_s
        if not RATIO_RANGE[0] <= ratio <= RATIO_RANGE[1]:
            reasons.append(f"sampler time is {ratio:.2f}× NFE × denoiser-alone time (expected "
                           f"{RATIO_RANGE[0]}–{RATIO_RANGE[1]}×)")
    others = load.get("others_cpu_cores")
    if others is not None and others > OTHERS_CORES_MAX:
        reasons.append(f"other processes used {others:.2f} cores of this process's {load.get('cores', '?')} "
                       f"while it was timed (> {OTHERS_CORES_MAX})")
    steal = load.get("steal_fraction")
    if steal is not None and steal > STEAL_MAX:
        reasons.append(f"the hypervisor stole {steal:.0%} of CPU time (> {STEAL_MAX:.0%})")
    return reasons
