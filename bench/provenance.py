"""Where a number came from: machine, versions, commit. Stamped into every record and training record."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path

import torch

_PACKAGES = ("bench", "torch", "torchvision", "diffusers", "fvcore", "torch-fidelity", "codecarbon", "numpy", "pandas")


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout bench runs from, with '+dirty' when it has uncommitted changes — to anything but
    the harness's own outputs (``results/``, ``reports/``), which a sweep writes as it goes."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results", ":(exclude)reports"], cwd=root,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_model()


def provenance(device: str = "cpu") -> dict:
    """Everything needed to say which machine and code produced a number."""
    return {
        "git_commit": git_commit(),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": _cpu_count(),
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
    }


def _cpu_count() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
