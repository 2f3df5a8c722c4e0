"""Shared fixtures. Every test writes its zoo, caches and stores under a temporary folder, never the user's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = ROOT / "tests" / "data" / "tiny.toml"
TINY_CELLS = 22  # 7 samplers + dual_output + ode_unet + truncation + distillation, at 1 and 2 threads


@pytest.fixture(scope="session", autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("bench-home")
    os.environ["BENCH_ZOO"] = str(home / "zoo")
    os.environ["BENCH_CACHE"] = str(home / "cache")
    # 1 thread unless asked: BENCH_TEST_THREADS=2 runs the suite on other kernels' blocking, which exposes any test
    # that assumes batched floats are bit-identical (bench.sampling's seed-only rule says what is promised)
    torch.set_num_threads(int(os.environ.get("BENCH_TEST_THREADS", "1")))
    return home


@pytest.fixture(scope="session")
def tiny_base():
    """The recipe of a tiny ε-model on sklearn digits 8×8 (60 steps: seconds); techniques derive theirs from it."""
    from bench import recipes

    return recipes.denoiser_recipe("digits", 8, steps=60)


@pytest.fixture(scope="session")
def tiny_denoiser(tiny_base):
    """The tiny ε-model, trained through the zoo."""
    from bench import train
    from bench.model import load_denoiser

    return load_denoiser(train.ensure(tiny_base, progress=False).path)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m bench ARGS`` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=900)


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory):
    """The tiny sweep run once through the CLI: (folder, its store as a DataFrame, stdout); report at report.html."""
    from bench import store

    root = tmp_path_factory.mktemp("sweep")
    result = run_cli("sweep", "--config", str(TINY_CONFIG), "--results", str(root / "results"), "--report",
                     str(root / "report.html"), "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    return root, store.load(root / "results"), result.stdout


def assert_quality_reused_exactly_where_images_match(records: list[dict]) -> None:
    """Stored cells that differ only in threads or batch promise the same images up to kernel rounding, not bit for
    bit (bench.sampling): a cell reuses another's quality exactly where their stored uint8 digests agree — never
    scores byte-identical images twice, never reuses from images that differ."""
    from bench.images import same_images

    cells = [{**r["metrics"], "spec_hash": r["spec_hash"], "image_digests": r["image_digests"]} for r in records]
    by_hash = {c["spec_hash"]: c for c in cells}
    scored = [c for c in cells if c["quality_reused_from"] is None]
    assert scored, "every cell reused quality: none scored its images"
    for c in cells:
        if c["quality_reused_from"] is not None:
            source = by_hash[c["quality_reused_from"]]
            assert same_images(source["image_digests"], c["image_digests"]), c["spec_hash"]
            assert c["fid"] == source["fid"]
    for i, a in enumerate(scored):
        for b in scored[i + 1:]:
            assert not same_images(a["image_digests"], b["image_digests"]), "byte-identical images scored twice"
