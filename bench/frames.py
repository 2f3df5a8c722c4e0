"""Selecting cells from stores: pure DataFrame → DataFrame functions the report, compare and verdicts share.

Loading several stores into one frame (newest record per cell, smaller-N cells an extension supersedes hidden),
successful and cost-only rows, stale rows, Pareto fronts, a reference series and the paired verdicts against it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench import store
from bench.errors import UserError
from bench.labels import hardware_labels


def load_stores(paths: Sequence[Path | str], keep_superseded: bool = False) -> pd.DataFrame:
    """Every record under ``paths`` (stores or folders of stores) as one DataFrame with its ``stale`` column; a cell
    found in several stores keeps its newest record; cells extended to more seeds hide their smaller-N records unless
    ``keep_superseded``."""
    frames = [f for f in (store.load(p) for p in paths) if not f.empty]
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    df = df.sort_values("written_at", kind="stable").drop_duplicates("spec_hash", keep="last")
    return mark_stale(df if keep_superseded else drop_superseded(df)).reset_index(drop=True)


def drop_superseded(df: pd.DataFrame) -> pd.DataFrame:
    """Without the ok cells that another ok cell of the same images extends to more seeds (a study whose N grew):
    the larger N says everything the smaller one did. ``df.attrs['superseded']`` counts what was dropped."""
    if df.empty or "spec_hash" not in df or "status" not in df:
        return df
    from bench.compare import match_key

    keys = df.apply(lambda r: match_key(r, ("threads", "batch")), axis=1)
    n = pd.to_numeric(df.get("n_samples", pd.Series(index=df.index, dtype=float)), errors="coerce")
    ok = df["status"] == "ok"
    largest = n[ok].groupby(keys[ok]).max()
    superseded = ok & (n < keys.map(largest).fillna(-1))
    out = df[~superseded].copy()
    out.attrs["superseded"] = int(superseded.sum())
    return out


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"].copy() if "status" in df else df.iloc[0:0]


def cost_only(ok: pd.DataFrame) -> pd.Series:
    """Successful cells that carry no quality (a random-weight model's): their costs are results, their images
    not, so they are kept out of every quality front and verdict."""
    if "quality_skipped" not in ok:
        return pd.Series(False, index=ok.index)
    return ok["quality_skipped"].map(lambda v: isinstance(v, str) and bool(v))


def mark_stale(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a ``stale`` column: True where a row was recorded by another version of its technique than the
    installed one (``bench.registry.installed_versions``)."""
    from bench import registry

    if df.empty:
        return df
    installed = registry.installed_versions(df["technique"].dropna().unique()) if "technique" in df else {}
    return df.assign(stale=stale_rows(df, installed))


def stale_rows(df: pd.DataFrame, installed: dict[str, frozenset]) -> pd.Series:
    """True where a row was recorded by a technique version other than the installed one."""
    if "technique_version" not in df:
        return pd.Series(False, index=df.index)
    return pd.Series([store.is_stale(t, v, installed) for t, v in zip(df["technique"], df["technique_version"],
                                                                      strict=True)], index=df.index, dtype=bool)


def pareto_front(df: pd.DataFrame, cost: str, quality: str = "fid", by: list[str] | None = None,
                 better: Callable[[Any, Any], bool] | None = None) -> pd.DataFrame:
    """``df`` with a boolean ``on_front`` column: no other row in its group is at most as costly and at most as bad
    (lower is better on both axes) while strictly better on one. Rows missing either value are never on the front.

    With ``better(q, p)`` (row index q is *decidedly* better than row index p on quality, e.g. by a paired
    interval), a row leaves the front only when a row at most as costly is decidedly better: undecided differences
    never dominate. ``on_point_front`` keeps the point-estimate front either way."""
    out = df.copy()
    out["on_front"] = False
    out["on_point_front"] = False
    valid = out[cost].notna() & out[quality].notna()
    groups = out[valid].groupby(by, dropna=False) if by else [(None, out[valid])]
    for _, group in groups:
        ordered = group.sort_values([cost, quality])
        best = float("inf")
        for idx, row in ordered.iterrows():
            if row[quality] < best:
                out.loc[idx, "on_point_front"] = True
                best = row[quality]
        if better is None:
            out.loc[out.index.isin(ordered.index), "on_front"] = out.loc[ordered.index, "on_point_front"]
            continue
        costs, index = ordered[cost].to_numpy(), list(ordered.index)
        front = [not any(better(q, p) for q, c in zip(index, costs, strict=True) if c <= cp and q != p)
                 for p, cp in zip(index, costs, strict=True)]
        out.loc[index, "on_front"] = front
    return out


DEFAULT_REFERENCE = "step_reduction sampler=ddim"


def parse_series(text: str) -> tuple[str, dict[str, str]]:
    """``"step_reduction sampler=ddim"`` → ("step_reduction", {"sampler": "ddim"})."""
    words = text.split()
    if not words or any("=" not in w for w in words[1:]):
        raise UserError(f"reference series {text!r} is not 'TECHNIQUE [param=value ...]'")
    return words[0], dict(w.split("=", 1) for w in words[1:])


def in_series(df: pd.DataFrame, series: str) -> pd.Series:
    """Which rows belong to the series ``TECHNIQUE [param=value ...]``."""
    technique, params = parse_series(series)
    mask = df["technique"] == technique
    for key, value in params.items():
        col = f"param_{key}"
        mask &= df[col].astype(str).eq(value) if col in df else False
    return mask


class PairedVerdicts:
    """Paired verdicts for a report: every cell against the reference series at equal NFE on the same hardware, and
    decided dominance for the fronts. One :class:`bench.compare.Comparer` (its on-disk cache included) serves all."""

    def __init__(self, ok: pd.DataFrame, reference: str = DEFAULT_REFERENCE) -> None:
        from bench.compare import Comparer, comparable

        self.ok, self.reference = ok, reference
        self.comparer, self._comparable = Comparer(), comparable
        self._pairs: dict[tuple[Any, Any], dict[str, Any] | None] = {}
        self.in_reference = in_series(ok, reference) if not ok.empty else pd.Series(dtype=bool)

    def pair(self, ref_idx: Any, cand_idx: Any) -> dict[str, Any] | None:
        """Δ = candidate − reference (stats.Difference per metric), or None where the cells cannot be paired."""
        key = (ref_idx, cand_idx)
        if key not in self._pairs:
            a, b = self.ok.loc[ref_idx], self.ok.loc[cand_idx]
            self._pairs[key] = None if self._comparable(a, b) else self.comparer.compare(a, b)
        return self._pairs[key]

    def better(self, q: Any, p: Any, quality: str = "fid") -> bool:
        d = self.pair(p, q)
        if d is None:  # no features to pair: a point comparison, as before features were stored
            return bool(self.ok.loc[q, quality] < self.ok.loc[p, quality])
        return d[quality].verdict == "better"

    def reference_pairs(self) -> list[tuple[Any, Any]]:
        """(reference row, row) for every row outside the reference series that has a reference cell at its NFE on
        its hardware: the headline comparisons."""
        if self.ok.empty:
            return []
        hw = hardware_labels(self.ok)
        refs = self.ok[self.in_reference]
        pairs = []
        for idx, row in self.ok[~self.in_reference].iterrows():
            match = refs[(refs["nfe"] == row["nfe"]) & (hw[refs.index] == hw[idx])]
            if not match.empty:
                pairs.append((match.index[0], idx))
        return pairs

    def against_reference(self) -> pd.DataFrame:
        """Per ok row (same index): the reference cell at its NFE and hardware, and Δ with interval and verdict for
        each metric (NaN where there is no reference cell at that NFE or nothing to pair)."""
        cols = ["ref_cell"] + [f"{m}_{p}" for m in ("fid", "kid", "precision", "recall")
                               for p in ("ref", "delta", "low", "high", "verdict")]
        out = pd.DataFrame(index=self.ok.index, columns=cols, dtype=object)
        for ref_idx, idx in self.reference_pairs():
            d = self.pair(ref_idx, idx)
            if d is None:
                continue
            out.loc[idx, "ref_cell"] = self.ok.loc[ref_idx, "spec_hash"]
            for metric, diff in d.items():
                out.loc[idx, [f"{metric}_ref", f"{metric}_delta", f"{metric}_low", f"{metric}_high",
                              f"{metric}_verdict"]] = [diff.b, diff.delta, diff.low, diff.high, diff.verdict]
        return out
