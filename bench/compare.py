"""Verdicts between cells and between stores, from the per-image features and raw latency samples the store keeps.

One code path serves ``python -m bench compare``, the report's Δ columns and the public API:

- :class:`Comparer` pairs two cells over their shared seeds (row i of both feature files is seed i) and runs the
  paired bootstrap of ``bench.stats`` (the same seed draws and reference draws for both cells). Each cell's bootstrap
  vectors are computed once per (features, reference, seeds, draws) and cached on disk, so a report or a second
  comparison costs only the differences.
- :func:`compare_stores` matches the cells of two stores (same technique, params, steps and quality settings) and
  gives, per pair, the latency ratio (median of B over median of A, 95% interval from a bootstrap of each side's raw
  batch times: the runs are independent), the quality Δ (B − A) with its paired interval, and verdicts.
- :func:`check_thresholds` turns ``--fail-on slower:5%,fid:+1`` into failures, like asv's ``continuous`` and pyperf's
  ``compare_to``: a pair fails where the change is decided (its interval excludes no change) *and* larger than the
  threshold.

Orientation everywhere: Δ = candidate − reference (B − A), and the verdict says how the candidate fares.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import stats
from bench.errors import UserError
from bench.store import features_agree, load_features

DRAWS = 500  # bootstrap draws: the standard error of a 95% half-width is ≈ 3% at 500
HARDWARE_AXES = ("device", "dtype", "threads", "compile", "batch", "machine")


def _cache_dir() -> Path:
    from bench.measure.quality import cache_root

    return cache_root().parent / "paired"


def _entry(row: Any, which: str) -> dict[str, Any] | None:
    features = row.get("features") if hasattr(row, "get") else None
    if not isinstance(features, dict):
        return None
    entry = features.get(which)
    return entry if isinstance(entry, dict) else None


def comparable(a: Any, b: Any) -> str | None:
    """Why the two rows (store rows or records with a ``store`` column) cannot be paired, or None."""
    for name, row in (("A", a), ("B", b)):
        if _entry(row, "generated") is None or _entry(row, "reference") is None:
            return f"cell {name} ({row.get('spec_hash')}) has no stored features (recorded before features were kept)"
    if _entry(a, "reference")["sha256"] != _entry(b, "reference")["sha256"] and not _same_reference(a, b):
        return "the cells were scored against different reference features (reference set or extractor differ)"
    if a.get("extractor_sha256") != b.get("extractor_sha256"):
        return "the cells used different feature extractors"
    if _entry(a, "generated")["seeds"][0] != _entry(b, "generated")["seeds"][0]:
        return "the cells start at different seeds, so their images are not paired"
    return None


def _same_reference(a: Any, b: Any) -> bool:
    """Two copies of one reference set's features (computed on two machines): equal to float16 precision."""
    try:
        return features_agree(load_features(a["store"], _entry(a, "reference")),
                              load_features(b["store"], _entry(b, "reference")))
    except (UserError, KeyError, TypeError):
        return False


def _scored_against(row: Any, other: Any) -> Any:
    """``row`` with ``other``'s reference features (an absolute path), so both cells of a pair share one copy."""
    entry = _entry(other, "reference")
    entry = {**entry, "file": str((Path(other["store"]) / entry["file"]).resolve())}
    features = {**row["features"], "reference": entry}
    if isinstance(row, pd.Series):
        row = row.copy()
        row["features"] = features
        return row
    return {**row, "features": features}


@dataclass
class _Prepared:
    reference: stats.Reference
    ref_features: np.ndarray


