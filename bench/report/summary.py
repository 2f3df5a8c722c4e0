"""The terminal summary a sweep prints: every cell, and the verdicts against the reference series."""

from __future__ import annotations

import pandas as pd

from bench.frames import DEFAULT_REFERENCE, PairedVerdicts, cost_only, drop_superseded, ok_rows
from bench.labels import HARDWARE, series_labels, varying_params
from bench.report.format import interval
from bench.report.tables import cost_breakdown


def summary_table(df: pd.DataFrame, reference: str = DEFAULT_REFERENCE) -> str:
    """The terminal summary: one line per ok cell, quality and cost side by side, in readable units, with ΔFID
    against the reference series at equal NFE (paired 95% interval and verdict) where there is one."""
    ok = ok_rows(drop_superseded(df))
    alone = ok[cost_only(ok)]
    costs = "" if alone.empty else (
        "Costs by stage per image (no quality: " + "; ".join(sorted({str(r) for r in alone["quality_skipped"]}))
        + "):\n" + cost_breakdown(alone).drop(columns=["CLIP score"]).to_string(
            index=False, na_rep="", float_format=lambda v: f"{v:.4g}"))
    ok = ok[~cost_only(ok)]
    if ok.empty:
        return costs or "no successful cells"
    return "\n\n".join(part for part in (_quality_summary(ok, reference), costs) if part)

def _quality_summary(ok: pd.DataFrame, reference: str) -> str:
    against = PairedVerdicts(ok, reference).against_reference()
    ok = ok.assign(label=series_labels(ok, varying_params(ok))).sort_values(["label", "steps"])
    delta = [f"{interval(d, lo, hi)} {v}" if isinstance(v, str) else "" for d, lo, hi, v in zip(
        against.loc[ok.index, "fid_delta"], against.loc[ok.index, "fid_low"], against.loc[ok.index, "fid_high"],
        against.loc[ok.index, "fid_verdict"], strict=True)]
    hw = [h for h in HARDWARE if h in ok and ok[h].astype(str).nunique() > 1]
    table = pd.DataFrame({
        "technique": ok["label"], **{h: ok[h] for h in hw}, "steps": ok["steps"], "NFE": ok["nfe"],
        "FID [95% CI]": [f"{f:.2f} [{lo:.2f}, {hi:.2f}]" for f, lo, hi in
                         zip(ok["fid"], ok["fid_ci_low"], ok["fid_ci_high"], strict=True)],
        f"ΔFID vs {reference.split(' ', 1)[-1].split('=')[-1]} [95% paired]": delta,
        "KID": ok["kid"].map(lambda v: f"{v:.3g}"), "prec": ok["precision"].round(3), "rec": ok["recall"].round(3),
        "N": ok["n_generated"], "ms/img": ok["latency_per_image_ms"].round(3),
        "MFLOPs/img": (ok["flops_per_image"] / 1e6).round(1),
        "J/img": (ok["energy_kwh_per_image"] * 3.6e6).map(lambda v: f"{v:.3g}"),
        "RSS MiB": ok["peak_rss_mib"].round(0).astype(int),
    })
    suspect = ok.get("latency_suspect", pd.Series(index=ok.index, dtype=object))
    if suspect.notna().any():
        table["timing"] = ["SUSPECT" if isinstance(v, str) else "" for v in suspect]
        return table.to_string(index=False) + "\n\nSUSPECT timings (contended or unstable after re-measuring):\n" + \
            "\n".join(f"  {label} steps={steps}: {why}" for label, steps, why in
                      zip(ok["label"], ok["steps"], suspect, strict=True) if isinstance(why, str))
    return table.to_string(index=False)
