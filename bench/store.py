"""The results store: one JSON record per cell under ``<root>/records/``, written atomically (temp file + rename),
plus each cell's sample grid under ``<root>/samples/`` and the extractor features of the images it scored under
``<root>/features/`` (float16 ``.npy``, one row per seed, its sha256 in the record; the reference set's features once
per reference). ``load(path)`` returns one pandas DataFrame and never reads the features."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.errors import UserError

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "skipped")


class Store:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.records = self.root / "records"
        self.samples = self.root / "samples"
        self.features = self.root / "features"

    def prepare(self) -> None:
        """Create the folders, failing with one line when the location is not writable."""
        try:
            self.records.mkdir(parents=True, exist_ok=True)
            self.samples.mkdir(parents=True, exist_ok=True)
            self.features.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.records, prefix=".probe-", delete=True)
            probe.close()
        except OSError as exc:
            raise UserError(f"results directory {self.root} is not writable ({exc.strerror})") from exc

    def claim(self, spec_hash: str) -> bool:
        """Mark a cell as being run by this process, so a concurrent sweep on the same store skips it. False when a
        live process on this host (or any process on another host) holds it; a claim left by a killed process on
        this host is taken over."""
        claims = self.records / ".claims"
        claims.mkdir(exist_ok=True)
        path = claims / spec_hash
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if _claim_is_live(path):
                    return False
                path.unlink(missing_ok=True)  # its owner died: take it over
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
            return True
        return False

    def release(self, spec_hash: str) -> None:
        (self.records / ".claims" / spec_hash).unlink(missing_ok=True)

    def path_for(self, spec_hash: str) -> Path:
        return self.records / f"{spec_hash}.json"

    def get(self, spec_hash: str) -> dict[str, Any] | None:
        """The stored record of a cell; None when there is none or it is unreadable (edited or truncated by hand:
        a warning names it, and the sweep runs the cell again)."""
        path = self.path_for(spec_hash)
        if not path.exists() and not path.is_symlink():
            return None
        try:
            return read_record(path)
        except (OSError, ValueError) as exc:
            warnings.warn(f"skipping unreadable record {path}: {exc}", stacklevel=2)
            return None

    def write(self, record: dict[str, Any]) -> Path:
        """Write one record atomically: readers see the old file or the new one, never a torn one."""
        if record.get("status") not in STATUSES:
            raise ValueError(f"record status must be one of {STATUSES}")
        record = {"schema_version": SCHEMA_VERSION,
                  "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **record}
        return _atomic_write(self.path_for(record["spec_hash"]), json.dumps(record, indent=1, default=_jsonable))

    def save_file(self, relative: str, data: bytes) -> None:
        """Store a file computed elsewhere (a worker process or node: a sample grid, features) at its record's
        relative path, atomically."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".", suffix=".tmp", delete=False) as tmp:
            tmp.write(data)
        os.replace(tmp.name, path)

    def save_features(self, name: str, features: np.ndarray | torch.Tensor) -> dict[str, Any]:
        """Keep ``features`` (rows are images) as float16 ``features/<name>.npy`` (``<name>-<sha256 prefix>.npy``
        when that name already holds other bytes, which records may point at); returns what the record keeps about
        them: the relative path, sha256 of the file's bytes, shape and dtype."""
        data = features_bytes(features)
        sha = hashlib.sha256(data).hexdigest()
        relative = f"features/{name}.npy"
        existing = self.root / relative
        if existing.is_file() and hashlib.sha256(existing.read_bytes()).hexdigest() != sha:
            # Stored records hold the old file's sha256 (the same reference recomputed on another CPU differs in the
            # last bits): overwriting it would corrupt them, so the new bytes go beside it, named by their content.
            relative = f"features/{name}-{sha[:12]}.npy"
            existing = self.root / relative
        if not (existing.is_file() and hashlib.sha256(existing.read_bytes()).hexdigest() == sha):
            self.save_file(relative, data)
        shape = list(np.asarray(features).shape)
        return {"file": relative, "sha256": sha, "shape": shape, "dtype": FEATURE_DTYPE}

    def features_agreeing(self, name: str, features: np.ndarray | torch.Tensor
                          ) -> tuple[dict[str, Any], torch.Tensor] | None:
        """The stored ``features/<name>.npy`` (its record entry and values) where it holds these features to
        float16 precision, else None. The same reference set's features recomputed on another CPU differ in the last
        bits; cells scored against one stored copy stay paired across machines."""
        path = self.root / f"features/{name}.npy"
        if not path.is_file():
            return None
        data = path.read_bytes()
        try:
            values = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError:
            return None
        if values.dtype != np.dtype(FEATURE_DTYPE) or not features_agree(values, np.asarray(features)):
            return None
        entry = {"file": f"features/{name}.npy", "sha256": hashlib.sha256(data).hexdigest(),
                 "shape": list(values.shape), "dtype": FEATURE_DTYPE}
        return entry, torch.from_numpy(values.astype(np.float32))

    def save_samples(self, spec_hash: str, images: torch.Tensor, count: int = 16) -> str:
        """Save the first ``count`` images (uint8 NCHW) as a PNG grid; returns its path relative to the store."""
        from PIL import Image
        from torchvision.utils import make_grid

        grid = make_grid(images[:count], nrow=int(count**0.5), padding=1, pad_value=255)
        path = self.samples / f"{spec_hash}.png"
        with tempfile.NamedTemporaryFile(dir=self.samples, suffix=".png", delete=False) as tmp:
            Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
        os.replace(tmp.name, path)
        return str(path.relative_to(self.root))


