"""A folder of generated shape images (filled squares, discs and triangles of random size, place and grey level on a
dark background): an unlabelled dataset a user might bring, made offline in a second.

    python -m tests.shapes FOLDER [--n 600] [--size 16]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def write_shapes(folder: Path, n: int = 600, size: int = 16, seed: int = 0) -> Path:
    """Write ``n`` PNGs of ``size``×``size`` into ``folder`` (created); returns it."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        image = Image.new("L", (size, size), int(rng.integers(0, 40)))
        draw = ImageDraw.Draw(image)
        side = int(rng.integers(size // 3, size - 2))
        x, y = (int(v) for v in rng.integers(0, size - side, 2))
        grey = int(rng.integers(150, 256))
        kind = i % 3
        if kind == 0:
            draw.rectangle([x, y, x + side - 1, y + side - 1], fill=grey)
        elif kind == 1:
            draw.ellipse([x, y, x + side - 1, y + side - 1], fill=grey)
        else:
            draw.polygon([(x, y + side - 1), (x + side - 1, y + side - 1), (x + side // 2, y)], fill=grey)
        image.save(folder / f"shape_{i:04d}.png")
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(f"wrote {args.n} images to {write_shapes(args.folder, args.n, args.size, args.seed)}")


if __name__ == "__main__":
    main()
