"""One fast end-to-end sweep through the CLI: store on disk, numbers, report, resume, quality reuse, failures."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from bench import registry, store
from bench.technique import Technique
from tests.conftest import TINY_CELLS, TINY_CONFIG, assert_quality_reused_exactly_where_images_match, run_cli


def test_every_cell_is_stored_ok_with_every_measurement(tiny_sweep) -> None:
    _, df, _ = tiny_sweep
    assert len(df) == TINY_CELLS and (df["status"] == "ok").all()
    assert df["spec_hash"].is_unique
    for column in ("params_total", "flops_per_call", "flops_per_image", "nfe", "latency_per_image_ms",
                   "latency_per_image_mad_ms", "latency_count", "first_call_s", "denoiser_call_median_ms",
                   "peak_rss_mib", "energy_cpu_kwh_per_image", "energy_ram_kwh_per_image", "fid", "fid_ci_low",
                   "fid_ci_high", "kid", "precision", "recall", "n_generated", "n_reference", "extractor_sha256"):
        assert df[column].notna().all(), column
    assert (df["n_generated"] == 48).all() and (df["n_reference"] == 300).all()
    assert df["energy_estimated"].all() and df["energy_gpu_kwh_per_image"].isna().all()  # no GPU: missing, not 0
    heun = df[df["param_sampler"] == "heun"].iloc[0]
    assert heun["steps"] == 3 and heun["nfe"] == 5
    assert heun["flops_per_image"] == 5 * heun["flops_per_call"]
    for raw, count in zip(df["raw"], df["latency_count"], strict=True):
        assert len(raw["latency_batch_s"]) == count >= 2


def test_quality_is_reused_across_threads_not_recomputed(tiny_sweep) -> None:
    root, df, _ = tiny_sweep
    groups: dict[str, list[dict]] = {}
    for record in store.read_records(root / "results"):
        key = json.dumps([record["spec"]["technique"], record["spec"]["params"]], sort_keys=True)
        groups.setdefault(key, []).append(record)
    assert len(groups) == TINY_CELLS // 2
    for pair in groups.values():
        assert sorted(r["spec"]["threads"] for r in pair) == [1, 2]
        assert_quality_reused_exactly_where_images_match(pair)
    assert set(df["torch_threads"]) == {1, 2}


def test_samplers_differ_in_quality(tiny_sweep) -> None:
    _, df, _ = tiny_sweep
    samplers = df[df["technique"] == "step_reduction"].drop_duplicates("param_sampler")
    assert samplers["fid"].nunique() >= 4


def test_summary_and_report(tiny_sweep) -> None:
    root, _, stdout = tiny_sweep
    assert "FID [95% CI]" in stdout and f"{TINY_CELLS} cells (0 failed)" in stdout
    page = (root / "report.html").read_text()
    assert page.count("<svg") >= 2 and "Pareto front" in page and "data:image/png;base64" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # self-contained: nothing fetched


def test_rerun_skips_stored_cells(tiny_sweep) -> None:
    root, df, _ = tiny_sweep
    before = {p.name: p.read_bytes() for p in (root / "results" / "tiny" / "records").glob("*.json")}
    result = run_cli("sweep", "--config", str(TINY_CONFIG), "--results", str(root / "results"), "--report",
                     str(root / "report2.html"), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("already stored") == TINY_CELLS
    after = {p.name: p.read_bytes() for p in (root / "results" / "tiny" / "records").glob("*.json")}
    assert before == after


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_sweep, tmp_path: Path) -> None:
    import shutil

    root, _, _ = tiny_sweep
    copy = tmp_path / "results"
    shutil.copytree(root / "results", copy)
    files = sorted((copy / "tiny" / "records").glob("*.json"))
    stale, failed = json.loads(files[0].read_text()), json.loads(files[1].read_text())
    stale["technique_version"] = 0
    failed.update(status="failed", error="RuntimeError: out of luck\ntraceback")
    files[0].write_text(json.dumps(stale))
    files[1].write_text(json.dumps(failed))
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}

    def planned(*flags: str) -> list[str]:
        result = run_cli("sweep", "--config", str(TINY_CONFIG), "--results", str(copy), "--dry-run", *flags)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    lines = planned()
    assert sum("keep: stored (ok)" in line for line in lines) == TINY_CELLS - 2
    assert any(stale["spec_hash"] in line and "keep: stale: recorded by version 0" in line and "--rerun-stale" in line
               for line in lines)
    assert any(failed["spec_hash"] in line and "keep: failed before: RuntimeError: out of luck" in line
               for line in lines)
    assert lines[-1].startswith(f"{TINY_CELLS} cells: 0 to run, {TINY_CELLS} kept")
    rerun = planned("--rerun-stale", "--retry-failed")
    assert rerun[-1].startswith(f"{TINY_CELLS} cells: 2 to run")
    assert any(line.startswith("artifacts: ") for line in rerun)
    assert before == {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}


@dataclass(frozen=True)
class _BrokenParams:
    mode: str = "boom"


class Broken(Technique):
    name = "broken"
    description = "always fails (test double)"
    Params = _BrokenParams

    def pipeline(self, params, models, steps):
        raise RuntimeError("deliberate failure")


def test_failing_technique_becomes_a_failed_record_and_the_sweep_goes_on(tmp_path: Path, monkeypatch) -> None:
    from bench.cli import main

    table = {**registry.available(), "broken": f"{__name__}:Broken"}
    monkeypatch.setattr(registry, "available", lambda: table)
    config = tmp_path / "c.toml"
    config.write_text(TINY_CONFIG.read_text().replace("threads = [1, 2]", "threads = [1]").replace(
        'params = { sampler = ["ddpm", "ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "euler", "heun"] }',
        'params = { sampler = ["ddim"] }\n\n[[technique]]\nname = "broken"\nsteps = [2]').split(
        '[[technique]]\nname = "dual_output"')[0])
    code = main(["sweep", "--config", str(config), "--results", str(tmp_path / "res"), "--report",
                 str(tmp_path / "r.html"), "--no-progress"])
    assert code == 1
    df = store.load(tmp_path / "res")
    assert sorted(df["status"]) == ["failed", "ok"]
    failed = df[df["status"] == "failed"].iloc[0]
    assert "deliberate failure" in failed["error"]
    record = json.loads((tmp_path / "res" / "tiny" / "records" / f"{failed['spec_hash']}.json").read_text())
    assert "Traceback" in record["traceback"]
    assert "deliberate failure" in (tmp_path / "r.html").read_text()
