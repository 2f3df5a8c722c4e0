"""Versions by behaviour: a technique's declared version must move exactly when the code its results depend on
does (``bench.fingerprint``); comments, docstrings and declarations move nothing."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from bench import fingerprint, registry, store, zoo
from techniques import BUILTIN
from tests.conftest import ROOT, run_cli


def test_every_built_in_technique_matches_the_fingerprint_its_version_was_recorded_at() -> None:
    now = fingerprint.current(ROOT, BUILTIN)
    assert set(now) == set(BUILTIN)
    problems = fingerprint.problems(now, fingerprint.read_lock(ROOT))
    assert not problems, "\n".join(problems)


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """A copy of the project's sources (and the lock) to change."""
    for package in fingerprint.PROJECT_PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "artifacts",
                                                                                          "data_files", "configs"))
    return tmp_path


def _edit(root: Path, module: str, old: str, new: str) -> None:
    path = fingerprint.module_file(root, module)
    text = path.read_text()
    assert old in text, (module, old)
    path.write_text(text.replace(old, new, 1))


def _problems(root: Path) -> dict[str, str]:
    lines = fingerprint.problems(fingerprint.current(root, BUILTIN), fingerprint.read_lock(root))
    return {line.split(":")[0]: line for line in lines}


def test_changing_make_sampler_fails_until_every_technique_that_calls_it_is_bumped(sources: Path) -> None:
    _edit(sources, "techniques.step_reduction", '"timestep_spacing": timestep_spacing}',
          '"timestep_spacing": timestep_spacing, "steps_offset": 1}')
    dependents = {name for name, target in BUILTIN.items()
                  if "techniques.step_reduction" in fingerprint.closure(sources, target.split(":")[0])}
    assert {"step_reduction", "feature_cache", "cache_dit", "quantization", "dual_output"} <= dependents
    assert "distillation" not in dependents  # it steps on grids of its own
    found = _problems(sources)
    assert set(found) == dependents
    assert "techniques.step_reduction" in found["feature_cache"] and "bump feature_cache's version to 2" in \
        found["feature_cache"]
    # the lock is not rewritten over a changed fingerprint at the same version...
    assert set(fingerprint.write_lock(sources, fingerprint.current(sources, BUILTIN))) == dependents
    assert set(_problems(sources)) == dependents
    # ...but once each version is bumped it is, and the check passes
    for name in dependents:
        module = BUILTIN[name].split(":")[0]
        path = fingerprint.module_file(sources, module)
        path.write_text(re.sub(r"^    version = (\d+)", lambda m: f"    version = {int(m[1]) + 1}", path.read_text(),
                               count=1, flags=re.M))
    assert all("is not recorded" in line for line in _problems(sources).values())
    assert fingerprint.write_lock(sources, fingerprint.current(sources, BUILTIN)) == []
    assert _problems(sources) == {}
    assert fingerprint.read_lock(sources)["feature_cache"]["version"] == 2


def test_comments_docstrings_claims_and_model_kinds_move_no_fingerprint(sources: Path) -> None:
    before = fingerprint.current(sources, BUILTIN)
    _edit(sources, "techniques.step_reduction", "def make_sampler(", "# a comment above it\ndef make_sampler(")
    _edit(sources, "techniques.step_reduction", '''``sample(generators, callback)``''',
          '''The sampler: ``sample(generators, callback)``''')
    _edit(sources, "bench.sampling", "def generators(", "# why: one generator per sample\ndef generators(")
    _edit(sources, "techniques.step_reduction", 'StepReduction.model_kinds = ("unconditional", "class", "text")',
          'StepReduction.model_kinds = ("unconditional", "class")')
    _edit(sources, "techniques.distillation", "(Salimans & Ho 2022, ", "(Salimans & Ho, ICLR 2022, ")
    _edit(sources, "techniques.distillation", "lr 2e-4 + EMA\"", "lr 2e-4 and an EMA\"")
    _edit(sources, "techniques.distillation", 'description = ("Distilled', 'description = ("Reworded: distilled')
    assert fingerprint.current(sources, BUILTIN) == before
    assert _problems(sources) == {}


def test_a_record_of_the_superseded_source_hash_is_version_one_and_other_versions_are_stale() -> None:
    installed = registry.installed_versions(["step_reduction", "not_installed"])
    assert set(installed) == {"step_reduction"}
    assert not store.is_stale("step_reduction", 1, installed)
    assert not store.is_stale("step_reduction", "7a42d30f579f", installed)  # the hash version 1 superseded
    assert store.is_stale("step_reduction", "0" * 12, installed) and store.is_stale("step_reduction", 2, installed)
    assert not store.is_stale("not_installed", 7, installed) and not store.is_stale("step_reduction", None, installed)


def test_a_recipe_key_takes_in_its_objective_version_from_two_on(monkeypatch) -> None:
    recipe = zoo.Recipe(name="digits8-my-loss", objective="my-loss", dataset="digits", resolution=8)
    monkeypatch.setitem(zoo.OBJECTIVE_VERSIONS, "my-loss", 1)
    first = recipe.key
    monkeypatch.setitem(zoo.OBJECTIVE_VERSIONS, "my-loss", 2)
    assert recipe.key != first  # a changed loss trains a new artifact
    from bench import recipes

    assert recipes.denoiser_recipe("mnist", 16, steps=4000).key == "8e94b6211843"  # the shipped base keeps its key


def test_versions_command_lists_versions_and_refuses_an_unknown_name() -> None:
    listed = run_cli("versions")
    assert listed.returncode == 0, listed.stderr
    assert all(f"{name} " in listed.stdout for name in BUILTIN) and "version 1" in listed.stdout
    refused = run_cli("versions", "--accept", "no_such_technique")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "no_such_technique" in refused.stderr
