"""How a sweep's artifacts reach its cells: resolved once by the driver before any cell runs, then delivered to
every worker by content hash.

The driver trains (or imports) what no zoo holds — once, under the zoo's lock — and describes every artifact the
sweep needs by a location-independent id (``<recipe name>-<recipe key>``) and the sha256 of its folder's contents
(``zoo.tree_sha256``). A worker takes an artifact from its own zoos only when the contents hash the same; otherwise
from its hash cache (``$BENCH_CACHE/artifacts/<sha256>/``), else from where the driver published it: Ray's object
store or a shared location (a folder or an fsspec URL). Whatever it receives is verified against the hash before
use. Cells never train: an artifact the driver did not resolve is an error, not a training.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench import train, zoo


@dataclass(frozen=True)
class Entry:
    """One artifact as the driver resolved it, and where a worker without it can get it."""

    id: str  # <recipe name>-<recipe key>: the same on every machine
    sha256: str  # zoo.tree_sha256 of the driver's folder
    path: str | None = None  # the driver's folder: a source for workers on the driver's machine only
    ref: Any = None  # a Ray ObjectRef of the packed folder
    url: str | None = None  # the packed folder in a shared location (a path or an fsspec URL)
    error: str | None = None  # why the driver could not train it: the cells that need it fail with this


Manifest = dict[str, Entry]  # recipe key → entry


class ArtifactError(RuntimeError):
    """An artifact could not be delivered as resolved (missing everywhere, or its bytes hash otherwise)."""


def prepare(recipes: list[zoo.Recipe], progress: bool = True) -> Manifest:
    """Each recipe's artifact, trained (or imported) here when no zoo has it, with its content hash. A training that
    fails is kept as the entry's error (the cells needing it become failed records; the sweep goes on); bad input
    (``UserError``) stops the sweep."""
    from bench.errors import UserError

    manifest = {}
    for recipe in recipes:
        try:
            artifact = train.ensure(recipe, progress=progress)
        except UserError:
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            print(f"zoo: training {recipe.folder_name} failed: {error}", flush=True)
            manifest[recipe.key] = Entry(recipe.folder_name, "", error=error)
            continue
        manifest[recipe.key] = Entry(recipe.folder_name, zoo.tree_sha256(artifact.path), str(artifact.path))
    return manifest


def pack(folder: Path) -> bytes:
    """The folder as an uncompressed tar with fixed metadata (weights do not compress; equal folders, equal bytes)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return buffer.getvalue()


def publish_to_ray(manifest: Manifest, ray: Any) -> Manifest:
    """Every artifact put into Ray's object store once; workers fetch only those their zoos lack. The driver's
    folder is no source for them: on another machine that path means nothing."""
    return {key: replace(e, ref=ray.put(pack(Path(e.path))), path=None) if not e.error else e
            for key, e in manifest.items()}


def publish_to_location(manifest: Manifest, location: str) -> Manifest:
    """Every artifact written to ``location`` as ``<id>-<sha256>.tar`` unless already there (content-addressed:
    a file of that name never changes)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(location)
    fs.makedirs(root, exist_ok=True)
    published = {}
    for key, e in manifest.items():
        if e.error:
            published[key] = e
            continue
        name = f"{root.rstrip('/')}/{e.id}-{e.sha256}.tar"
        if not fs.exists(name):
            partial = f"{name}.partial-{os.getpid()}"
            with fs.open(partial, "wb") as f:
                f.write(pack(Path(e.path)))
            fs.mv(partial, name)  # readers never see a half-written file
        published[key] = replace(e, url=fs.unstrip_protocol(name), path=None)
    return published


def cache_root() -> Path:
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench")).expanduser() / "artifacts"


class Provider:
    """Resolves a cell's recipes to local artifacts through a manifest (for ``zoo.provided_by``)."""

    def __init__(self, manifest: Manifest, get_ref: Callable[[Any], bytes] | None = None) -> None:
        self.manifest, self.get_ref = manifest, get_ref
        self._found: dict[str, zoo.Artifact] = {}
        self.fetched: list[str] = []  # ids this worker had to receive (not in its zoos or cache)

    def __call__(self, recipe: zoo.Recipe) -> zoo.Artifact:
        if recipe.key not in self._found:
            entry = self.manifest.get(recipe.key)
            if entry is None:
                raise ArtifactError(f"artifact {recipe.folder_name} was not resolved by the sweep's driver (cells "
                                    "never train): a technique asked for a recipe it does not declare in artifacts()")
            if entry.error:
                raise ArtifactError(f"artifact {entry.id} could not be trained: {entry.error}")
            self._found[recipe.key] = zoo.Artifact(recipe, self._local(entry), entry.sha256)
        return self._found[recipe.key]

    def prefetch(self) -> None:
        """Receive every artifact of the manifest into this machine's cache now (before a cell's subprocess, which
        cannot reach the engine, needs them)."""
        for entry in self.manifest.values():
            if not entry.error:
                self._local(entry)

    def _local(self, entry: Entry) -> Path:
        for folder in [root / entry.id for root in zoo.search_roots()] + ([Path(entry.path)] if entry.path else []):
            if (folder / zoo.RECORD_FILE).is_file() and zoo.tree_sha256(folder) == entry.sha256:
                return folder
        cached = cache_root() / entry.sha256 / entry.id
        if (cached / zoo.RECORD_FILE).is_file() and zoo.tree_sha256(cached) == entry.sha256:
            return cached
        data = self._receive(entry)
        unpack(data, cached, entry.sha256)
        self.fetched.append(entry.id)
        return cached

    def _receive(self, entry: Entry) -> bytes:
        if entry.url:
            import fsspec

            with fsspec.open(entry.url, "rb") as f:
                return f.read()
        if entry.ref is not None and self.get_ref is not None:
            return self.get_ref(entry.ref)
        raise ArtifactError(f"artifact {entry.id} (sha256 {entry.sha256[:16]}) is on no zoo of this machine and "
                            "the sweep published it nowhere this worker can read")


def unpack(data: bytes, target: Path, sha256: str) -> None:
    """Extract a packed artifact into ``target`` if its contents hash to ``sha256``; the folder appears whole or not
    at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".receiving-", dir=target.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            tar.extractall(scratch, filter="data")  # no absolute paths, links out or devices
        got = zoo.tree_sha256(scratch)
        if got != sha256:
            raise ArtifactError(f"artifact {target.name} arrived with contents sha256 {got[:16]}, not the "
                                f"{sha256[:16]} the driver resolved; refused")
        try:
            os.replace(scratch, target)
        except OSError:  # another worker on this node received it meanwhile
            if not (target / zoo.RECORD_FILE).is_file():
                raise
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
