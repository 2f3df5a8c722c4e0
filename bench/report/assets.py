"""The page's stylesheet and script, package data files inlined into every report (it opens offline)."""

from __future__ import annotations

from importlib import resources


def asset(name: str) -> str:
    """The text of ``bench/report/static/<name>``."""
    return resources.files("bench.report").joinpath("static", name).read_text(encoding="utf-8")
