"""Formatting values for the page and the terminal: escaping, missing values, intervals, first lines."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)

def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)

def interval(delta: Any, low: Any, high: Any, digits: str = ".2f") -> str | None:
    if any(is_missing(v) for v in (delta, low, high)):
        return None
    return f"{delta:+{digits}} [{low:+{digits}}, {high:+{digits}}]"

def reason(row: pd.Series) -> Any:
    """A failed cell's error or a skipped cell's reason (the other is NaN in the DataFrame)."""
    return next((v for v in (row.get("error"), row.get("reason")) if not is_missing(v)), None)

def first_line(text: Any) -> str:
    return str(text).strip().splitlines()[0] if text else "no reason recorded"
