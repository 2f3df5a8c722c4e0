"""Peak memory over a phase. CPU: the process's peak RSS (VmHWM), reset at the start of the phase by writing 5 to
/proc/self/clear_refs (Linux ≥ 4.0); where that is impossible, the lifetime peak ru_maxrss, flagged as such.
CUDA: ``max_memory_allocated`` and ``max_memory_reserved``, reset before the phase."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch


class PeakMemory:
    """Context manager; after exit ``result()`` gives the phase's peaks in MiB and the method used."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.method = "unmeasured"
        self._result: dict[str, float | str | None] = {}

    def __enter__(self) -> PeakMemory:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "cpu: VmHWM reset via /proc/self/clear_refs"
        except OSError:
            self.method = "cpu: ru_maxrss (process lifetime peak, not reset per phase)"
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(torch.device(self.device))
        return self

    def __exit__(self, *exc: object) -> None:
        self._result = {"peak_rss_mib": _peak_rss_mib(self.method), "memory_method": self.method,
                        "cuda_max_allocated_mib": None, "cuda_max_reserved_mib": None}
        if self.device.startswith("cuda"):
            dev = torch.device(self.device)
            self._result["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
            self._result["cuda_max_reserved_mib"] = torch.cuda.max_memory_reserved(dev) / 2**20

    def result(self) -> dict[str, float | str | None]:
        return dict(self._result)


def _peak_rss_mib(method: str) -> float:
    if "VmHWM" in method:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
