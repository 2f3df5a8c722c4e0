"""Sweeps that survive: process and Ray executors, failures of every kind, kill -9 and resume, concurrent sweeps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import store
from tests.conftest import ROOT, TINY_CONFIG, assert_quality_reused_exactly_where_images_match, run_cli
from tests.faulty_techniques import register_entry_points

HEADER = TINY_CONFIG.read_text().split("[[technique]]")[0].replace("threads = [1, 2]", "threads = [1]")


def _config(tmp_path: Path, techniques: str, name: str = "c.toml", executor: str = "") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + techniques + executor)
    return path


def _entry(name: str, steps: str = "[3]", params: str = "") -> str:
    return f'[[technique]]\nname = "{name}"\nsteps = {steps}\n' + (f"params = {params}\n" if params else "") + "\n"


def _records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("records/*.json"))]


def _comparable(record: dict) -> dict:
    """What must not depend on the executor: the cell, its status and everything but timings and provenance."""
    m = record.get("metrics", {})
    return {"spec": record["spec"], "status": record["status"], "nfe": m.get("nfe"),
            "flops_per_image": m.get("flops_per_image"), "params_total": m.get("params_total"),
            "fid": m.get("fid"), "kid": m.get("kid"), "precision": m.get("precision"), "recall": m.get("recall")}


def test_process_executor_isolates_crashes_oom_and_timeouts_and_retry_reruns_only_those(tmp_path: Path) -> None:
    env = {"PYTHONPATH": os.pathsep.join([str(register_entry_points(tmp_path / "site")), str(ROOT)])}
    config = _config(tmp_path, _entry("step_reduction", params='{ sampler = ["ddim"] }') + _entry("kill_self")
                     + _entry("memory_hog") + _entry("sleepy"), executor='[executor]\nkind = "process"\n'
                     'timeout_s = 20\n')
    args = ["sweep", "--config", str(config), "--results", str(tmp_path / "res"), "--no-progress", "--report",
            str(tmp_path / "r.html")]
    result = run_cli(*args, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "4 cells (3 failed)" in result.stdout
    by_technique = {r["spec"]["technique"]: r for r in _records(tmp_path / "res")}
    assert by_technique["step_reduction"]["status"] == "ok"
    features = by_technique["step_reduction"]["features"]["generated"]  # carried back from the worker process
    assert store.load_features(tmp_path / "res" / "tiny", features).shape == (48, 64)
    assert "killed by SIGKILL" in by_technique["kill_self"]["error"]
    assert by_technique["memory_hog"]["error"].startswith("out of memory")
    assert by_technique["sleepy"]["error"].startswith("timeout")
    assert (tmp_path / "r.html").exists()

    retry = run_cli(*args, "--retry-failed", "--timeout", "5", env=env)
    assert retry.returncode == 1
    assert retry.stdout.count("already stored (ok)") == 1 and retry.stdout.count("FAILED") == 3
    assert len(_records(tmp_path / "res")) == 4


def test_process_executor_records_equal_inline_records(tiny_sweep, tmp_path: Path) -> None:
    config = _config(tmp_path, _entry("step_reduction", params='{ sampler = ["ddim", "dpmpp_2m"] }'),
                     executor='[executor]\nkind = "process"\n')
    result = run_cli("sweep", "--config", str(config), "--results", str(tmp_path / "res"), "--no-progress",
                     "--report", str(tmp_path / "r.html"))
    assert result.returncode == 0, result.stdout + result.stderr
    inline = {r["spec_hash"]: r for r in _records(tiny_sweep[0] / "results")}
    process = _records(tmp_path / "res")
    assert len(process) == 2
    for record in process:  # same cell spec as the tiny sweep's 1-thread cells, so the same spec hash
        assert _comparable(record) == _comparable(inline[record["spec_hash"]])


def _sweep_process(config: Path, results: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", "sweep", "--config", str(config), "--results",
                             str(results), "--no-progress", "--report", str(results / "r.html")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


def test_kill_9_mid_sweep_then_rerun_completes_without_loss_or_duplicates(tmp_path: Path) -> None:
    config = _config(tmp_path, _entry("step_reduction", "[3, 4, 5]", '{ sampler = ["ddim", "dpmpp_2m", "unipc"] }'))
    results = tmp_path / "res"
    sweep = _sweep_process(config, results)
    deadline = time.time() + 300
    while len(list(results.rglob("records/*.json"))) < 3 and time.time() < deadline and sweep.poll() is None:
        time.sleep(0.2)
    os.kill(sweep.pid, signal.SIGKILL)
    sweep.wait()
    done_before = store.load(results)  # readable right after the kill
    assert 3 <= len(done_before) < 9 and done_before["spec_hash"].is_unique and (done_before["status"] == "ok").all()

    rerun = run_cli("sweep", "--config", str(config), "--results", str(results), "--no-progress", "--report",
                    str(results / "r.html"))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert rerun.stdout.count("already stored") == len(done_before)  # nothing finished is redone
    assert rerun.stdout.count(": FID") == 9 - len(done_before)
    after = store.load(results)
    assert len(after) == 9 and after["spec_hash"].is_unique and (after["status"] == "ok").all()
    assert not list(results.rglob("records/.claims/*"))  # the killed sweep's claim was taken over and released


def test_two_sweeps_on_one_store_train_once_split_the_cells_and_leave_it_consistent(tmp_path: Path) -> None:
    config = _config(tmp_path, _entry("step_reduction", "[3, 4]", '{ sampler = ["ddim", "dpmpp_2m", "unipc"] }'))
    results = tmp_path / "res"
    empty_zoo = {"BENCH_ZOO": str(tmp_path / "zoo")}  # both sweeps find nothing trained: the zoo's lock decides
    first, second = _sweep_process(config, results, empty_zoo), _sweep_process(config, results, empty_zoo)
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert sum(out.count("; training it (") for out in outputs) == 2, outputs  # the classifier and the base model
    ran = sum(out.count(": FID") for out in outputs)
    assert ran == 6, outputs  # every cell ran exactly once across the two sweeps
    df = store.load(results)
    assert len(df) == 6 and df["spec_hash"].is_unique and (df["status"] == "ok").all()
    assert not list(results.rglob("*.tmp"))


def test_ray_executor_records_equal_inline_records_and_no_cell_rescores_images_another_scored(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    entries = _entry("step_reduction", params='{ sampler = ["ddim", "dpmpp_2m"] }')
    inline = _config(tmp_path, entries, "inline.toml")
    # batch 8 gives batch 16's images up to kernel rounding: where byte-identical, one cell of each pair scores and the
    # other waits for it and reuses that
    on_ray = tmp_path / "ray.toml"
    on_ray.write_text(HEADER.replace("batch = [16]", "batch = [16, 8]") + entries
                      + '[executor]\nkind = "ray"\nlocal_cpus = 2\ntimeout_s = 300\n')
    for config, results in [(inline, "inline"), (on_ray, "ray")]:
        result = run_cli("sweep", "--config", str(config), "--results", str(tmp_path / results), "--no-progress",
                         "--report", str(tmp_path / f"{results}.html"))
        assert result.returncode == 0, result.stdout + result.stderr
    a = {r["spec_hash"]: _comparable(r) for r in _records(tmp_path / "inline")}
    ray_records = _records(tmp_path / "ray")
    b = {r["spec_hash"]: _comparable(r) for r in ray_records if r["spec"]["batch"] == 16}
    assert len(a) == 2 and a == b
    assert all(r["execution"]["executor"] == "ray" and r["execution"]["attempts"] == 1 for r in ray_records)
    for sampler in ("ddim", "dpmpp_2m"):
        pair = [r for r in ray_records if r["spec"]["params"]["sampler"] == sampler]
        assert len(pair) == 2
        assert_quality_reused_exactly_where_images_match(pair)


def test_ray_without_ray_installed_or_reachable_is_one_line(tmp_path: Path) -> None:
    config = _config(tmp_path, _entry("step_reduction", params='{ sampler = ["ddim"] }'))
    result = run_cli("sweep", "--config", str(config), "--results", str(tmp_path / "res"), "--ray-address",
                     "ray://127.0.0.1:1", "--no-progress")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Ray" in result.stderr
    assert not list((tmp_path / "res").rglob("records/*.json"))
