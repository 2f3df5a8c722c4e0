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
        path = self.path_for(spec_hash)
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
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
        """Keep ``features`` (rows are images) as float16 ``features/<name>.npy``; returns what the record keeps
        about them: the relative path, sha256 of the file's bytes, shape and dtype."""
        data = features_bytes(features)
        relative = f"features/{name}.npy"
        sha = hashlib.sha256(data).hexdigest()
        existing = self.root / relative
        if not (existing.is_file() and hashlib.sha256(existing.read_bytes()).hexdigest() == sha):
            self.save_file(relative, data)
        shape = list(np.asarray(features).shape)
        return {"file": relative, "sha256": sha, "shape": shape, "dtype": FEATURE_DTYPE}

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
    out = []
    for file in sorted(root.rglob("records/*.json")):
        try:
            record = json.loads(file.read_text())
            if not isinstance(record, dict) or "spec_hash" not in record or "status" not in record:
                raise ValueError("not a bench record")
        except (OSError, ValueError) as exc:
            warnings.warn(f"skipping unreadable record {file}: {exc}", stacklevel=2)
            continue
        record["_store"] = str(file.parent.parent)
        out.append(record)
    return out


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
    return row


def load(path: Path | str) -> pd.DataFrame:
    """All records under ``path`` as one DataFrame, one row per cell (several stores below ``path`` are merged);
    ``stale`` is True where the record was written by another version of its technique than the installed one."""
    df = pd.DataFrame([flatten(r) for r in read_records(path)])
    if not df.empty:
        from bench.registry import installed_versions

        installed = installed_versions(df["technique"].dropna().unique())
        df["stale"] = [is_stale(t, v, installed) for t, v in zip(df["technique"], df["technique_version"],
                                                                  strict=True)]
    return df


def is_stale(technique: Any, version: Any, installed: dict[str, str]) -> bool:
    """Recorded by a technique version other than the installed one (unknown techniques and versions are not)."""
    return isinstance(version, str) and technique in installed and version != installed[technique]
