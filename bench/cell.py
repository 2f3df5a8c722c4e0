"""A sweep cell: (technique, params, steps) × (device, dtype, threads, compile, batch) with the quality settings. Its
spec hash addresses its record; the keys without the image-invariant axes say which cells share images."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

# Hardware axes that should not change which images a seed gives (per-sample RNG): quality is computed once and
# reused across them — after the reusing cell's own warm-up images proved byte-identical to the stored ones. Device,
# dtype and compile change numerics, so each gets its own quality.
QUALITY_INVARIANT_AXES = ("threads", "batch")
# Another machine may give other images (other kernels, other BLAS): its quality is reused only on the same proof.
IMAGE_AXES = (*QUALITY_INVARIANT_AXES, "machine")
# With per-seed RNG the first N images of a cell are the same at any larger N: a stored cell extends to more seeds.
EXTENSION_AXES = (*QUALITY_INVARIANT_AXES, "n_samples")


@dataclass(frozen=True)
class Cell:
    spec: dict[str, Any]

    @property
    def spec_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.spec, sort_keys=True).encode()).hexdigest()[:16]

    def _key_without(self, axes: tuple[str, ...]) -> str:
        rest = {k: v for k, v in self.spec.items() if k not in axes}
        return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def images_key(self) -> str:
        """Cells with this key should give the same images, on any machine."""
        return self._key_without(IMAGE_AXES)

    @property
    def extension_key(self) -> str:
        return self._key_without(EXTENSION_AXES)

    def label(self) -> str:
        s = self.spec
        params = " ".join(f"{k}={v}" for k, v in s["params"].items())
        guidance = s.get("guidance")
        if guidance:
            params += (f" w={guidance['scale']:g}" + (f" {guidance['guider']}" if guidance["guider"] != "cfg" else "")
                       + (f" [{guidance['start']:g},{guidance['stop']:g})"
                          if (guidance["start"], guidance["stop"]) != (0.0, 1.0) else ""))
        return (f"{s['technique']} {params} steps={s['steps']} | {s['device']}/{s['dtype']}/{s['threads']}t/"
                f"b{s['batch']}{'/compiled' if s['compile'] else ''}")
