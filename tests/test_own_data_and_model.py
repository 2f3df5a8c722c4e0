"""A user's own data and model: a folder of unlabelled images anywhere (spaces, unicode, absolute or relative path)
scored offline by the SimCLR extractor, and every training technique applied to a pretrained diffusers folder that
the test saves itself."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from bench import config as cfg
from bench import data, recipes, registry, store, sweep, zoo
from bench.errors import UserError
from bench.model import save_denoiser
from bench.train import load_artifact
from tests.conftest import run_cli
from tests.shapes import write_shapes

# a few timed batches of 16 at 1 thread: cells of seconds
TIMING = """[latency]
min_repeats = 2
min_seconds = 0.0
denoiser_repeats = 2
[hardware]
batch = [16]
threads = [1]
"""
FOLDER_CONFIG = """name = "shapes"
[model]
dataset = "folder:{folder}"
resolution = 8
train_steps = 60
[quality]
n_samples = 32
extractor_steps = 80
{quality}
bootstrap = 10
{timing}[[technique]]
name = "step_reduction"
steps = [3]
"""
QUALITY = 'reference_split = "train"\nreference_n = 100'


def folder_config(folder: Path | str, quality: str = QUALITY) -> str:
    return FOLDER_CONFIG.format(folder=folder, quality=quality, timing=TIMING)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("data") / "my shapes ☃", n=150, size=8)


def test_a_folder_anywhere_sweeps_offline_and_is_not_trained_twice(shapes: Path, tmp_path: Path) -> None:
    config = tmp_path / "shapes.toml"
    config.write_text(folder_config(shapes))
    args = ("sweep", "--config", str(config), "--results", str(tmp_path / "results"), "--no-progress")
    first = run_cli(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "training it" in first.stdout  # the base model and the SimCLR extractor
    (record,) = store.read_records(tmp_path / "results")
    assert record["status"] == "ok" and record["metrics"]["extractor"].startswith("bench-simclr-")
    assert record["metrics"]["fid"] > 0
    for artifact in Path(os.environ["BENCH_ZOO"]).iterdir():  # safe folder names whatever the path held
        assert artifact.name.isascii() and " " not in artifact.name and ":" not in artifact.name, artifact.name
    trained = [json.loads((p / zoo.RECORD_FILE).read_text()) for p in Path(os.environ["BENCH_ZOO"]).glob(
        "folder-my_shapes*")]
    assert trained and all(r["dataset_content_sha256"] == data.identity(f"folder:{shapes}") for r in trained)
    again = run_cli(*args)  # the artifacts saved: nothing trains again
    assert again.returncode == 0 and "training it" not in again.stdout and "already stored" in again.stdout


def test_a_relative_spelling_is_the_same_folder(shapes: Path, tmp_path: Path, monkeypatch) -> None:
    absolute = tmp_path / "abs.toml"
    absolute.write_text(folder_config(shapes))
    monkeypatch.chdir(shapes.parent)
    relative = tmp_path / "rel.toml"
    relative.write_text(folder_config(f"./{shapes.name}"))
    assert ([c.spec_hash for c in sweep.expand(cfg.load(relative))]
            == [c.spec_hash for c in sweep.expand(cfg.load(absolute))])


def test_a_folder_is_addressed_by_what_it_holds(tmp_path: Path) -> None:
    folder = write_shapes(tmp_path / "s", n=20, size=8)
    before = recipes.denoiser_recipe(f"folder:{folder}", 8).key
    elsewhere = write_shapes(tmp_path / "moved elsewhere", n=20, size=8)  # the same images in another place
    assert recipes.denoiser_recipe(f"folder:{elsewhere}", 8).key == before
    data._folder_hash.cache_clear()
    write_shapes(folder, n=21, size=8)  # one image more
    data._folder_hash.cache_clear()
    assert recipes.denoiser_recipe(f"folder:{folder}", 8).key != before


@pytest.mark.parametrize(("quality", "message"), [
    (QUALITY + '\nextractor = "classifier"', "needs class labels"),
    ('reference_split = "train"\nreference_n = 5000', "exceeds the 137 images"),  # 150: 137 train, 13 test
    ('reference_split = "test"\nreference_n = 100', "exceeds the 13 images"),
])
def test_what_a_folder_config_can_know_is_wrong_is_said_before_training(shapes: Path, tmp_path: Path, quality: str,
                                                                          message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(folder_config(shapes, quality))
    result = run_cli("sweep", "--config", str(config), "--results", str(tmp_path / "results"), "--no-progress")
    assert result.returncode == 2 and message in result.stderr and "training" not in result.stdout, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unreadable_image_is_named(tmp_path: Path) -> None:
    folder = write_shapes(tmp_path / "s", n=12, size=8)
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="broken.png is not a readable image"):
        data.load(f"folder:{folder}", "train", 8)


# -- a pretrained model ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pretrained_folder(tiny_denoiser, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers pipeline folder as a user would have it (DDPMPipeline.save_pretrained), under an awkward name."""
    folder = tmp_path_factory.mktemp("models") / "my model ☃"
    save_denoiser(tiny_denoiser, folder)
    return folder


