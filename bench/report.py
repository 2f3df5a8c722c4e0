"""The HTML report: quality-vs-cost Pareto fronts, every cell in a sortable table, sample grids from the same seeds,
technique sections, training cost, provenance and caveats, in one self-contained file.

It reads only results stores (so it works on stores copied from other machines, and on several merged); data
selection is pure DataFrame → DataFrame functions, rendering is separate. Every string from a store or a user is
HTML-escaped on the way out.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import UserError
from bench.frames import (
    DEFAULT_REFERENCE,
    PairedVerdicts,
    cost_only,
    drop_superseded,
    in_series,
    load_stores,
    ok_rows,
    pareto_front,
    parse_series,
    stale_rows,
)
from bench.labels import HARDWARE, STAGE_LABELS, hardware_labels, series_labels, varying_params

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
        line["CLIP score"] = clip if pd.notna(clip) else f"skipped: {_first_line(row.get('clip_score_skipped'))}"
        lines.append(line)
    return pd.DataFrame(lines)


def cost_only_section(rows: pd.DataFrame) -> str:
    reasons = sorted({str(r) for r in rows["quality_skipped"]})
    return ("<p>These cells' model computes no quality: " + "; ".join(_esc(r) for r in reasons) + ". Their images "
            "are not results and appear in no front or verdict; their costs are. Per image and stage: the calls, "
            "the FLOPs that ran and their share, and the time: the text encoder's and the decode's networks timed "
            "alone at the cell's batch, the denoiser's the rest of the sampler call (its evaluations as they ran "
            "and the scheduler); the last column is the whole sampler call.</p>"
            + _html_table(cost_breakdown(rows).to_dict("records")))


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
            f"{r['technique']} steps={r.get('steps')}: {_first_line(_reason(r))}"
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


def _reason(row: pd.Series) -> Any:
    """A failed cell's error or a skipped cell's reason (the other is NaN in the DataFrame)."""
    return next((v for v in (row.get("error"), row.get("reason")) if not _is_missing(v)), None)


def _first_line(text: Any) -> str:
    return str(text).strip().splitlines()[0] if text else "no reason recorded"


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
    delta = [f"{_interval(d, lo, hi)} {v}" if isinstance(v, str) else "" for d, lo, hi, v in zip(
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


# -- rendering --------------------------------------------------------------------------------------------------------
def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def figure_svg(fig: Any) -> str:
    """A matplotlib figure as inline SVG (no date stamp, so a report regenerates byte-identically)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]  # drop the XML prolog and doctype: invalid inside HTML


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text as <text>, not glyph paths: a fifth of the size, and searchable
    return plt


# one colour family per technique, one marker per parameter setting within it
_FAMILIES = ("Blues", "Oranges", "Greens", "Purples", "Reds", "Greys", "YlOrBr", "PuRd", "BuGn", "GnBu")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*", "p")
OUTLIER_FACTOR = 8.0  # a cell costing more than this × the 90th percentile is listed, not plotted (its axis)


def _palette(labels: Iterable[str]) -> dict[str, tuple[Any, str]]:
    """Series label → (colour, marker): the technique (the label's first word) picks the colour family, the
    series' rank within its technique the shade and the marker, so 17 series stay tellable apart."""
    plt = _pyplot()
    by_technique: dict[str, list[str]] = {}
    for label in sorted(set(labels)):
        by_technique.setdefault(label.split(" ", 1)[0], []).append(label)
    out = {}
    for t, (_, members) in enumerate(sorted(by_technique.items())):
        cmap = plt.get_cmap(_FAMILIES[t % len(_FAMILIES)])
        for i, label in enumerate(members):
            shade = 0.9 if len(members) == 1 else 0.95 - 0.5 * i / (len(members) - 1)
            out[label] = (cmap(shade), _MARKERS[i % len(_MARKERS)])
    return out


def _outliers(values: pd.Series) -> pd.Series:
    """Costs so far above the rest that plotting them would squash every other point into a corner."""
    if len(values) < 4:
        return pd.Series(False, index=values.index)
    return values > OUTLIER_FACTOR * values.quantile(0.9)


