"""Sweep configuration: TOML in, frozen dataclasses out, every key and value checked before any work starts.

Each knob is documented where it is defined (the ``doc`` metadata); ``python -m bench sweep --help`` prints them.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
import torch

from bench.errors import UserError

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.toml"
DTYPES = ("float32", "float16", "bfloat16")
EXECUTORS = ("inline", "process", "ray")


def knob(default: Any, doc: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class ModelConfig:
    dataset: str = knob("mnist", "dataset name: mnist, digits, folder:PATH, tv-mnist, tv-cifar10")
    resolution: int = knob(16, "image side in pixels (16 for CPU budgets; 28, 32 available)")
    objective: str = knob("epsilon", "what the base model predicts: epsilon or v_prediction")
    train_steps: int = knob(4000, "optimiser steps of the base model recipe")
    pretrained: str = knob("", "a local diffusers folder or hub id to use instead of the zoo's base model")


@dataclass(frozen=True)
class QualityConfig:
    n_samples: int = knob(500, "generated images per cell for FID/KID/PR (a technique entry may override)")
    seed: int = knob(0, "image i uses seed + i")
    extractor: str = knob("auto", "auto (the zoo's offline classifier) or inception-v3-compat")
    extractor_steps: int = knob(1500, "training steps of the auto extractor's recipe")
    reference_split: str = knob("test", "dataset split the generated images are compared with")
    reference_n: int = knob(2000, "reference images")
    bootstrap: int = knob(200, "bootstrap resamples for the FID confidence interval (0 = none)")


@dataclass(frozen=True)
class LatencyConfig:
    min_repeats: int = knob(3, "at least this many timed batches")
    min_seconds: float = knob(1.0, "and at least this much timed time")
    denoiser_repeats: int = knob(10, "timed calls of the denoiser alone")
    remeasure: int = knob(2, "times an unstable or contended timing is re-measured before it is stored flagged "
                             "latency_suspect (bench/measure/noise.py has the rule)")


@dataclass(frozen=True)
class HardwareConfig:
    device: list[str] = knob(["cpu"], "devices: cpu, cuda, cuda:N")
    dtype: list[str] = knob(["float32"], "float32, or float16/bfloat16 via autocast")
    threads: list[int] = knob([2], "torch intra-op threads")
    compile: list[bool] = knob([False], "torch.compile the networks")
    batch: list[int] = knob([100], "images per sampler call")


@dataclass(frozen=True)
class TechniqueConfig:
    name: str = knob("", "registered technique name (python -m bench techniques)")
    steps: list[int] = knob([], "requested sampling steps")
    params: dict[str, list[Any]] = knob({}, "technique parameters, each a value or a list of values to sweep")
    n_samples: int = knob(0, "override quality.n_samples for this entry (0 = use quality.n_samples)")


@dataclass(frozen=True)
class ExecutorConfig:
    kind: str = knob("inline", "inline (this process; the default), process (a fresh process per cell: clean "
                               "peak memory, crash isolation, timeout) or ray (Ray tasks; pip install 'bench[ray]')")
    timeout_s: float = knob(0.0, "process/ray: a cell running longer is killed and stored as failed (0 = no limit)")
    ray_address: str = knob("", "ray: an existing cluster to join (auto, or ray://head:10001); empty starts a local "
                                "Ray")
    local_cpus: int = knob(0, "ray: CPUs of the local Ray started when ray_address is empty (0 = all)")
    ray_num_cpus: int = knob(0, "ray: CPUs each cell requests (0 = the cell's thread count); CUDA cells ask 1 GPU")
    accelerator_type: str = knob("", "ray: the accelerator type a cell's node must have (e.g. H100), so a hardware "
                                     "sweep lands on the right nodes")


@dataclass(frozen=True)
class SweepConfig:
    name: str = knob("default", "sweep name: the report file and the store folder are named after it")
    results: str = knob("results", "results store root; records go to <results>/<name>/")
    energy_country: str = knob("USA", "ISO code for codecarbon's offline carbon intensity")
    model: ModelConfig = knob(ModelConfig(), "the base model")
    quality: QualityConfig = knob(QualityConfig(), "quality metrics")
    latency: LatencyConfig = knob(LatencyConfig(), "latency sampling")
    hardware: list[HardwareConfig] = knob([HardwareConfig()], "hardware axes: one [hardware] table, or several "
                                          "[[hardware]] grids whose cells are joined (e.g. compile only at batch 1)")
    technique: list[TechniqueConfig] = knob([], "one [[technique]] table per technique entry")
    executor: ExecutorConfig = knob(ExecutorConfig(), "where cells run")

    @property
    def store_path(self) -> Path:
        return Path(self.results) / self.name


def load(path: Path | str | None = None) -> SweepConfig:
    """Read and validate a sweep config (the shipped default when ``path`` is None)."""
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from None
    config = _build(SweepConfig, raw, "")
    validate(config)
    return config


def _build(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise UserError(f"config: {where or 'top level'} must be a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in table:
        if key not in names:
            raise UserError(f"config: unknown key '{where}{key}' (known: {', '.join(sorted(names))})")
    return cls(**{k: _coerce(hints[k], v, f"{where}{k}") for k, v in table.items()})


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where + ".")
    if origin is list:
        (item,) = typing.get_args(hint)
        if dataclasses.is_dataclass(item):
            if isinstance(value, dict) and where == "hardware":  # one [hardware] table: a single grid
                return [_build(item, value, f"{where}.")]
            if not isinstance(value, list):
                raise UserError(f"config: '{where}' must be an array of tables ([[{where}]])")
            return [_build(item, v, f"{where}[{i}].") for i, v in enumerate(value)]
        values = value if isinstance(value, list) else [value]
        if not values:
            raise UserError(f"config: '{where}' must not be empty")
        return [_coerce(item, v, where) for v in values]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config: '{where}' must be a table")
        return {k: v if isinstance(v, list) else [v] for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise UserError(f"config: '{where}' must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def validate(config: SweepConfig) -> None:
    """Reject bad values, naming the key. Technique names and parameters are checked in ``sweep.expand``."""
    q = config.quality
    for i, hw in enumerate(config.hardware):
        _validate_hardware(config, hw, "hardware" if len(config.hardware) == 1 else f"hardware[{i}]")
    _positive("quality.n_samples", [q.n_samples])
    _positive("quality.reference_n", [q.reference_n])
    _positive("latency.min_repeats", [config.latency.min_repeats])
    _positive("latency.denoiser_repeats", [config.latency.denoiser_repeats])
    if q.bootstrap < 0:
        raise UserError("config: quality.bootstrap must be ≥ 0")
    if config.latency.remeasure < 0:
        raise UserError("config: latency.remeasure must be ≥ 0")
    from bench import data

    try:
        data.check_name(config.model.dataset)
    except UserError as exc:
        raise UserError(f"config: model.dataset: {exc}") from None
    pretrained = config.model.pretrained
    if pretrained and pretrained.startswith(("/", ".", "~")) and not Path(pretrained).expanduser().is_dir():
        raise UserError(f"config: model.pretrained {pretrained!r} is not a folder (a local diffusers model folder, "
                        "or a hub id such as google/ddpm-cifar10-32)")
    if config.model.objective not in ("epsilon", "v_prediction"):
        raise UserError(f"config: model.objective {config.model.objective!r} is not epsilon or v_prediction")
    if not config.technique:
        raise UserError("config: no [[technique]] entries: nothing to sweep")
    for i, entry in enumerate(config.technique):
        if not entry.name:
            raise UserError(f"config: technique[{i}].name is missing")
        _positive(f"technique[{i}].steps", entry.steps)
        if entry.n_samples < 0:
            raise UserError(f"config: technique[{i}].n_samples must be ≥ 0")
    if config.executor.kind not in EXECUTORS:
        raise UserError(f"config: executor.kind {config.executor.kind!r} is not one of {', '.join(EXECUTORS)}")
    if config.executor.timeout_s < 0:
        raise UserError("config: executor.timeout_s must be ≥ 0")
    if not config.name or any(c in config.name for c in "/\\") or config.name.startswith("."):
        raise UserError(f"config: name {config.name!r} must be a plain folder name")


def _validate_hardware(config: SweepConfig, hw: HardwareConfig, where: str) -> None:
    for dev in hw.device:
        if dev != "cpu" and not (dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise UserError(f"config: {where}.device {dev!r} is not cpu, cuda or cuda:N")
        # on Ray the cluster's nodes run the cells, so the driver need not have the device itself
        if dev.startswith("cuda") and not torch.cuda.is_available() and config.executor.kind != "ray":
            raise UserError(f"config: {where}.device {dev!r} is not present on this machine (no CUDA device)")
    for dtype in hw.dtype:
        if dtype not in DTYPES:
            raise UserError(f"config: {where}.dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    _positive(f"{where}.threads", hw.threads)
    _positive(f"{where}.batch", hw.batch)


def _positive(where: str, values: list[int]) -> None:
    for v in values:
        if v <= 0:
            raise UserError(f"config: {where} must be positive, got {v}")


def describe(cls: type = SweepConfig, prefix: str = "") -> list[str]:
    """One line per knob: key, default and meaning (for --help)."""
    lines = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            lines += describe(hint, f"{prefix}{f.name}.")
            continue
        item = (typing.get_args(hint) or (None,))[0]
        if f.name == "hardware" and dataclasses.is_dataclass(item):
            lines.append(f"  {prefix}{f.name}: {f.metadata.get('doc', '')}")
            lines += describe(item, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  {prefix}{f.name} = {default!r}: {f.metadata.get('doc', '')}")
    return lines
