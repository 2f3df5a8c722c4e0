"""Property-based hostile input (hypothesis): configs and config files of the wrong shape, type or range, and stored
records of valid JSON in the wrong structure. A bad config must end in one line naming the problem and exit 2; a bad
record is skipped with a warning naming its file, in the sweep and in the report. Never a traceback, never a hang
(each case runs under an alarm), and the store is byte-identical afterwards."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import signal
import typing
import warnings
from pathlib import Path
from typing import Any

import pytest
import tomllib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import cli, store
from bench import config as cfg
from tests.conftest import TINY_CONFIG
from tests.test_hostile_input import _digest

GOOD = tomllib.loads(TINY_CONFIG.read_text())
CASE_SECONDS = 60  # a case still running after this is a hang
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Hung(BaseException):  # not an Exception: no handler in bench may swallow it
    pass


def _alarm(signum, frame):
    raise Hung(f"no answer within {CASE_SECONDS} s")


def run_main(*argv: str) -> tuple[int, list[str]]:
    """``python -m bench ARGV`` in this process (seconds per case instead of a fresh interpreter): exit status and
    the lines written to stderr. An exception escaping ``main`` is a traceback the user would have seen."""
    err = io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda m, c, f, n, file=None, line=None: print(f"warning: {m}", file=err)
            rc = cli.main(list(argv))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return rc, [line for line in err.getvalue().splitlines() if line.strip()]


# -- configs ----------------------------------------------------------------------------------------------------------
def _knobs() -> dict[tuple[str, ...], Any]:
    """Every config knob as (section, key) → its type hint (list[...] element types kept)."""
    out: dict[tuple[str, ...], Any] = {}
    for f in dataclasses.fields(cfg.SweepConfig):
        hint = typing.get_type_hints(cfg.SweepConfig)[f.name]
        inner = (typing.get_args(hint) or (None,))[0]
        cls = hint if dataclasses.is_dataclass(hint) else inner if dataclasses.is_dataclass(inner) else None
        if cls is None:
            out[(f.name,)] = hint
            continue
        for g in dataclasses.fields(cls):
            out[(f.name, g.name)] = typing.get_type_hints(cls)[g.name]
    return out


KNOBS = _knobs()
# strings any value of which is fine (an address to join, a label): no wrong value to generate for them
FREE_TEXT = {("executor", "ray_address"), ("executor", "accelerator_type"), ("results",)}
ALLOWED_TEXT = {("model", "dataset"): {"mnist", "digits", "tv-mnist", "tv-cifar10"},
                ("model", "objective"): {"epsilon", "v_prediction"},
                ("quality", "extractor"): {"auto", "classifier", "simclr"},
                ("quality", "reference_split"): {"train", "test"}, ("executor", "kind"): set(cfg.EXECUTORS),
                ("hardware", "device"): {"cpu", "cuda", "cuda:0"}, ("hardware", "dtype"): set(cfg.DTYPES),
                ("technique", "name"): {"step_reduction", "dual_output", "ode_unet", "truncation", "distillation",
                                                  "guidance_distillation"}}
HOSTILE_TEXT = st.sampled_from(["", " ", "\x00", "a/b", "../..", ".hidden", "x" * 300, "☃ snow", "folder:",
                                "folder:/no/such/dir", "folder:/dev/null", "folder:\x00", "./no/such/model",
                                "org/no-such-model", "\ud800"])
HUGE = 2**62 + 1  # beyond every integer knob's bound (seed's is 2**62)


def wrong_value(hint: Any, key: tuple[str, ...]) -> st.SearchStrategy:
    """Values that must be refused for a knob of type ``hint``: another type, or the right type out of range."""
    origin = typing.get_origin(hint)
    other = st.one_of(st.dictionaries(st.text(max_size=3), st.integers(), min_size=1, max_size=2),
                      st.lists(st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), min_size=1,
                               max_size=2))
    if origin is list:
        (item,) = typing.get_args(hint)
        return st.one_of(st.just([]), st.lists(wrong_value(item, key), min_size=1, max_size=3), other)
    if origin is dict:
        return st.one_of(st.integers(), st.text(max_size=5), st.lists(st.integers(), min_size=1, max_size=2))
    if hint is bool:
        return st.one_of(st.integers(), st.text(max_size=5), st.floats(allow_nan=True), other)
    if hint is int:
        return st.one_of(st.integers(max_value=-1), st.integers(min_value=HUGE, max_value=2**63 - 1),
                         st.floats(allow_nan=True),
                         st.text(max_size=5), st.booleans(), other)
    if hint is float:
        return st.one_of(st.sampled_from([float("nan"), float("inf"), float("-inf")]),
                         st.floats(max_value=-1e-9, allow_infinity=False),
                         st.floats(min_value=1e9, allow_infinity=False),
                         st.text(max_size=5), st.booleans(), other)
    # strings
    allowed = ALLOWED_TEXT.get(key[-2:] if len(key) > 1 else key, ALLOWED_TEXT.get(key))
    texts = st.one_of(HOSTILE_TEXT, st.text(max_size=12))
    if key == ("name",):  # any plain folder name is a fine sweep name
        texts = st.sampled_from(["", "a/b", ".hidden", "x" * 101, "\x00", "a\\b"])
    elif allowed is not None:
        texts = texts.filter(lambda s: s not in allowed)
    elif key == ("energy_country",):
        texts = texts.filter(lambda s: not (len(s) == 3 and s.isascii() and s.isalpha()))
    elif key == ("model", "pretrained"):
        texts = st.one_of(HOSTILE_TEXT.filter(bool), st.text(min_size=1, max_size=12)).filter(
            lambda s: s.strip() != "")
    return st.one_of(texts, st.integers(), st.floats(allow_nan=True), st.booleans(), other)


MUTABLE = [k for k in KNOBS if k not in FREE_TEXT and k != ("quality", "extractor_steps")]


@st.composite
def bad_configs(draw: st.DrawFn) -> dict[str, Any]:
    config = json.loads(json.dumps(GOOD))
    kind = draw(st.sampled_from(["value", "value", "value", "unknown key", "table shape"]))
    if kind == "unknown key":
        section = draw(st.sampled_from([None, "model", "quality", "latency", "hardware", "executor"]))
        name = draw(st.text(min_size=1, max_size=8).filter(
            lambda s: all(s != k[-1] for k in KNOBS)))
        (config if section is None else config.setdefault(section, {}))[name] = draw(st.integers())
        return config
    if kind == "table shape":
        section = draw(st.sampled_from(["model", "quality", "latency", "hardware", "executor", "technique"]))
        config[section] = draw(st.one_of(st.integers(), st.text(max_size=4), st.lists(st.integers(), max_size=2)))
        return config
    key = draw(st.sampled_from(MUTABLE))
    value = draw(wrong_value(KNOBS[key], key))
    if len(key) == 1:
        config[key[0]] = value
    elif key[0] == "technique":
        config["technique"][draw(st.integers(0, len(config["technique"]) - 1))][key[1]] = value
    else:
        config.setdefault(key[0], {})[key[1]] = value
    return config


def to_toml(table: dict[str, Any]) -> str:
    """A minimal TOML writer for generated configs (tomllib only reads)."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return "nan" if v != v else ("inf" if v > 0 else "-inf") if v in (float("inf"), float("-inf")) else repr(v)
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        return "{" + ", ".join(f"{json.dumps(k)} = {scalar(x)}" for k, x in v.items()) + "}"

    lines, sections = [], []
    for key, value in table.items():
        if isinstance(value, dict):
            sections.append(f"[{json.dumps(key)}]\n" + "".join(f"{json.dumps(k)} = {scalar(v)}\n"
                                                               for k, v in value.items()))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            sections += [f"[[{json.dumps(key)}]]\n" + "".join(f"{json.dumps(k)} = {scalar(x)}\n" for k, x in v.items())
                         for v in value]
        else:
            lines.append(f"{json.dumps(key)} = {scalar(value)}\n")
    return "".join(lines) + "\n".join(sections)


