"""Which training-free technique runs on which model and device — found by trying, not typed by hand.

Each registered technique that needs no trained artifact (the samplers, the accelerations) is given, per model kind
and device, the zoo's network built untrained (support is a matter of structure: block types, label inputs, device
kernels) and asked for a pipeline; one image is sampled in two steps. A technique that declines raises
``bench.errors.Unsupported`` with its library's reason, or does not declare the model kind; both are shown as
skipped with that reason, anything else as the error it raised. ``python -m bench support`` prints the matrix.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd
import torch

from bench import recipes, registry
from bench.errors import Unsupported

# model kind label → the zoo recipe whose network is built (untrained) for the matrix, or a pretrained source (the
# tiny random-weight text-to-image pipeline the harness builds)
MODELS: dict[str, dict[str, Any]] = {
    "U-Net": {},
    "U-Net, class-conditional": {"conditioning": "class"},
    "DiT, class-conditional": {"arch": "dit", "conditioning": "class"},
    "Text-to-image U-Net (SD-style)": {"pretrained": "bench:tiny-text-to-image"},
}


def training_free() -> list[tuple[str, Any]]:
    """(label, params) for every registered technique needing no artifact: its defaults and contract variants."""
    out = []
    base = recipes.denoiser_recipe("mnist", 16)
    for name in registry.available():
        technique = registry.get(name)
        try:
            if technique.artifacts(technique.Params(), base):
                continue
        except Exception:  # noqa: BLE001 - a technique that cannot even say what it needs is not training-free
            continue
        variants = [technique.Params()] + [technique.Params(**change) for change in technique.contract_variants]
        for params in variants:
            changed = {k: v for k, v in dataclasses.asdict(params).items()
                       if v != technique.param_fields()[k]}
            label = " ".join([name, *(f"{k}={v}" for k, v in changed.items())])
            out.append((label, params))
    return out


def build_models(models: dict[str, dict[str, Any]] | None = None, dataset: str = "mnist",
                 resolution: int = 16) -> dict[str, Any]:
    """The zoo's networks for ``models`` (label → ``denoiser_recipe`` options, or ``{"pretrained": source}``),
    untrained."""
    from bench import data, pretrained
    from bench.model import load_denoiser
    from bench.train import OBJECTIVES

    images = data.load(dataset, "test", resolution)
    out = {}
    for label, options in (MODELS if models is None else models).items():
        if "pretrained" in options:
            out[label] = load_denoiser(pretrained.resolve(options["pretrained"]))
            continue
        recipe = recipes.denoiser_recipe(dataset, resolution, **options)
        out[label] = OBJECTIVES[recipe.objective]().build(recipe, images.shape, images.num_classes).eval()
    return out


def devices() -> list[str]:
    return ["cpu", "cuda"]


def try_cell(name: str, params: Any, model: Any, device: str) -> str:
    """``runs``, ``skipped: <reason>`` or ``fails: <error>`` for one technique, model and device."""
    from bench.conditioning import Guidance
    from bench.pipelines import conditioned_pipeline
    from bench.sampling import generators

    technique = registry.get(name)
    if device.startswith("cuda") and not torch.cuda.is_available():
        return "skipped: no CUDA device on this machine"
    if model.kind not in technique.model_kinds:
        return f"skipped: {technique.model_kinds_reason or 'model kind not declared'}"
    try:
        technique.validate(params)
        pipe = technique.pipeline(params, {"model": model.to(device)}, 2)
        if model.kind != "unconditional":
            from bench.text_to_image import DEFAULT_PROMPTS, read_prompts

            prompts = read_prompts(DEFAULT_PROMPTS) if model.kind == "text" else None
            pipe = conditioned_pipeline(pipe, model, Guidance(scale=2.0), prompts)
        with torch.no_grad():
            x = pipe.sample(generators([0]), None)
        return "runs" if bool(torch.isfinite(x).all()) else "fails: non-finite images"
    except Unsupported as exc:
        return f"skipped: {exc}"
    except Exception as exc:  # noqa: BLE001 - the matrix reports what failed, it does not stop at it
        return f"fails: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def matrix(models: dict[str, Any] | None = None, on: list[str] | None = None) -> pd.DataFrame:
    """One row per (technique variant, model), one column per device."""
    models = build_models() if models is None else models
    rows = []
    for label, params in training_free():
        name = label.split(" ")[0]
        for model_label, model in models.items():
            rows.append({"technique": label, "model": model_label,
                         **{device: try_cell(name, params, model, device) for device in (on or devices())}})
    return pd.DataFrame(rows)

