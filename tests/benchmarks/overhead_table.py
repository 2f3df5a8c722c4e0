"""The harness-overhead table from a pytest-benchmark JSON written by tests/benchmarks/test_micro.py.

    python tests/benchmarks/overhead_table.py results/benchmarks/micro.json

One row per (technique, call or step, batch): bare and harness medians and their ratio; the target is under 1.02.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    groups: dict[str, dict[str, float]] = {}
    for b in data["benchmarks"]:
        groups.setdefault(b["group"], {})[b["params"]["mode"]] = b["stats"]["median"]
    return [{"group": g, "bare_ms": v["bare"] * 1e3, "harness_ms": v["harness"] * 1e3,
             "ratio": v["harness"] / v["bare"]} for g, v in sorted(groups.items()) if {"bare", "harness"} <= set(v)]


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "results/benchmarks/micro.json")
    rows = table(path)
    print("| benchmark | bare median ms | harness median ms | harness / bare |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['group']} | {r['bare_ms']:.3f} | {r['harness_ms']:.3f} | {r['ratio']:.3f} |")
    worst = max(rows, key=lambda r: r["ratio"])
    print(f"\nworst: {worst['group']} {worst['ratio']:.3f}; target < 1.02")


if __name__ == "__main__":
    main()
