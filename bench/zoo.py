"""Model zoo: a recipe (dataset, resolution, network, objective, steps, batch, seed) maps to a trained artifact.

Artifacts are content-addressed folders ``<name>-<key>`` where ``key`` hashes the whole recipe. They are looked up
in the shipped zoo (``bench/artifacts``, trained by ``python -m bench train`` and committed) and then in the user's
zoo (``$BENCH_ZOO``, default ``~/.cache/bench/zoo``), where newly trained artifacts go. Trainings of one recipe
into one zoo are serialised by a file lock, so concurrent sweeps on a machine train it once.

Inside a cell, artifacts are not looked up or trained here but *provided* (``provided_by``): the sweep's driver
resolved them before dispatch and the worker receives each by its content hash (``bench.delivery``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import UserError

SHIPPED_ZOO = Path(__file__).parent / "artifacts"
RECORD_FILE = "training_record.json"
RECIPE_FILE = "recipe.json"
# Objective name → its declared version (``bench.train.Objective.version``), filled as objectives register. A recipe's
# key includes its objective's version from 2 on: the artifacts every version-1 objective trained keep their keys.
OBJECTIVE_VERSIONS: dict[str, int] = {}


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a trained artifact; its hash is the artifact's address."""

    name: str  # human label, the prefix of the folder name
    objective: str  # key in bench.train.OBJECTIVES
    dataset: str = "mnist"
    resolution: int = 16
    network: dict[str, Any] = field(default_factory=dict)  # network constructor kwargs
    schedule: dict[str, Any] = field(default_factory=dict)  # diffusers scheduler config (denoisers)
    steps: int = 1000  # optimiser steps
    batch: int = 64  # images per step
    lr: float = 1e-3  # AdamW learning rate after a linear warm-up
    seed: int = 0  # seeds initialisation and batch order
    ema_decay: float = 0.999  # the saved weights are this EMA of the trained ones
    options: dict[str, Any] = field(default_factory=dict)  # objective-specific (e.g. teacher recipe, T')

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def key(self) -> str:
        from bench import data

        fields = self.to_dict()
        if self.objective not in OBJECTIVE_VERSIONS:
            # registers the built-in objectives' versions; by name, so a technique's behaviour fingerprint does not
            # take in the whole training module for a number that reaches it only through this key
            importlib.import_module("bench.train")
        if OBJECTIVE_VERSIONS.get(self.objective, 1) != 1:
            fields["objective_version"] = OBJECTIVE_VERSIONS[self.objective]
        content = data.identity(self.dataset)
        if content is not None:  # a folder dataset: addressed by what it holds, not by where it lies
            fields["dataset"] = f"folder-content:{content}"
            fields["name"] = self.name.replace(self.dataset, fields["dataset"])
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def folder_name(self) -> str:
        """``<name>-<key>`` made safe for any file system, whatever the dataset string holds (a path, spaces,
        unicode): the dataset part of the name becomes its short label."""
        from bench import data

        label = self.name.replace(self.dataset, data.short_name(self.dataset)) if self.dataset else self.name
        return f"{data.safe_label(label, 80)}-{self.key}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        return cls(**data)


@dataclass(frozen=True)
class Artifact:
    """A trained artifact on disk: its recipe, its folder and its training record."""

    recipe: Recipe
    path: Path
    sha256: str | None = None  # content hash of the folder, when already known (the driver's resolution)

    @property
    def record(self) -> dict[str, Any]:
        return json.loads((self.path / RECORD_FILE).read_text())

    def summary(self) -> dict[str, Any]:
        """What a results row keeps about the artifact: a location-independent id (no machine path), the content
        hash of its folder, its weights hash and its training cost."""
        rec = self.record
        return {"recipe": self.recipe.name, "key": self.recipe.key, "id": self.recipe.folder_name,
                "sha256": self.sha256 or tree_sha256(self.path), "weights_sha256": rec.get("weights_sha256"),
                "train_steps": rec.get("steps"),
                "train_wall_s": rec.get("wall_s"), "train_device": rec.get("hardware", {}).get("device_name"),
                # with every artifact it was trained from (a distillation chain, a warm start): its full cost
                "train_total_steps": rec.get("total_steps", rec.get("steps")),
                "train_total_wall_s": rec.get("total_wall_s", rec.get("wall_s"))}


def user_zoo() -> Path:
    return Path(os.environ.get("BENCH_ZOO", Path.home() / ".cache" / "bench" / "zoo")).expanduser()


def search_roots(extra: Path | None = None) -> list[Path]:
    roots = [extra] if extra is not None else []
    return roots + [SHIPPED_ZOO, user_zoo()]


def find(recipe: Recipe, roots: list[Path] | None = None) -> Artifact | None:
    """The trained artifact for ``recipe`` if any zoo holds a complete one."""
    for root in roots or search_roots():
        folder = root / recipe.folder_name
        if (folder / RECORD_FILE).exists():
            return Artifact(recipe, folder)
    return None


Provider = Callable[[Recipe], Artifact]
_provider: ContextVar[Provider | None] = ContextVar("bench_zoo_provider", default=None)


@contextlib.contextmanager
def provided_by(provider: Provider) -> Iterator[None]:
    """Within the block, ``bench.train.ensure`` asks ``provider`` for every artifact and never trains (a sweep's
    cells)."""
    token = _provider.set(provider)
    try:
        yield
    finally:
        _provider.reset(token)


def current_provider() -> Provider | None:
    """The provider of the enclosing ``provided_by`` block, if any."""
    return _provider.get()


def tree_sha256(folder: Path) -> str:
    """Content hash of an artifact folder: every file's relative path and sha256, in path order (locations and
    timestamps do not enter, so a copy anywhere hashes the same)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(folder).as_posix()}\0{weights_sha256(path)}\n".encode())
    return h.hexdigest()


def weights_sha256(*paths: Path) -> str:
    """sha256 of the files' bytes, in order (one file: its own sha256; sharded weights: all shards)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def require_recipe_match(artifact: Artifact) -> None:
    stored = json.loads((artifact.path / RECIPE_FILE).read_text())
    if Recipe.from_dict(stored).key != artifact.recipe.key:
        raise UserError(f"zoo artifact {artifact.path} does not match its recipe (edited or corrupted); delete it")
