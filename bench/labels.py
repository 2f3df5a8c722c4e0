"""Readable labels for cells: their series (technique and the parameters that vary), hardware group and guidance.

Shared by every reader of a store (compare, the report, the terminal summary); pure functions of DataFrame rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pandas as pd

HARDWARE = ["machine", "device", "dtype", "threads", "compile", "batch"]
STAGE_LABELS = {"text_encoder": "text encoder", "denoiser": "denoiser", "decode": "VAE decode"}


def hardware_labels(df: pd.DataFrame) -> pd.Series:
    """One readable label per row for its hardware group, e.g. ``cpu · float32 · 2 threads · batch 100 · eager``,
    prefixed by the machine where the rows come from several."""
    several = "machine" in df and df["machine"].nunique() > 1

    def label(row: pd.Series) -> str:
        return ((f"{row.get('machine')} · " if several else "") +
                f"{row.get('device')} · {row.get('dtype')} · {row.get('threads')} threads · batch {row.get('batch')}"
                f" · {'compiled' if row.get('compile') is True else 'eager'}")

    return df.apply(label, axis=1) if len(df) else pd.Series(dtype=str)


def varying_params(df: pd.DataFrame) -> list[str]:
    """Parameters that take more than one value among ``df``'s rows of any one technique."""
    names: set[str] = set()
    for _, rows in df.groupby("technique"):
        names |= {c.removeprefix("param_") for c in rows if c.startswith("param_")
                  and rows[c].dropna().astype(str).nunique() > 1}
    return sorted(names)


def series_labels(df: pd.DataFrame, varying: Iterable[str] | None = None) -> pd.Series:
    """Technique name plus the parameters that vary (all parameters when ``varying`` is None): one plotted series."""
    keep = None if varying is None else set(varying)

    def label(row: pd.Series) -> str:
        params = json.loads(row["params"]) if isinstance(row.get("params"), str) else {}
        shown = [f"{k}={v}" for k, v in params.items() if keep is None or k in keep]
        return " ".join([str(row["technique"]), *shown, guidance_label(row.get("guidance"))]).strip()

    return df.apply(label, axis=1) if len(df) else pd.Series(dtype=str)


def guidance_label(guidance: Any) -> str:
    """A conditional cell's guidance in a few characters (w, guider unless cfg, interval unless the whole chain);
    empty for unconditional cells."""
    if not isinstance(guidance, dict):
        return ""
    text = f"w={guidance['scale']:g}"
    if guidance.get("guider", "cfg") != "cfg":
        text += f" {guidance['guider']}"
    if (guidance.get("start", 0.0), guidance.get("stop", 1.0)) != (0.0, 1.0):
        text += f" on [{guidance['start']:g}, {guidance['stop']:g})"
    return text
