"""Adding a technique: the scaffold, the conformance command, outside packages via entry points, stale versions."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import conformance, frames, registry, store
from bench.technique import Pipeline, Technique
from tests.conftest import ROOT, TINY_CONFIG, run_cli

PLUGIN = ROOT / "tests" / "data" / "plugin_package"


def _register(monkeypatch, name: str, target: str) -> None:
    table = {**registry.available(), name: target}
    monkeypatch.setattr(registry, "available", lambda: table)


def test_outside_package_registers_through_its_entry_point_and_runs_a_sweep_cell(tmp_path: Path) -> None:
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                          str(PLUGIN)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr
    env = {"PYTHONPATH": str(site)}

    listed = run_cli("techniques", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "karras_sigmas (entry point bench.techniques: bench_karras:KarrasSigmas)" in listed.stdout

    checked = run_cli("check-technique", "karras_sigmas", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    n = len(conformance.CHECKS)
    assert f"{n}/{n} checks passed" in checked.stdout

    config = tmp_path / "plugin.toml"
    config.write_text(TINY_CONFIG.read_text().split("[[technique]]")[0].replace("threads = [1, 2]", "threads = [1]")
                      + '[[technique]]\nname = "karras_sigmas"\nsteps = [4]\nparams = { sampler = ["euler"] }\n')
    swept = run_cli("sweep", "--config", str(config), "--results", str(tmp_path / "res"), "--no-progress",
                    "--report", str(tmp_path / "r.html"), env=env)
    assert swept.returncode == 0, swept.stdout + swept.stderr
    df = store.load(tmp_path / "res")
    assert list(df["status"]) == ["ok"] and list(df["technique"]) == ["karras_sigmas"]
    assert df.iloc[0]["nfe"] == 4 and df.iloc[0]["technique_version"] == 1
    assert df.iloc[0]["info"]["sigmas"] == "karras"


def test_scaffolded_technique_passes_the_contract_and_registers_itself(tmp_path: Path, monkeypatch,
                                                                       tiny_base) -> None:
    from bench.scaffold import scaffold

    package = tmp_path / "pkg"
    package.mkdir()
    shutil.copy(ROOT / "techniques" / "__init__.py", package / "__init__.py")
    tests_dir = tmp_path / "tests"
    tests_dir.mkdir()
    written = scaffold("token_budget", package, tests_dir)
    assert written == [package / "token_budget.py", tests_dir / "test_token_budget.py", package / "__init__.py"]
    namespace: dict = {}
    exec((package / "__init__.py").read_text(), namespace)
    assert namespace["BUILTIN"]["token_budget"] == "techniques.token_budget:TokenBudget"
    compile((tests_dir / "test_token_budget.py").read_text(), "test_token_budget.py", "exec")

    monkeypatch.syspath_prepend(str(package))
    _register(monkeypatch, "token_budget", "token_budget:TokenBudget")
    outcomes = conformance.run("token_budget", tiny_base)
    assert [o.check for o in outcomes if not o.passed] == [], [o.error for o in outcomes]


def test_new_technique_refuses_bad_or_taken_names(tmp_path: Path) -> None:
    for name, message in [("Bad-Name", "lower_snake_case"), ("step_reduction", "already registered")]:
        result = run_cli("new-technique", name, "--techniques-dir", str(tmp_path), "--tests-dir", str(tmp_path))
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


class GlobalNoise(Technique):
    """Breaks the contract on purpose: one batched draw from the global RNG, and no description."""

    name = "global_noise"

    @dataclass(frozen=True)
    class Params:
        scale: float = 1.0

    def pipeline(self, params, models, steps):
        denoiser = models["model"]

        def sample(gens, callback=None):
            x = torch.randn(len(gens), *denoiser.image_shape)
            for i in range(steps):
                x = x - 0.1 * denoiser(x, 999 - i)
                if callback:
                    callback(type("S", (), {"index": i})())
            return x

        return Pipeline(sample=sample, networks={"model": denoiser})


def test_check_technique_tells_the_author_what_to_fix(monkeypatch, capsys) -> None:
    from bench.cli import main

    _register(monkeypatch, "global_noise", f"{__name__}:GlobalNoise")
    assert main(["check-technique", "global_noise"]) == 1
    out = capsys.readouterr().out
    assert "FAIL check_declaration" in out and "description" in out
    assert "FAIL check_seed_determinism" in out and "per-sample generators" in out
    n = len(conformance.CHECKS)  # two fail (check_partial_work passes: there is no cache to judge)
    assert "PASS check_sampling" in out and f"{n - 2}/{n} checks passed" in out


def test_stale_records_are_marked_and_rerun_on_request(tiny_sweep, tmp_path: Path) -> None:
    root, _, _ = tiny_sweep
    copy = tmp_path / "results"
    shutil.copytree(root / "results", copy)
    record_file = sorted(copy.rglob("records/*.json"))[0]
    record = json.loads(record_file.read_text())
    record["technique_version"] = "0" * 12
    record_file.write_text(json.dumps(record))
    df = frames.load_stores([copy])
    assert df["stale"].sum() == 1 and df.loc[df["stale"], "spec_hash"].item() == record["spec_hash"]

    plain = run_cli("sweep", "--config", str(TINY_CONFIG), "--results", str(copy), "--no-progress", "--report",
                    str(tmp_path / "r.html"))
    assert plain.returncode == 0 and plain.stdout.count("stale: recorded by an older version") == 1
    assert "stale" in (tmp_path / "r.html").read_text()
    rerun = run_cli("sweep", "--config", str(TINY_CONFIG), "--results", str(copy), "--no-progress", "--report",
                    str(tmp_path / "r.html"), "--rerun-stale")
    assert rerun.returncode == 0 and rerun.stdout.count("already stored") == len(df) - 1
    assert not frames.load_stores([copy])["stale"].any()