def pretrained_config(folder: Path, tmp_path: Path, techniques: str) -> Path:
    path = tmp_path / "pretrained.toml"
    path.write_text(f"""name = "pretrained"
[model]
dataset = "digits"
resolution = 8
train_steps = 60
pretrained = "{folder}"
[quality]
n_samples = 32
extractor_steps = 150
reference_n = 300
bootstrap = 10
{TIMING}{techniques}""")
    return path


TRAINING_TECHNIQUES = """[[technique]]
name = "distillation"
steps = [2]
[[technique]]
name = "truncation"
steps = [3]
params = { prior = ["vae", "tdpm"], t_trunc = [50] }
[[technique]]
name = "dual_output"
steps = [3]
[[technique]]
name = "ode_unet"
steps = [3]
"""


def test_every_training_technique_trains_from_a_pretrained_folder(pretrained_folder: Path, tmp_path: Path) -> None:
    config = pretrained_config(pretrained_folder, tmp_path, TRAINING_TECHNIQUES)
    result = run_cli("sweep", "--config", str(config), "--results", str(tmp_path / "results"), "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    records = store.read_records(tmp_path / "results")
    assert {r["spec"]["technique"] for r in records} == {"distillation", "truncation", "dual_output", "ode_unet"}
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    base = sweep.base_recipe(cfg.load(config))
    sha = base.options["weights_sha256"]
    assert sha == zoo.weights_sha256(pretrained_folder / "unet" / "diffusion_pytorch_model.safetensors")
    for r in records:  # every cell names the imported model, by recipe key and source
        assert r["spec"]["model"] == {"recipe": base.name, "recipe_key": base.key,
                                      "pretrained": str(pretrained_folder.resolve())}
    imported = zoo.find(base)
    assert imported.record["imported_from"] == str(pretrained_folder.resolve())
    assert imported.record["source_weights_sha256"] == sha and imported.record["steps"] == 0
    # the students and the TDPM network learned from the pretrained weights (their recipes hold its recipe)
    technique = registry.get("distillation")
    student = technique.artifacts(technique.Params(), base)["student2"]
    assert sha in json.dumps(student.to_dict()) and zoo.find(student) is not None


def test_a_pretrained_model_changed_after_its_recipe_is_refused(tiny_denoiser, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    save_denoiser(tiny_denoiser, folder)
    base = recipes.pretrained_recipe(str(folder), "digits", 8, 60)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    changed = copy.deepcopy(tiny_denoiser)
    next(changed.parameters()).data.add_(1.0)
    save_denoiser(changed, folder)
    assert zoo.weights_sha256(weights) != base.options["weights_sha256"]
    with pytest.raises(UserError, match="changed since its recipe was made"):
        load_artifact(base, progress=False, out=tmp_path / "zoo")


def test_a_pretrained_model_of_another_shape_is_refused_before_training(pretrained_folder: Path,
                                                                        tmp_path: Path) -> None:
    config = pretrained_config(pretrained_folder, tmp_path, '[[technique]]\nname = "step_reduction"\nsteps = [3]\n')
    config.write_text(config.read_text().replace("resolution = 8", "resolution = 16"))
    result = run_cli("sweep", "--config", str(config), "--results", str(tmp_path / "results"), "--no-progress")
    assert result.returncode == 2 and "takes 1×8×8 images" in result.stderr, result.stderr


def test_a_hub_id_resolves_through_the_hub_snapshot(pretrained_folder: Path, monkeypatch) -> None:
    """The online path with a local stand-in: the hub's snapshot download returns the folder it would have
    fetched; the recipe names the hub id, not the cache path."""
    import huggingface_hub

    from bench import pretrained

    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **kw: asked.append(repo_id) or str(pretrained_folder))
    pretrained.describe.cache_clear()
    recipe = recipes.pretrained_recipe("someone/tiny-ddpm", "digits", 8)
    assert asked == ["someone/tiny-ddpm"] and recipe.options["source"] == "someone/tiny-ddpm"
    assert recipe.name == "digits8-pretrained-unet-tiny-ddpm"
    pretrained.describe.cache_clear()


def test_an_unavailable_hub_id_is_one_line(tmp_path: Path) -> None:
    config = pretrained_config(Path("nobody/no-such-model"), tmp_path,
                               '[[technique]]\nname = "step_reduction"\nsteps = [3]\n')
    result = run_cli("sweep", "--config", str(config), "--results", str(tmp_path / "r"), "--no-progress",
                     env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and "hub snapshot is unavailable" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
