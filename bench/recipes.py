"""Named recipes for the artifacts the shipped sweeps need. Changing a field changes the artifact's address."""

from __future__ import annotations

from typing import Any

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


# A small class-conditional DiT (diffusers' DiTTransformer2DModel): patch 4 (16 tokens at 16×16), 6 blocks of width
# 128 (4 heads × 32), 2.12M parameters; ≈0.1 s per training step at batch 64 on 2 CPU cores. Patch 2 (64 tokens,
# 0.3 s per step) made speckled digits after 3000 steps (17 min, loss 0.043 against the U-Net's 0.033): at this
# budget more steps of the coarser model serve better, as issue 20 foresaw.
TINY_DIT = {
    "patch_size": 4,
    "num_layers": 6,
    "num_attention_heads": 4,
    "attention_head_dim": 32,
}
# Transformers want a smaller step than the U-Net's 1e-3 (DiT trains at 1e-4 at batch 256).
DIT_LR = 5e-4
NUM_CLASSES = {"mnist": 10, "digits": 10, "tv-mnist": 10, "tv-cifar10": 10}
# A small AutoencoderKL: three levels (two downsamplings), 4 latent channels: 16×16×1 → 4×4×4, a quarter of the
# pixels' dimensions (two levels would give 4×8×8, which compresses nothing).
TINY_AUTOENCODER = {
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [32, 64, 64],
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 16,
}
# The DiT on those latents: patch 1 (16 tokens of 4 channels, as many as the pixel DiT's), the same blocks.
TINY_LATENT_DIT = {**TINY_DIT, "patch_size": 1}


def autoencoder_recipe(dataset: str = "mnist", resolution: int = 16, steps: int = 2000, seed: int = 0) -> Recipe:
    """The latent models' autoencoder (``TINY_AUTOENCODER``), reconstruction MSE + KL weight 1e-6 per pixel."""
    return Recipe(name=f"{dataset}{resolution}-autoencoder", objective="autoencoder", dataset=dataset,
                  resolution=resolution, network=dict(TINY_AUTOENCODER), steps=steps, batch=64, lr=1e-3, seed=seed,
                  ema_decay=0.999, options={"kl_weight": 1e-6})


def denoiser_recipe(dataset: str = "mnist", resolution: int = 16, objective: str = "epsilon",
                    steps: int = 4000, batch: int = 64, seed: int = 0, layers_per_block: int = 1,
                    schedule: str = "linear", arch: str = "unet", conditioning: str = "none",
                    latent: bool = False) -> Recipe:
    """The baseline ε-model: DDPM schedule (T = 1000, linear β; or the cosine one, name suffix ``-cosine``), tiny
    UNet (``layers_per_block`` ResNet blocks per level; a name suffix ``-lpb<n>`` when not 1), EMA 0.999. With
    ``conditioning = "class"`` it is class-conditional (the dataset's labels, 10 % of them replaced by the null class
    in training: Ho & Salimans' p_uncond), name suffix ``-class``; ``arch = "dit"`` makes it the tiny DiT."""
    from bench.errors import UserError

    depth = f"-lpb{layers_per_block}" if layers_per_block != 1 else ""
    suffix = f"-{schedule}" if schedule != "linear" else ""
    if conditioning not in ("none", "class"):
        raise UserError(f"model.conditioning {conditioning!r} is not one of none, class")
    if arch not in ("unet", "dit"):
        raise UserError(f"model.arch {arch!r} is not one of unet, dit")
    if arch == "dit" and conditioning != "class":
        raise UserError("model.arch 'dit' is class-conditional: set model.conditioning = \"class\"")
    if conditioning == "class" and dataset not in NUM_CLASSES:
        raise UserError(f"model.conditioning 'class' needs class labels; dataset {dataset} has none")
    options = ({"num_classes": NUM_CLASSES[dataset], "label_dropout": 0.1} if conditioning == "class" else {})
    if latent and arch != "dit":
        raise UserError("model.latent: the zoo's latent model is the DiT (model.arch = 'dit')")
    if arch == "dit":
        if layers_per_block != 1:
            raise UserError("model.layers_per_block applies to the U-Net, not the DiT")
        schedule_config = dict(SCHEDULES[schedule])
        if latent:  # trained on the autoencoder's latents; its recipe (and so its address) is part of this one
            options["autoencoder"] = autoencoder_recipe(dataset, resolution, min(2000, steps), seed).to_dict()
            # latents are unit-variance and unbounded: clipping x̂_0 to [-1, 1], a pixel range, wrecks them (the
            # first latent DiT sampled at FID 197 with it, worse at 20 steps than at 10); LDM's schedulers do not clip
            schedule_config["clip_sample"] = False
        return Recipe(name=f"{dataset}{resolution}-{objective}-dit{'-latent' if latent else ''}{suffix}-class",
                      objective=objective, dataset=dataset, resolution=resolution,
                      network=dict(TINY_LATENT_DIT if latent else TINY_DIT),
                      schedule=schedule_config, steps=steps, batch=batch, lr=DIT_LR, seed=seed,
                      ema_decay=0.999, options={**options, "arch": "dit"})
    tag = "-class" if conditioning == "class" else ""
    return Recipe(name=f"{dataset}{resolution}-{objective}-unet{depth}{suffix}{tag}", objective=objective,
                  dataset=dataset, resolution=resolution, network={**TINY_UNET, "layers_per_block": layers_per_block},
                  schedule=dict(SCHEDULES[schedule]), steps=steps,
                  batch=batch, lr=1e-3, seed=seed, ema_decay=0.999, options=options)


