"""The page: every section in one self-contained HTML file, written atomically and re-rendered only when its inputs
change."""

from __future__ import annotations

import functools
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import jinja2
import pandas as pd
from markupsafe import Markup

from bench.errors import UserError
from bench.frames import DEFAULT_REFERENCE, PairedVerdicts, cost_only, load_stores, ok_rows, stale_rows
from bench.labels import hardware_labels, series_labels, varying_params
from bench.report.assets import asset
from bench.report.figures import OUTLIER_FACTOR, figure_svg, front_figure, roofline_figure, series_palette
from bench.report.format import esc
from bench.report.sections import (
    acceleration_section,
    cells_table,
    cost_only_section,
    guidance_section,
    provenance_block,
    sample_matrix,
    technique_sections,
)
from bench.report.tables import QUALITY_AXES, caveats, machine_speedups, roofline_groups, training_costs


class Section(NamedTuple):
    """One section of the page: its anchor, its heading (escaped by the template) and its HTML body."""

    id: str
    title: str
    html: Markup


@functools.cache
def _template() -> jinja2.Template:
    """The page template, every value it is given escaped unless marked ``Markup`` (bodies built and escaped by the
    section functions, the stylesheet)."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("bench.report", "templates"), autoescape=True,
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return env.get_template("page.html.j2")


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
    toc = [("fronts", "Pareto fronts"), ("cells", "All cells"), ("roofline", "Roofline"), ("samples", "Samples"),
           ("techniques", "Techniques"), *([("costs", "Costs by stage")] if not costs_alone.empty else []),
           ("training", "Training cost"), ("provenance", "Provenance")]
    sections: list[Section] = []
    parts: list[str] = []  # the open section's body: HTML, escaped where each piece was built

    def open_section(id_: str, heading: str) -> None:
        close_section()
        sections.append(Section(id_, heading, Markup("")))

    def close_section() -> None:
        if sections and parts:
            sections[-1] = sections[-1]._replace(html=Markup("\n".join(parts)))
        parts.clear()

    open_section("fronts", "Quality vs cost: Pareto fronts")
    parts.append("<p>Lower-left is better on every panel. A point "
                 "is ringed (on the front) when no other cell of the same hardware that is at most as costly is "
                 "<em>decidedly</em> better: one point dominates another only where their paired difference is "
                 "decided (paired bootstrap over the shared seeds and a resampled reference, 95% interval excluding "
                 "zero); cells without stored features fall back to point estimates. The line joins the "
                 "point-estimate front. ▲/▼: decidedly better/worse than the reference series "
                 f"({esc(reference)}) at equal NFE on the same hardware. Costs more than {OUTLIER_FACTOR:g}× the "
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
        palette = series_palette(ok["series"])
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
                             f"<details><summary>{esc(title_q)}</summary>{body}</details>")
        speedups = machine_speedups(ok)
        if not speedups.empty:
            open_section("machines", "Machine vs machine")
            parts.append("<p>The same cell (technique, parameters, steps, "
                         "hardware settings) timed on two machines: B's speedup over A (A = the machine with the "
                         "most cells), with a 95% interval from a bootstrap of each side's raw batch times.</p>" +
                         speedups.to_html(index=False, escape=True, float_format=lambda v: f"{v:.3g}"))
        ceilings = roofline_groups(ok)
        if not ceilings.empty:
            open_section("roofline", "Achieved FLOP/s against the machine's peak")
            parts.append("<p>Peak: the best of a "
                         "dense matmul and a 3×3 convolution through torch on that machine, device, dtype and thread "
                         "count (measured once per machine, cached); bandwidth: a large copy. Achieved: a cell's "
                         "counted FLOPs per image over its latency per image. Tiny networks at small batch are "
                         "bound by per-call overhead, far below the peak.</p>"
                         f"<div class='fig'>{figure_svg(roofline_figure(ok, palette))}</div>" +
                         ceilings.to_html(index=False, escape=True, float_format=lambda v: f"{v:.3g}"))
    open_section("cells", "All cells")
    parts.append("<p>ΔFID vs reference: this cell minus the reference series "
                 f"({esc(reference)}) at the same NFE and hardware, with its paired 95% interval and verdict "
                 "(better / worse / undecided); FID∞: FID extrapolated to infinitely many generated images from a "
                 "fit against 1/N (Chong &amp; Forsyth 2020). KID is in squared feature units of the extractor "
                 "(polynomial kernel), comparable only between rows of one extractor.</p>"
                 + cells_table(df, stale, against))
    if not costs_alone.empty:
        open_section("costs", "Costs by stage (cells without quality)")
        parts.append(cost_only_section(costs_alone))
    guided = guidance_section(ok, reference) if not ok.empty else ""
    if guided:
        open_section("guidance", "Guidance: quality against class accuracy")
        parts.append(guided)
    accelerated = acceleration_section(ok, reference) if not ok.empty else ""
    if accelerated:
        open_section("accelerations", "Accelerations against fewer steps")
        parts.append(accelerated)
    open_section("samples", "Samples")
    parts.append(sample_matrix(ok) if not ok.empty else "<p>None.</p>")
    open_section("techniques", "Technique sections")
    parts.append(technique_sections(df, against, reference))
    costs = training_costs(df)
    open_section("training", "Training cost")
    parts.append("<p>Every trained artifact the cells used, so techniques that "
                 "move cost from sampling into training are judged with that cost in view.</p>" +
                 (costs.to_html(index=False, escape=True, na_rep="") if not costs.empty else "<p>None recorded.</p>"))
    open_section("provenance", "Provenance")
    parts.append(provenance_block(df, sources))
    close_section()
    return _template().render(
        title=title, css=Markup(asset("report.css")), n_cells=len(df), counts=sorted(counts.items()),
        generated=f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}", toc=toc, caveats=caveats(df, installed),
        sections=sections)

def report_key(sources: Sequence[Path | str], title: str, pool_hardware: bool, reference: str,
               df: pd.DataFrame) -> str:
    """What a report depends on: every record file (name, size, mtime), the options, the harness's code and the
    installed versions of the techniques whose sections it draws. Equal keys render equal pages (bar the date)."""
    import hashlib

    from bench import registry

    files = sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for src in sources
                   for p in Path(src).rglob("records/*.json"))
    versions = registry.installed_versions(df["technique"].dropna().unique()) if "technique" in df else {}
    # the whole package and the page's templates, not this module alone: the numbers come from compare, stats and
    # the store too
    package = Path(__file__).resolve().parent.parent
    code = b"".join(p.read_bytes() for p in sorted(package.rglob("*")) if p.suffix in {".py", ".j2", ".css", ".js"})
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
