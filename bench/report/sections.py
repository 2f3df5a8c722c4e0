"""The report's HTML sections: the cells table, samples, technique, guidance and acceleration sections, claims and
provenance. Every string from a store is escaped here."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import UserError
from bench.frames import DEFAULT_REFERENCE, in_series, ok_rows, parse_series
from bench.labels import series_labels, varying_params
from bench.report.assets import asset
from bench.report.figures import figure_svg, trade_off_figure
from bench.report.format import esc, first_line, interval, is_missing, reason
from bench.report.tables import ACCELERATION_AXES, SAMPLE_SEEDS_PER_GRID, cost_breakdown


def cost_only_section(rows: pd.DataFrame) -> str:
    reasons = sorted({str(r) for r in rows["quality_skipped"]})
    return ("<p>These cells' model computes no quality: " + "; ".join(esc(r) for r in reasons) + ". Their images "
            "are not results and appear in no front or verdict; their costs are. Per image and stage: the calls, "
            "the FLOPs that ran and their share, and the time: the text encoder's and the decode's networks timed "
            "alone at the cell's batch, the denoiser's the rest of the sampler call (its evaluations as they ran "
            "and the scheduler); the last column is the whole sampler call.</p>"
            + html_table(cost_breakdown(rows).to_dict("records")))


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
    view["fid_ci"] = [f"[{lo:.2f}, {hi:.2f}]" if not (is_missing(lo) or is_missing(hi)) else None
                      for lo, hi in zip(view.get("fid_ci_low", [None] * len(view)),
                                        view.get("fid_ci_high", [None] * len(view)), strict=True)]
    if "flops_per_image_by_stage" in view:  # latent models: the decode's share (pixel cells leave these empty)
        stages = view["flops_per_image_by_stage"].map(lambda d: d if isinstance(d, dict) and "decode" in d else {})
        view["flops_denoiser"] = stages.map(lambda d: d.get("denoiser"))
        view["flops_decode"] = stages.map(lambda d: d.get("decode"))
    if "class_accuracy" in view:
        view["class_accuracy_ci"] = [
            None if is_missing(a) else f"{a:.3f} [{lo:.3f}, {hi:.3f}]"
            for a, lo, hi in zip(view["class_accuracy"], view["class_accuracy_ci_low"], view["class_accuracy_ci_high"],
                                 strict=True)]
    if "fid_delta" in view:
        view["dfid"] = [interval(d, lo, hi) for d, lo, hi in zip(view["fid_delta"], view["fid_low"],
                                                                   view["fid_high"], strict=True)]
    if "latency_per_image_ms" in view:
        mad = view.get("latency_per_image_mad_ms", pd.Series(index=view.index, dtype=float))
        view["latency_ms"] = [None if is_missing(m) else f"{m:.3f}" + ("" if is_missing(d) else f" ± {d:.3f}")
                              for m, d in zip(view["latency_per_image_ms"], mad, strict=True)]
    notes = []
    for idx, r in view.iterrows():
        note = first_line(reason(r)) if r["status"] != "ok" else ""
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
    head = "".join(f"<th>{esc(h)}</th>" for _, h, _, _ in cols)
    body = []
    for idx, r in view.sort_values(["technique", "series", "steps"]).iterrows():
        cls = " ".join(filter(None, [str(r["status"]), "stale" if stale.get(idx, False) else ""]))
        tds = []
        for col, _, fmt, sort_col in cols:
            v = r.get(col)
            key = r.get(sort_col) if sort_col else v
            raw = "" if is_missing(key) else (f"{key:.10g}" if isinstance(key, float) else str(key))
            shown = "" if is_missing(v) else fmt(v)
            numeric = isinstance(key, (int, float)) and not isinstance(key, bool)
            klass = " ".join(filter(None, ["n" if numeric else "", f"v-{v}" if col == "fid_verdict" else "",
                                           "note" if col in ("note", "params_short") else ""]))
            title = f" title='{esc(r['params_full'])}'" if col == "params_short" else ""
            tds.append(f"<td{f' class={chr(39)}{klass}{chr(39)}' if klass else ''}{title} data-v='{esc(raw)}'>"
                       f"{esc(shown)}</td>")
        body.append(f"<tr class='{esc(cls)}'>{''.join(tds)}</tr>")
    common = "".join(f" · {esc(h)}: {esc(v)} (every cell)" for h, v in shared.items())
    return (f"<p><input id='filter' size='50' placeholder='filter: words that must all appear, e.g. ddim 10'> "
            f"<span id='shown'></span> · click a header to sort{common}</p>"
            f"<div style='overflow-x:auto'><table id='cell-table' class='cells'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div><script>{asset('table.js')}</script>")

def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{esc(alt)}' src='data:image/png;base64,{data}'>"

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
           "<tr><th></th>" + "".join(f"<th>{esc(s)} steps</th>" for s in steps) + "</tr>"]
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
        out.append(f"<tr><th>{esc(row_label)}</th>{''.join(cells)}</tr>")
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
            items.append(f"<li><strong>{esc(what)}: {esc(r['fid_verdict'])}</strong> — FID {r['fid']:.2f} vs "
                         f"{r['fid_ref']:.2f}, Δ {esc(interval(r['fid_delta'], r['fid_low'], r['fid_high']))}</li>")
        else:
            undecided.append(f"{what} (Δ {r['fid_delta']:+.2f} [{r['fid_low']:+.2f}, {r['fid_high']:+.2f}])")
    if undecided:
        items.append(f"<li>undecided: {esc('; '.join(undecided))}</li>")
    return (f"<div class='decided'><p><strong>What is decided</strong> against {esc(reference)} at equal NFE "
            f"(FID, paired bootstrap over shared seeds and reference, 95%):</p><ul>{''.join(items)}</ul></div>")

def technique_sections(df: pd.DataFrame, against: pd.DataFrame | None = None,
                       reference: str = DEFAULT_REFERENCE) -> str:
    from bench import registry

    out = []
    for name, rows in ok_rows(df).groupby("technique"):
        listed = decided_list(rows, against, reference) if against is not None else ""
        if listed:
            out.append(f"<h3>{esc(name)}: what is decided</h3>{listed}")
        try:
            technique = registry.get(str(name))
        except UserError:
            out.append(f"<p class='warn'>Technique {esc(name)} is not installed here: its own section is "
                       "omitted (its cells are in the fronts and the table).</p>")
            continue
        try:
            sections = technique.report_sections(rows.copy())
        except Exception as exc:  # a plugin's section must not sink the report
            out.append(f"<p class='warn'>The {esc(name)} section failed: {esc(first_line(exc))}</p>")
            continue
        for section in sections:
            out.append(f"<h3>{esc(name)}: {esc(section.title)}</h3>")
            out += [f"<p>{esc(par)}</p>" for par in section.text.split("\n\n") if par.strip()]
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
           "with its bootstrap interval.</p>", f"<div class='fig'>{trade_off_figure(full)}</div>"]
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
                   + html_table(lines))
    lines = _embedded_guidance_lines(comparer, full, reference)
    if lines:
        out.append("<p>Guidance-distilled networks (w is their input: one evaluation per step) against the reference "
                   f"series ({esc(reference)}) guided at the same w: at equal steps (the teacher spends twice the "
                   "NFE), at equal NFE (the teacher at half the steps), and the cheapest reference cell at any w "
                   "whose FID is at least as good (equal quality). Δ = student − reference, paired.</p>"
                   + html_table(lines))
    return "\n".join(out)

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
                          "ΔFID [95% CI]": interval(d["fid"].delta, d["fid"].low, d["fid"].high),
                          "verdict": verdict})
    table = pd.DataFrame(lines)
    counts = "; ".join(
        f"{label}: " + ", ".join(f"{n} {v}" for v, n in table[table["cost axis"] == label]["verdict"]
                                 .value_counts().items())
        for _, label, _ in ACCELERATION_AXES if (table["cost axis"] == label).any())
    return (f"<p>Each cell of an acceleration (a cache: FLOPs per image are those that ran, NFE still counts "
            f"network evaluations; quantization: the same FLOPs, its own time) against the best {esc(technique)} "
            "cell — any sampler, any step count, same guidance and hardware — whose cost on that axis is at most its "
            "own: Δ = accelerated − un-accelerated, paired over the same seeds. Dominated: a cheaper un-accelerated "
            f"cell is decidedly better. {esc(counts)}.</p>"
            + html_table(lines))

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
    return {"ΔFID [95% CI]": interval(d["fid"].delta, d["fid"].low, d["fid"].high), "ΔFID verdict": d["fid"].verdict,
            "Δ class acc. [95% CI]": interval(acc.delta, acc.low, acc.high, ".3f") if acc else None,
            "Δ acc. verdict": acc.verdict if acc else None}

def html_table(lines: list[dict[str, Any]]) -> str:
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
        return f"<p class='warn'>The {esc(technique)} verdicts failed: {esc(first_line(exc))}</p>"
    return (f"<h3>{esc(technique)}: the paper's claims and their verdicts</h3><p>Each claim tested with the "
            f"matched-budget recipe and with the paper's (or the nearest the budget allows), on the stores under "
            f"{esc(root)}/; rules in bench/verdicts.py (quality: paired bootstrap ΔFID, 95%). "
            "<code>python -m bench verdicts</code> prints the same table.</p>"
            + table.to_html(index=False, escape=True, na_rep=""))

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
    return "<dl class='prov'>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>"
