"""Sweep configuration: TOML in, frozen dataclasses out, every key and value checked before any work starts.

Each knob is documented where it is defined (the ``doc`` metadata); ``python -m bench sweep --help`` prints them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
import torch

from bench.errors import UserError
from bench.model import SCHEDULES

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.toml"
DTYPES = ("float32", "float16", "bfloat16")
EXECUTORS = ("inline", "process", "ray")


def knob(default: Any, doc: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class ModelConfig:
    dataset: str = knob("mnist", "dataset name: mnist, digits, folder:PATH (any PNG/JPEG folder; a relative PATH is "
                                 "read from the working directory), tv-mnist, tv-cifar10")
    resolution: int = knob(16, "image side in pixels (16 for CPU budgets; 28, 32 available)")
    objective: str = knob("epsilon", "what the base model predicts: epsilon or v_prediction")
    schedule: str = knob("linear", "the base model's noise schedule: linear (DDPM's β) or cosine (Nichol & Dhariwal; "
                                   "what the distillation papers' v-teachers use)")
    train_steps: int = knob(4000, "optimiser steps of the base model recipe; with model.pretrained, the budget the "
                                  "techniques' own trainings (students, priors, gates) are scaled from")
    layers_per_block: int = knob(1, "ResNet blocks per level of the zoo's base U-Net (2: the DDPM U-Net's depth, "
                                    "the baseline the continuous U-Net paper compares against)")
    pretrained: str = knob("", "a local diffusers folder or hub id (UNet2DModel, or a class-conditional UNet2DModel "
                               "or DiTTransformer2DModel with model.conditioning = 'class') to use instead of the "
                               "zoo's base model: imported into the zoo by its weights hash; every technique trains "
                               "from it")
    arch: str = knob("unet", "the zoo base model's network: unet (diffusers' UNet2DModel) or dit (a small "
                             "DiTTransformer2DModel, class-conditional)")
    latent: bool = knob(False, "the base model is a latent DiT: diffusion on the latents (4×4×4 at 16×16) of a small "
                               "AutoencoderKL the zoo trains first; every image's decode is measured apart")
    conditioning: str = knob("none", "none; class: the base model is class-conditional (image i gets label "
                                     "seed_i mod 10; guidance per [[technique]] entry; a pretrained U-Net's last "
                                     "label row is read as the null class); text: model.pretrained is a Stable "
                                     "Diffusion-style text-to-image folder or hub id (unet/ vae/ text_encoder/ "
                                     "tokenizer/ scheduler/), image i gets prompt i mod P of model.prompts")
    prompts: str = knob("", "text models: a UTF-8 file of prompts, one per line (empty: the 10 shipped in "
                            "bench/data_files/prompts.txt)")


@dataclass(frozen=True)
class QualityConfig:
    n_samples: int = knob(500, "generated images per cell for FID/KID/PR (a technique entry may override)")
    seed: int = knob(0, "image i uses seed + i")
    extractor: str = knob("auto", "auto (the zoo's classifier where the dataset has labels, else simclr), classifier, "
                                  "simclr (a self-supervised contrastive encoder: needs no labels) or "
                                  "inception-v3-compat (torch-fidelity's weights, where present)")
    extractor_steps: int = knob(1500, "training steps of the zoo extractor's recipe (classifier or simclr)")
    reference_split: str = knob("test", "dataset split the generated images are compared with")
    reference_n: int = knob(2000, "reference images")
    bootstrap: int = knob(200, "bootstrap resamples for the FID confidence interval (0 = none)")
    clip_model: str = knob("openai/clip-vit-base-patch32", "text models: the CLIP model (local folder or hub id) "
                                                           "CLIP score is computed with; where its weights are not "
                                                           "present (offline) the score is skipped with the reason")


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
    guidance: list[float] = knob([1.0], "class-conditional models: classifier-free guidance scales to sweep "
                                        "(diffusers' w: uncond + w·(cond − uncond); 1 = unguided, one network "
                                        "evaluation per step)")
    guider: list[str] = knob(["cfg"], "diffusers guiders to sweep: cfg, cfg_zero_star, tangential, apg")
    guidance_interval: list[list[float]] = knob([[0.0, 1.0]], "[start, stop) fractions of the sampler's steps on "
                                                              "which the guider guides (Kynkäänniemi et al. 2024: "
                                                              "a middle interval); a list of them to sweep")


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
    max_retries: int = knob(3, "ray: how often Ray reruns a cell whose worker or node died (a lost or pre-empted "
                               "node); the cell's own errors are never retried")
    retry_oom: bool = knob(False, "ray: also rerun a cell that Ray's memory monitor killed (up to max_retries); "
                                  "otherwise it is stored as failed: out of memory")
    artifact_location: str = knob("", "ray: a shared folder or fsspec URL (s3://bucket/zoo) the driver publishes "
                                      "artifacts to by content hash; empty sends them through Ray's object store")


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


# Bounds on values that type-check but could never finish (or make no sense on any machine this runs on).
MAX_CONFIG_BYTES = 1 << 20
LIMITS = {"quality.n_samples": 1_000_000, "quality.reference_n": 1_000_000, "quality.bootstrap": 100_000,
          "quality.extractor_steps": 10_000_000, "model.train_steps": 10_000_000, "latency.min_repeats": 10_000,
          "latency.denoiser_repeats": 10_000, "latency.remeasure": 20, "latency.min_seconds": 3600.0,
          "executor.timeout_s": 7 * 86400.0, "batch": 65_536, "seed": 2**62, "cells": 100_000}


def load(path: Path | str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    """Read and validate a sweep config (the shipped default when ``path`` is None), with ``KEY=VALUE`` overrides
    (``quality.extractor=simclr``; VALUE is read as a TOML value, else as a string) applied before validation."""
    path = Path(path) if path else DEFAULT_CONFIG
    raw = _read_toml(path)
    for override in overrides:
        _override(raw, override)
    config = _build(SweepConfig, raw, "")
    if config.model.dataset.startswith("folder:"):  # one folder, one address, however it is spelled
        from bench import data

        try:
            dataset = data.normalise(config.model.dataset)
        except (OSError, ValueError) as exc:
            raise UserError(f"config: model.dataset {config.model.dataset!r} is not a usable path ({exc})") from None
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, dataset=dataset))
    validate(config)
    return config


def _override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise UserError(f"--set {override!r} is not KEY=VALUE (e.g. quality.extractor=simclr)")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word: a string
    table = raw
    for part in parts[:-1]:
        table = table.setdefault(part, {})
        if not isinstance(table, dict):  # [[technique]] entries and several [[hardware]] grids: edit the file
            raise UserError(f"--set {key}: '{part}' is not a single table in the config; edit the file instead")
    table[parts[-1]] = value


def _read_toml(path: Path) -> dict[str, Any]:
    """The file's TOML, refusing what is not a regular text file of sane size (a folder, a FIFO that would block,
    /dev/zero, a binary) with one line."""
    try:
        if not path.exists():
            raise UserError(f"config file {path} does not exist")
        if not path.is_file():
            raise UserError(f"config file {path} is not a regular file")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise UserError(f"config file {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB: not a sweep config")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text") from None
    except (OSError, ValueError) as exc:  # permissions, a path with a NUL byte
        raise UserError(f"config file {path} cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from None


def _build(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise UserError(f"config: {where or 'top level'} must be a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in table:
        if key not in names:
            raise UserError(f"config: unknown key {_short(f'{where}{key}')} (known: {', '.join(sorted(names))})")
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
        value = float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise UserError(f"config: '{where}' must be {hint.__name__}, got {type(value).__name__} {_short(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"config: '{where}' must be a finite number, got {value}")
    if isinstance(value, str) and "\x00" in value:
        raise UserError(f"config: '{where}' holds a NUL character")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate(config: SweepConfig) -> None:
    """Reject bad values, naming the key: everything a config can know is wrong, before any training starts (the
    dataset is opened and its splits counted, the extractor and a pretrained model checked against it). Technique
    names, parameters and step counts are checked in ``sweep.expand``."""
    q, lat, m = config.quality, config.latency, config.model
    if not config.name or any(c in config.name for c in "/\\") or config.name.startswith(".") or len(config.name) > 100:
        raise UserError(f"config: name {_short(config.name)} must be a plain folder name (at most 100 characters)")
    for i, hw in enumerate(config.hardware):
        _validate_hardware(config, hw, "hardware" if len(config.hardware) == 1 else f"hardware[{i}]")
    _range("quality.n_samples", q.n_samples, 1)
    _range("quality.reference_n", q.reference_n, 1)
    _range("quality.bootstrap", q.bootstrap, 0)
    _range("quality.extractor_steps", q.extractor_steps, 1)
    _range("quality.seed", q.seed, 0, LIMITS["seed"])
    _range("latency.min_repeats", lat.min_repeats, 1)
    _range("latency.denoiser_repeats", lat.denoiser_repeats, 1)
    _range("latency.remeasure", lat.remeasure, 0)
    _range("latency.min_seconds", lat.min_seconds, 0.0)
    _range("model.train_steps", m.train_steps, 1)
    _range("model.layers_per_block", m.layers_per_block, 1, 4)
    if m.pretrained and m.layers_per_block != 1:
        raise UserError("config: model.layers_per_block shapes the zoo's base U-Net; with model.pretrained the "
                        "network is the pretrained one: remove one of them")
    if m.objective not in ("epsilon", "v_prediction"):
        raise UserError(f"config: model.objective {_short(m.objective)} is not epsilon or v_prediction")
    if m.schedule not in SCHEDULES:
        raise UserError(f"config: model.schedule {_short(m.schedule)} is not one of {', '.join(SCHEDULES)}")
    if m.pretrained and m.schedule != "linear":
        raise UserError("config: model.schedule sets the zoo's base model's schedule; with model.pretrained the "
                        "schedule is the pretrained one's: remove one of them")
    if m.arch not in ("unet", "dit"):
        raise UserError(f"config: model.arch {_short(m.arch)} is not unet or dit")
    if m.conditioning not in ("none", "class", "text"):
        raise UserError(f"config: model.conditioning {_short(m.conditioning)} is not none, class or text")
    if m.conditioning == "text" and not m.pretrained:
        raise UserError("config: model.conditioning = 'text' needs model.pretrained (a text-to-image pipeline folder "
                        "or hub id): the zoo trains no text model")
    if m.prompts and m.conditioning != "text":
        raise UserError("config: model.prompts applies to text models; set model.conditioning = 'text'")
    if m.prompts:
        from bench.text_to_image import read_prompts

        try:
            read_prompts(m.prompts)
        except UserError as exc:
            raise UserError(f"config: {exc}") from None
    if m.arch == "dit" and m.conditioning != "class":
        raise UserError("config: model.arch = 'dit' is class-conditional: set model.conditioning = 'class'")
    if m.latent and m.arch != "dit":
        raise UserError("config: model.latent needs model.arch = 'dit' (the zoo's latent model is the DiT)")
    if m.pretrained and (m.arch != "unet" or m.latent):
        raise UserError("config: model.arch and model.latent shape the zoo's base model; with model.pretrained the "
                        "network is the pretrained one: remove one of them")
    if not 4 <= m.resolution <= 512:
        raise UserError(f"config: model.resolution {m.resolution} is outside 4..512")
    if q.reference_split not in ("train", "test"):
        raise UserError(f"config: quality.reference_split {_short(q.reference_split)} is not train or test")
    if not (len(config.energy_country) == 3 and config.energy_country.isascii() and config.energy_country.isalpha()):
        raise UserError(f"config: energy_country {_short(config.energy_country)} is not an ISO 3166 alpha-3 code "
                        "(e.g. USA, FRA)")
    if not config.technique:
        raise UserError("config: no [[technique]] entries: nothing to sweep")
    for i, entry in enumerate(config.technique):
        if not entry.name:
            raise UserError(f"config: technique[{i}].name is missing")
        for steps in entry.steps:
            _range(f"technique[{i}].steps", steps, 1)  # the upper bound is the technique's (sweep.expand)
        _range(f"technique[{i}].n_samples", entry.n_samples, 0, LIMITS["quality.n_samples"])
        _validate_guidance(config, entry, f"technique[{i}]")
    ex = config.executor
    if ex.kind not in EXECUTORS:
        raise UserError(f"config: executor.kind {_short(ex.kind)} is not one of {', '.join(EXECUTORS)}")
    _range("executor.timeout_s", ex.timeout_s, 0.0)
    _range("executor.local_cpus", ex.local_cpus, 0, 4096)
    _range("executor.ray_num_cpus", ex.ray_num_cpus, 0, 4096)
    _range("executor.max_retries", ex.max_retries, 0, 100)
    _validate_data(config)


def _validate_guidance(config: SweepConfig, entry: TechniqueConfig, where: str) -> None:
    default = TechniqueConfig()
    if config.model.conditioning == "none":
        for key in ("guidance", "guider", "guidance_interval"):
            if getattr(entry, key) != getattr(default, key):
                raise UserError(f"config: {where}.{key} applies to class- or text-conditional models; "
                                "model.conditioning is 'none'")
        return
    for interval in entry.guidance_interval:
        if len(interval) != 2:
            raise UserError(f"config: {where}.guidance_interval {interval} is not [start, stop]")
    for guidance in guidances(entry):
        try:
            guidance.validate()
        except ValueError as exc:
            raise UserError(f"config: {where}: {exc}") from None


def guidances(entry: TechniqueConfig) -> list[Any]:
    """The entry's ``bench.conditioning.Guidance`` grid (guider × scale × interval), each once; a scale of 1 is one
    unguided point whatever the guider and interval."""
    from bench.conditioning import Guidance

    grid = [Guidance(g, float(w), float(a), float(b)) if w != 1.0 else Guidance()
            for g in entry.guider for w in entry.guidance for a, b in entry.guidance_interval]
    return list(dict.fromkeys(grid))


def _validate_data(config: SweepConfig) -> None:
    """The dataset opens, its reference split is large enough, the extractor can be had for it, and a pretrained
    model takes its images: each a one-line error now rather than after the base model has trained."""
    from bench import data, recipes
    from bench.measure import quality

    m, q = config.model, config.quality
    try:
        data.check_name(m.dataset)
        reference = data.load(m.dataset, q.reference_split, m.resolution)
    except UserError as exc:
        raise UserError(f"config: model.dataset: {exc}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"config: model.dataset {_short(m.dataset)} cannot be read ({exc})") from None
    if q.reference_n > len(reference.images):
        raise UserError(f"config: quality.reference_n = {q.reference_n} exceeds the {len(reference.images)} images "
                        f"of {m.dataset} split {q.reference_split!r}")
    try:
        recipes.extractor_recipe(q.extractor, m.dataset, m.resolution, q.extractor_steps)
        quality.check_extractor(q.extractor)
    except UserError as exc:
        raise UserError(f"config: {exc}") from None
    if m.pretrained:
        from bench import pretrained

        try:
            info = pretrained.describe(m.pretrained)
        except UserError as exc:
            raise UserError(f"config: {exc}") from None
        shape, classes = tuple(info["image_shape"]), info["num_classes"]
        if (m.conditioning == "text") != bool(info.get("text")):
            raise UserError(f"config: model.pretrained {m.pretrained!r} is "
                            + ("a text-to-image pipeline: set model.conditioning = 'text'" if info.get("text")
                               else "not a text-to-image pipeline: model.conditioning = 'text' needs one"))
        if info.get("random_weights"):  # costs only: no reference set is compared with
            return
        if (m.conditioning == "class") != bool(classes):
            raise UserError(f"config: model.pretrained {m.pretrained!r} is "
                            + (f"class-conditional ({classes} classes): set model.conditioning = 'class'" if classes
                               else "unconditional (no label input): remove model.conditioning"))
        if classes and classes != reference.num_classes:
            raise UserError(f"config: model.pretrained {m.pretrained!r} takes {classes} classes; model.dataset "
                            f"{m.dataset} has {reference.num_classes or 'no labels'} (class accuracy judges those)")
        if shape != reference.shape:
            raise UserError(f"config: model.pretrained {m.pretrained!r} takes {'×'.join(map(str, shape))} images; "
                            f"model.dataset {m.dataset} at model.resolution {m.resolution} gives "
                            f"{'×'.join(map(str, reference.shape))}")


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
    # oversubscribing the cores is a legitimate study (cores.toml runs 2 threads on 1 core), a thousand-fold is not;
    # on Ray the nodes' cores count, not the driver's
    max_threads = 1024 if config.executor.kind == "ray" else 4 * (os.cpu_count() or 1)
    for threads in hw.threads:
        _range(f"{where}.threads", threads, 1, max_threads)
    for batch in hw.batch:
        _range(f"{where}.batch", batch, 1, LIMITS["batch"])


def _range(where: str, value: float, low: float, high: float | None = None) -> None:
    """``low ≤ value ≤ high`` (``high`` defaults to ``LIMITS[where]``), else one line naming the key."""
    high = LIMITS.get(where, math.inf) if high is None else high
    if value < low:
        raise UserError(f"config: {where} must be {'positive' if low == 1 else f'≥ {low}'}, got {value}")
    if value > high:
        raise UserError(f"config: {where} = {value} is beyond {high:g}, more than any sweep here can finish")


def describe(cls: type = SweepConfig, prefix: str = "") -> list[str]:
    """One line per knob: key, default and meaning (for --help)."""
    lines = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            lines += describe(hint, f"{prefix}{f.name}.")
            continue
        item = (typing.get_args(hint) or (None,))[0]
        if f.name in ("hardware", "technique") and dataclasses.is_dataclass(item):
            lines.append(f"  {prefix}{f.name}: {f.metadata.get('doc', '')}")
            lines += describe(item, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  {prefix}{f.name} = {default!r}: {f.metadata.get('doc', '')}")
    return lines
