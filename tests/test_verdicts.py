"""Paper claims judged on stored cells: each rule decides as stated, missing cells are undecided, the CLI and the
report show the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import verdicts
from bench.compare import Comparer
from bench.verdicts import CellRef, Claim
from tests.conftest import run_cli

DDIM = CellRef("tiny", "step_reduction", 3, {"sampler": "ddim"})
DDPM = CellRef("tiny", "step_reduction", 3, {"sampler": "ddpm"})


def test_quality_verdict_is_the_paired_comparison_and_flips_with_the_roles(tiny_sweep) -> None:
    root, _, _ = tiny_sweep
    results = root / "results"
    cache: dict = {}
    ddim, ddpm = verdicts.find(results, DDIM, cache), verdicts.find(results, DDPM, cache)
    assert ddim["threads"] == 2  # the default hardware point of a store that swept threads
    d = Comparer().compare(ddpm, ddim)["fid"]
    expected = "reproduced" if d.high < 0 else "not reproduced" if d.low > 0 else "undecided"
    forward = verdicts.judge(Claim("ddim beats ddpm", "r", "quality", DDIM, DDPM), results)
    assert forward.verdict == expected and f"ΔFID {d.delta:+.2f} [{d.low:+.2f}, {d.high:+.2f}]" in forward.result
    backward = verdicts.judge(Claim("ddpm beats ddim", "r", "quality", DDPM, DDIM), results)
    flipped = {"reproduced": "not reproduced", "not reproduced": "reproduced", "undecided": "undecided"}
    assert backward.verdict == flipped[expected]


def test_ratio_gate_and_missing_cells(tiny_sweep) -> None:
    root, df, _ = tiny_sweep
    results = root / "results"
    ode = CellRef("tiny", "ode_unet", 3)
    cache: dict = {}
    ratio = verdicts.find(results, ode, cache)["params_total"] / verdicts.find(results, DDIM, cache)["params_total"]
    close = verdicts.judge(Claim("c", "r", "ratio", ode, DDIM, "params_total", ratio * 0.9), results)
    far = verdicts.judge(Claim("c", "r", "ratio", ode, DDIM, "params_total", ratio / 2), results)
    assert (close.verdict, far.verdict) == ("reproduced", "not reproduced") and f"{ratio:.2f}×" in close.result
    dual = verdicts.find(results, CellRef("tiny", "dual_output", 3), cache)
    curve = dual["observations"]["gate_curve"]
    gate = verdicts.judge(Claim("g", "r", "gate", CellRef("tiny", "dual_output", 3)), results)
    crosses = curve[0][1] >= 0.5 > curve[-1][1]
    assert gate.verdict == ("reproduced" if crosses else "not reproduced")
    assert f"gate {curve[0][1]:.2f} at t = {curve[0][0]:g}" in gate.result
    missing = verdicts.judge(Claim("m", "r", "quality", CellRef("elsewhere", "step_reduction", 3), DDIM), results)
    assert missing.verdict == "undecided" and "not measured" in missing.why and "results/elsewhere" in missing.why


def test_cli_prints_every_registered_claim_and_refuses_a_missing_folder(tiny_sweep, tmp_path: Path) -> None:
    root, _, _ = tiny_sweep
    result = run_cli("verdicts", "--results", str(root / "results"), "--markdown")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("| technique | claim (paper, number) | recipe | result | verdict | why |")
    assert len(lines) == 2 + len(verdicts.all_claims())  # header, rule, one row per claim and recipe
    # the shipped stores are not under this folder: every claim says what is missing rather than guessing
    assert all("not measured" in line for line in lines[2:])
    bad = run_cli("verdicts", "--results", str(tmp_path / "nope"))
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"bench: error: --results {tmp_path / 'nope'} is not a folder of results stores"]


@pytest.mark.parametrize("technique", ["dual_output", "distillation"])
def test_report_shows_each_techniques_claims(tiny_sweep, technique: str) -> None:
    root, _, _ = tiny_sweep
    html = (root / "report.html").read_text()
    start = html.index(f"<h3>{technique}: the paper's claims and their verdicts</h3>")
    assert "undecided" in html[start:start + 20_000]


def test_stating_a_claim_never_marks_stored_results_stale() -> None:
    """Claims are declarations: a technique's behaviour fingerprint leaves them out, with the constants only they
    read, so no claim's text or cells can demand a new version (tests/test_versions.py changes one)."""
    from bench import fingerprint, registry

    for name in {name for name, _ in verdicts.all_claims()}:
        technique = type(registry.get(name))
        path = fingerprint.module_file(fingerprint.project_root(), technique.__module__)
        source = path.read_text()
        assert f"{technique.__name__}.claims = " in source and "Claim(" in source, name
        assert "Claim" not in fingerprint.normalized(source), name
