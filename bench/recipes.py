"""Named recipes for the artifacts the shipped sweeps need. Changing a field changes the artifact's address."""

from __future__ import annotations

from bench.model import SCHEDULES
from bench.zoo import Recipe

# A tiny diffusers UNet2DModel (0.63M parameters at 1 channel): three levels, self-attention at the lowest
# resolution, one ResNet layer per block. ~0.75 ms per image per call on 2 CPU cores at 16×16.
TINY_UNET = {
    "block_out_channels": [24, 48, 48],
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "attention_head_dim": 8,
}


def denoiser_recipe(dataset: str = "mnist", resolution: int = 16, objective: str = "epsilon",
                    steps: int = 4000, batch: int = 64, seed: int = 0, layers_per_block: int = 1,
                    schedule: str = "linear") -> Recipe:
    """The baseline ε-model: DDPM schedule (T = 1000, linear β; or the cosine one, name suffix ``-cosine``), tiny
    UNet (``layers_per_block`` ResNet blocks per level; a name suffix ``-lpb<n>`` when not 1), EMA 0.999."""
    depth = f"-lpb{layers_per_block}" if layers_per_block != 1 else ""
    suffix = f"-{schedule}" if schedule != "linear" else ""
    return Recipe(name=f"{dataset}{resolution}-{objective}-unet{depth}{suffix}", objective=objective, dataset=dataset,
                  resolution=resolution, network={**TINY_UNET, "layers_per_block": layers_per_block},
                  schedule=dict(SCHEDULES[schedule]), steps=steps,
                  batch=batch, lr=1e-3, seed=seed, ema_decay=0.999)


def pretrained_recipe(source: str, dataset: str = "mnist", resolution: int = 16, budget_steps: int = 4000,
                      batch: int = 64, seed: int = 0) -> Recipe:
    """A pretrained diffusers model imported as the base (no training): its network and scheduler configs as found,
    its source and weights hash in ``options``. ``steps`` is not trained but is the budget every technique scales its
    own training from (students, priors, gates), as it does from the zoo's base recipe."""
    from pathlib import PurePosixPath

    from bench import data, pretrained

    info = pretrained.describe(source)
    label = data.safe_label(PurePosixPath(info["source"]).name, 40) or "model"
    return Recipe(name=f"{dataset}{resolution}-pretrained-unet-{label}", objective="pretrained", dataset=dataset,
                  resolution=resolution, network=info["network"], schedule=info["schedule"], steps=budget_steps,
                  batch=batch, lr=1e-3, seed=seed, ema_decay=0.999,
                  options={"source": info["source"], "weights_sha256": info["weights_sha256"]})


def classifier_recipe(dataset: str = "mnist", resolution: int = 16, steps: int = 1500, seed: int = 0) -> Recipe:
    """The offline FID feature extractor for ``dataset`` at ``resolution`` (64-d penultimate features)."""
    return Recipe(name=f"{dataset}{resolution}-classifier", objective="classifier", dataset=dataset,
                  resolution=resolution, network={"width": 32, "feature_dim": 64}, steps=steps, batch=128,
                  lr=2e-3, seed=seed, ema_decay=0.99)


def simclr_recipe(dataset: str = "mnist", resolution: int = 16, steps: int = 1500, seed: int = 0) -> Recipe:
    """The offline FID feature extractor for data without labels: the classifier's body (64-d features) trained with
    SimCLR's contrastive loss (a 64→64→32 projection head, temperature 0.2: SimCLR's best range for small batches)."""
    return Recipe(name=f"{dataset}{resolution}-simclr", objective="simclr", dataset=dataset, resolution=resolution,
                  network={"width": 32, "feature_dim": 64, "num_classes": 32, "projection_hidden": 64}, steps=steps,
                  batch=256, lr=2e-3, seed=seed, ema_decay=0.99, options={"temperature": 0.2})


EXTRACTORS = ("auto", "classifier", "simclr", "inception-v3-compat")


def extractor_recipe(choice: str, dataset: str, resolution: int, steps: int = 1500) -> Recipe | None:
    """The zoo recipe of ``quality.extractor = choice`` (None for Inception, which the zoo does not train): ``auto``
    is the classifier where the dataset has labels and the SimCLR encoder where it has none."""
    from bench import data
    from bench.errors import UserError

    if choice not in EXTRACTORS:
        raise UserError(f"quality.extractor {choice!r} is not one of {', '.join(EXTRACTORS)}")
    if choice == "inception-v3-compat":
        return None
    if choice == "auto":
        choice = "classifier" if data.has_labels(dataset) else "simclr"
    if choice == "classifier" and not data.has_labels(dataset):
        raise UserError(f"quality.extractor 'classifier' needs class labels; dataset {dataset} has none (use "
                        "'simclr' or 'auto')")
    make = classifier_recipe if choice == "classifier" else simclr_recipe
    return make(dataset, resolution, steps)