def pretrained_recipe(source: str, dataset: str = "mnist", resolution: int = 16, budget_steps: int = 4000,
                      batch: int = 64, seed: int = 0) -> Recipe:
    """A pretrained diffusers model imported as the base (no training): its network and scheduler configs as found,
    its source and weights hash in ``options``. ``steps`` is not trained but is the budget every technique scales its
    own training from (students, priors, gates), as it does from the zoo's base recipe."""
    from pathlib import PurePosixPath

    from bench import data, pretrained

    info = pretrained.describe(source)
    label = data.safe_label(PurePosixPath(info["source"]).name, 40) or "model"
    classes = {"num_classes": info["num_classes"]} if info["num_classes"] else {}  # what makes it class-conditional
    if info.get("text"):  # a text-to-image pipeline; with random weights (the tiny test pipeline) no quality
        classes = {"text": True, **({"random_weights": info["random_weights"]} if info["random_weights"] else {})}
    arch = "text" if info.get("text") else info["arch"]
    return Recipe(name=f"{dataset}{resolution}-pretrained-{arch}-{label}", objective="pretrained",
                  dataset=dataset, resolution=resolution, network=info["network"], schedule=info["schedule"],
                  steps=budget_steps, batch=batch, lr=1e-3, seed=seed, ema_decay=0.999,
                  options={"source": info["source"], "weights_sha256": info["weights_sha256"], **classes})


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


def model_kind(recipe: Recipe) -> str:
    """What a base recipe's model is conditioned on (one of ``bench.model.MODEL_KINDS``)."""
    if recipe.options.get("text"):
        return "text"
    return "class" if recipe.options.get("num_classes") else "unconditional"


def base_recipe(config: Any) -> Recipe:
    """The base model every technique of a ``SweepConfig`` starts from: the zoo's recipe, or the user's pretrained
    model imported under a recipe naming its source and weights hash."""
    m = config.model
    if m.pretrained:
        return pretrained_recipe(m.pretrained, m.dataset, m.resolution, m.train_steps)
    return denoiser_recipe(m.dataset, m.resolution, m.objective, steps=m.train_steps,
                           layers_per_block=m.layers_per_block, schedule=m.schedule, arch=m.arch,
                           conditioning=m.conditioning, latent=m.latent)