FEATURE_DTYPE = "float16"


def features_bytes(features: np.ndarray | torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(features, dtype=FEATURE_DTYPE), allow_pickle=False)
    return buf.getvalue()


def features_agree(a: np.ndarray, b: np.ndarray) -> bool:
    """True where two feature arrays are the same to float16 precision: every value at most one float16 step apart
    (the same images' features computed on two CPUs round to neighbouring float16 values)."""
    if a.shape != b.shape:
        return False
    a16, b16 = np.asarray(a, dtype=FEATURE_DTYPE), np.asarray(b, dtype=FEATURE_DTYPE)
    step = np.maximum(np.abs(np.spacing(a16)), np.abs(np.spacing(b16))).astype(np.float64)
    return bool(np.all(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)) <= step))


def load_features(store_root: Path | str, entry: dict[str, Any]) -> np.ndarray:
    """The features a record's ``entry`` names, checked against its sha256 (float64 for computing on)."""
    path = Path(store_root) / entry["file"]
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"features file {path} is missing ({exc.strerror})") from None
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise UserError(f"features file {path} does not match the sha256 its record holds (edited or corrupted)")
    return np.load(io.BytesIO(data), allow_pickle=False).astype(np.float64)


def _claim_is_live(path: Path) -> bool:
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):  # being written this instant (or its writer died right after creating it)
        try:
            return time.time() - path.stat().st_mtime < 60
        except OSError:
            return False
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def _atomic_write(path: Path, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_records(path: Path | str) -> list[dict[str, Any]]:
    """Every readable record under ``path`` (a store, or a folder of stores); unreadable files are skipped with a
    warning naming them."""
    root = Path(path)
    if not root.exists():
        raise UserError(f"results store {root} does not exist")
    if not root.is_dir():
        raise UserError(f"results store {root} is not a folder")
    out = []
    try:
        files = sorted(root.rglob("records/*.json"))
    except OSError as exc:
        raise UserError(f"results store {root} cannot be listed ({exc.strerror or exc})") from None
    for file in files:
        try:
            record = read_record(file)
        except (OSError, ValueError) as exc:
            warnings.warn(f"skipping unreadable record {file}: {exc}", stacklevel=2)
            continue
        record["_store"] = str(file.parent.parent)
        out.append(record)
    return out


MAX_RECORD_BYTES = 64 << 20


def read_record(file: Path) -> dict[str, Any]:
    """One record file, parsed and checked against the shape every reader relies on; ``ValueError`` (or
    ``OSError``) says what is wrong."""
    if not file.is_file():
        raise ValueError("not a regular file")
    if file.stat().st_size > MAX_RECORD_BYTES:
        raise ValueError(f"larger than {MAX_RECORD_BYTES >> 20} MiB")
    try:
        record = json.loads(file.read_bytes().decode("utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply") from None
    check_record(record)
    if record["spec_hash"] != file.stem:
        raise ValueError(f"its spec_hash {record['spec_hash'][:20]!r} is not its file name")
    return record


# What readers of a record (sweep, report, compare) rely on; None is allowed wherever a value may be absent.
_TOP_TYPES = {"schema_version": int, "written_at": str, "spec": dict, "metrics": dict, "raw": dict, "info": dict,
              "observations": dict, "artifacts": dict, "features": dict, "image_digests": dict, "machine": str,
              "fingerprint": dict, "roofline": dict, "technique_version": (int, str), "sample_grid": str,
              "provenance": dict, "error": str, "reason": str, "traceback": str,
              "execution": dict, "class_correct": dict}
_SPEC_TYPES = {"technique": str, "params": dict, "steps": int, "device": str, "dtype": str, "threads": int,
               "compile": bool, "batch": int, "machine": str, "n_samples": int, "seed": int, "dataset": str,
               "resolution": int, "model": dict, "artifacts": dict, "extractor": str, "reference_split": str,
               "reference_n": int, "bootstrap": int}
_SPEC_REQUIRED = ("technique", "params", "steps", "device", "dtype", "threads", "compile", "batch", "n_samples")
_OK_METRICS_REQUIRED = ("fid", "nfe", "latency_per_image_ms", "flops_per_image")
_METRIC_TYPES = {"fid_inf_n": list, "fid_inf_values": list, "nfe_by_network": dict,
                 "flops_per_call_by_network": dict, "flops_per_image_by_stage": dict,
                 "flops_ran_fraction_by_network": dict}
_METRIC_STRINGS = {"flops_unit", "peak_source", "memory_method", "energy_method", "extractor", "extractor_sha256",
                   "extractor_description", "quality_reused_from", "quality_extended_from", "quality_note",
                   "latency_suspect", "latency_includes", "quality_skipped", "clip_score_skipped", "clip_model"}


def check_record(record: Any) -> None:
    """Raise ``ValueError`` naming the first field of ``record`` whose shape no reader can use."""
    if not isinstance(record, dict):
        raise ValueError(f"a record is a JSON object, not {type(record).__name__}")
    if not isinstance(record.get("spec_hash"), str) or not record["spec_hash"]:
        raise ValueError("spec_hash is missing or not a string")
    if record.get("status") not in STATUSES:
        raise ValueError(f"status is not one of {', '.join(STATUSES)}")
    _check_types(record, _TOP_TYPES, "")
    spec = record.get("spec")
    if not isinstance(spec, dict):
        raise ValueError("spec is missing")
    _check_types(spec, _SPEC_TYPES, "spec.")
    for key in _SPEC_REQUIRED:
        if spec.get(key) is None:
            raise ValueError(f"spec.{key} is missing")
    for key, value in spec["params"].items():  # params become columns the report groups by: scalars only
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"spec.params.{key} must be a number, string or boolean")
    metrics = record.get("metrics") or {}
    for key, value in metrics.items():
        want = _METRIC_TYPES.get(key, str if key in _METRIC_STRINGS else None)
        if want is not None:
            if value is not None and not isinstance(value, want):
                raise ValueError(f"metrics.{key} must be {want.__name__} or null")
        elif value is not None and not isinstance(value, bool) and not _finite_number(value):
            raise ValueError(f"metrics.{key} must be a finite number, true/false or null")
    if record["status"] == "ok":
        for key in _OK_METRICS_REQUIRED:
            if key == "fid" and isinstance(metrics.get("quality_skipped"), str):
                continue  # a random-weight model's cell: costs only, the reason in its place
            if not _finite_number(metrics.get(key)):
                raise ValueError(f"an ok record needs a number at metrics.{key}")
    for role, entry in (record.get("features") or {}).items():
        if entry is not None and not (isinstance(entry, dict) and _safe_relative(entry.get("file"))
                                      and isinstance(entry.get("sha256"), str)):
            raise ValueError(f"features.{role} must name a file inside the store and its sha256")
    if record.get("sample_grid") is not None and not _safe_relative(record["sample_grid"]):
        raise ValueError("sample_grid must be a path inside the store")
    digests = record.get("image_digests")
    if digests is not None and not (isinstance(digests.get("seeds"), list) and len(digests["seeds"]) == 2
                                    and all(_integer(s) for s in digests["seeds"])
                                    and isinstance(digests.get("sha256"), list)
                                    and all(isinstance(d, str) for d in digests["sha256"])):
        raise ValueError("image_digests must hold seeds [first, stop] and a list of sha256 strings")
    batches = (record.get("raw") or {}).get("latency_batch_s")
    if batches is not None and not (isinstance(batches, list) and all(_finite_number(b) for b in batches)):
        raise ValueError("raw.latency_batch_s must be a list of numbers")


def _check_types(table: dict[str, Any], types: dict[str, Any], where: str) -> None:
    for key, want in types.items():
        value = table.get(key)
        if value is None:
            continue
        wants = want if isinstance(want, tuple) else (want,)
        ok = isinstance(value, wants) and not (int in wants and isinstance(value, bool))
        if not ok:
            raise ValueError(f"{where}{key} must be {' or '.join(w.__name__ for w in wants)}, "
                             f"not {type(value).__name__}")


def _finite_number(value: Any) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _safe_relative(path: Any) -> bool:
    """A relative path that stays inside the store (no ``..``, not absolute): a record must not make a reader
    open, embed or trust a file elsewhere."""
    if not isinstance(path, str) or not path or "\x00" in path:
        return False
    parts = Path(path).parts
    return not Path(path).is_absolute() and ".." not in parts


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """One DataFrame row: spec, metrics and provenance as top-level columns; params both as JSON and param_<k>."""
    spec = dict(record.get("spec", {}))
    params = spec.pop("params", {}) or {}
    row = {"spec_hash": record["spec_hash"], "status": record["status"], "error": record.get("error"),
           "reason": record.get("reason"), "schema_version": record.get("schema_version"),
           "written_at": record.get("written_at"), "store": record.get("_store"),
           "technique_version": record.get("technique_version"), "sample_grid": record.get("sample_grid"),
           **spec, "params": json.dumps(params, sort_keys=True)}
    row.update({f"param_{k}": v for k, v in params.items()})
    if not row.get("machine"):  # recorded before machines were fingerprinted
        from bench.machine import legacy_id

        row["machine"] = legacy_id(record.get("provenance"))
    row["fingerprint"] = record.get("fingerprint")
    row.update(record.get("metrics", {}) or {})
    row.update({f"prov_{k}": v for k, v in (record.get("provenance") or {}).items() if k != "versions"})
    row.update({f"version_{k}": v for k, v in ((record.get("provenance") or {}).get("versions") or {}).items()})
    row["raw"] = record.get("raw")
    row["artifacts"] = record.get("artifacts")
    row["info"] = record.get("info")
    row["features"] = record.get("features")
    row["observations"] = record.get("observations")
    row["class_correct"] = record.get("class_correct")
    execution = record.get("execution") or {}
    nodes = execution.get("nodes") if isinstance(execution.get("nodes"), list) else []
    last = nodes[-1] if nodes and isinstance(nodes[-1], dict) else {}
    row.update(executor=execution.get("executor"), attempts=execution.get("attempts"),
               node=last.get("node_id") or last.get("host"))
    return row


def load(path: Path | str) -> pd.DataFrame:
    """All records under ``path`` as one DataFrame, one row per cell (several stores below ``path`` are merged).
    Whether a row is stale depends on the techniques installed, which the store knows nothing of:
    ``bench.frames.mark_stale`` adds that column."""
    return pd.DataFrame([flatten(r) for r in read_records(path)])


def is_stale(technique: Any, version: Any, installed: dict[str, frozenset]) -> bool:
    """Recorded by a technique version other than the installed one (``installed``: technique → the version values
    current records carry); records of techniques not installed, or with no version, are not."""
    return version is not None and technique in installed and version not in installed[technique]
