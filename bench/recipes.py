"""Named recipes for the artifacts the shipped sweeps need. Changing a field changes the artifact's address."""

from __future__ import annotations

from bench.model import DDPM_SCHEDULE
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
                    steps: int = 4000, batch: int = 64, seed: int = 0) -> Recipe:
    """The baseline ε-model: DDPM schedule (T = 1000, linear β), tiny UNet, EMA 0.999."""
    return Recipe(name=f"{dataset}{resolution}-{objective}-unet", objective=objective, dataset=dataset,
                  resolution=resolution, network=dict(TINY_UNET), schedule=dict(DDPM_SCHEDULE), steps=steps,
                  batch=batch, lr=1e-3, seed=seed, ema_decay=0.999)


def classifier_recipe(dataset: str = "mnist", resolution: int = 16, steps: int = 1500, seed: int = 0) -> Recipe:
    """The offline FID feature extractor for ``dataset`` at ``resolution`` (64-d penultimate features)."""
    return Recipe(name=f"{dataset}{resolution}-classifier", objective="classifier", dataset=dataset,
                  resolution=resolution, network={"width": 32, "feature_dim": 64}, steps=steps, batch=128,
                  lr=2e-3, seed=seed, ema_decay=0.99)
