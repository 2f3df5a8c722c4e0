"""Generated images as the harness keeps them: uint8, and a short digest per image that proves two cells' images
byte-identical (the only identity quality reuse relies on: bench.sampling promises seed-only images up to kernel
rounding, not bit for bit)."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

DIGESTED_SEEDS = 100  # per-image digests kept for a record's first seeds: the evidence quality reuse is checked on


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def image_digests(images: torch.Tensor, first_seed: int) -> dict[str, Any]:
    """Short sha256 of each uint8 image, with the seeds they belong to."""
    shas = [hashlib.sha256(img.contiguous().numpy().tobytes()).hexdigest()[:16] for img in images]
    return {"seeds": [first_seed, first_seed + len(shas)], "sha256": shas}


def same_images(stored: dict[str, Any] | None, probe: dict[str, Any]) -> int:
    """How many seeds both digest lists cover, when every one of them is byte-identical; 0 when any differs or
    they share none."""
    if not stored:
        return 0
    start = max(stored["seeds"][0], probe["seeds"][0])
    stop = min(stored["seeds"][1], probe["seeds"][1])
    if stop <= start:
        return 0
    a = stored["sha256"][start - stored["seeds"][0]:stop - stored["seeds"][0]]
    b = probe["sha256"][start - probe["seeds"][0]:stop - probe["seeds"][0]]
    return stop - start if a == b else 0
