"""The harness-overhead table from a pytest-benchmark JSON written by tests/benchmarks/test_micro.py.

    python tests/benchmarks/overhead_table.py results/benchmarks/micro.json

One row per (technique, call or step, batch): bare and harnessed medians from calls alternated in pairs, and the
median of the per-pair ratios (drift on a shared machine cancels within a pair); the target is under 1.02.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    return [{"group": b["group"], **b["extra_info"], "pytest_benchmark_median_ms": b["stats"]["median"] * 1e3}
            for b in sorted(data["benchmarks"], key=lambda b: b["group"])]


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "results/benchmarks/micro.json")
    rows = table(path)
    print("| benchmark | bare median ms | harness median ms | harness / bare (median of paired ratios) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['group']} | {r['bare_median_ms']:.3f} | {r['harness_median_ms']:.3f} | {r['paired_ratio']:.3f} |")
    worst = max(rows, key=lambda r: r["paired_ratio"])
    mean = sum(r["paired_ratio"] for r in rows) / len(rows)
    print(f"\noverhead: mean {mean:.3f}, worst {worst['paired_ratio']:.3f} ({worst['group']}); target < 1.02")


if __name__ == "__main__":
    main()
