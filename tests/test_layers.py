"""The layers of ``pyproject.toml``'s import-linter contracts hold, and they do decide: an import that climbs a layer
(function-level ones included) or a technique that reaches into the harness breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytest.importorskip("importlinter")


def _lint(root: Path) -> subprocess.CompletedProcess:
    script = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports())"
    return subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(root)})


def test_the_layers_and_the_toolkit_contract_hold() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    for package in ("bench", "techniques"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__", "artifacts", "data_files", "configs"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize("module, line, broken", [
    ("bench/store.py", "    from bench import registry  # a store that loads plugins", "bench is layered"),
    ("bench/compare.py", "    from bench.report import render  # the old circle", "bench is layered"),
    ("techniques/feature_cache.py", "from bench.runner import CellRunner  # noqa", "techniques use the toolkit"),
])
def test_an_import_that_climbs_a_layer_breaks_a_contract(sources: Path, module: str, line: str, broken: str) -> None:
    path = sources / module
    text = path.read_text()
    if line.startswith("    "):  # a function-level import, as the circle used to hide in
        text += f"\n\ndef _climbs() -> None:\n{line}\n"
    else:
        text = text.replace("\nfrom bench", f"\n{line}\nfrom bench", 1)
    path.write_text(text)
    result = _lint(sources)
    out = " ".join(result.stdout.split())  # the listing wraps long contract names
    assert result.returncode == 1 and "1 broken" in out, result.stdout + result.stderr
    assert broken in out[max(0, out.index(" BROKEN") - 160):out.index(" BROKEN")], out
