"""The HTML report: quality-vs-cost Pareto fronts, every cell in a sortable table, sample grids from the same seeds,
technique sections, training cost, provenance and caveats, in one self-contained file; and the terminal summary.

It reads only results stores (so it works on stores copied from other machines, and on several merged). Cells are
selected by ``bench.frames``; here ``tables`` builds the DataFrames the page shows, ``figures`` the matplotlib
figures, ``sections`` the HTML of each section (every string from a store or a user escaped there), and ``page``
puts them into the Jinja2 template ``templates/page.html.j2`` (autoescaped) with ``static/`` inlined, so the file
opens offline.
"""

from bench.frames import DEFAULT_REFERENCE, PairedVerdicts, load_stores, ok_rows, pareto_front, parse_series, stale_rows
from bench.labels import hardware_labels, series_labels, varying_params
from bench.report.figures import figure_svg, front_figure
from bench.report.page import render, report_key, write
from bench.report.sections import cells_table, claims_section, technique_sections
from bench.report.summary import summary_table
from bench.report.tables import caveats, machine_speedups, roofline_groups, training_costs

__all__ = ["DEFAULT_REFERENCE", "PairedVerdicts", "caveats", "cells_table", "claims_section", "figure_svg",
           "front_figure", "hardware_labels", "load_stores", "machine_speedups", "ok_rows", "pareto_front",
           "parse_series", "render", "report_key", "roofline_groups", "series_labels", "stale_rows", "summary_table",
           "technique_sections", "training_costs", "varying_params", "write"]
