"""Energy of a whole timed loop with codecarbon's ``OfflineEmissionsTracker`` (no network calls).

``start()`` costs ~75 ms, so the tracker wraps the whole loop and the energy is divided by the images generated.
Without RAPL/NVML codecarbon estimates (CPU: TDP × load, RAM: a constant): the method is recorded per row and
estimates are flagged; a GPU that reports 0 kWh is stored as missing, never as a real zero (codecarbon#1316).
"""

from __future__ import annotations

import logging
import tempfile

MEASURED_CPU_MODES = {"intel_rapl", "windows_emi", "intel_power_gadget"}


class EnergyMeter:
    """Context manager around a timed loop; ``result(n_images)`` gives kWh per image by component."""

    def __init__(self, country_iso_code: str = "USA", uses_gpu: bool = False) -> None:
        self.country = country_iso_code
        self.uses_gpu = uses_gpu
        self._tracker = None
        self._error: str | None = None

    def __enter__(self) -> EnergyMeter:
        try:
            from codecarbon import OfflineEmissionsTracker

            logging.getLogger("codecarbon").setLevel(logging.ERROR)
            self._tracker = OfflineEmissionsTracker(
                country_iso_code=self.country, save_to_file=False, log_level="error", tracking_mode="process",
                allow_multiple_runs=True, output_dir=tempfile.gettempdir())
            self._tracker.start()
        except Exception as exc:  # codecarbon failing must not sink the cell: energy is then missing, with why
            self._tracker, self._error = None, f"codecarbon unavailable: {exc}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tracker is not None:
            self._tracker.stop()

    def result(self, n_images: int) -> dict[str, float | str | bool | None]:
        if self._tracker is None or self._tracker.final_emissions_data is None:
            return {"energy_method": self._error or "unmeasured", "energy_estimated": None,
                    "energy_cpu_kwh_per_image": None, "energy_gpu_kwh_per_image": None,
                    "energy_ram_kwh_per_image": None, "energy_kwh_per_image": None}
        data = self._tracker.final_emissions_data
        cpu_mode = next((getattr(h, "_mode", None) for h in self._tracker._hardware
                         if type(h).__name__ == "CPU"), None) or "unknown"
        gpu_kwh = data.gpu_energy if (self.uses_gpu and data.gpu_energy > 0) else None
        cpu, ram = data.cpu_energy / n_images, data.ram_energy / n_images
        gpu = None if gpu_kwh is None else gpu_kwh / n_images
        return {
            "energy_method": f"codecarbon {data.codecarbon_version}: cpu={cpu_mode}, ram=estimate, "
                             f"gpu={'nvml' if gpu is not None else 'none' if not self.uses_gpu else 'no counter'}",
            "energy_estimated": cpu_mode not in MEASURED_CPU_MODES,  # RAM is always modelled by codecarbon
            "energy_cpu_kwh_per_image": cpu,
            "energy_gpu_kwh_per_image": gpu,
            "energy_ram_kwh_per_image": ram,
            "energy_kwh_per_image": cpu + ram + (gpu or 0.0),
        }