@pytest.fixture()
def stored(tiny_sweep, tmp_path: Path) -> Path:
    root = tmp_path / "results"
    shutil.copytree(tiny_sweep[0] / "results", root)
    return root


def test_the_writer_round_trips_the_good_config() -> None:
    assert tomllib.loads(to_toml(GOOD)) == GOOD


@SETTINGS
@given(config=bad_configs())
def test_a_bad_config_is_one_line_and_exit_2(config: dict[str, Any], stored: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a generated hub id must fail fast here, not wait on a network
    monkeypatch.chdir(tmp_path)  # "folder:" alone is the working directory: one without images
    before = _digest(stored)
    path = tmp_path / "bad.toml"
    path.write_text(to_toml(config), encoding="utf-8", errors="surrogatepass")
    rc, lines = run_main("sweep", "--config", str(path), "--results", str(stored), "--report",
                         str(tmp_path / "r.html"), "--no-progress")
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("bench: error:"), (rc, lines)
    assert _digest(stored) == before


def _special_files(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.toml"
    loop.symlink_to(loop)
    (tmp_path / "folder.toml").mkdir()
    return {"a folder": tmp_path / "folder.toml", "a FIFO (reading would block)": fifo, "a symlink loop": loop,
            "an endless device": Path("/dev/zero"), "nothing": tmp_path / "absent.toml"}


def test_config_paths_that_are_not_text_files(stored: Path, tmp_path: Path) -> None:
    for what, path in _special_files(tmp_path).items():
        rc, lines = run_main("sweep", "--config", str(path), "--results", str(stored), "--no-progress")
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("bench: error:"), (what, rc, lines)


@SETTINGS
@given(content=st.binary(max_size=300))
def test_config_files_of_any_bytes(content: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("bytes") / "c.toml"
    path.write_bytes(content)
    rc, lines = run_main("sweep", "--config", str(path), "--dry-run", "--no-progress")
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("bench: error:"), (rc, lines)


# -- records ----------------------------------------------------------------------------------------------------------
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                  max_size=3), max_leaves=12)


@st.composite
def bad_records(draw: st.DrawFn, template: dict[str, Any]) -> Any:
    """A stored record with one value anywhere in it replaced (or removed), or any JSON at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    record = json.loads(json.dumps(template))
    node = record
    while True:  # walk down to a random key at a random depth
        key = draw(st.sampled_from(sorted(node)))
        if isinstance(node[key], dict) and node[key] and draw(st.booleans()):
            node = node[key]
            continue
        break
    if draw(st.booleans()):
        del node[key]
    else:
        node[key] = draw(JSON)
    return record


def _small_store(source: Path, dest: Path, keep: int = 3) -> list[Path]:
    """``keep`` ok records of the tiny store, with their sample grids and features: a store a report renders fast."""
    (dest / "records").mkdir(parents=True)
    kept = []
    for file in sorted((source / "records").glob("*.json")):
        record = json.loads(file.read_text())
        if record["status"] != "ok" or len(kept) == keep:
            continue
        shutil.copy(file, dest / "records" / file.name)
        for rel in [record.get("sample_grid"), *[e["file"] for e in (record.get("features") or {}).values()]]:
            if rel:
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source / rel, dest / rel)
        kept.append(dest / "records" / file.name)
    return kept


@settings(max_examples=25, deadline=None, derandomize=True, print_blob=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_a_bad_record_is_skipped_with_a_warning_by_the_report(data: st.DataObject, tiny_sweep,
                                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("records")
    kept = _small_store(tiny_sweep[0] / "results" / "tiny", root / "tiny")
    victim = kept[0]
    bad = data.draw(bad_records(json.loads(victim.read_text())))
    victim.write_text(json.dumps(bad))  # json writes NaN/Infinity as Python's json reads them: still "valid"
    before = _digest(root)
    rc, lines = run_main("report", "--results", str(root), "--out", str(root.parent / f"{root.name}.html"))
    assert rc == 0, lines
    for line in lines:  # only warnings, each naming the record it skipped
        assert line.startswith("warning: skipping unreadable record") and str(victim) in line, line
    try:
        store.check_record(bad)
        valid = bad.get("spec_hash") == victim.stem
    except ValueError:
        valid = False
    assert (len(lines) == 0) == valid, (lines, bad)
    assert _digest(root) == before


def test_a_sweep_skips_bad_records_with_a_warning_and_leaves_them(stored: Path, tmp_path: Path) -> None:
    """Records of other shapes beside the sweep's own (whose cells are all stored): warned about, left in place,
    the sweep's answer unchanged."""
    records = stored / "tiny" / "records"
    good = json.loads(next(records.glob("*.json")).read_text())
    hostile = {"list": [1, 2], "no status": {"spec_hash": "nostatus0000"}, "spec a string": {**good, "spec": "x"},
               "metrics nan": {**good, "metrics": {**good["metrics"], "fid": float("nan")}},
               "grid outside": {**good, "sample_grid": "../../../etc/passwd"},
               "params of lists": {**good, "spec": {**good["spec"], "params": {"sampler": [[1]]}}}}
    for n, record in enumerate(hostile.values()):
        (records / f"bad{n:012d}.json").write_text(json.dumps(record))
    (records / "binary0000000.json").write_bytes(b"\xff\xfe\x00garbage")
    before = _digest(stored)
    rc, lines = run_main("sweep", "--config", str(TINY_CONFIG), "--results", str(stored), "--report",
                         str(tmp_path / "r.html"), "--no-progress")
    assert rc == 0, lines
    warned = [line for line in lines if line.startswith("warning: skipping unreadable record")]
    for name in [f"bad{n:012d}.json" for n in range(len(hostile))] + ["binary0000000.json"]:
        assert any(name in line for line in warned), (name, lines)
    assert _digest(stored) == before
