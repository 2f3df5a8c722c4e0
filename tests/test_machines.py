"""Hardware as an axis: machine identity in every cost's key, quality reused across machines only on proof, the noise
guard, outputs where the user asked, the roofline, hardware grids, and the CUDA path without a GPU."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest
import torch

from bench import cli, executors, machine, report, store, sweep
from bench import config as cfg
from bench.errors import UserError
from bench.measure import latency, memory, noise, roofline
from tests.conftest import ROOT, run_cli

MINI = """
name = "mini"
[model]
dataset = "digits"
resolution = 8
train_steps = 60
[quality]
n_samples = 24
extractor_steps = 150
reference_n = 300
bootstrap = 10
[latency]
min_repeats = 2
min_seconds = 0.0
denoiser_repeats = 3
[hardware]
batch = [12]
threads = [1]
[[technique]]
name = "step_reduction"
steps = [2, 3]
params = { sampler = ["ddim"] }
"""


def _config(tmp_path: Path, text: str = MINI, **latency_overrides) -> cfg.SweepConfig:
    path = tmp_path / "mini.toml"
    path.write_text(text)
    config = dataclasses.replace(cfg.load(path), results=str(tmp_path / "results"))
    if latency_overrides:
        config = dataclasses.replace(config, latency=dataclasses.replace(config.latency, **latency_overrides))
    return config


def _other_machine(monkeypatch: pytest.MonkeyPatch, cores: int) -> str:
    fake = {**machine.fingerprint(), "cores": cores}
    monkeypatch.setattr(machine, "fingerprint", lambda: fake)
    return machine.machine_id(fake)


# -- identity ---------------------------------------------------------------------------------------------------------
def test_fingerprint_names_the_machine_and_the_id_follows_it() -> None:
    fp = machine.fingerprint()
    assert fp["cores"] == len(os.sched_getaffinity(0)) and fp["torch"] == torch.__version__
    assert fp["memory_gib"] and fp["cpu_model"]
    one, two = machine.machine_id({**fp, "cores": 1}), machine.machine_id({**fp, "cores": 2})
    assert one != two and "-1c-" in one and "-2c-" in two
    assert machine.machine_id({**fp, "torch": "0.0"}) != machine.machine_id(fp)  # another build, another machine
    gpu = machine.machine_id({**fp, "gpu_model": "NVIDIA H100 80GB HBM3", "gpu_count": 8})
    assert "8xh100" in gpu
    assert machine.legacy_id({"cpu_model": "AMD EPYC 7B13", "cpu_count": 2}) == "unfingerprinted:amd-epyc-7b13-2c"


def test_cells_carry_the_machine_so_another_machine_measures_its_own_costs(tmp_path, monkeypatch, capsys) -> None:
    config = _config(tmp_path)
    here = machine.machine_id()
    first = sweep.run(config, progress=False)
    assert all(r["status"] == "ok" and r["spec"]["machine"] == here == r["machine"] for r in first)
    assert all(r["fingerprint"] == machine.fingerprint() and len(r["image_digests"]["sha256"]) == 24 for r in first)

    other = _other_machine(monkeypatch, cores=64)
    second = sweep.run(config, progress=False)
    out = capsys.readouterr().out
    assert "already stored" not in out  # another machine's costs are not this one's
    assert {r["spec_hash"] for r in second}.isdisjoint(r["spec_hash"] for r in first)
    for r in second:
        m = r["metrics"]
        assert r["machine"] == other and m["quality_reused_from"] in {x["spec_hash"] for x in first}
        assert f"on machine {here}" in m["quality_note"] and "byte-identical" in m["quality_note"]
    # fresh workers (process, Ray) are handed the other machine's records too, to check the same proof
    workers = executors._Workers(config)
    for record in first:
        workers.remember(sweep.Cell(record["spec"]), record)
    for cell in sweep.expand(config, machine=other):
        assert [r["spec_hash"] for _, r in workers.prior_for(cell)] == [
            r["spec_hash"] for r in first if sweep.Cell(r["spec"]).images_key == cell.images_key]

    df = store.load(config.store_path)
    assert set(df["machine"]) == {here, other}
    assert cli.main(["machines", str(config.store_path)]) == 0
    listing = capsys.readouterr().out
    assert here in listing and other in listing and "64 cores visible" in listing

    page = report.render(report.load_stores([config.store_path]), "two machines")
    assert "Machine vs machine" in page and page.count(f"{other} · cpu") >= 1
    speedups = report.machine_speedups(report.ok_rows(df))
    assert len(speedups) == 2 and set(speedups["machine B"]) == {other}


def test_quality_is_not_reused_from_a_machine_whose_images_differ(tmp_path, monkeypatch) -> None:
    config = _config(tmp_path)
    first = sweep.run(config, progress=False)
    st = store.Store(config.store_path)
    for record in first:  # as if the other machine's kernels had rounded one pixel differently
        stored = st.get(record["spec_hash"])
        stored["image_digests"]["sha256"][3] = "0" * 16
        st.write(stored)
    _other_machine(monkeypatch, cores=63)
    for r in sweep.run(config, progress=False):
        if r["spec_hash"] not in {x["spec_hash"] for x in first}:
            assert r["metrics"]["quality_reused_from"] is None and r["metrics"]["n_newly_generated"] == 24


def test_a_cell_for_another_machine_fails_with_the_reason(tmp_path) -> None:
    from bench.executors import run_cell
    from bench.runner import CellRunner

    config = _config(tmp_path)
    cell = sweep.expand(config, machine="someone-elses-box")[0]
    record = run_cell(CellRunner(config, store.Store(config.store_path), progress=False), cell)
    assert record["status"] == "failed" and "someone-elses-box" in record["error"]


# -- noise guard ------------------------------------------------------------------------------------------------------
def test_noise_rule_names_each_sign() -> None:
    quiet = {"others_cpu_cores": 0.02, "steal_fraction": 0.0, "cores": 2}
    assert noise.suspect_reasons([1.0, 1.02, 0.99, 1.01], 1.0, quiet) == []
    assert "disperse" in noise.suspect_reasons([1.0, 1.6, 0.7, 1.3], 1.0, quiet)[0]
    assert "36.00×" in noise.suspect_reasons([36.0, 36.0, 36.0], 1.0, quiet)[0]  # the 43 vs 1.2 ms/image case
    assert "other processes" in noise.suspect_reasons([1.0] * 3, 1.0, {**quiet, "others_cpu_cores": 1.4})[0]
    assert "stole" in noise.suspect_reasons([1.0] * 3, 1.0, {**quiet, "steal_fraction": 0.2})[0]


def _spin(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def _busy(seconds: float) -> list[multiprocessing.Process]:
    stop_at = time.time() + seconds
    procs = [multiprocessing.get_context("fork").Process(target=_spin, args=(stop_at,), daemon=True)
             for _ in os.sched_getaffinity(0)]
    for p in procs:
        p.start()
    return procs


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc/stat")
def test_monitor_sees_a_competing_process() -> None:
    procs = _busy(1.5)
    time.sleep(0.3)
    with noise.CpuMonitor() as load:
        time.sleep(0.8)
    for p in procs:
        p.join()
    assert load.result()["others_cpu_cores"] > noise.OTHERS_CORES_MAX


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc/stat")
def test_a_contended_cell_is_remeasured_then_stored_flagged(tmp_path, capsys) -> None:
    config = _config(tmp_path, MINI.replace("steps = [2, 3]", "steps = [2]"), remeasure=1, min_seconds=0.5)
    sweep.expand(config)
    sweep.run(dataclasses.replace(config, name="warm"), progress=False)  # trains the tiny models beforehand
    procs = _busy(120)
    try:
        (record,) = sweep.run(config, progress=False)
    finally:
        for p in procs:
            p.terminate()
    m = record["metrics"]
    assert record["status"] == "ok" and m["latency_attempts"] == 2
    assert "other processes used" in m["latency_suspect"] and len(record["raw"]["latency_attempts"]) == 1
    assert "SUSPECT" in report.summary_table(store.load(config.store_path))
    assert "suspect timing" in report.render(store.load(config.store_path), "contended")


# -- outputs, roofline, grids -----------------------------------------------------------------------------------------
def test_report_goes_beside_a_store_the_user_named(tmp_path) -> None:
    path = tmp_path / "mini.toml"
    path.write_text(MINI.replace('steps = [2, 3]', 'steps = [2]'))
    result = run_cli("sweep", "--config", str(path), "--results", str(tmp_path / "elsewhere"), "--no-progress",
                     cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "elsewhere" / "mini.html").is_file() and not (ROOT / "reports" / "mini.html").exists()
    record = next((tmp_path / "elsewhere" / "mini" / "records").glob("*.json"))
    assert json.loads(record.read_text())["roofline"]["peak_flops_per_s"] > 0


def test_roofline_peak_is_cached_per_machine_and_cells_reach_a_fraction_of_it(tmp_path, tiny_sweep) -> None:
    first = roofline.peak("test-box", "cpu", "float32", 1)
    cached = Path(roofline.cache_dir() / "test-box-cpu-float32-1t.json")
    assert cached.is_file() and roofline.peak("test-box", "cpu", "float32", 1) == first
    assert first["peak_flops_per_s"] >= first["matmul_flops_per_s"] > 0 and first["bandwidth_bytes_per_s"] > 0
    _, df, _ = tiny_sweep
    assert ((df["fraction_of_peak"] > 0) & (df["fraction_of_peak"] < 1.5)).all()
    assert (df["achieved_flops_per_s"] * df["latency_per_image_ms"] / 1e3 - df["flops_per_image"]).abs().max() < 1
    page = report.render(df, "roofline")
    assert "Achieved FLOP/s against the machine" in page and "% of peak FLOP/s" in page


def test_hardware_grids_join_and_errors_name_the_grid(tmp_path) -> None:
    text = MINI.replace("[hardware]\nbatch = [12]\nthreads = [1]",
                        "[[hardware]]\nbatch = [1, 12]\nthreads = [1]\n[[hardware]]\nbatch = [12]\ncompile = [true]")
    cells = sweep.expand(_config(tmp_path, text))
    points = {(c.spec["batch"], c.spec["threads"], c.spec["compile"]) for c in cells}
    assert points == {(1, 1, False), (12, 1, False), (12, 2, True)} and len(cells) == 6
    bad = text.replace("compile = [true]", "compile = [true]\ndtype = ['int4']")
    with pytest.raises(UserError, match=r"hardware\[1\]\.dtype"):
        _config(tmp_path, bad)


# -- the CUDA path, exercised without a GPU ---------------------------------------------------------------------------
def test_cuda_timing_synchronises_on_both_sides(monkeypatch) -> None:
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    latency.timed(lambda: events.append("work"), "cuda:0")
    assert events == ["sync", "work", "sync"]
    events.clear()
    latency.timed(lambda: events.append("work"), "cpu")
    assert events == ["work"]


def test_cuda_memory_reports_allocated_and_reserved_apart(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: calls.append(("reset", str(d))))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 3 * 2**20)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda d: 8 * 2**20)
    with memory.PeakMemory("cuda:1") as mem:
        pass
    assert calls == [("reset", "cuda:1")]
    assert mem.result()["cuda_max_allocated_mib"] == 3 and mem.result()["cuda_max_reserved_mib"] == 8


def test_fingerprint_of_a_gpu_machine(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H200")
    monkeypatch.setattr(machine, "accelerator_driver", lambda: "570.1")
    machine.fingerprint.cache_clear()
    try:
        fp = machine.fingerprint()
    finally:
        machine.fingerprint.cache_clear()
    assert fp["gpu_model"] == "NVIDIA H200" and fp["gpu_count"] == 2 and fp["accelerator_driver"] == "570.1"
    assert "-2xh200-" in machine.machine_id(fp) and "2× NVIDIA H200 (driver 570.1)" in machine.describe(fp)
