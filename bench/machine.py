"""Which machine measured a cost: a fingerprint of the hardware and the torch build, and a short readable id of it.

The id is part of every cell's spec, so a sweep on another machine measures its own costs instead of finding
another machine's "already stored". Two processes on one box that see a different number of cores (``taskset``) or
another torch build are different machines here: both change what a latency means.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from bench.provenance import cpu_model

# Records written before machines were fingerprinted carry only their provenance; they load as this kind of id.
LEGACY_PREFIX = "unfingerprinted"


def visible_cores() -> int:
    """Cores this process may run on (its affinity mask), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def memory_gib() -> int | None:
    """Physical memory, rounded to whole GiB (so two VMs of one size agree)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    except (ValueError, OSError, AttributeError):
        return None


def accelerator_driver() -> str | None:
    """The NVIDIA driver version (NVML, else the kernel module's version file); None without one."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
            return version.decode() if isinstance(version, bytes) else str(version)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML library, no driver, no permission: fall back to the proc file
        pass
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module\s+([\d.]+)", text)
    return match.group(1) if match else None


@functools.lru_cache(maxsize=1)
def fingerprint() -> dict[str, Any]:
    """Everything about this machine that changes what a cost figure means."""
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []
    return {
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels torch dispatches to (AVX2, ...)
        "cores": visible_cores(),
        "memory_gib": memory_gib(),
        "gpu_model": gpus[0] if gpus else None,
        "gpu_count": len(gpus),
        "accelerator_driver": accelerator_driver() if gpus else None,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_git": (torch.version.git_version or "")[:12] or None,
    }


def machine_id(fp: dict[str, Any] | None = None) -> str:
    """A readable, stable id: CPU, cores, memory and GPUs spelled out, then a hash of the whole fingerprint (so two
    torch builds on one box differ)."""
    fp = fingerprint() if fp is None else fp
    digest = hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:8]
    cpu = _slug(fp.get("cpu_model") or "cpu")
    gpu = ""
    if fp.get("gpu_count"):
        name = re.sub(r"[^a-z0-9]+", "-", str(fp["gpu_model"]).lower().replace("nvidia", "")).strip("-")[:16]
        gpu = f"-{fp['gpu_count']}x{name}"
    return f"{cpu}-{fp.get('cores')}c-{fp.get('memory_gib')}g{gpu}-{digest}"


def legacy_id(provenance: dict[str, Any] | None) -> str:
    """What a record from before fingerprints is known to have run on (CPU model and core count only)."""
    p = provenance or {}
    return f"{LEGACY_PREFIX}:{_slug(p.get('cpu_model') or 'unknown')}-{p.get('cpu_count', '?')}c"


def _slug(cpu: str) -> str:
    text = re.sub(r"\((r|tm)\)|\b(processor|cpu|with radeon graphics)\b|\d+-core", " ", cpu.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:28].strip("-") or "cpu"


def describe(fp: dict[str, Any]) -> str:
    """One line for listings: CPU, cores, memory, GPUs, torch."""
    gpu = f", {fp['gpu_count']}× {fp['gpu_model']} (driver {fp.get('accelerator_driver')})" if fp.get(
        "gpu_count") else ""
    return (f"{fp.get('cpu_model')} [{fp.get('cpu_capability')}], {fp.get('cores')} cores visible, "
            f"{fp.get('memory_gib')} GiB{gpu}; torch {fp.get('torch')}"
            + (f" (CUDA {fp['torch_cuda']})" if fp.get("torch_cuda") else ""))
