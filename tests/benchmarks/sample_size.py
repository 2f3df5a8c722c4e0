"""How FID intervals shrink with N, how FID's bias moves with 1/N, and which headline comparisons each N decides.

    python tests/benchmarks/sample_size.py results/sample_size [--ns 250 500 1000 2000] [--json OUT]

Reads one store whose cells generated the largest N (``bench/configs/sample_size.toml``). With one RNG per seed, the
first N' rows of a cell's features are exactly what a sweep at N' generates, so every smaller N is measured on the
same images without generating anything. For each N' it reports:

- the unpaired FID interval half-width of each cell (1.96 bootstrap standard errors over the generated images, the
  reference fixed: the per-cell interval the store records);
- the paired ΔFID half-width of each headline pair (the reference series — DDIM — against every other cell at equal
  NFE; paired bootstrap over shared seeds with the reference resampled) and its verdict, beside whether the two
  unpaired intervals overlap (what the README used to compare);
- FID at N' against 1/N' with the least-squares line of Chong & Forsyth (2020), its intercept FID∞ and slope.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from bench import frames, report, stats
from bench.compare import Comparer, label
from bench.store import load_features


def unpaired_half_width(gen: np.ndarray, ref: np.ndarray, draws: int, seed: int = 0) -> float:
    """1.96 × bootstrap SE of FID, resampling the generated images, the reference fixed (the record's interval)."""
    fixed = stats.Draws.fixed_reference(len(gen), len(ref), draws, seed)
    boot = stats.bootstrap_metrics(gen, stats.Reference(ref, fixed), metrics=("fid",))["fid"]
    return stats.Z95 * float(np.std(boot, ddof=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store", type=Path)
    p.add_argument("--ns", type=int, nargs="+", default=[250, 500, 1000, 2000])
    p.add_argument("--draws", type=int, default=500)
    p.add_argument("--reference", default=report.DEFAULT_REFERENCE)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    ok = report.ok_rows(report.load_stores([args.store]))
    ok = ok[ok["features"].notna()]
    largest = int(min(e["generated"]["shape"][0] for e in ok["features"]))
    ns = [n for n in args.ns if n <= largest]
    ref = load_features(ok.iloc[0]["store"], ok.iloc[0]["features"]["reference"])
    verdicts = frames.PairedVerdicts(ok, args.reference)
    pairs = verdicts.reference_pairs()
    comparer = Comparer(draws=args.draws)
    print(f"{len(ok)} cells with {largest} seeds each; {len(pairs)} headline pairs against {args.reference}; "
          f"N' = {ns}", flush=True)

    cells = {}
    for idx, row in ok.iterrows():
        gen = load_features(row["store"], row["features"]["generated"])
        sizes = sorted({*ns, *(int(v) for v in np.linspace(ns[0], largest, 7))})
        fids = {n: stats.fid(gen[:n], ref) for n in sizes}
        x = 1 / np.asarray(sizes, dtype=float)
        slope, intercept = np.polyfit(x, np.asarray([fids[n] for n in sizes]), 1)
        cells[idx] = {"cell": label(row), "nfe": int(row["nfe"]), "spec_hash": row["spec_hash"],
                      "fid": {str(n): fids[n] for n in sizes},
                      "half_width": {str(n): unpaired_half_width(gen[:n], ref, args.draws) for n in ns},
                      "fid_inf_across_n": float(intercept), "slope_across_n": float(slope),
                      "fid_inf_within_cell": row.get("fid_inf")}
        print(f"  {cells[idx]['cell']}: FID " + ", ".join(f"{fids[n]:.2f}@{n}" for n in ns)
              + f"; FID∞ {intercept:.2f} (slope {slope:.0f}); ±" + ", ".join(
                  f"{cells[idx]['half_width'][str(n)]:.2f}" for n in ns), flush=True)

    rows = []
    for ref_idx, idx in pairs:
        entry = {"pair": f"{cells[idx]['cell']} vs {cells[ref_idx]['cell']}", "nfe": cells[idx]["nfe"], "by_n": {}}
        for n in ns:
            d = comparer.compare(ok.loc[ref_idx], ok.loc[idx], n=n)["fid"]
            fa, fb = cells[ref_idx]["fid"][str(n)], cells[idx]["fid"][str(n)]
            ha, hb = cells[ref_idx]["half_width"][str(n)], cells[idx]["half_width"][str(n)]
            overlap = (fa - ha) <= (fb + hb) and (fb - hb) <= (fa + ha)
            entry["by_n"][str(n)] = {"delta": d.delta, "low": d.low, "high": d.high, "half_width": (d.high - d.low) / 2,
                                     "verdict": d.verdict, "unpaired_overlap": bool(overlap)}
        rows.append(entry)

    summary = {}
    print("\nN'    median ± unpaired FID   median ± paired ΔFID   decided paired   unpaired CIs apart")
    for n in ns:
        key = str(n)
        unpaired = statistics.median(c["half_width"][key] for c in cells.values())
        paired = statistics.median(r["by_n"][key]["half_width"] for r in rows) if rows else float("nan")
        decided = sum(r["by_n"][key]["verdict"] in ("better", "worse") for r in rows)
        apart = sum(not r["by_n"][key]["unpaired_overlap"] for r in rows)
        summary[key] = {"median_unpaired_half_width": unpaired, "median_paired_half_width": paired,
                        "max_paired_half_width": max((r["by_n"][key]["half_width"] for r in rows), default=None),
                        "decided_paired": decided, "apart_unpaired": apart, "pairs": len(rows)}
        print(f"{n:<6}{unpaired:>14.2f}{paired:>22.2f}{decided:>13}/{len(rows)}{apart:>16}/{len(rows)}")
    print("\nheadline pairs at each N' (ΔFID [95% paired]; * = the unpaired intervals overlap):")
    for r in rows:
        parts = []
        for n in ns:
            b = r["by_n"][str(n)]
            parts.append(f"{n}: {b['delta']:+.2f} [{b['low']:+.2f}, {b['high']:+.2f}] {b['verdict']}"
                         + ("*" if b["unpaired_overlap"] else ""))
        print(f"  {r['pair']}: " + "; ".join(parts))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "store": str(args.store),
                                         "reference": args.reference, "ns": ns, "draws": args.draws,
                                         "summary": summary, "cells": list(cells.values()), "pairs": rows},
                                        indent=1))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
