"""Hostile input against a store that already holds results: one clear line, a non-zero exit, the store unchanged."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from bench import store
from tests.conftest import TINY_CONFIG, run_cli

GOOD = TINY_CONFIG.read_text()
ENTRY = '[[technique]]\nname = "step_reduction"\nsteps = [3]\n'
HEADER = GOOD.split("[[technique]]")[0]

CASES = {
    "malformed TOML": (HEADER + "[[technique]\n", "not valid TOML"),
    "unknown technique": (HEADER + '[[technique]]\nname = "warp_drive"\nsteps = [3]\n', "unknown technique"),
    "unknown parameter": (HEADER + ENTRY + 'params = { sampler_name = ["ddim"] }\n', "unknown parameter"),
    "mistyped parameter": (HEADER + ENTRY + "params = { eta = [\"high\"] }\n", "must be float"),
    "steps <= 0": (HEADER + '[[technique]]\nname = "step_reduction"\nsteps = [-2]\n', "must be positive"),
    "absurd steps": (HEADER + '[[technique]]\nname = "step_reduction"\nsteps = [1000000000]\n', "exceeds"),
    "unknown dtype": (HEADER.replace("[hardware]", '[hardware]\ndtype = ["float7"]') + ENTRY, "hardware.dtype"),
    "unknown device": (HEADER.replace("[hardware]", '[hardware]\ndevice = ["npu"]') + ENTRY, "hardware.device"),
    "absent device": (HEADER.replace("[hardware]", '[hardware]\ndevice = ["cuda"]') + ENTRY, "not present"),
    "missing zoo artifact": (HEADER.replace("[model]", '[model]\npretrained = "./no/such/model"') + ENTRY,
                             "model.pretrained"),
    "missing dataset path": (HEADER.replace('dataset = "digits"', 'dataset = "folder:/no/such/images"') + ENTRY,
                             "dataset folder /no/such/images does not exist"),
    "unknown executor": (HEADER + ENTRY + '[executor]\nkind = "slurm"\n', "executor.kind"),
    "unknown top-level key": ("nmae = 'x'\n" + HEADER + ENTRY, "unknown key 'nmae'"),
    "unknown nested key": (HEADER.replace("[hardware]", "[hardware]\nthread = [2]") + ENTRY,
                           "unknown key 'hardware.thread'"),
    "bad parameter value": (HEADER + ENTRY + 'params = { sampler = ["dpm"] }\n', "sampler 'dpm' is not one of"),
    "wrong type": (HEADER.replace("[quality]", "[quality]\nseed = 'many'") + ENTRY, "'quality.seed' must be int"),
    "no techniques": (HEADER, "no [[technique]] entries"),
    "base depth out of range": (HEADER.replace("[model]", "[model]\nlayers_per_block = 9") + ENTRY,
                                "model.layers_per_block = 9 is beyond 4"),
    "unknown schedule": (HEADER.replace("[model]", '[model]\nschedule = "sigmoid"') + ENTRY,
                         "model.schedule 'sigmoid' is not one of linear, cosine"),
    "consistency knob on progressive": (HEADER + '[[technique]]\nname = "distillation"\nsteps = [1]\n'
                                        'params = { loss = ["pseudo_huber"] }\n',
                                        "loss and target_ema apply to method = consistency only"),
    "negative retries": (HEADER + ENTRY + '[executor]\nkind = "ray"\nmax_retries = -1\n',
                         "executor.max_retries must be ≥ 0"),
}


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


@pytest.fixture()
def stored(tiny_sweep, tmp_path: Path) -> Path:
    """A copy of the tiny sweep's store: results a bad command must not touch."""
    root = tmp_path / "results"
    shutil.copytree(tiny_sweep[0] / "results", root)
    return root


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_leaves_the_store_as_it_was(case: str, stored: Path, tmp_path: Path) -> None:
    if case == "absent device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    text, expected = CASES[case]
    before = _digest(stored)
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = run_cli("sweep", "--config", str(config), "--results", str(stored), "--no-progress")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("bench: error:"), result.stderr
    assert expected in lines[0], lines[0]
    assert _digest(stored) == before


def test_unwritable_results_location_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli("sweep", "--config", str(TINY_CONFIG), "--results", str(blocker / "results"), "--no-progress")
    assert result.returncode == 2 and "is not writable" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_truncated_and_corrupted_records_are_skipped_with_a_warning_naming_them(stored: Path, tmp_path: Path) -> None:
    files = sorted(stored.rglob("records/*.json"))
    truncated, garbage = files[0], files[1]
    truncated.write_text(truncated.read_text()[:100])
    garbage.write_bytes(b"\x00\xff not json")
    with pytest.warns(UserWarning) as caught:
        df = store.load(stored)
    assert len(df) == len(files) - 2
    named = " ".join(str(w.message) for w in caught)
    assert truncated.name in named and garbage.name in named

    report = run_cli("report", "--results", str(stored), "--out", str(tmp_path / "r.html"))
    assert report.returncode == 0 and truncated.name in report.stderr
    # the sweep redoes exactly the two unreadable cells and leaves the others alone
    rerun = run_cli("sweep", "--config", str(TINY_CONFIG), "--results", str(stored), "--no-progress", "--report",
                    str(tmp_path / "r.html"))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert rerun.stdout.count("already stored") == len(files) - 2
    assert len(store.load(stored)) == len(files)


def test_report_of_an_empty_store_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_cli("report", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html"))
    assert result.returncode == 2 and "holds no records" in result.stderr
    assert not (tmp_path / "r.html").exists()
