"""Config files and dry runs (bad values: tests/test_hostile_input.py)."""

from pathlib import Path

from tests.conftest import ROOT, TINY_CELLS, TINY_CONFIG, run_cli


def test_missing_config_file(tmp_path: Path) -> None:
    result = run_cli("sweep", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_dry_run_lists_cells_without_running(tmp_path: Path) -> None:
    result = run_cli("sweep", "--config", str(TINY_CONFIG), "--results", str(tmp_path / "res"), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"{TINY_CELLS} cells" in result.stdout and "sampler=heun" in result.stdout
    assert not (tmp_path / "res").exists()


def test_default_config_expands() -> None:
    result = run_cli("sweep", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "sampler=dpmpp_3m" in result.stdout and "n=1000" in result.stdout
    result = run_cli("sweep", "--dry-run", "--config", str(ROOT / "bench" / "configs" / "samplers.toml"))
    assert result.returncode == 0 and "steps=1000" in result.stdout


def test_report_of_empty_store_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "records").mkdir(parents=True)
    result = run_cli("report", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html"))
    assert result.returncode == 2 and "holds no records" in result.stderr
