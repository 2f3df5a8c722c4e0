"""The hardware study's tables, from its store (``bench/configs/hardware.toml``):

    python tests/benchmarks/hardware_tables.py results/hardware

1. ms per image of every network × hardware point (steady state, median of the timed batches);
2. the ranking of the networks by ms per image at batch 1 (interactive) and at batch 100 (throughput), per thread
   count and dtype: where the order flips;
3. what each knob buys: 2 threads over 1, bf16 autocast over fp32, compiled over eager — steady-state speedups with
   95% intervals (bootstrap of each side's raw batch times), and compile's one-time cost (first call) apart;
4. the fraction of the machine's peak FLOP/s each cell reached.
"""

from __future__ import annotations

import argparse

import pandas as pd

from bench import report, stats


def _series(df: pd.DataFrame) -> pd.Series:
    return report.series_labels(df, report.varying_params(df)) + " " + df["steps"].astype(str) + " steps"


def _speedup(a: pd.Series, b: pd.Series) -> str:
    ratio, low, high = stats.median_ratio(a["raw"]["latency_batch_s"], b["raw"]["latency_batch_s"])
    return f"{1 / ratio:.2f}× [{1 / high:.2f}, {1 / low:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    args = parser.parse_args()
    df = report.ok_rows(report.load_stores([args.store]))
    df["series"] = _series(df)
    df["point"] = (df["dtype"].str.replace("float32", "fp32").str.replace("bfloat16", "bf16") + " "
                   + df["threads"].astype(str) + "t b" + df["batch"].astype(str)
                   + df["compile"].map({True: " compiled", False: ""}))
    print(f"machine(s): {', '.join(df['machine'].unique())}; {len(df)} cells; "
          f"suspect timings: {int(df['latency_suspect'].notna().sum())}\n")

    table = df.pivot_table(index="series", columns="point", values="latency_per_image_ms", aggfunc="first")
    order = [c for c in ("fp32 1t b1", "fp32 1t b8", "fp32 1t b100", "fp32 2t b1", "fp32 2t b8", "fp32 2t b100",
                         "bf16 1t b1", "bf16 1t b8", "bf16 1t b100", "bf16 2t b1", "bf16 2t b8", "bf16 2t b100",
                         "fp32 2t b1 compiled", "fp32 2t b100 compiled") if c in table]
    print("## ms per image\n")
    print(table[order].round(2).to_markdown())

    print("\n## ranking by ms per image (fastest first)\n")
    rows = []
    for (dtype, threads), g in df[~df["compile"]].groupby(["dtype", "threads"]):
        ranks = {b: " < ".join(g[g["batch"] == b].sort_values("latency_per_image_ms")["series"]) for b in (1, 100)}
        rows.append({"dtype": dtype, "threads": threads, "batch 1": ranks[1], "batch 100": ranks[100],
                     "flips": ranks[1] != ranks[100]})
    print(pd.DataFrame(rows).to_markdown(index=False))

    print("\n## pairs whose order is decided at both batch 1 and batch 100 (time ratio B/A, 95% interval)\n")
    rows = []
    series = sorted(df["series"].unique())
    for (dtype, threads), g in df[~df["compile"]].groupby(["dtype", "threads"]):
        cell = {(r["series"], r["batch"]): r for _, r in g.iterrows()}
        for i, a in enumerate(series):
            for b in series[i + 1:]:
                out = {"dtype": dtype, "threads": threads, "A": a, "B": b}
                verdicts = []
                for batch in (1, 100):
                    ratio, low, high = stats.median_ratio(cell[a, batch]["raw"]["latency_batch_s"],
                                                          cell[b, batch]["raw"]["latency_batch_s"])
                    out[f"b{batch} B/A"] = f"{ratio:.2f} [{low:.2f}, {high:.2f}]"
                    verdicts.append("B faster" if high < 1 else "B slower" if low > 1 else "undecided")
                out["b1"], out["b100"] = verdicts
                out["decided flip"] = "undecided" not in verdicts and verdicts[0] != verdicts[1]
                rows.append(out)
    print(pd.DataFrame(rows).to_markdown(index=False))

    print("\n## what each knob buys (steady-state speedup, 95% interval)\n")
    key = ["series", "dtype", "threads", "batch", "compile"]
    by = {tuple(r[k] for k in key): r for _, r in df.iterrows()}
    rows = []
    for s in sorted(df["series"].unique()):
        for batch in (1, 8, 100):
            row = {"series": s, "batch": batch}
            pairs = {"2 threads vs 1 (fp32)": ((s, "float32", 1, batch, False), (s, "float32", 2, batch, False)),
                     "bf16 vs fp32 (2t)": ((s, "float32", 2, batch, False), (s, "bfloat16", 2, batch, False)),
                     "compiled vs eager (fp32 2t)": ((s, "float32", 2, batch, False), (s, "float32", 2, batch, True))}
            for name, (a, b) in pairs.items():
                row[name] = _speedup(by[a], by[b]) if a in by and b in by else ""
            compiled = by.get((s, "float32", 2, batch, True))
            row["compile first call s"] = f"{compiled['first_call_s']:.1f}" if compiled is not None else ""
            eager = by.get((s, "float32", 2, batch, False))
            row["eager first call s"] = f"{eager['first_call_s']:.2f}" if eager is not None else ""
            rows.append(row)
    print(pd.DataFrame(rows).to_markdown(index=False))

    print("\n## % of peak FLOP/s\n")
    peak = df.pivot_table(index="series", columns="point", values="fraction_of_peak", aggfunc="first") * 100
    print(peak[order].round(1).to_markdown())
    ceilings = report.roofline_groups(df)
    print("\n" + ceilings.round(3).to_markdown(index=False))


if __name__ == "__main__":
    main()
