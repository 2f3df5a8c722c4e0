"""The machine's ceilings, measured through torch: peak FLOP/s (dense matmul and 3×3 convolution, the best of the two)
and memory bandwidth (a large copy), per machine × device × dtype × threads, cached on disk per machine.

A cell's achieved FLOP/s (its counted FLOPs per image over its latency per image) divided by the peak says how much
of the machine the technique uses: small networks at batch 1 are overhead-bound, far below the peak.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.measure.latency import synchronize

ROOFLINE_VERSION = 1  # bump when the benchmark changes: cached peaks of another version are measured again


def cache_dir() -> Path:
    from bench.measure.quality import cache_root

    return cache_root().parent / "roofline"


def _best_rate(fn: Callable[[], object], work: float, device: str, min_seconds: float = 0.3,
               min_count: int = 3) -> float:
    """Work per second of the fastest timed call (a ceiling: the best the machine did, not its typical)."""
    fn()
    synchronize(device)
    best, spent, count = float("inf"), 0.0, 0
    while count < min_count or spent < min_seconds:
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        elapsed = time.perf_counter() - start
        best, spent, count = min(best, elapsed), spent + elapsed, count + 1
    return work / best


def measure(device: str, dtype: str, threads: int) -> dict[str, Any]:
    """Peak FLOP/s and bandwidth of this process at ``threads`` (restored afterwards)."""
    dt = getattr(torch, dtype)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            n = 4096 if device.startswith("cuda") else 1024
            a = torch.randn(n, n, device=device, dtype=dt)
            b = torch.randn(n, n, device=device, dtype=dt)
            matmul = _best_rate(lambda: a @ b, 2.0 * n**3, device)
            batch, channels, side = 64, 64, 32
            x = torch.randn(batch, channels, side, side, device=device, dtype=dt)
            w = torch.randn(channels, channels, 3, 3, device=device, dtype=dt)
            conv = _best_rate(lambda: torch.nn.functional.conv2d(x, w, padding=1),
                              2.0 * batch * channels * side * side * channels * 9, device)
            elements = (256 if device.startswith("cuda") else 32) * 2**20  # past the last-level cache
            src = torch.empty(elements, device=device, dtype=torch.float32).fill_(1.0)
            dst = torch.empty_like(src)
            bandwidth = _best_rate(lambda: dst.copy_(src), 2.0 * src.element_size() * elements, device)
    finally:
        torch.set_num_threads(previous)
    peak, source = max((matmul, f"matmul {n}×{n}"), (conv, f"conv3x3 {batch}×{channels}×{side}²"))
    return {"peak_flops_per_s": peak, "peak_source": source, "matmul_flops_per_s": matmul,
            "conv_flops_per_s": conv, "bandwidth_bytes_per_s": bandwidth,
            "bandwidth_source": f"fp32 copy of {elements * 4 / 2**20:.0f} MiB (read + write)",
            "device": device, "dtype": dtype, "threads": threads, "version": ROOFLINE_VERSION}


def peak(machine: str, device: str, dtype: str, threads: int) -> dict[str, Any]:
    """The cached ceilings of (machine, device, dtype, threads), measured on first use."""
    path = cache_dir() / f"{machine}-{device.replace(':', '')}-{dtype}-{threads}t.json"
    try:
        cached = json.loads(path.read_text())
        if cached.get("version") == ROOFLINE_VERSION:
            return cached
    except (OSError, ValueError):
        pass
    result = {**measure(device, dtype, threads), "machine": machine,
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache costs a re-measurement next time, nothing else
    return result


def achieved(flops_per_image: float | None, latency_per_image_s: float, ceilings: dict[str, Any]) -> dict[str, Any]:
    """What a cell achieved against the ceilings."""
    rate = flops_per_image / latency_per_image_s if flops_per_image and latency_per_image_s > 0 else None
    return {"achieved_flops_per_s": rate, "peak_flops_per_s": ceilings["peak_flops_per_s"],
            "fraction_of_peak": rate / ceilings["peak_flops_per_s"] if rate else None,
            "bandwidth_bytes_per_s": ceilings["bandwidth_bytes_per_s"], "peak_source": ceilings["peak_source"]}
