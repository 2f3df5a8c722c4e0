"""A first HTML report from the results store: FID-vs-cost Pareto plots (frontier marked) and the cell table.

Reads only the store. Pareto selection is a pure DataFrame → DataFrame function; rendering is separate.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import pandas as pd

from bench import store
from bench.errors import UserError

HARDWARE = ["device", "dtype", "threads", "compile", "batch"]
COST_AXES = {
    "flops_per_image": "FLOPs per image (2×MACs)",
    "nfe": "NFE (denoiser calls per image)",
    "latency_per_image_ms": "latency per image (ms)",
    "energy_kwh_per_image": "energy per image (kWh, estimated where flagged)",
    "peak_rss_mib": "peak RSS (MiB)",
}
SUMMARY_COLUMNS = ["technique", "params", "steps", "nfe", "fid", "fid_ci_low", "fid_ci_high", "kid", "precision",
                   "recall", "latency_per_image_ms", "flops_per_image", "energy_kwh_per_image", "peak_rss_mib",
                   "n_generated"]


def pareto_front(df: pd.DataFrame, cost: str, quality: str = "fid", by: list[str] | None = None) -> pd.DataFrame:
    """``df`` with a boolean ``on_front`` column: no other row in its group is at most as costly and at most as bad
    (lower is better on both axes) while strictly better on one. Rows missing either value are never on the front."""
    out = df.copy()
    out["on_front"] = False
    valid = out[cost].notna() & out[quality].notna()
    groups = out[valid].groupby(by, dropna=False) if by else [(None, out[valid])]
    for _, group in groups:
        ordered = group.sort_values([cost, quality])
        best = float("inf")
        for idx, row in ordered.iterrows():
            if row[quality] < best:
                out.loc[idx, "on_front"] = True
                best = row[quality]
    return out


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"].copy() if "status" in df else df.iloc[0:0]


def summary_table(df: pd.DataFrame) -> str:
    """The terminal summary: one line per ok cell, quality and cost side by side, in readable units."""
    ok = ok_rows(df)
    if ok.empty:
        return "no successful cells"
    varying = _varying(ok)
    ok = ok.assign(label=ok.apply(_series_label, axis=1, varying=varying)).sort_values(["label", "steps"])
    hw = [h for h in HARDWARE if h in ok and ok[h].astype(str).nunique() > 1]
    table = pd.DataFrame({
        "technique": ok["label"], **{h: ok[h] for h in hw}, "steps": ok["steps"], "NFE": ok["nfe"],
        "FID [95% CI]": [f"{f:.2f} [{lo:.2f}, {hi:.2f}]" for f, lo, hi in
                         zip(ok["fid"], ok["fid_ci_low"], ok["fid_ci_high"], strict=True)],
        "KID": ok["kid"].map(lambda v: f"{v:.3g}"), "prec": ok["precision"].round(3), "rec": ok["recall"].round(3),
        "N": ok["n_generated"], "ms/img": ok["latency_per_image_ms"].round(3),
        "MFLOPs/img": (ok["flops_per_image"] / 1e6).round(1),
        "J/img": (ok["energy_kwh_per_image"] * 3.6e6).map(lambda v: f"{v:.3g}"),
        "RSS MiB": ok["peak_rss_mib"].round(0).astype(int),
    })
    return table.to_string(index=False)


def _short_params(params_json: str) -> str:
    import json

    return " ".join(f"{k}={v}" for k, v in json.loads(params_json).items())


def _series_label(row: pd.Series, varying: set[str] | None = None) -> str:
    """Technique name plus the parameters that vary within the plotted rows (all of them when not given)."""
    import json

    params = {k: v for k, v in json.loads(row["params"]).items() if varying is None or k in varying}
    return " ".join([str(row["technique"]), *(f"{k}={v}" for k, v in params.items())])


def _varying(df: pd.DataFrame) -> set[str]:
    cols = [c for c in df if c.startswith("param_")]
    return {c.removeprefix("param_") for c in cols if df[c].astype(str).nunique() > 1}


def _plot(df: pd.DataFrame, cost: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    marked = pareto_front(df, cost, by=[h for h in HARDWARE if h in df])
    varying = _varying(marked)
    for label, group in marked.groupby(marked.apply(_series_label, axis=1, varying=varying)):
        group = group.sort_values(cost)
        ax.plot(group[cost], group["fid"], marker="o", lw=1, alpha=0.8, label=label)
        for _, r in group.iterrows():
            ax.annotate(str(r["steps"]), (r[cost], r["fid"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_title(f"FID vs {COST_AXES[cost].split(' (')[0]} (labels: requested steps)", fontsize=9)
    front = marked[marked["on_front"]].sort_values(cost)
    ax.step(front[cost], front["fid"], where="post", color="black", lw=2, alpha=0.5, label="Pareto front")
    ax.scatter(front[cost], front["fid"], s=90, facecolors="none", edgecolors="black")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(COST_AXES[cost])
    ax.set_ylabel("FID (offline extractor; lower is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})  # reproducible output
    plt.close(fig)
    return buf.getvalue()


def render(df: pd.DataFrame, title: str, results_root: Path | None = None) -> str:
    ok = ok_rows(df)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
             ".plots{display:flex;flex-wrap:wrap;gap:1em}.warn{color:#a40}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    failed = df[df["status"] != "ok"] if "status" in df else df.iloc[0:0]
    if not failed.empty:
        parts.append(f"<p class='warn'>{len(failed)} cell(s) failed or were skipped:</p><ul>")
        parts += [f"<li>{html.escape(str(r['technique']))} steps={r['steps']}: "
                  f"{html.escape(str(r['error'] or r['reason']))}</li>" for _, r in failed.iterrows()]
        parts.append("</ul>")
    if not ok.empty:
        if ok.get("energy_estimated", pd.Series(dtype=bool)).fillna(False).any():
            parts.append("<p class='warn'>Energy is estimated by codecarbon (no RAPL/NVML counter).</p>")
        parts.append("<p class='warn'>FID uses an offline classifier's features: not comparable with published "
                     "Inception FID. Compare rows only at equal N.</p><h2>Quality vs cost</h2><div class='plots'>")
        parts += [f"<div>{_plot(ok, cost)}</div>" for cost in ("flops_per_image", "latency_per_image_ms", "nfe")
                  if ok[cost].notna().any()]
        parts.append("</div><h2>Samples</h2><div class='plots'>")
        for _, r in ok.sort_values(["technique", "params", "steps"]).iterrows():
            grid = _grid_img(r, results_root)
            if grid:
                parts.append(f"<figure>{grid}<figcaption>{html.escape(_series_label(r))} steps={r['steps']}"
                             f"</figcaption></figure>")
        parts.append("</div>")
    cols = [c for c in SUMMARY_COLUMNS + HARDWARE if c in df]
    parts.append("<h2>All cells</h2>" + df[cols + ["status"]].to_html(index=False, float_format=lambda v: f"{v:.4g}"))
    parts.append("</body></html>")
    return "\n".join(parts)


def _grid_img(row: pd.Series, results_root: Path | None) -> str:
    rel, store_dir = row.get("sample_grid"), row.get("store")
    if not isinstance(rel, str) or not isinstance(store_dir, str):
        return ""
    path = Path(store_dir) / rel
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img width='128' style='image-rendering:pixelated' src='data:image/png;base64,{data}'>"


def write(results: Path, out: Path, title: str | None = None) -> Path:
    """Render the store under ``results`` into the self-contained HTML file ``out``."""
    df = store.load(results)
    if df.empty:
        raise UserError(f"results store {results} holds no records: nothing to report")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(df, title or f"bench report: {results}", results))
    return out