def front_figure(group: pd.DataFrame, quality: str, palette: dict[str, tuple[Any, str]], title: str,
                 verdicts: PairedVerdicts | None = None, against: pd.DataFrame | None = None) -> Any:
    """One panel per cost axis: every cell as a point (colour family = technique, marker = parameters, number =
    steps), error bars where an interval exists, ▲/▼ where the cell is decidedly better/worse than the reference
    series at equal NFE, the decided Pareto front ringed and the point-estimate front joined."""
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    _plain = FuncFormatter(lambda v, _: f"{v:g}")
    group = group[group[quality].notna()]
    axes_cols = [c for c in COST_AXES if c in group and (group[c] > 0).any()]
    ncols = 3
    nrows = -(-(len(axes_cols) + 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    flat = list(axes.ravel())
    label_q, lo_col, hi_col, sd_col = QUALITY_AXES[quality]
    better = (lambda q, p: verdicts.better(q, p, quality)) if verdicts is not None else None
    for ax, cost in zip(flat, axes_cols, strict=False):
        plotted = group[group[cost] > 0]  # log axes: a zero cost (an energy below the meter's resolution) can't show
        notes = []
        if len(plotted) < len(group[group[cost].notna()]):
            notes.append(f"{len(group[group[cost].notna()]) - len(plotted)} cell(s) at zero not shown")
        far = _outliers(plotted[cost])
        for _, r in plotted[far].iterrows():
            notes.append(f"off scale: {r['series']} {r['steps']} steps ({r[cost] * COST_AXES[cost][1]:.3g}, "
                         f"{quality.upper()} {r[quality]:.3g})")
        plotted = plotted[~far]
        if notes:
            ax.text(0.98, 0.98, "\n".join(notes), transform=ax.transAxes, ha="right", va="top", fontsize=6.5,
                    color="#a40")
        marked = pareto_front(plotted, cost, quality, better=better)
        scale = COST_AXES[cost][1]
        marked["_x"] = marked[cost] * scale
        for label, rows in marked.groupby("series"):
            rows = rows.sort_values(cost)
            color, marker = palette[label]
            yerr = None
            if lo_col and rows[lo_col].notna().all():
                yerr = [(rows[quality] - rows[lo_col]).clip(lower=0), (rows[hi_col] - rows[quality]).clip(lower=0)]
            elif sd_col and sd_col in rows and rows[sd_col].notna().all():
                yerr = rows[sd_col]
            ax.errorbar(rows["_x"], rows[quality], yerr=yerr, color=color, marker=marker, ms=4.5, lw=1, alpha=0.9,
                        elinewidth=0.7, capsize=2, label=label, mec="#333", mew=0.3)
            for idx, r in rows.iterrows():
                ax.annotate(str(r["steps"]), (r["_x"], r[quality]), fontsize=6.5, color=color, xytext=(3, 2),
                            textcoords="offset points")
                verdict = against.loc[idx, f"{quality}_verdict"] if against is not None and idx in against.index \
                    else None
                if verdict in ("better", "worse"):
                    ax.annotate("▲" if verdict == "better" else "▼", (r["_x"], r[quality]), fontsize=7,
                                color="#1a7f1a" if verdict == "better" else "#c0261a", xytext=(-10, -3),
                                textcoords="offset points", fontweight="bold")
        line = marked[marked["on_point_front"]].sort_values(cost)
        ax.step(line["_x"], line[quality], where="post", color="black", lw=1.4, alpha=0.45, zorder=0)
        front = marked[marked["on_front"]]
        ax.scatter(front["_x"], front[quality], s=70, facecolors="none", edgecolors="black", lw=1.1, zorder=3)
        if cost != "peak_rss_mib":  # memory spans a few percent: a log axis would only crowd its labels
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(_plain)
            ax.xaxis.set_minor_formatter(NullFormatter())
        if quality == "fid":
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
            ax.yaxis.set_major_formatter(_plain)
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(COST_AXES[cost][0], fontsize=9)
        ax.set_ylabel(label_q, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, which="both", alpha=0.25)
    legend_ax = flat[len(axes_cols)]
    handles, labels = flat[0].get_legend_handles_labels()
    legend_ax.axis("off")
    handles.append(Line2D([], [], color="black", lw=1.4, alpha=0.45))
    labels.append("point-estimate Pareto front")
    handles.append(Line2D([], [], lw=0, marker="o", mfc="none", mec="black", ms=8))
    labels.append("ringed: no cheaper cell decidedly better")
    if against is not None and verdicts is not None:
        handles += [Line2D([], [], lw=0, marker="^", color="#1a7f1a", ms=5),
                    Line2D([], [], lw=0, marker="v", color="#c0261a", ms=5)]
        labels += [f"decided better than {verdicts.reference} at equal NFE",
                   f"decided worse than {verdicts.reference} at equal NFE"]
    legend_ax.legend(handles, labels, loc="center", fontsize=7.5, frameon=False,
                     title="series (numbers next to points: steps)", title_fontsize=8)
    for ax in flat[len(axes_cols) + 1:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1500px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:12px}table.cells{font-size:11px}table.cells th{white-space:normal}
td,th{border:1px solid #ddd;padding:2px 6px}
td.n{text-align:right;font-variant-numeric:tabular-nums}td{white-space:nowrap}td.note{white-space:normal;min-width:9em}
td.v-better{background:#e3f4e3}td.v-worse{background:#fbe4e1}.decided li{margin:.15em 0}
table.cells th{cursor:pointer;background:#f4f4f4;position:sticky;top:0}
table.cells th[data-sort=asc]::after{content:" ▲"}table.cells th[data-sort=desc]::after{content:" ▼"}
tr.failed td,tr.skipped td{background:#fff1ee}tr.stale td{color:#888}
.warn{background:#fff8e6;border-left:4px solid #e0a000;padding:.5em 1em}.warn li{margin:.3em 0}
.fig svg{max-width:100%;height:auto}.samples td{text-align:center;vertical-align:top;font-size:11px}
.samples img{width:104px;height:104px;image-rendering:pixelated;display:block;margin:auto}
dl.prov{display:grid;grid-template-columns:max-content auto;gap:.2em 1em;font-size:13px}dl.prov dt{font-weight:600}
.toc a{margin-right:1em}
"""

_TABLE_JS = """
(function(){
  var table=document.getElementById('cell-table'),body=table.tBodies[0],filter=document.getElementById('filter'),
      count=document.getElementById('shown');
  function update(){var terms=filter.value.toLowerCase().split(/\\s+/).filter(Boolean),n=0;
    Array.prototype.forEach.call(body.rows,function(r){var t=r.textContent.toLowerCase();
      Array.prototype.forEach.call(r.querySelectorAll('[title]'),function(e){t+=' '+e.title.toLowerCase();});
      var show=terms.every(function(w){return t.indexOf(w)>=0});r.style.display=show?'':'none';if(show)n++;});
    count.textContent=n+' of '+body.rows.length+' cells shown';}
  Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){th.addEventListener('click',function(){
    var asc=th.getAttribute('data-sort')!=='asc';
    Array.prototype.forEach.call(table.tHead.rows[0].cells,function(h){h.removeAttribute('data-sort')});
    th.setAttribute('data-sort',asc?'asc':'desc');
    var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){var x=a.cells[i].getAttribute('data-v'),y=b.cells[i].getAttribute('data-v');
      if(x===''||y===''){return x===y?0:(x===''?1:-1);}
      var nx=Number(x),ny=Number(y),c=(isNaN(nx)||isNaN(ny))?x.localeCompare(y):nx-ny;return asc?c:-c;});
    rows.forEach(function(r){body.appendChild(r)});});});
  filter.addEventListener('input',update);update();
})();
"""

# table column → (header, formatter for display, column whose raw value sorts it (None: itself))
_CELL_COLUMNS: list[tuple[str, str, Any, str | None]] = [
    ("technique", "technique", str, None),
    ("params_short", "settings", str, None),
    ("steps", "steps", str, None),
    ("nfe", "NFE", lambda v: f"{v:g}", None),
    ("fid", "FID", lambda v: f"{v:.2f}", None),
    ("fid_ci", "FID 95% CI", str, "fid_ci_low"),
    ("dfid", "ΔFID vs reference [95% CI]", str, "fid_delta"),
    ("fid_verdict", "verdict", str, None),
    ("fid_inf", "FID∞", lambda v: f"{v:.2f}", None),
    ("kid", "KID (feat. units²)", lambda v: f"{v:.3g}", None),
    ("precision", "precision", lambda v: f"{v:.3f}", None),
    ("recall", "recall", lambda v: f"{v:.3f}", None),
    ("class_accuracy_ci", "class accuracy [95% CI]", str, "class_accuracy"),
    ("n_generated", "N", lambda v: f"{v:g}", None),
    ("latency_ms", "ms / image ± MAD", str, "latency_per_image_ms"),
    ("denoiser_call_median_ms", "ms / call (batch)", lambda v: f"{v:.2f}", None),
    ("flops_per_image", "MFLOPs / image", lambda v: f"{v / 1e6:,.1f}", None),
    ("flops_denoiser", "of which denoiser", lambda v: f"{v / 1e6:,.1f}", None),
    ("flops_decode", "of which decode", lambda v: f"{v / 1e6:,.1f}", None),
    ("decode_ms_per_image", "decode ms / image", lambda v: f"{v:.3f}", None),
    ("params_total", "network parameters", lambda v: f"{v:,.0f}", None),
    ("energy_kwh_per_image", "J / image", lambda v: f"{v * 3.6e6:.3g}", None),
    ("peak_rss_mib", "peak RSS MiB", lambda v: f"{v:.0f}", None),
    ("fraction_of_peak", "% of peak FLOP/s", lambda v: f"{100 * v:.1f}", None),
    ("cuda_max_allocated_mib", "CUDA alloc MiB", lambda v: f"{v:.0f}", None),
    ("hardware", "hardware", str, None),
    ("status", "status", str, None),
    ("note", "error / note", str, None),
    ("spec_hash", "cell", lambda v: str(v)[:10], None),  # 10 characters: enough for `bench compare`
]


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _interval(delta: Any, low: Any, high: Any, digits: str = ".2f") -> str | None:
    if any(_is_missing(v) for v in (delta, low, high)):
        return None
    return f"{delta:+{digits}} [{low:+{digits}}, {high:+{digits}}]"


def cells_table(df: pd.DataFrame, stale: pd.Series, against: pd.DataFrame | None = None) -> str:
    df = df.join(against) if against is not None else df
    view = df.assign(series=series_labels(df), hardware=df.apply(
        lambda r: f"{r.get('device')}/{r.get('dtype')}/{r.get('threads')}t/b{r.get('batch')}"
                  f"{'/compiled' if r.get('compile') is True else ''}", axis=1),
        # only the parameters that vary within the store (all of them in the filter's hidden text and the tooltip)
        params_short=series_labels(df, varying_params(df)).map(lambda s: s.split(" ", 1)[1] if " " in s else "")
        if len(df) else pd.Series(dtype=str),
        params_full=df["params"].map(lambda p: " ".join(f"{k}={v}" for k, v in json.loads(p).items())
                                     if isinstance(p, str) else ""))
    view["fid_ci"] = [f"[{lo:.2f}, {hi:.2f}]" if not (_is_missing(lo) or _is_missing(hi)) else None
                      for lo, hi in zip(view.get("fid_ci_low", [None] * len(view)),
                                        view.get("fid_ci_high", [None] * len(view)), strict=True)]
    if "flops_per_image_by_stage" in view:  # latent models: the decode's share (pixel cells leave these empty)
        stages = view["flops_per_image_by_stage"].map(lambda d: d if isinstance(d, dict) and "decode" in d else {})
        view["flops_denoiser"] = stages.map(lambda d: d.get("denoiser"))
        view["flops_decode"] = stages.map(lambda d: d.get("decode"))
    if "class_accuracy" in view:
        view["class_accuracy_ci"] = [
            None if _is_missing(a) else f"{a:.3f} [{lo:.3f}, {hi:.3f}]"
            for a, lo, hi in zip(view["class_accuracy"], view["class_accuracy_ci_low"], view["class_accuracy_ci_high"],
                                 strict=True)]
    if "fid_delta" in view:
        view["dfid"] = [_interval(d, lo, hi) for d, lo, hi in zip(view["fid_delta"], view["fid_low"],
                                                                   view["fid_high"], strict=True)]
    if "latency_per_image_ms" in view:
        mad = view.get("latency_per_image_mad_ms", pd.Series(index=view.index, dtype=float))
        view["latency_ms"] = [None if _is_missing(m) else f"{m:.3f}" + ("" if _is_missing(d) else f" ± {d:.3f}")
                              for m, d in zip(view["latency_per_image_ms"], mad, strict=True)]
    notes = []
    for idx, r in view.iterrows():
        note = _first_line(_reason(r)) if r["status"] != "ok" else ""
        if r["status"] == "ok" and isinstance(r.get("quality_reused_from"), str):
            note = f"quality reused from {r['quality_reused_from']}"
        if stale.get(idx, False):
            note = (note + "; " if note else "") + "stale: older technique version"
        if isinstance(r.get("latency_suspect"), str):
            note = (note + "; " if note else "") + f"⚠ suspect timing: {r['latency_suspect']}"
        notes.append(note or None)
    view["note"] = notes
    cols = [c for c in _CELL_COLUMNS if c[0] in view and view[c[0]].notna().any()]
    # a column every row shares says nothing row by row: it goes above the table (keeps it within the page)
    shared = {h: view[c].iloc[0] for c, h, _, _ in cols if c in ("hardware", "status") and view[c].nunique() == 1}
    cols = [c for c in cols if c[1] not in shared]
    head = "".join(f"<th>{_esc(h)}</th>" for _, h, _, _ in cols)
    body = []
    for idx, r in view.sort_values(["technique", "series", "steps"]).iterrows():
        cls = " ".join(filter(None, [str(r["status"]), "stale" if stale.get(idx, False) else ""]))
        tds = []
        for col, _, fmt, sort_col in cols:
            v = r.get(col)
            key = r.get(sort_col) if sort_col else v
            raw = "" if _is_missing(key) else (f"{key:.10g}" if isinstance(key, float) else str(key))
            shown = "" if _is_missing(v) else fmt(v)
            numeric = isinstance(key, (int, float)) and not isinstance(key, bool)
            klass = " ".join(filter(None, ["n" if numeric else "", f"v-{v}" if col == "fid_verdict" else "",
                                           "note" if col in ("note", "params_short") else ""]))
            title = f" title='{_esc(r['params_full'])}'" if col == "params_short" else ""
            tds.append(f"<td{f' class={chr(39)}{klass}{chr(39)}' if klass else ''}{title} data-v='{_esc(raw)}'>"
                       f"{_esc(shown)}</td>")
        body.append(f"<tr class='{_esc(cls)}'>{''.join(tds)}</tr>")
    common = "".join(f" · {_esc(h)}: {_esc(v)} (every cell)" for h, v in shared.items())
    return (f"<p><input id='filter' size='50' placeholder='filter: words that must all appear, e.g. ddim 10'> "
            f"<span id='shown'></span> · click a header to sort{common}</p>"
            f"<div style='overflow-x:auto'><table id='cell-table' class='cells'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div><script>{_TABLE_JS}</script>")


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{_esc(alt)}' src='data:image/png;base64,{data}'>"


def sample_matrix(ok: pd.DataFrame) -> str:
    """Rows: series (and dtype/device where they vary); columns: steps. Every grid shows the same seeds."""
    ok = ok.assign(series=series_labels(ok, varying_params(ok)))
    image_keys = [c for c in ("device", "dtype") if c in ok and ok[c].astype(str).nunique() > 1]
    ok["row"] = ok["series"] + ok.apply(lambda r: "".join(f" · {r[c]}" for c in image_keys), axis=1)
    steps = sorted(ok["steps"].unique())
    seeds = sorted(ok["seed"].unique()) if "seed" in ok else [0]
    out = [f"<p>Each grid: the first {SAMPLE_SEEDS_PER_GRID} of the images the quality numbers were computed on, "
           f"seeds {', '.join(f'{s}–{s + SAMPLE_SEEDS_PER_GRID - 1}' for s in seeds)} in every cell, so a column "
           "compares techniques on the same initial noise.</p><div style='overflow-x:auto'><table class='samples'>"
           "<tr><th></th>" + "".join(f"<th>{_esc(s)} steps</th>" for s in steps) + "</tr>"]
    for row_label, rows in sorted(ok.groupby("row"), key=lambda kv: kv[0]):
        cells = []
        for s in steps:
            match = rows[rows["steps"] == s]
            path = next((p for p in (_grid_path(r) for _, r in match.iterrows()) if p is not None), None)
            if path is None:
                cells.append("<td></td>")
                continue
            r = match.iloc[0]
            cells.append(f"<td>{_img(path, f'{row_label}, {s} steps')}FID {r['fid']:.1f} · NFE {r['nfe']}</td>")
        out.append(f"<tr><th>{_esc(row_label)}</th>{''.join(cells)}</tr>")
    return "".join(out) + "</table></div>"


def _grid_path(row: pd.Series) -> Path | None:
    rel, root = row.get("sample_grid"), row.get("store")
    if not isinstance(rel, str) or not isinstance(root, str):
        return None
    path = Path(root) / rel
    return path if path.is_file() else None


def decided_list(rows: pd.DataFrame, against: pd.DataFrame, reference: str) -> str:
    """What is decided for one technique's cells against the reference series at equal NFE (paired 95%)."""
    rows = rows.join(against[["fid_ref", "fid_delta", "fid_low", "fid_high", "fid_verdict"]], how="inner")
    rows = rows[rows["fid_verdict"].notna()]
    if rows.empty:
        return ""
    rows = rows.assign(label=series_labels(rows, varying_params(rows))).sort_values(["label", "nfe"])
    items, undecided = [], []
    for _, r in rows.iterrows():
        what = f"{r['label']} at {r['nfe']:g} NFE"
        if r["fid_verdict"] in ("better", "worse"):
            items.append(f"<li><strong>{_esc(what)}: {_esc(r['fid_verdict'])}</strong> — FID {r['fid']:.2f} vs "
                         f"{r['fid_ref']:.2f}, Δ {_esc(_interval(r['fid_delta'], r['fid_low'], r['fid_high']))}</li>")
        else:
            undecided.append(f"{what} (Δ {r['fid_delta']:+.2f} [{r['fid_low']:+.2f}, {r['fid_high']:+.2f}])")
    if undecided:
        items.append(f"<li>undecided: {_esc('; '.join(undecided))}</li>")
    return (f"<div class='decided'><p><strong>What is decided</strong> against {_esc(reference)} at equal NFE "
            f"(FID, paired bootstrap over shared seeds and reference, 95%):</p><ul>{''.join(items)}</ul></div>")


def technique_sections(df: pd.DataFrame, against: pd.DataFrame | None = None,
                       reference: str = DEFAULT_REFERENCE) -> str:
    from bench import registry

    out = []
    for name, rows in ok_rows(df).groupby("technique"):
        listed = decided_list(rows, against, reference) if against is not None else ""
        if listed:
            out.append(f"<h3>{_esc(name)}: what is decided</h3>{listed}")
        try:
            technique = registry.get(str(name))
        except UserError:
            out.append(f"<p class='warn'>Technique {_esc(name)} is not installed here: its own section is "
                       "omitted (its cells are in the fronts and the table).</p>")
            continue
        try:
            sections = technique.report_sections(rows.copy())
        except Exception as exc:  # a plugin's section must not sink the report
            out.append(f"<p class='warn'>The {_esc(name)} section failed: {_esc(_first_line(exc))}</p>")
            continue
        for section in sections:
            out.append(f"<h3>{_esc(name)}: {_esc(section.title)}</h3>")
            out += [f"<p>{_esc(par)}</p>" for par in section.text.split("\n\n") if par.strip()]
            out += [f"<div class='fig'>{figure_svg(fig)}</div>" for fig in section.figures]
            out += [t.to_html(index=False, escape=True, na_rep="", float_format=lambda v: f"{v:.4g}")
                    for t in section.tables]
        out.append(claims_section(str(name), rows))
    return "\n".join(out) or "<p>No technique contributed a section.</p>"


def guidance_section(ok: pd.DataFrame, reference: str = DEFAULT_REFERENCE) -> str:
    """For class-conditional cells: FID against class accuracy as the guidance scale grows (one panel per step count,
    one curve per series: Ho & Salimans' trade-off), each cell guided on part of the chain against full guidance at
    the same scale and steps, and each cell guided by its network's own w input (a guidance-distilled student)
    against the reference series guided at the same w, at equal steps, at equal NFE and at equal quality."""
    from bench.compare import Comparer

    if "guidance" not in ok or "class_accuracy" not in ok:
        return ""
    rows = ok[ok["guidance"].map(lambda g: isinstance(g, dict)) & ok["class_accuracy"].notna()]
    if rows.empty:
        return ""
    g = pd.DataFrame(list(rows["guidance"]), index=rows.index)
    rows = rows.assign(w=g["scale"], guider=g["guider"], start=g["start"], stop=g["stop"],
                       family=series_labels(rows, varying_params(rows)).map(lambda t: t.split(" w=")[0]))
    full = rows[(rows["start"] == 0.0) & (rows["stop"] == 1.0)]
    out = ["<p>Each image is of class seed mod 10 (class-balanced, paired seed by seed); w = 1 is unguided (one "
           "network evaluation per step), every other w evaluates the network on the label and on the null class, "
           "except in a guidance-distilled network, which takes w as an input (one evaluation). Class accuracy: the "
           "fraction of images the offline classifier assigns the requested class, with Wilson's 95% interval; FID "
           "with its bootstrap interval.</p>", f"<div class='fig'>{_trade_off_figure(full)}</div>"]
    comparer = Comparer()
    partial = rows[(rows["start"] != 0.0) | (rows["stop"] != 1.0)]
    lines = []
    for _, r in _distinct_cells(partial).iterrows():
        match = full[(full["family"] == r["family"]) & (full["guider"] == r["guider"]) & (full["w"] == r["w"])
                     & (full["steps"] == r["steps"]) & _same_hardware(full, r)]
        paired = _paired(comparer, match, r)
        if paired is not None:
            base, d = paired
            lines.append({"series": r["family"], "steps": r["steps"], "w": r["w"],
                          "interval": f"[{r['start']:g}, {r['stop']:g})", "NFE": r["nfe"], "NFE full": base["nfe"],
                          "NFE saved": f"{1 - r['nfe'] / base['nfe']:.0%}", "FID": r["fid"], "FID full": base["fid"],
                          **_paired_columns(d)})
    if lines:
        out.append("<p>Guidance on part of the chain (the guider's start/stop, fractions of the steps) against "
                   "full guidance at the same w and steps: Δ = interval − full, paired over the same seeds.</p>"
                   + _html_table(lines))
    lines = _embedded_guidance_lines(comparer, full, reference)
    if lines:
        out.append("<p>Guidance-distilled networks (w is their input: one evaluation per step) against the reference "
                   f"series ({_esc(reference)}) guided at the same w: at equal steps (the teacher spends twice the "
                   "NFE), at equal NFE (the teacher at half the steps), and the cheapest reference cell at any w "
                   "whose FID is at least as good (equal quality). Δ = student − reference, paired.</p>"
                   + _html_table(lines))
    return "\n".join(out)


# the cost axes an acceleration is judged on against fewer steps (counted FLOPs, measured time)
ACCELERATION_AXES = (("flops_per_image", "MFLOPs / image", 1e-6), ("latency_per_image_ms", "ms / image", 1.0))


def acceleration_section(ok: pd.DataFrame, reference: str = DEFAULT_REFERENCE) -> str:
    """The cells of every technique that declares itself an acceleration (``Technique.accelerates``: a cache,
    quantization) against simply taking fewer steps: per cost axis, the best cell of the reference technique (any
    sampler, same guidance and hardware) whose cost is at most the accelerated cell's, with the paired ΔFID and its
    verdict — dominated by fewer steps, ahead of them, or undecided."""
    from bench import registry
    from bench.compare import Comparer

    def accelerates(name: Any) -> bool:
        try:
            return bool(registry.get(str(name)).accelerates)
        except UserError:  # a technique not installed here
            return False

    flags = {name: accelerates(name) for name in ok["technique"].dropna().unique()}
    cached = ok[ok["technique"].map(flags).fillna(False).astype(bool)]
    technique = parse_series(reference)[0]
    plain = ok[ok["technique"] == technique]
    if cached.empty or plain.empty:
        return ""
    def guidance(rows: pd.DataFrame) -> pd.Series:
        return (rows["guidance"].map(lambda g: json.dumps(g, sort_keys=True, default=str)) if "guidance" in rows
                else pd.Series("", index=rows.index))

    plain_guidance, cached_guidance = guidance(plain), guidance(cached)
    comparer, lines = Comparer(), []
    for idx, r in cached.sort_values(["series", "steps"]).iterrows():
        ran = r.get("flops_ran_fraction_by_network")
        skipped = 1 - sum(ran.values()) / len(ran) if isinstance(ran, dict) and ran else 0.0
        for column, label, scale in ACCELERATION_AXES:
            if pd.isna(r.get(column)):
                continue
            cheaper = plain[(plain_guidance == cached_guidance[idx]) & _same_hardware(plain, r)
                            & (plain[column] <= r[column])].sort_values("fid")
            paired = _paired(comparer, cheaper, r)
            line = {"cell": r["series"], "steps": r["steps"], "NFE": r["nfe"], "FLOPs skipped": f"{skipped:.0%}",
                    "cost axis": label, "cost": r[column] * scale, "FID": r["fid"]}
            if paired is None:
                lines.append({**line, "verdict": f"no {technique} cell at equal or lower cost"})
                continue
            base, d = paired
            verdict = {"worse": "dominated by fewer steps", "better": "ahead of fewer steps"}.get(
                d["fid"].verdict, "undecided")
            lines.append({**line, "best un-accelerated at ≤ cost": f"{base['series']} · {base['steps']} steps",
                          "its cost": base[column] * scale, "its FID": base["fid"],
                          "ΔFID [95% CI]": _interval(d["fid"].delta, d["fid"].low, d["fid"].high),
                          "verdict": verdict})
    table = pd.DataFrame(lines)
    counts = "; ".join(
        f"{label}: " + ", ".join(f"{n} {v}" for v, n in table[table["cost axis"] == label]["verdict"]
                                 .value_counts().items())
        for _, label, _ in ACCELERATION_AXES if (table["cost axis"] == label).any())
    return (f"<p>Each cell of an acceleration (a cache: FLOPs per image are those that ran, NFE still counts "
            f"network evaluations; quantization: the same FLOPs, its own time) against the best {_esc(technique)} "
            "cell — any sampler, any step count, same guidance and hardware — whose cost on that axis is at most its "
            "own: Δ = accelerated − un-accelerated, paired over the same seeds. Dominated: a cheaper un-accelerated "
            f"cell is decidedly better. {_esc(counts)}.</p>"
            + _html_table(lines))


def _trade_off_figure(full: pd.DataFrame) -> str:
    plt = _pyplot()
    counts = sorted(full["steps"].unique())
    cols = min(3, len(counts))
    fig, axes = plt.subplots((len(counts) + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.6 * (
        (len(counts) + cols - 1) // cols)), squeeze=False, sharex=True)
    for ax, steps in zip(axes.flat, counts, strict=False):
        for (family, guider), curve in full[full["steps"] == steps].groupby(["family", "guider"]):
            curve = curve.sort_values("w")
            ax.errorbar(curve["class_accuracy"], curve["fid"],
                        yerr=[curve["fid"] - curve["fid_ci_low"], curve["fid_ci_high"] - curve["fid"]],
                        xerr=[curve["class_accuracy"] - curve["class_accuracy_ci_low"],
                              curve["class_accuracy_ci_high"] - curve["class_accuracy"]],
                        marker="o", capsize=2, label=f"{family} {guider}")
            for _, r in curve.iterrows():
                ax.annotate(f"w={r['w']:g}", (r["class_accuracy"], r["fid"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=6)
        ax.set_title(f"{steps} step{'s' if steps != 1 else ''}", fontsize=9)
        ax.set_ylabel("FID (lower is better)", fontsize=8)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(counts):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("class accuracy (higher: more class-faithful)", fontsize=8)
    fig.suptitle("Guidance trade-off: FID against class accuracy as w grows")
    fig.tight_layout()
    svg = figure_svg(fig)
    plt.close(fig)
    return svg


def _same_hardware(rows: pd.DataFrame, row: pd.Series) -> pd.Series:
    return rows["hardware"] == row["hardware"] if "hardware" in rows else pd.Series(True, index=rows.index)


def _paired(comparer: Any, match: pd.DataFrame, row: pd.Series) -> tuple[pd.Series, dict[str, Any]] | None:
    """(the first matching cell that pairs with ``row``, Δ = row − it), or None where none does (scored against
    another copy of the reference features, say: the same cell measured on another machine may)."""
    for _, base in match.iterrows():
        try:
            return base, comparer.compare(base, row)
        except UserError:
            continue
    return None


def _distinct_cells(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment: the same cell measured on several machines has the same images and quality."""
    from bench.compare import match_key

    if rows.empty:
        return rows
    newest_first = rows.sort_values("written_at", ascending=False) if "written_at" in rows else rows
    keys = newest_first.apply(lambda r: match_key(r, ("machine",)), axis=1)
    return newest_first[~keys.duplicated()].sort_index()


def _paired_columns(d: dict[str, Any]) -> dict[str, Any]:
    acc = d.get("class_accuracy")
    return {"ΔFID [95% CI]": _interval(d["fid"].delta, d["fid"].low, d["fid"].high), "ΔFID verdict": d["fid"].verdict,
            "Δ class acc. [95% CI]": _interval(acc.delta, acc.low, acc.high, ".3f") if acc else None,
            "Δ acc. verdict": acc.verdict if acc else None}


def _html_table(lines: list[dict[str, Any]]) -> str:
    return pd.DataFrame(lines).to_html(index=False, escape=True, na_rep="", float_format=lambda v: f"{v:.4g}")


def _embedded_guidance_lines(comparer: Any, full: pd.DataFrame, reference: str) -> list[dict[str, Any]]:
    embedded = full[full["observations"].map(lambda o: "W" in str((o or {}).get("guidance_pattern", "")))]
    refs = full[in_series(full, reference)] if not embedded.empty else full.iloc[0:0]
    lines = []
    for _, r in _distinct_cells(embedded).sort_values(["family", "w", "steps"]).iterrows():
        same = refs[(refs["w"] == r["w"]) & (refs["guider"] == r["guider"]) & _same_hardware(refs, r)]
        good = refs[(refs["fid"] <= r["fid"]) & _same_hardware(refs, r)].sort_values(["nfe", "fid"])
        for against, match in (("equal steps", same[same["steps"] == r["steps"]]),
                               ("equal NFE", same[same["nfe"] == r["nfe"]]), ("equal quality", good)):
            paired = _paired(comparer, match, r)
            if paired is None:
                continue
            base, d = paired
            lines.append({"student": r["family"], "w": r["w"], "steps": r["steps"], "NFE": r["nfe"],
                          "FID": r["fid"], "against": against, "reference w": base["w"],
                          "reference steps": base["steps"], "reference NFE": base["nfe"], "reference FID": base["fid"],
                          "NFE ratio": round(r["nfe"] / base["nfe"], 3), **_paired_columns(d)})
    return lines


def claims_section(technique: str, rows: pd.DataFrame) -> str:
    """The technique's paper claims with their verdicts, judged on the stores beside this one (``bench.verdicts``)."""
    from bench import registry, verdicts

    if not registry.get(technique).claims:
        return ""
    stores = rows["store"].dropna() if "store" in rows else pd.Series(dtype=object)
    if stores.empty:
        return ""
    root = Path(str(stores.iloc[0])).parent
    try:
        table = verdicts.table(root, technique).drop(columns="technique")
    except Exception as exc:  # the verdicts must not sink the report
        return f"<p class='warn'>The {_esc(technique)} verdicts failed: {_esc(_first_line(exc))}</p>"
    return (f"<h3>{_esc(technique)}: the paper's claims and their verdicts</h3><p>Each claim tested with the "
            f"matched-budget recipe and with the paper's (or the nearest the budget allows), on the stores under "
            f"{_esc(root)}/; rules in bench/verdicts.py (quality: paired bootstrap ΔFID, 95%). "
            "<code>python -m bench verdicts</code> prints the same table.</p>"
            + table.to_html(index=False, escape=True, na_rep=""))


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


def roofline_figure(ok: pd.DataFrame, palette: dict[str, tuple[Any, str]]) -> Any:
    """Achieved FLOP/s of every cell against the work of one network call (batch × FLOPs per call, a proxy for
    arithmetic intensity at these sizes), one panel per machine × device × dtype × threads, the peak dashed."""
    plt = _pyplot()
    rows = ok[ok["achieved_flops_per_s"].notna() & (ok["flops_per_call"] > 0)]
    groups = list(rows.groupby(["machine", "device", "dtype", "threads"]))
    ncols = min(3, len(groups))
    nrows = -(-len(groups) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 3.6 * nrows), squeeze=False)
    for ax, ((machine, device, dtype, threads), g) in zip(axes.ravel(), groups, strict=False):
        for series, r in g.groupby("series"):
            color, marker = palette[series]
            ax.scatter(r["batch"] * r["flops_per_call"], r["achieved_flops_per_s"] / 1e9, color=color,
                       marker=marker, s=28, label=series, edgecolor="k", linewidth=0.3)
        peak = g["peak_flops_per_s"].iloc[0] / 1e9
        ax.axhline(peak, color="k", linestyle="--", linewidth=1)
        ax.text(0.02, 0.97, f"peak {peak:.0f} GFLOP/s ({g['peak_source'].iloc[0]})", transform=ax.transAxes,
                va="top", fontsize=7)
        ax.set(xscale="log", yscale="log", xlabel="FLOPs per network call (batch × per image)",
               ylabel="achieved GFLOP/s", title=f"{machine}\n{device} · {dtype} · {threads} threads")
        ax.title.set_fontsize(8)
        ax.set_ylim(top=peak * 2)
    for ax in list(axes.ravel())[len(groups):]:
        ax.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, -0.02 - 0.03 * (len(labels) // 4)))
    fig.tight_layout()
    return fig


def provenance_block(df: pd.DataFrame, sources: Sequence[Path | str]) -> str:
    def distinct(col: str) -> str:
        if col not in df:
            return "—"
        values = df[col].dropna().astype(str)
        counts = values.value_counts()
        return "; ".join(f"{v} ({n} cells)" if len(counts) > 1 else v for v, n in counts.items()) or "—"

    versions = [c for c in df if c.startswith("version_")]
    items = [
        ("results read", ", ".join(str(s) for s in sources)),
        ("git commit", distinct("prov_git_commit")),
        ("machines", distinct("machine")),
        ("device", distinct("prov_device_name")),
        ("CPU", f"{distinct('prov_cpu_model')} ({distinct('prov_cpu_count')} cores visible)"),
        ("platform", f"{distinct('prov_platform')}, Python {distinct('prov_python')}"),
        ("packages", ", ".join(f"{c.removeprefix('version_')} {distinct(c)}" for c in versions)),
        ("feature extractor", f"{distinct('extractor')} — {distinct('extractor_description')}"),
        ("extractor weights sha256", distinct("extractor_sha256")),
        ("N generated / N reference", f"{distinct('n_generated')} / {distinct('n_reference')}"),
        ("latency", "median and MAD over timed batches after a warm-up call at the real batch and step count; "
                    "device synchronised; first call reported apart"),
        ("peak memory", distinct("memory_method")),
        ("energy", distinct("energy_method")),
        ("FLOPs", distinct("flops_unit")),
    ]
    return "<dl class='prov'>" + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in items) + "</dl>"


def render(df: pd.DataFrame, title: str, sources: Sequence[Path | str] = (), pool_hardware: bool = False,
           reference: str = DEFAULT_REFERENCE) -> str:
    """The whole report as one HTML string."""
    from bench import registry

    installed = registry.installed_versions(df["technique"].dropna().unique())
    ok = ok_rows(df)
    costs_alone = ok[cost_only(ok)]
    ok = ok[~cost_only(ok)]
    stale = stale_rows(df, installed)
    verdicts = PairedVerdicts(ok, reference)
    against = verdicts.against_reference()
    counts = df["status"].value_counts().to_dict()
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"
             f"<meta name='viewport' content='width=device-width'><style>{_CSS}</style></head><body>",
             f"<h1>{_esc(title)}</h1>",
             f"<p>{len(df)} cells: " + ", ".join(f"{n} {_esc(s)}" for s, n in sorted(counts.items())) +
             f". Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by <code>python -m bench report</code>.</p>",
             "<p class='toc'><a href='#fronts'>Pareto fronts</a><a href='#cells'>All cells</a>"
             "<a href='#roofline'>Roofline</a><a href='#samples'>Samples</a><a href='#techniques'>Techniques</a>"
             + ("<a href='#costs'>Costs by stage</a>" if not costs_alone.empty else "") +
             "<a href='#training'>Training cost</a>"
             "<a href='#provenance'>Provenance</a></p>"]
    notes = caveats(df, installed)
    if notes:
        parts.append("<div class='warn'><strong>Caveats</strong><ul>" +
                     "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul></div>")
    parts.append("<h2 id='fronts'>Quality vs cost: Pareto fronts</h2><p>Lower-left is better on every panel. A point "
                 "is ringed (on the front) when no other cell of the same hardware that is at most as costly is "
                 "<em>decidedly</em> better: one point dominates another only where their paired difference is "
                 "decided (paired bootstrap over the shared seeds and a resampled reference, 95% interval excluding "
                 "zero); cells without stored features fall back to point estimates. The line joins the "
                 "point-estimate front. ▲/▼: decidedly better/worse than the reference series "
                 f"({_esc(reference)}) at equal NFE on the same hardware. Costs more than {OUTLIER_FACTOR:g}× the "
                 "90th percentile of a panel are listed on it rather than plotted. " +
                 ("Hardware groups are pooled into one front, as asked." if pool_hardware else
                  "Each hardware group has its own fronts: points from different hardware never share one.")
                 + "</p>")
    if ok.empty:
        parts.append("<p>No successful cells with quality to plot.</p>")
    else:
        palette_labels = series_labels(ok, varying_params(ok))
        ok = ok.assign(series=palette_labels, hardware=hardware_labels(ok))
        verdicts.ok = ok
        if pool_hardware and ok["hardware"].nunique() > 1:
            ok["series"] = ok["series"] + " @ " + ok["hardware"]
        palette = _palette(ok["series"])
        groups = [("all hardware", ok)] if pool_hardware else list(ok.groupby("hardware"))
        for quality in QUALITY_AXES:
            if quality not in ok or ok[quality].isna().all():
                continue
            for hw, group in groups:
                if group[quality].isna().all():
                    continue
                title_q = f"{quality.upper()} vs cost — {hw}"
                fig = front_figure(group, quality, palette, title_q, verdicts, against)
                body = f"<div class='fig'>{figure_svg(fig)}</div>"
                parts.append(body if quality == "fid" else
                             f"<details><summary>{_esc(title_q)}</summary>{body}</details>")
        speedups = machine_speedups(ok)
        if not speedups.empty:
            parts.append("<h2 id='machines'>Machine vs machine</h2><p>The same cell (technique, parameters, steps, "
                         "hardware settings) timed on two machines: B's speedup over A (A = the machine with the "
                         "most cells), with a 95% interval from a bootstrap of each side's raw batch times.</p>" +
                         speedups.to_html(index=False, escape=True, float_format=lambda v: f"{v:.3g}"))
        ceilings = roofline_groups(ok)
        if not ceilings.empty:
            parts.append("<h2 id='roofline'>Achieved FLOP/s against the machine's peak</h2><p>Peak: the best of a "
                         "dense matmul and a 3×3 convolution through torch on that machine, device, dtype and thread "
                         "count (measured once per machine, cached); bandwidth: a large copy. Achieved: a cell's "
                         "counted FLOPs per image over its latency per image. Tiny networks at small batch are "
                         "bound by per-call overhead, far below the peak.</p>"
                         f"<div class='fig'>{figure_svg(roofline_figure(ok, palette))}</div>" +
                         ceilings.to_html(index=False, escape=True, float_format=lambda v: f"{v:.3g}"))
    parts.append("<h2 id='cells'>All cells</h2><p>ΔFID vs reference: this cell minus the reference series "
                 f"({_esc(reference)}) at the same NFE and hardware, with its paired 95% interval and verdict "
                 "(better / worse / undecided); FID∞: FID extrapolated to infinitely many generated images from a "
                 "fit against 1/N (Chong &amp; Forsyth 2020). KID is in squared feature units of the extractor "
                 "(polynomial kernel), comparable only between rows of one extractor.</p>"
                 + cells_table(df, stale, against))
    if not costs_alone.empty:
        parts.append("<h2 id='costs'>Costs by stage (cells without quality)</h2>" + cost_only_section(costs_alone))
    guided = guidance_section(ok, reference) if not ok.empty else ""
    if guided:
        parts.append("<h2 id='guidance'>Guidance: quality against class accuracy</h2>" + guided)
    accelerated = acceleration_section(ok, reference) if not ok.empty else ""
    if accelerated:
        parts.append("<h2 id='accelerations'>Accelerations against fewer steps</h2>" + accelerated)
    parts.append("<h2 id='samples'>Samples</h2>" + (sample_matrix(ok) if not ok.empty else "<p>None.</p>"))
    parts.append("<h2 id='techniques'>Technique sections</h2>" + technique_sections(df, against, reference))
    costs = training_costs(df)
    parts.append("<h2 id='training'>Training cost</h2><p>Every trained artifact the cells used, so techniques that "
                 "move cost from sampling into training are judged with that cost in view.</p>" +
                 (costs.to_html(index=False, escape=True, na_rep="") if not costs.empty else "<p>None recorded.</p>"))
    parts.append("<h2 id='provenance'>Provenance</h2>" + provenance_block(df, sources))
    parts.append("</body></html>")
    return "\n".join(parts)


def report_key(sources: Sequence[Path | str], title: str, pool_hardware: bool, reference: str,
               df: pd.DataFrame) -> str:
    """What a report depends on: every record file (name, size, mtime), the options, the harness's code and the
    installed versions of the techniques whose sections it draws. Equal keys render equal pages (bar the date)."""
    import hashlib

    from bench import registry

    files = sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for src in sources
                   for p in Path(src).rglob("records/*.json"))
    versions = registry.installed_versions(df["technique"].dropna().unique()) if "technique" in df else {}
    # the whole package, not this file alone: the page's numbers come from compare, stats and the store too
    code = b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.rglob("*.py")))
    versions = {name: sorted(map(str, values)) for name, values in versions.items()}
    payload = json.dumps([files, title, pool_hardware, reference, sorted(versions.items())], default=str)
    return hashlib.sha256(code + payload.encode()).hexdigest()[:24]


def write(results: Path | Sequence[Path], out: Path, title: str | None = None, pool_hardware: bool = False,
          reference: str = DEFAULT_REFERENCE, skip_unchanged: bool = False) -> Path:
    """Render the stores under ``results`` into the self-contained HTML file ``out`` (written atomically). With
    ``skip_unchanged``, an ``out`` rendered from exactly these records, options and code is left as it is."""
    sources = [results] if isinstance(results, (str, Path)) else list(results)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        df = load_stores(sources)
    if df.empty:
        raise UserError(f"results store {', '.join(map(str, sources))} holds no records: nothing to report")
    title = title or f"bench report: {', '.join(map(str, sources))}"
    key = report_key(sources, title, pool_hardware, reference, df)
    stamp = f"<!-- bench-report-key {key} -->"
    if skip_unchanged and out.is_file():
        with open(out, encoding="utf-8", errors="replace") as f:
            if stamp in f.readline():
                return out
    page = stamp + "\n" + render(df, title, sources, pool_hardware, reference)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a report is for reading
        os.replace(tmp, out)
    except OSError as exc:
        raise UserError(f"cannot write the report to {out} ({exc.strerror})") from exc
    return out
