"""Artifacts delivered by content hash: published to a shared location, received into an empty machine's cache,
verified, and refused when the bytes differ; cells never train."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from bench import delivery, recipes, train, zoo


@pytest.fixture
def move_to_other_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Call it to become a machine whose zoos hold nothing (an empty user zoo and cache)."""

    def move() -> Path:
        monkeypatch.setenv("BENCH_ZOO", str(tmp_path / "other-zoo"))
        monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "other-cache"))
        return tmp_path

    return move


def test_artifact_from_a_shared_location_is_received_verified_and_cached_by_hash(tiny_base, move_to_other_machine):
    manifest = delivery.prepare([tiny_base], progress=False)  # the driver: in the session zoo, or trained there
    entry = manifest[tiny_base.key]
    assert entry.sha256 == zoo.tree_sha256(Path(entry.path))
    other_machine = move_to_other_machine()
    shared = delivery.publish_to_location(manifest, f"file://{other_machine / 'shared'}")
    assert shared[tiny_base.key].path is None and shared[tiny_base.key].url.startswith("file://")
    copy = shutil.copytree(entry.path, other_machine / "copy")
    for file in copy.rglob("*"):
        os.utime(file, (0, 1_000_000))  # another machine's copy: other timestamps, other location
    assert delivery.pack(copy) == delivery.pack(Path(entry.path)) and zoo.tree_sha256(copy) == entry.sha256

    provider = delivery.Provider(shared)
    with zoo.provided_by(provider):
        artifact = train.ensure(tiny_base)
    assert provider.fetched == [tiny_base.folder_name]
    assert artifact.path == delivery.cache_root() / entry.sha256 / tiny_base.folder_name
    assert zoo.tree_sha256(artifact.path) == entry.sha256 and artifact.summary()["sha256"] == entry.sha256
    assert "path" not in artifact.summary()

    again = delivery.Provider(shared)  # a second cell on this machine: from the cache, nothing received
    assert again(tiny_base).path == artifact.path and again.fetched == []


def test_tampered_artifact_is_refused_and_an_undeclared_one_is_never_trained(tiny_base, move_to_other_machine):
    manifest = delivery.prepare([tiny_base], progress=False)
    other_machine = move_to_other_machine()
    shared = delivery.publish_to_location(manifest, str(other_machine / "shared"))
    tar = next((other_machine / "shared").glob("*.tar"))
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the weights, the bulk of the archive
    tar.write_bytes(bytes(data))
    with pytest.raises(delivery.ArtifactError, match="arrived with contents sha256 .* refused"):
        delivery.Provider(shared)(tiny_base)
    assert not list(delivery.cache_root().rglob(zoo.RECORD_FILE))  # nothing half-received left behind

    other = dataclasses.replace(tiny_base, seed=tiny_base.seed + 1)
    with zoo.provided_by(delivery.Provider(shared)), pytest.raises(delivery.ArtifactError, match="cells never train"):
        train.ensure(other)
    assert zoo.find(other) is None


def test_a_training_that_fails_in_the_driver_fails_only_the_cells_that_need_it(move_to_other_machine, capsys):
    move_to_other_machine()
    broken = recipes.denoiser_recipe("digits", 8, steps=5)
    broken = dataclasses.replace(broken, network={**broken.network, "no_such_argument": 1})
    manifest = delivery.prepare([broken], progress=False)
    assert "failed" in capsys.readouterr().out
    with pytest.raises(delivery.ArtifactError, match="could not be trained: TypeError"):
        delivery.Provider(manifest)(broken)
