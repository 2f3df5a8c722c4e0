"""The offline feature extractor for FID/KID/precision/recall: a small classifier trained by the zoo for one
dataset and resolution, registered with torch-fidelity under a name that carries its weights hash."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

FEATURES = "features"  # penultimate layer: the one FID/KID/PRC use
LOGITS = "logits"


class DigitClassifier(nn.Module):
    """Three 3×3 convs and a ``feature_dim`` bottleneck; inputs in [-1, 1]."""

    def __init__(self, channels: int = 1, width: int = 32, feature_dim: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.config = {"channels": channels, "width": width, "feature_dim": feature_dim, "num_classes": num_classes}
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(8 * width, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

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


def register(directory: Path, weights_hash: str) -> str:
    """Register the classifier in ``directory`` with torch-fidelity; returns the extractor's name."""
    import torch_fidelity

    name = f"bench-classifier-{weights_hash[:12]}"
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
