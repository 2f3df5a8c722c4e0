"""Tables the report shows, as DataFrames: costs by stage, training costs, caveats, machine speedups, roofline."""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench.frames import ok_rows, stale_rows
from bench.labels import STAGE_LABELS, hardware_labels, series_labels, varying_params
from bench.report.format import first_line, reason

# cost column → (axis label, scale from the stored unit to the plotted one)
COST_AXES = {
    "flops_per_image": ("MFLOPs per image (FLOPs = 2×MACs)", 1e-6),
    "nfe": ("NFE (network calls per image)", 1.0),
    "latency_per_image_ms": ("latency per image (ms)", 1.0),
    "energy_kwh_per_image": ("energy per image (J)", 3.6e6),
    "peak_rss_mib": ("peak RSS (MiB)", 1.0),
}

# quality column → (axis label, CI low, CI high, symmetric error column)
QUALITY_AXES = {
    "fid": ("FID (lower is better)", "fid_ci_low", "fid_ci_high", None),
    "kid": ("KID, feature units² (poly kernel; lower is better)", None, None, "kid_std"),
}

SMALL_N = 10_000  # FID is biased upward and noisy well below this many generated images

SAMPLE_SEEDS_PER_GRID = 16  # Store.save_samples keeps the first 16 images: seeds seed..seed+15 of every cell

SUMMARY_COLUMNS = ["technique", "params", "steps", "nfe", "fid", "fid_ci_low", "fid_ci_high", "kid", "precision",
                   "recall", "latency_per_image_ms", "flops_per_image", "energy_kwh_per_image", "peak_rss_mib",
                   "n_generated"]

def cost_breakdown(rows: pd.DataFrame) -> pd.DataFrame:
    """Per cell, the FLOPs and time per image of each stage (text encoder, denoiser, decode): FLOPs as they ran, the
    text encoder's and decode's time from their networks timed alone at the cell's batch, the denoiser's the rest
    of the sampler call (its evaluations and the scheduler's arithmetic: a cache's cut-short calls are timed as
    they ran), beside the whole call's latency."""
    lines = []
    rows = rows.sort_values(["technique", "steps"])
    labels, hardware = series_labels(rows, varying_params(rows)), hardware_labels(rows)
    for _, row in rows.iterrows():
        flops = row.get("flops_per_image_by_stage") if isinstance(row.get("flops_per_image_by_stage"), dict) else {}
        calls = row.get("nfe_by_network") if isinstance(row.get("nfe_by_network"), dict) else {}
        total = sum(flops.values()) or float("nan")
        ms = {stage: row.get(f"{stage}_ms_per_image") for stage in ("text_encoder", "decode")}
        ms["denoiser"] = row["latency_per_image_ms"] - sum(v for v in ms.values() if pd.notna(v))
        line = {"cell": labels[row.name], "steps": row["steps"], "NFE": row["nfe"], "hardware": hardware[row.name]}
        for stage, label in STAGE_LABELS.items():
            if stage in flops:
                line[f"{label} calls"] = calls.get("model" if stage == "denoiser" else stage)
                line[f"{label} MFLOPs"] = flops[stage] / 1e6
                line[f"{label} FLOPs %"] = 100 * flops[stage] / total
                line[f"{label} ms"] = ms.get(stage)
        line["sampler call ms/img"] = row.get("latency_per_image_ms")
        clip = row.get("clip_score")
        line["CLIP score"] = clip if pd.notna(clip) else f"skipped: {first_line(row.get('clip_score_skipped'))}"
        lines.append(line)
    return pd.DataFrame(lines)

