"""The store on disk, the zoo's content addressing and loading, the datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import data, recipes, store, train, zoo
from bench.errors import UserError
from bench.model import load_denoiser, save_denoiser


def _record(spec_hash: str, status: str = "ok", **metrics) -> dict:
    spec = {"technique": "t", "params": {"a": 1}, "steps": 5, "device": "cpu", "dtype": "float32", "threads": 1,
            "compile": False, "batch": 4, "n_samples": 8}
    if status == "ok":  # what every ok record holds (store.check_record)
        metrics = {"nfe": 5, "latency_per_image_ms": 1.0, "flops_per_image": 10, "fid": 1.0, **metrics}
    return {"spec_hash": spec_hash, "status": status, "spec": spec, "metrics": metrics,
            "provenance": {"git_commit": "abc", "versions": {"torch": "2"}}}


def test_store_roundtrip_and_corrupt_file_is_skipped(tmp_path: Path) -> None:
    s = store.Store(tmp_path / "st")
    s.prepare()
    s.write(_record("aaaa", fid=3.0))
    s.write(_record("bbbb", status="failed"))
    (s.records / "cccc.json").write_text('{"spec_hash": "cccc", "sta')  # truncated by a crash
    with pytest.warns(UserWarning, match="cccc.json"):
        df = store.load(tmp_path)
    assert sorted(df["spec_hash"]) == ["aaaa", "bbbb"]
    row = df.set_index("spec_hash").loc["aaaa"]
    assert row["fid"] == 3.0 and row["param_a"] == 1 and row["prov_git_commit"] == "abc"
    assert row["schema_version"] == store.SCHEMA_VERSION
    assert not list(s.records.glob(".*.tmp"))


def test_store_rejects_unknown_status(tmp_path: Path) -> None:
    s = store.Store(tmp_path)
    s.prepare()
    with pytest.raises(ValueError):
        s.write(_record("x", status="maybe"))


def test_unwritable_results_dir_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="not writable"):
        store.Store(blocker / "sub").prepare()


def test_features_under_a_taken_name_never_overwrite_what_records_point_at(tmp_path: Path) -> None:
    """The same reference recomputed on another CPU differs in its last bits: both files stay loadable."""
    s = store.Store(tmp_path)
    s.prepare()
    first = s.save_features("ref-set", np.zeros((3, 2)))
    second = s.save_features("ref-set", np.full((3, 2), 1e-3))
    assert first["file"] == "features/ref-set.npy" and second["file"] != first["file"]
    assert second["sha256"][:12] in second["file"]
    np.testing.assert_array_equal(store.load_features(tmp_path, first), 0.0)
    assert store.load_features(tmp_path, second)[0, 0] == pytest.approx(1e-3, rel=1e-3)
    assert s.save_features("ref-set", np.zeros((3, 2))) == first  # same bytes again: the original name


def test_recipe_key_covers_every_field() -> None:
    base = recipes.denoiser_recipe()
    variants = [recipes.denoiser_recipe(steps=10), recipes.denoiser_recipe(seed=1), recipes.denoiser_recipe(batch=8),
                recipes.denoiser_recipe(resolution=28), recipes.denoiser_recipe(objective="v_prediction")]
    assert len({base.key, *(v.key for v in variants)}) == 6
    assert base.key == recipes.denoiser_recipe().key


def test_zoo_trains_once_and_records_training(tmp_path: Path, tiny_denoiser) -> None:
    recipe = recipes.denoiser_recipe("digits", 8, steps=60)
    artifact = zoo.find(recipe)
    assert artifact is not None  # trained by the fixture, found again without training
    record = artifact.record
    assert record["steps"] == 60 and record["wall_s"] > 0 and len(record["loss_curve"]) >= 1
    assert record["weights_sha256"] == zoo.weights_sha256(artifact.path / record["weights_file"])
    assert record["hardware"]["cpu_model"] and "versions" in record["hardware"]
    assert train.ensure(recipe).path == artifact.path


def test_diffusers_folders_load_both_layouts(tmp_path: Path, tiny_denoiser) -> None:
    """Our pipeline layout, and the hub's bare layout (config.json + scheduler_config.json at the root)."""
    save_denoiser(tiny_denoiser, tmp_path / "pipe")
    bare = tmp_path / "bare"
    tiny_denoiser.net.save_pretrained(bare)
    (bare / "scheduler_config.json").write_text(json.dumps({**tiny_denoiser.scheduler_config,
                                                            "_class_name": "DDPMScheduler"}))
    x, t = torch.randn(2, *tiny_denoiser.image_shape), torch.tensor([10, 900])
    for folder in (tmp_path / "pipe", bare):
        loaded = load_denoiser(folder)
        assert loaded.image_shape == tiny_denoiser.image_shape and loaded.prediction_type == "epsilon"
        with torch.no_grad():
            torch.testing.assert_close(loaded(x, t), tiny_denoiser(x, t))
    with pytest.raises(UserError, match="cannot load"):
        load_denoiser(tmp_path / "missing-folder-or-hub-id")


def test_datasets_have_deterministic_splits_and_resolutions(tmp_path: Path) -> None:
    for res in (16, 28, 32):
        mnist = data.load("mnist", "test", res)
        assert mnist.images.shape == (10000, 1, res, res) and mnist.images.dtype == torch.uint8
    train = data.load("mnist", "train", 16)
    assert len(train.images) == 30000 and train.num_classes == 10
    digits_train, digits_test = data.load("digits", "train", 8), data.load("digits", "test", 8)
    assert len(digits_train.images) + len(digits_test.images) == 1797
    assert torch.equal(digits_test.images, data._load_cached.__wrapped__("digits", "test", 8).images)


def test_folder_dataset(tmp_path: Path) -> None:
    from PIL import Image

    for i in range(30):
        Image.fromarray(np.full((20, 24, 3), i * 8, dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    train, test = data.load(f"folder:{tmp_path}", "train", 16), data.load(f"folder:{tmp_path}", "test", 16)
    assert train.images.shape[1:] == (3, 16, 16) and train.labels is None
    assert len(train.images) + len(test.images) in (30, 60)  # a tiny folder may put every file in both splits
    with pytest.raises(UserError, match="does not exist"):
        data.load(f"folder:{tmp_path / 'nope'}", "train", 16)


def test_unknown_dataset_and_offline_torchvision(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(UserError, match="unknown dataset"):
        data.load("imagenet", "train", 16)
    monkeypatch.setenv("BENCH_DATA", str(tmp_path))
    monkeypatch.setattr("urllib.request.urlopen", _no_network)
    with pytest.raises(UserError, match="tv-cifar10"):
        data.load("tv-cifar10", "test", 32)


def _no_network(*args, **kwargs):
    raise OSError("network disabled in tests")
