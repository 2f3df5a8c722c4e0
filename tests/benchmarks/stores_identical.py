"""Are two stores of one config the same results? For the cells both hold: the same status, image digests, generated
features (sha256), sample-grid bytes, FID, KID, precision and recall — exactly, not within an interval. The check a
refactor that promises unchanged behaviour owes (``bench compare`` judges differences statistically instead).

    python -m bench sweep --results /tmp/before      # at the commit before the change, empty store
    python -m bench sweep --results /tmp/after       # at the commit after it, empty store
    python tests/benchmarks/stores_identical.py /tmp/before/default /tmp/after/default
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

METRICS = ("fid", "kid", "precision", "recall")


def _records(root: Path) -> dict[str, dict]:
    return {r["spec_hash"]: r for r in (json.loads(p.read_text()) for p in root.rglob("records/*.json"))}


def _grid_sha(root: Path, record: dict) -> str | None:
    grid = record.get("sample_grid")
    return hashlib.sha256((root / grid).read_bytes()).hexdigest() if grid and (root / grid).is_file() else None


def differences(a_root: Path, b_root: Path) -> tuple[list[str], list[tuple[str, str, str]]]:
    """The cells both stores hold, and (cell, technique, field) for every field that differs."""
    a, b = _records(a_root), _records(b_root)
    both = sorted(set(a) & set(b))
    out = []
    for h in both:
        ra, rb = a[h], b[h]
        fields = {
            "status": (ra["status"], rb["status"]),
            "image digests": (ra.get("image_digests"), rb.get("image_digests")),
            "generated features": tuple(((r.get("features") or {}).get("generated") or {}).get("sha256")
                                        for r in (ra, rb)),
            "sample grid": (_grid_sha(a_root, ra), _grid_sha(b_root, rb)),
            **{m: (ra.get("metrics", {}).get(m), rb.get("metrics", {}).get(m)) for m in METRICS},
        }
        out += [(h, ra["spec"]["technique"], name) for name, (x, y) in fields.items() if x != y]
    return both, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args()
    both, diffs = differences(args.a, args.b)
    print(f"{len(both)} cells in both stores; {len({d[0] for d in diffs})} differ")
    for cell, technique, name in diffs:
        print(f"  {cell} ({technique}): {name} differs")
    return 1 if diffs or not both else 0


if __name__ == "__main__":
    sys.exit(main())