def training_costs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per trained artifact the cells used: its training steps, wall time and hardware, and who used it."""
    rows: dict[str, dict[str, Any]] = {}
    for _, r in ok_rows(df).iterrows():
        for role, summary in (r.get("artifacts") or {}).items():
            if not isinstance(summary, dict) or "key" not in summary:
                continue
            row = rows.setdefault(summary["key"], {
                "artifact": summary.get("recipe"), "key": summary["key"],
                "train steps": summary.get("train_steps"), "train wall s": summary.get("train_wall_s"),
                "total steps (with sources)": summary.get("train_total_steps", summary.get("train_steps")),
                "total wall s (with sources)": summary.get("train_total_wall_s", summary.get("train_wall_s")),
                "trained on": summary.get("train_device"), "used by": set(), "roles": set()})
            row["used by"].add(str(r["technique"]))
            row["roles"].add(role)
    table = pd.DataFrame(rows.values(), columns=["artifact", "key", "train steps", "train wall s",
                                                 "total steps (with sources)", "total wall s (with sources)",
                                                 "trained on", "used by", "roles"])
    for col in ("used by", "roles"):
        table[col] = table[col].map(lambda s: ", ".join(sorted(s)))
    return table.sort_values("artifact").reset_index(drop=True)

def caveats(df: pd.DataFrame, installed: dict[str, frozenset]) -> list[str]:
    """Plain-language warnings a reader must see before trusting or comparing the numbers."""
    notes, ok = [], ok_rows(df)
    if "energy_estimated" in ok and ok["energy_estimated"].fillna(False).astype(bool).any():
        methods = sorted(ok.loc[ok["energy_estimated"].fillna(False).astype(bool), "energy_method"].dropna().unique())
        notes.append("Energy is estimated, not measured: codecarbon found no hardware energy counter "
                     f"({'; '.join(methods)}). Compare energy between rows of one machine only.")
    if "extractor" in ok and (ok["extractor"].dropna() != "inception-v3-compat").any():
        names = ok.get("extractor_description", pd.Series(dtype=object)).dropna()
        kinds = ("a SimCLR encoder" if names.str.contains("SimCLR").all() else "a classifier"
                 if not names.str.contains("SimCLR").any() else "a classifier and a SimCLR encoder")
        notes.append(f"FID/KID/precision/recall use an offline feature extractor ({kinds} bench trained on this "
                     "data), not Inception-v3: the numbers rank techniques on this data but are not comparable with "
                     "published FIDs, nor between extractors.")
    if "n_generated" in ok and ok["n_generated"].notna().any():
        ns = sorted({int(n) for n in ok["n_generated"].dropna()})
        if ns[0] < SMALL_N:
            notes.append(f"FID is computed on small samples (N generated = {', '.join(map(str, ns))}): it is biased "
                         "upward at small N, so compare rows only at equal N; the intervals are bootstrap 95% "
                         "intervals over the generated images.")
        if len(ns) > 1:
            notes.append("Rows differ in N generated: their FIDs are not directly comparable (the paired Δ columns "
                         "compare two cells over the seeds both generated).")
    if "latency_suspect" in ok and ok["latency_suspect"].notna().any():
        flagged = ok[ok["latency_suspect"].notna()]
        notes.append(f"{len(flagged)} cell(s) have a suspect timing (still contended or unstable after "
                     "re-measuring; marked in the table): " + "; ".join(
                         f"{r['technique']} steps={r['steps']}: {r['latency_suspect']}" for _, r in flagged.iterrows()))
    if "machine" in ok and ok["machine"].nunique() > 1:
        names = ", ".join(sorted(ok["machine"].unique()))
        notes.append(f"The cells come from {ok['machine'].nunique()} machines ({names}"
                     "): each has its own fronts; costs compare within a machine, and across machines only in the "
                     "machine-vs-machine table.")
    legacy = ok["machine"].astype(str).str.startswith("unfingerprinted") if "machine" in ok else pd.Series(False)
    if legacy.any():
        notes.append(f"{int(legacy.sum())} cell(s) were recorded before machines were fingerprinted: their machine is "
                     "known only by CPU model and core count.")
    if df.attrs.get("superseded"):
        notes.append(f"{df.attrs['superseded']} cell(s) stored at a smaller N are not shown: the same cells extended "
                     "to more seeds are.")
    bad = df[df["status"] != "ok"] if "status" in df else df.iloc[0:0]
    for status, rows in bad.groupby("status"):
        notes.append(f"{len(rows)} cell(s) {status}: " + "; ".join(
            f"{r['technique']} steps={r.get('steps')}: {first_line(reason(r))}"
            for _, r in rows.iterrows()))
    stale = stale_rows(df, installed)
    if stale.any():
        names = sorted(df.loc[stale, "technique"].unique())
        notes.append(f"{int(stale.sum())} cell(s) were recorded with an older version of {', '.join(names)} than "
                     "the one installed (marked stale in the table); rerun them to refresh.")
    commits = df.get("prov_git_commit", pd.Series(dtype=object)).dropna().astype(str)
    if commits.str.endswith("+dirty").any():
        notes.append("Some cells were produced from a checkout with uncommitted changes (commit marked +dirty).")
    return notes


# the cost axes an acceleration is judged on against fewer steps (counted FLOPs, measured time)
ACCELERATION_AXES = (("flops_per_image", "MFLOPs / image", 1e-6), ("latency_per_image_ms", "ms / image", 1.0))

def machine_speedups(ok: pd.DataFrame) -> pd.DataFrame:
    """Every cell measured on more than one machine: its time on the machine that measured most cells (A) and on
    each other machine (B), and B's speedup over A with a 95% interval (bootstrap of each side's raw batch times)."""
    from bench import stats
    from bench.compare import label, match_key, raw_latencies

    columns = ["cell", "hardware", "machine A", "A ms / image", "machine B", "B ms / image", "speedup of B",
               "95% interval", "verdict"]
    if "machine" not in ok or ok["machine"].nunique() < 2:
        return pd.DataFrame(columns=columns)
    # A: the machine with the most cells; on a tie, the one that measured first
    order = ok.groupby("machine").agg(n=("spec_hash", "size"), first=("written_at", "min"))
    base = order.assign(neg=-order["n"]).sort_values(["neg", "first"]).index[0]
    hw = hardware_labels(ok.drop(columns="machine"))
    rows = []
    for _, group in ok.groupby(ok.apply(lambda r: match_key(r, ("machine",)), axis=1), sort=False):
        a_rows = group[group["machine"] == base]
        if a_rows.empty:
            continue
        a = a_rows.iloc[0]
        for _, b in group[group["machine"] != base].iterrows():
            la, lb = raw_latencies(a), raw_latencies(b)
            if not (la and lb):
                continue
            ratio, low, high = stats.median_ratio(la, lb)  # B's time over A's: the speedup is its inverse
            rows.append([label(a), hw[a.name], base, a["latency_per_image_ms"], b["machine"],
                         b["latency_per_image_ms"], 1 / ratio, f"[{1 / high:.2f}, {1 / low:.2f}]",
                         "faster" if high < 1 else "slower" if low > 1 else "undecided"])
    return pd.DataFrame(rows, columns=columns)

def roofline_groups(ok: pd.DataFrame) -> pd.DataFrame:
    """Per machine × device × dtype × threads: the measured ceilings and how much of the peak the cells reached."""
    if "achieved_flops_per_s" not in ok or ok["achieved_flops_per_s"].isna().all():
        return pd.DataFrame()
    rows = []
    for (machine, device, dtype, threads), g in ok[ok["achieved_flops_per_s"].notna()].groupby(
            ["machine", "device", "dtype", "threads"]):
        frac = g["fraction_of_peak"]
        rows.append({"machine": machine, "device": device, "dtype": dtype, "threads": threads,
                     "peak GFLOP/s": g["peak_flops_per_s"].iloc[0] / 1e9, "peak from": g["peak_source"].iloc[0],
                     "bandwidth GB/s": g["bandwidth_bytes_per_s"].iloc[0] / 1e9, "cells": len(g),
                     "median % of peak": 100 * frac.median(), "best % of peak": 100 * frac.max()})
    return pd.DataFrame(rows)
