"""A user's pretrained diffusers model as the sweep's base: resolved to a local folder, identified by its weights hash,
and imported into the zoo under a recipe that names both, so every artifact trained from it (a distilled student, a
TDPM prior, a dual-output or continuous U-Net of its architecture) is content-addressed by the model it came from."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from bench.errors import UserError

SUPPORTED_CLASSES = ("UNet2DModel", "DiTTransformer2DModel", "UNet2DConditionModel")
# what a sweep reads of a hub snapshot: the network and scheduler, and a text-to-image model's VAE, text encoder and
# tokenizer (their safetensors only: a Stable Diffusion repository holds .bin copies too)
_HUB_FILES = ["model_index.json", "*.json", "unet/*", "scheduler/*", "diffusion_pytorch_model*", "tokenizer/*",
              "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"]


# A source the harness builds itself, offline: the tiny random-weight text-to-image pipeline (bench.text_to_image),
# written once into the cache ($BENCH_CACHE/pipelines/) and addressed, like any model, by its weights hash.
TINY_TEXT_TO_IMAGE = "bench:tiny-text-to-image"


def is_local(source: str) -> bool:
    """A path (absolute, relative or ``~``) rather than a hub id such as ``google/ddpm-cifar10-32``."""
    return source.startswith(("/", ".", "~")) or Path(source).expanduser().is_dir()


def resolve(source: str) -> Path:
    """The local folder holding ``source``: the folder itself, or the hub snapshot (downloaded with a network, from
    the Hugging Face cache without one)."""
    if source == TINY_TEXT_TO_IMAGE:
        return _tiny_text_to_image()
    if is_local(source):
        path = Path(source).expanduser().resolve()
        if not path.is_dir():
            raise UserError(f"model.pretrained {source!r} is not a folder (a local diffusers model folder, or a hub "
                            "id such as google/ddpm-cifar10-32)")
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=source, allow_patterns=_HUB_FILES))
    except Exception as exc:  # offline: LocalEntryNotFoundError; unknown id: RepositoryNotFoundError; both one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"model.pretrained {source!r}: not a local folder and the hub snapshot is unavailable "
                        f"({first})") from None


def _tiny_text_to_image() -> Path:
    import os
    import shutil
    import tempfile

    from filelock import FileLock

    from bench import text_to_image

    root = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench")).expanduser() / "pipelines"
    folder = root / "tiny-text-to-image"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / "tiny-text-to-image.lock")):
        if not (folder / text_to_image.RANDOM_WEIGHTS_MARKER).is_file():  # the marker is written last
            scratch = Path(tempfile.mkdtemp(dir=root))
            text_to_image.build_tiny_pipeline(scratch)
            shutil.rmtree(folder, ignore_errors=True)
            scratch.rename(folder)
    return folder


@functools.lru_cache(maxsize=8)
def describe(source: str) -> dict[str, Any]:
    """What a recipe keeps about ``source``: where it came from, its weights hash, its network config (constructor
    kwargs, diffusers' private keys dropped), its scheduler config and the image shape it takes."""
    from bench.model import DDPM_SCHEDULE, scheduler_file, unet_folder
    from bench.zoo import weights_sha256

    folder = resolve(source)
    net_dir = unet_folder(folder)
    network = _read_json(net_dir / "config.json", source)
    kind = network.get("_class_name", "UNet2DModel")
    if kind not in SUPPORTED_CLASSES:
        raise UserError(f"model.pretrained {source!r} is a {kind}; supported: {', '.join(SUPPORTED_CLASSES)}")
    sched_file = scheduler_file(folder)
    schedule = dict(DDPM_SCHEDULE) if sched_file is None else _read_json(sched_file, source)
    weights = sorted(net_dir.glob("diffusion_pytorch_model*.safetensors")) or sorted(
        net_dir.glob("diffusion_pytorch_model*.bin"))
    if not weights:
        raise UserError(f"model.pretrained {source!r}: no diffusion_pytorch_model weights in {net_dir}")
    try:
        shape = (int(network["in_channels"]), int(network["sample_size"]), int(network["sample_size"]))
    except (KeyError, TypeError, ValueError):
        raise UserError(f"model.pretrained {source!r}: its config has no integer in_channels/sample_size") from None
    text = {}
    if kind == "UNet2DConditionModel":  # a text-to-image folder: its VAE and text encoder are part of the model
        from bench import text_to_image

        missing = [part for part in text_to_image.PIPELINE_PARTS if not (folder / part).is_dir()]
        if missing or not text_to_image.is_text_to_image(folder):
            raise UserError(f"model.pretrained {source!r}: a UNet2DConditionModel needs the folders "
                            f"{', '.join(text_to_image.PIPELINE_PARTS)} of a Stable Diffusion-style pipeline; "
                            f"missing: {', '.join(missing) or 'a CLIP text_encoder config'}")
        weights += [*sorted((folder / "vae").glob("diffusion_pytorch_model*.safetensors")),
                    *sorted((folder / "text_encoder").glob("*.safetensors"))]
        shape, latent = text_to_image.image_shape(folder)
        text = {"text": True, "latent_shape": latent,
                "random_weights": text_to_image.random_weights_reason(folder)}
    elif (folder / "vae" / "config.json").is_file():
        raise UserError(f"model.pretrained {source!r} is a latent model (it has a vae/ folder); pretrained latent "
                        "models are not supported yet, but for text-to-image pipelines: the zoo's latent DiT is "
                        "(model.latent)")
    return {"source": source if not is_local(source) else str(folder), "weights_sha256": weights_sha256(*weights),
            "network": {k: v for k, v in network.items() if not k.startswith("_")},
            "schedule": {k: v for k, v in schedule.items() if not k.startswith("_")}, "image_shape": shape,
            "arch": "dit" if kind == "DiTTransformer2DModel" else "unet", "num_classes": label_classes(network, kind),
            **text}


def label_classes(network: dict[str, Any], kind: str) -> int | None:
    """The classes a pretrained network's label input takes, the null class (guidance's) not counted: a DiT's
    ``num_embeds_ada_norm`` (its table adds the null row), a U-Net's ``num_class_embeds`` less its last row, which
    the harness reads as the null class (the zoo's convention). None: no label input."""
    if kind == "DiTTransformer2DModel":
        return int(network["num_embeds_ada_norm"])
    rows = network.get("num_class_embeds")
    return int(rows) - 1 if rows else None


def _read_json(path: Path, source: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"model.pretrained {source!r}: {path.name} is missing in {path.parent}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"model.pretrained {source!r}: {path} is not readable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UserError(f"model.pretrained {source!r}: {path} does not hold a JSON object")
    return value
