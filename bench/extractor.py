"""The offline feature extractors for FID/KID/precision/recall, trained by the zoo for one dataset and resolution and
registered with torch-fidelity under a name that carries their weights hash: a small classifier where the dataset has
labels, and the same convolutional body trained self-supervised (SimCLR's contrastive objective over augmented views)
where it has none, e.g. a folder of images."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

FEATURES = "features"  # penultimate layer: the one FID/KID/PRC use
LOGITS = "logits"


class DigitClassifier(nn.Module):
    """Three 3×3 convs and a ``feature_dim`` bottleneck; inputs in [-1, 1]. The head maps features to ``num_classes``
    outputs: class logits, or (``projection_hidden`` > 0, a two-layer MLP) a contrastive projection."""

    def __init__(self, channels: int = 1, width: int = 32, feature_dim: int = 64, num_classes: int = 10,
                 projection_hidden: int = 0) -> None:
        super().__init__()
        self.config = {"channels": channels, "width": width, "feature_dim": feature_dim, "num_classes": num_classes}
        if projection_hidden:  # only then, so the shipped classifier's config.json reads as it always did
            self.config["projection_hidden"] = projection_hidden
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(8 * width, feature_dim), nn.ReLU(),
        )
        self.head = (nn.Sequential(nn.Linear(feature_dim, projection_hidden), nn.ReLU(),
                                   nn.Linear(projection_hidden, num_classes))
                     if projection_hidden else nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def save_classifier(model: DigitClassifier, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(model.config, indent=1))
    weights = directory / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    return weights


def load_classifier(directory: Path) -> DigitClassifier:
    model = DigitClassifier(**json.loads((directory / "config.json").read_text()))
    model.load_state_dict(load_file(directory / "model.safetensors"))
    return model.eval()


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random view of each image in [-1, 1] (SimCLR's augmentations, scaled to tiny images): a crop-and-zoom with
    a small rotation and shift, brightness, contrast and per-channel gain jitter, and a little pixel noise. No flips:
    digits and many shapes are not mirror-symmetric, and FID should see a mirrored image as a different one."""
    n, c = x.shape[:2]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand((n, *shape), generator=generator)

    zoom, angle = uniform(1.0, 1.35), uniform(-0.26, 0.26)  # crop 74-100% of the side; ±15°
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, uniform(-0.15, 0.15)], 1),
                         torch.stack([sin, cos, uniform(-0.15, 0.15)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    view = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = view.mean(dim=(1, 2, 3), keepdim=True)
    view = (view - mean) * uniform(0.6, 1.4, 1, 1, 1) + mean + uniform(-0.2, 0.2, 1, 1, 1)
    view = view * (uniform(0.8, 1.2, c, 1, 1) if c > 1 else 1.0)
    return (view + 0.05 * torch.randn(view.shape, generator=generator)).clamp(-1.0, 1.0)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy: each view must pick its partner among the 2N − 1 others."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    n = len(z1)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(logits, partner)


def register(directory: Path, weights_hash: str, kind: str = "classifier") -> str:
    """Register the extractor in ``directory`` with torch-fidelity; returns the extractor's name."""
    import torch_fidelity

    name = f"bench-{kind}-{weights_hash[:12]}"
    if name in torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY:
        return name
    classifier = load_classifier(directory)

    class ClassifierFeatures(FeatureExtractorBase):
        def __init__(self, name: str, features_list: list[str], **kwargs) -> None:
            super().__init__(name, features_list)
            self.net = classifier

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return (FEATURES, LOGITS)

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return LOGITS if metric == "isc" else FEATURES

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            feats = self.net.features(x.float() / 127.5 - 1.0)
            out = {FEATURES: feats, LOGITS: self.net.head(feats)}
            return tuple(out[f] for f in self.features_list)

    torch_fidelity.register_feature_extractor(name, ClassifierFeatures)
    return name
