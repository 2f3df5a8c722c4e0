"""The report's data functions (Pareto selection, merging stores, training cost, caveats) and what the HTML says."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from bench import report
from bench.store import Store
from tests.conftest import run_cli


def _record(spec_hash: str, technique: str = "step_reduction", status: str = "ok", fid: float = 10.0,
            flops: float = 1e6, device: str = "cpu", steps: int = 5, params: dict | None = None,
            written_at: str = "2026-01-01T00:00:00+00:00", **extra) -> dict:
    record = {"spec_hash": spec_hash, "status": status, "written_at": written_at,
              "spec": {"technique": technique, "params": params or {"sampler": "ddim"}, "steps": steps,
                       "device": device, "dtype": "float32", "threads": 1, "compile": False, "batch": 10, "seed": 0,
                       "n_samples": 10}}
    if status == "ok":
        record["metrics"] = {"fid": fid, "fid_ci_low": fid - 1, "fid_ci_high": fid + 1, "flops_per_image": flops,
                             "nfe": steps, "n_generated": 10, "n_reference": 20, "latency_per_image_ms": flops / 1e6}
    record.update(extra)
    return record


def test_pareto_front_marks_exactly_the_non_dominated_rows_per_group() -> None:
    df = pd.DataFrame({
        "name": ["a", "b", "c", "d", "e", "f", "g", "h"],
        "cost": [1.0, 2.0, 3.0, 2.0, 4.0, math.nan, 1.0, 5.0],
        "fid": [10.0, 5.0, 6.0, 5.0, 1.0, 0.5, 10.0, 2.0],
        "device": ["cpu"] * 6 + ["cuda", "cuda"],
    })
    marked = report.pareto_front(df, "cost", "fid", by=["device"])
    front = set(marked.loc[marked["on_front"], "name"])
    # c is dominated by b; d ties b exactly (one of the pair is kept); f has no cost; cuda's g and h are their own
    assert {"a", "e", "g", "h"} <= front and "c" not in front and "f" not in front
    assert len(front & {"b", "d"}) == 1
    pooled = report.pareto_front(df, "cost", "fid")
    assert set(pooled.loc[pooled["on_front"], "name"]) & {"g", "h"} == set()  # cpu rows dominate once pooled
    assert list(df.columns) == ["name", "cost", "fid", "device"]  # the input is not modified


def test_merging_stores_keeps_the_newest_record_of_a_cell(tmp_path: Path) -> None:
    Store(tmp_path / "a").prepare()
    Store(tmp_path / "b").prepare()
    Store(tmp_path / "a").write(_record("c1", fid=20.0, written_at="2026-01-01T00:00:00+00:00"))
    Store(tmp_path / "a").write(_record("c2", fid=7.0))
    Store(tmp_path / "b").write(_record("c1", fid=12.0, written_at="2026-02-01T00:00:00+00:00"))
    df = report.load_stores([tmp_path / "a", tmp_path / "b"])
    assert sorted(df["spec_hash"]) == ["c1", "c2"]
    assert df.set_index("spec_hash").loc["c1", "fid"] == 12.0


def test_training_costs_list_each_artifact_once_with_its_users() -> None:
    summary = {"recipe": "mnist16-dual-unet", "key": "k1", "train_steps": 4000, "train_wall_s": 900.0,
               "train_device": "Some CPU"}
    base = {**summary, "recipe": "mnist16-epsilon-unet", "key": "k0"}
    df = pd.DataFrame([
        {"status": "ok", "technique": "dual_output", "artifacts": {"model": base, "dual": summary}},
        {"status": "ok", "technique": "step_reduction", "artifacts": {"model": base}},
        {"status": "failed", "technique": "x", "artifacts": None},
    ])
    costs = report.training_costs(df)
    assert list(costs["artifact"]) == ["mnist16-dual-unet", "mnist16-epsilon-unet"]
    assert costs.set_index("key").loc["k0", "used by"] == "dual_output, step_reduction"
    assert costs.set_index("key").loc["k1", "train wall s"] == 900.0


def test_every_stored_string_is_escaped_and_failures_and_stale_cells_are_explained(tmp_path: Path) -> None:
    hostile = "<script>alert('x')</script>"
    s = Store(tmp_path / "s")
    s.prepare()
    s.write(_record("ok1", params={"sampler": "ddim", "note": hostile}, technique_version="0ld"))
    s.write(_record("bad1", status="failed", error=f"RuntimeError: {hostile}\nmore lines"))
    s.write(_record("skip1", technique=hostile, status="skipped", reason="cuda is not available here"))
    out = report.write(tmp_path / "s", tmp_path / "r.html")
    page = out.read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "1 cell(s) failed" in page and "cuda is not available here" in page
    assert "older version of step_reduction" in page  # the stale record is named in the caveats
    assert "compare rows only at equal N" in page


def test_report_cli_merges_stores_and_refuses_an_empty_one(tiny_sweep, tmp_path: Path) -> None:
    root, df, _ = tiny_sweep
    other = tmp_path / "other"
    Store(other).prepare()
    Store(other).write(_record("extra-cell", technique="step_reduction", fid=99.0))
    out = tmp_path / "merged.html"
    result = run_cli("report", "--results", str(root / "results"), str(other), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and out.stat().st_size > 10_000
    page = out.read_text()
    assert f"{len(df) + 1} cells" in page and "extra-cell" in page

    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("report", "--results", str(empty), "--out", str(tmp_path / "none.html"))
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "holds no records" in result.stderr and not (tmp_path / "none.html").exists()


@pytest.mark.parametrize("pool", [False, True])
def test_hardware_groups_get_their_own_fronts_unless_pooled(tmp_path: Path, pool: bool) -> None:
    s = Store(tmp_path / "s")
    s.prepare()
    s.write(_record("a", device="cpu", fid=5.0))
    s.write(_record("b", device="cuda", fid=6.0, params={"sampler": "unipc"}))
    page = report.write(tmp_path / "s", tmp_path / "r.html", pool_hardware=pool).read_text()
    titles = page.count("FID vs cost — ")
    assert titles == (1 if pool else 2)


def test_an_unchanged_store_leaves_its_report_alone_and_any_change_rerenders_it(tmp_path: Path) -> None:
    s = Store(tmp_path / "s")
    s.prepare()
    s.write(_record("a", fid=5.0))
    out = report.write(tmp_path / "s", tmp_path / "r.html", skip_unchanged=True)
    out.write_text(out.read_text().replace("bench report", "MARK", 1))  # what a re-render would undo
    report.write(tmp_path / "s", out, skip_unchanged=True)
    assert "MARK" in out.read_text()  # same records, options and code: left as it is
    report.write(tmp_path / "s", out, skip_unchanged=True, reference="step_reduction sampler=unipc")
    assert "MARK" not in out.read_text()  # another option: rendered again
    out.write_text(out.read_text().replace("bench report", "MARK", 1))
    s.write(_record("b", fid=6.0, params={"sampler": "unipc"}))
    report.write(tmp_path / "s", out, skip_unchanged=True)
    page = out.read_text()
    assert "MARK" not in page and "2 cells" in page
