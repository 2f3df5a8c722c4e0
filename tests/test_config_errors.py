"""Bad input: one clear line naming the problem, a non-zero exit, and nothing stored."""

from pathlib import Path

import pytest

from tests.conftest import TINY_CELLS, TINY_CONFIG, run_cli

BAD_CONFIGS = {
    "unknown top-level key": ("nmae = 'x'\n", "unknown key 'nmae'"),
    "unknown nested key": ("[hardware]\nthread = [2]\n", "unknown key 'hardware.thread'"),
    "malformed toml": ("[hardware\n", "not valid TOML"),
    "unknown technique": ("[[technique]]\nname = 'nope'\nsteps = [5]\n", "unknown technique 'nope'"),
    "unknown parameter": ("[[technique]]\nname = 'step_reduction'\nsteps = [5]\nparams = { smapler = ['ddim'] }\n",
                          "unknown parameter 'technique[0].params.smapler'"),
    "bad parameter value": ("[[technique]]\nname = 'step_reduction'\nsteps = [5]\nparams = { sampler = ['dpm'] }\n",
                            "sampler 'dpm' is not one of"),
    "mistyped parameter": ("[[technique]]\nname = 'step_reduction'\nsteps = [5]\nparams = { eta = ['high'] }\n",
                           "'technique[0].params.eta' must be float"),
    "zero steps": ("[[technique]]\nname = 'step_reduction'\nsteps = [0]\n", "technique[0].steps must be positive"),
    "absurd steps": ("[[technique]]\nname = 'step_reduction'\nsteps = [100000]\n", "steps 100000 exceeds 1000"),
    "unknown dtype": ("[hardware]\ndtype = ['float8']\n[[technique]]\nname = 'step_reduction'\nsteps = [5]\n",
                      "hardware.dtype 'float8'"),
    "unknown device": ("[hardware]\ndevice = ['tpu']\n[[technique]]\nname = 'step_reduction'\nsteps = [5]\n",
                       "hardware.device 'tpu'"),
    "wrong type": ("[quality]\nn_samples = 'many'\n", "'quality.n_samples' must be int"),
    "no techniques": ("name = 'x'\n", "no [[technique]] entries"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_one_line_and_nonzero(case: str, tmp_path: Path) -> None:
    text, expected = BAD_CONFIGS[case]
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = run_cli("sweep", "--config", str(config), "--results", str(tmp_path / "res"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: error:"), result.stderr
    assert expected in lines[0]
    assert not (tmp_path / "res").exists()


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
    assert "sampler=dpmpp_3m" in result.stdout and "steps=1000" in result.stdout


def test_report_of_empty_store_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "records").mkdir(parents=True)
    result = run_cli("report", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html"))
    assert result.returncode == 2 and "holds no records" in result.stderr
