"""The report's matplotlib figures (Pareto fronts, trade-offs, roofline), embedded as SVG."""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

import pandas as pd

from bench.frames import PairedVerdicts, pareto_front
from bench.report.tables import COST_AXES, QUALITY_AXES


def figure_svg(fig: Any) -> str:
    """A matplotlib figure as inline SVG (no date stamp, so a report regenerates byte-identically)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]  # drop the XML prolog and doctype: invalid inside HTML

def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text as <text>, not glyph paths: a fifth of the size, and searchable
    return plt

# one colour family per technique, one marker per parameter setting within it
_FAMILIES = ("Blues", "Oranges", "Greens", "Purples", "Reds", "Greys", "YlOrBr", "PuRd", "BuGn", "GnBu")

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*", "p")

OUTLIER_FACTOR = 8.0  # a cell costing more than this × the 90th percentile is listed, not plotted (its axis)

def series_palette(labels: Iterable[str]) -> dict[str, tuple[Any, str]]:
    """Series label → (colour, marker): the technique (the label's first word) picks the colour family, the
    series' rank within its technique the shade and the marker, so 17 series stay tellable apart."""
    plt = pyplot()
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
    plt = pyplot()
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

def trade_off_figure(full: pd.DataFrame) -> str:
    plt = pyplot()
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

def roofline_figure(ok: pd.DataFrame, palette: dict[str, tuple[Any, str]]) -> Any:
    """Achieved FLOP/s of every cell against the work of one network call (batch × FLOPs per call, a proxy for
    arithmetic intensity at these sizes), one panel per machine × device × dtype × threads, the peak dashed."""
    plt = pyplot()
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