class Comparer:
    """Paired comparisons between cells; keeps reference draws and per-cell bootstrap vectors between calls."""

    def __init__(self, draws: int = DRAWS, seed: int = 0, cache: bool = True) -> None:
        self.draws, self.seed, self.cache = draws, seed, cache
        self._refs: dict[tuple[str, int], _Prepared] = {}
        self._cells: dict[tuple[str, str, int], tuple[dict[str, np.ndarray], dict[str, float]]] = {}
        self._features: dict[str, np.ndarray] = {}

    def _load(self, row: Any, which: str) -> np.ndarray:
        entry = _entry(row, which)
        if entry["sha256"] not in self._features:
            self._features[entry["sha256"]] = load_features(row["store"], entry)
        return self._features[entry["sha256"]]

    def _reference(self, row: Any, n: int) -> _Prepared:
        key = (_entry(row, "reference")["sha256"], n)
        if key not in self._refs:
            ref = self._load(row, "reference")
            self._refs[key] = _Prepared(stats.Reference(ref, stats.Draws.make(n, len(ref), self.draws, self.seed)),
                                        ref)
        return self._refs[key]

    def _cell(self, row: Any, n: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        gen_sha, ref_sha = _entry(row, "generated")["sha256"], _entry(row, "reference")["sha256"]
        key = (gen_sha, ref_sha, n)
        if key in self._cells:
            return self._cells[key]
        digest = hashlib.sha256(json.dumps([gen_sha, ref_sha, n, self.draws, self.seed]).encode()).hexdigest()[:24]
        path = _cache_dir() / f"{digest}.npz"
        if self.cache and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    boot = {m: z[f"boot_{m}"] for m in stats.METRICS}
                    point = {m: float(z[f"point_{m}"]) for m in stats.METRICS}
                self._cells[key] = boot, point
                return boot, point
            except (OSError, ValueError, KeyError):
                pass  # a torn or foreign cache file: recompute
        gen = self._load(row, "generated")[:n]
        prepared = self._reference(row, n)
        boot = stats.bootstrap_metrics(gen, prepared.reference)
        point = stats.point_metrics(gen, prepared.ref_features)
        if self.cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.savez(buf, **{f"boot_{m}": v for m, v in boot.items()}, **{f"point_{m}": v for m, v in point.items()})
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(buf.getvalue())
            os.replace(tmp, path)
        self._cells[key] = boot, point
        return boot, point

    def compare(self, reference: Any, candidate: Any, n: int | None = None) -> dict[str, stats.Difference]:
        """Δ = candidate − reference for FID, KID (full-sample unbiased), precision and recall over the seeds both
        cells generated (or their first ``n``), each with its paired 95% interval and the candidate's verdict."""
        why = comparable(reference, candidate)
        if why:
            raise UserError(f"cannot compare {reference.get('spec_hash')} with {candidate.get('spec_hash')}: {why}")
        if _entry(reference, "reference")["sha256"] != _entry(candidate, "reference")["sha256"]:
            candidate = _scored_against(candidate, reference)
        common = min(_entry(reference, "generated")["shape"][0], _entry(candidate, "generated")["shape"][0])
        if n is not None and n > common:
            raise UserError(f"the cells share {common} seeds, fewer than the {n} asked for")
        n = n or common
        boot_r, point_r = self._cell(reference, n)
        boot_c, point_c = self._cell(candidate, n)
        same = _entry(reference, "generated")["sha256"] == _entry(candidate, "generated")["sha256"] and \
            _entry(reference, "generated")["shape"][0] == _entry(candidate, "generated")["shape"][0]
        out = stats.differences(point_c, point_r, boot_c, boot_r, n, same)
        bits = [class_correct(row) for row in (candidate, reference)]
        if all(b is not None and len(b) >= n for b in bits):  # class-conditional cells: their class accuracy too
            draws = self._reference(reference, n).reference.draws.gen_counts
            out["class_accuracy"] = stats.paired_proportion(bits[0][:n], bits[1][:n], draws)
        return out


def class_correct(row: Any) -> np.ndarray | None:
    """Per seed, 1 where the offline classifier found the class the image was asked for (conditional cells)."""
    entry = row.get("class_correct") if hasattr(row, "get") else None
    if not isinstance(entry, dict) or not isinstance(entry.get("bits"), str):
        return None
    return np.frombuffer(entry["bits"].encode(), dtype=np.uint8) - ord("0")


# -- finding cells --------------------------------------------------------------------------------------------------
def find_cell(df: pd.DataFrame, ident: str) -> pd.Series:
    """The one row whose spec hash starts with ``ident`` (at least 6 characters)."""
    if len(ident) < 6:
        raise UserError(f"cell {ident!r}: give at least 6 characters of its spec hash (the 'cell' column)")
    rows = df[df["spec_hash"].astype(str).str.startswith(ident)] if not df.empty else df
    if rows.empty:
        raise UserError(f"no cell {ident!r} in the stores read")
    if rows["spec_hash"].nunique() > 1:
        raise UserError(f"cell {ident!r} is ambiguous: {', '.join(sorted(rows['spec_hash'].unique()))}")
    row = rows.iloc[-1]
    if row["status"] != "ok":
        raise UserError(f"cell {row['spec_hash']} is {row['status']}: nothing to compare")
    return row


def match_key(row: Any, ignore: tuple[str, ...] = HARDWARE_AXES) -> str:
    """What two stores' cells must share to be the same experiment: technique, params, steps, model, quality
    settings — everything but the hardware axes and N (an extended cell pairs over its first seeds)."""
    keep = ("technique", "params", "steps", "dataset", "resolution", "model", "artifacts", "extractor",
            "reference_split", "reference_n", "seed", "guidance", "conditions", *HARDWARE_AXES)
    spec = {k: row.get(k) for k in keep if k not in ignore}
    for key in ("model", "artifacts", "guidance", "conditions"):
        spec[key] = json.dumps(_present(spec.get(key)), sort_keys=True, default=str)
    return json.dumps(spec, sort_keys=True, default=str)


def _present(value: Any) -> Any:
    """A DataFrame's missing value (NaN where a store has no such column entry) as None."""
    return value if isinstance(value, (dict, list, str)) else None


def label(row: Any) -> str:
    from bench.labels import guidance_label

    params = json.loads(row["params"]) if isinstance(row.get("params"), str) else {}
    shown = " ".join(f"{k}={v}" for k, v in params.items() if k not in ("eta", "timestep_spacing"))
    guided = guidance_label(row.get("guidance"))
    return f"{row['technique']} {shown} {guided} steps={row['steps']}".replace("  ", " ").replace("  ", " ")


def _hardware(row: Any) -> str:
    return f"{row.get('device')}/{row.get('dtype')}/{row.get('threads')}t/b{row.get('batch')}" + (
        "/compiled" if row.get("compile") is True else "") + f" @ {row.get('machine')}"


def raw_latencies(row: Any) -> list[float] | None:
    raw = row.get("raw")
    values = raw.get("latency_batch_s") if isinstance(raw, dict) else None
    return list(values) if values else None


def compare_cells(a: pd.Series, b: pd.Series, comparer: Comparer | None = None) -> dict[str, Any]:
    """Everything ``bench compare`` says about one pair: B's latency ratio over A (with interval) and B − A on
    quality (paired), each with a verdict."""
    comparer = comparer or Comparer()
    out: dict[str, Any] = {"cell": label(a), "a": a["spec_hash"], "b": b["spec_hash"], "hardware_a": _hardware(a),
                           "hardware_b": _hardware(b)}
    if a.get("flops_per_image") and b.get("flops_per_image"):  # counted FLOPs: exact, no interval needed
        out["flops_ratio"] = float(b["flops_per_image"]) / float(a["flops_per_image"])
    la, lb = raw_latencies(a), raw_latencies(b)
    if la and lb:
        ratio, low, high = stats.median_ratio(la, lb)
        out.update(latency_ratio=ratio, latency_low=low, latency_high=high,
                   latency_verdict="slower" if low > 1 else "faster" if high < 1 else "undecided")
    why = comparable(a, b)
    out["quality_note"] = why
    if why is None:
        for metric, d in comparer.compare(a, b).items():
            out.update({f"{metric}_a": d.b, f"{metric}_b": d.a, f"{metric}_delta": d.delta,
                        f"{metric}_low": d.low, f"{metric}_high": d.high, f"{metric}_verdict": d.verdict,
                        "n_paired": d.n})
    return out


MODEL_AXES = ("model", "artifacts")


def compare_stores(a: pd.DataFrame, b: pd.DataFrame, comparer: Comparer | None = None,
                   across_models: bool = False) -> pd.DataFrame:
    """One row per cell found in both stores (ok in both), in A's order; ``across_models`` pairs cells of different
    base models (a latent and a pixel model, say) that match on everything else."""
    comparer = comparer or Comparer()
    a, b = a[a["status"] == "ok"], b[b["status"] == "ok"]
    ignore = HARDWARE_AXES + (MODEL_AXES if across_models else ())
    rows = []
    by_key_b: dict[str, list[pd.Series]] = {}
    for _, row in b.iterrows():
        by_key_b.setdefault(match_key(row, ignore), []).append(row)
    for _, row in a.sort_values(["technique", "params", "steps"]).iterrows():
        candidates = by_key_b.get(match_key(row, ignore), [])
        if len(candidates) > 1:  # a hardware sweep in B: the cell with A's hardware
            candidates = [c for c in candidates if match_key(c, ignore[len(HARDWARE_AXES):])
                          == match_key(row, ignore[len(HARDWARE_AXES):])]
        if len(candidates) == 1:
            rows.append(compare_cells(row, candidates[0], comparer))
    return pd.DataFrame(rows)


# -- thresholds -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Threshold:
    metric: str  # "slower" or a quality metric
    amount: float  # latency: a fraction (0.05 = 5%); quality: an absolute change in the worse direction

    def describe(self) -> str:
        if self.metric == "slower":
            return f"slower by more than {self.amount:.0%}"
        sign = "+" if stats.LOWER_IS_BETTER[self.metric] else "-"
        return f"{self.metric} worse by more than {sign}{self.amount:g}"


def parse_thresholds(text: str) -> list[Threshold]:
    """``slower:5%,fid:+1,recall:-0.02`` → thresholds; one clear error for anything else."""
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = item.partition(":")
        name = name.strip().lower()
        try:
            if name == "slower":
                if not value.endswith("%"):
                    raise ValueError
                out.append(Threshold("slower", float(value[:-1]) / 100))
            elif name in stats.LOWER_IS_BETTER:
                amount = float(value)
                worse_sign = 1 if stats.LOWER_IS_BETTER[name] else -1
                if amount * worse_sign < 0:
                    raise ValueError
                out.append(Threshold(name, abs(amount)))
            else:
                raise ValueError
        except ValueError:
            raise UserError(f"--fail-on: {item!r} is not slower:N% or fid:+X, kid:+X, precision:-X, recall:-X "
                            "(the sign is the worse direction)") from None
    return out


def check_thresholds(table: pd.DataFrame, thresholds: list[Threshold]) -> list[str]:
    """One line per (cell, threshold) that B breaks: decided worse and by more than the threshold."""
    failures = []
    for _, row in table.iterrows():
        for t in thresholds:
            if t.metric == "slower":
                if row.get("latency_verdict") == "slower" and row["latency_ratio"] > 1 + t.amount:
                    failures.append(f"{row['cell']}: {row['latency_ratio']:.3f}× the time "
                                    f"[{row['latency_low']:.3f}, {row['latency_high']:.3f}] ({t.describe()})")
            elif row.get(f"{t.metric}_verdict") == "worse" and abs(row[f"{t.metric}_delta"]) > t.amount:
                failures.append(f"{row['cell']}: Δ{t.metric} {row[f'{t.metric}_delta']:+.4g} "
                                f"[{row[f'{t.metric}_low']:+.4g}, {row[f'{t.metric}_high']:+.4g}] ({t.describe()})")
    return failures


# -- rendering ------------------------------------------------------------------------------------------------------
def _fmt_delta(row: Any, metric: str, digits: str = ".2f") -> str:
    if pd.isna(row.get(f"{metric}_delta")):
        return "—"
    return (f"{row[f'{metric}_delta']:+{digits}} [{row[f'{metric}_low']:+{digits}}, {row[f'{metric}_high']:+{digits}}]"
            f" {row[f'{metric}_verdict']}")


def _fmt_ratio(row: Any) -> str:
    if pd.isna(row.get("latency_ratio")):
        return "—"
    return f"{row['latency_ratio']:.3f}× [{row['latency_low']:.3f}, {row['latency_high']:.3f}] {row['latency_verdict']}"


def text_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "no cell is in both stores"
    hardware = table["hardware_a"].where(table["hardware_a"] == table["hardware_b"],
                                         table["hardware_a"] + " → " + table["hardware_b"])
    view = pd.DataFrame({
        "cell": table["cell"], **({"hardware": hardware} if hardware.nunique() > 1 else {}),
        **({"FLOPs B/A": table["flops_ratio"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")}
           if "flops_ratio" in table and table["flops_ratio"].round(6).ne(1).any() else {}),
        "time B/A [95% CI]": table.apply(_fmt_ratio, axis=1),
        "ΔFID B−A [95% CI]": table.apply(lambda r: _fmt_delta(r, "fid"), axis=1),
        "ΔKID": table.apply(lambda r: _fmt_delta(r, "kid", ".3g"), axis=1),
        "Δprecision": table.apply(lambda r: _fmt_delta(r, "precision", ".3f"), axis=1),
        "Δrecall": table.apply(lambda r: _fmt_delta(r, "recall", ".3f"), axis=1),
        **({"Δclass acc.": table.apply(lambda r: _fmt_delta(r, "class_accuracy", ".3f"), axis=1)}
           if "class_accuracy_delta" in table else {}),
    })
    return view.to_string(index=False)


def html_table(table: pd.DataFrame, title: str, failures: list[str] | None = None) -> str:
    import html

    def esc(v: Any) -> str:
        return html.escape(str(v), quote=True)

    head = ["cell", "hardware A → B", "time B/A [95% CI]", "ΔFID B−A [95% CI]", "ΔKID", "Δprecision", "Δrecall"]
    body = []
    for _, r in table.iterrows():
        cells = [r["cell"], f"{r['hardware_a']} → {r['hardware_b']}", _fmt_ratio(r), _fmt_delta(r, "fid"),
                 _fmt_delta(r, "kid", ".3g"), _fmt_delta(r, "precision", ".3f"),
                 _fmt_delta(r, "recall", ".3f")]
        body.append("<tr>" + "".join(f"<td class='{_verdict_class(c)}'>{esc(c)}</td>" for c in cells) + "</tr>")
    fails = "".join(f"<li>{esc(f)}</li>" for f in failures or [])
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title><style>"
            "body{font-family:system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ddd;padding:2px 6px}.better,.faster{background:#e6f5e6}"
            ".worse,.slower{background:#fbe3e0}</style></head><body>"
            f"<h1>{esc(title)}</h1><p>Time: median batch time of B over A, 95% interval from a bootstrap of each "
            "store's raw batch times. Quality: B − A over the seeds both generated, paired bootstrap (same seeds and "
            "reference draws for both), 95% interval; a verdict is given only where the interval excludes zero.</p>"
            + (f"<div><strong>Failed thresholds</strong><ul>{fails}</ul></div>" if fails else "")
            + "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>" + "".join(body)
            + "</table></body></html>")


def _verdict_class(text: str) -> str:
    for word in ("better", "worse", "faster", "slower"):
        if text.endswith(word):
            return word
    return ""
