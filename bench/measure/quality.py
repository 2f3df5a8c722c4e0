"""FID, KID and precision/recall with torch-fidelity, on an offline extractor by default.

Features are extracted once per image set by torch-fidelity; reference features are cached by torch-fidelity under a
name built from (dataset, split, resolution, N, extractor hash), never a folder name. Features are rounded to float16
— the precision the store keeps them at — *before* any metric is computed, so every figure in a record can be
recomputed exactly from the stored features. The FID confidence interval is FID ± 1.96 bootstrap standard errors,
resampling the generated images with the reference fixed (compare intervals only between rows of equal N; for a
verdict between two cells use the paired comparison in ``bench.compare``). FID∞ extrapolates FID to infinitely many
generated images from its values at smaller N (Chong & Forsyth 2020).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from bench import data, store, zoo
from bench.errors import UserError

INCEPTION = "inception-v3-compat"


@dataclass(frozen=True)
class Extractor:
    name: str  # torch-fidelity registry name
    feature: str  # feature layer used for FID/KID/PRC
    weights_sha256: str
    description: str


class Uint8Images(Dataset):
    """uint8 CHW tensors as torch-fidelity expects; grey images become RGB for Inception."""

    def __init__(self, images: torch.Tensor, rgb: bool = False) -> None:
        self.images = images.repeat(1, 3, 1, 1) if rgb and images.shape[1] == 1 else images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def cache_root() -> Path:
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench")).expanduser() / "fidelity"


def zoo_extractor(artifact: zoo.Artifact) -> Extractor:
    """The extractor a trained zoo artifact (the offline classifier or SimCLR encoder) gives, registered with
    torch-fidelity under its weights' hash. Training one is the caller's (``bench.train.resolve_extractor``)."""
    from bench import extractor

    sha = artifact.record["weights_sha256"]
    kind = artifact.recipe.objective
    name = extractor.register(artifact.path, sha, kind)
    what = "classifier" if kind == "classifier" else "contrastive (SimCLR) encoder"
    return Extractor(name, extractor.FEATURES, sha,
                     f"offline {what} {artifact.recipe.name} ({artifact.recipe.key}), 64-d penultimate features")


def inception() -> Extractor:
    """torch-fidelity's Inception-v3 (its weights must be in torch's hub cache: they are downloaded once)."""
    return _inception()


def check_extractor(choice: str) -> None:
    """Raise the one-line error ``bench.train.resolve_extractor`` would, before any training: here, only
    Inception's weights can be missing (the zoo trains its own extractors)."""
    if choice == INCEPTION:
        _inception()


def _inception() -> Extractor:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    weights = Path(torch.hub.get_dir()) / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[-1]
    if not weights.exists():
        raise UserError(f"Inception-v3 FID weights are not present at {weights} (offline machine?); "
                        "use quality.extractor = 'auto'")
    return Extractor(INCEPTION, "2048", zoo.weights_sha256(weights), "Inception-v3 (torch-fidelity compat), pool3")


def _features(images: torch.Tensor, extractor: Extractor, cache_name: str | None) -> torch.Tensor:
    from torch_fidelity.utils import create_feature_extractor, extract_featuresdict_from_input_id_cached

    kwargs = {"cuda": False, "verbose": False, "save_cpu_ram": True, "batch_size": 256,
              "cache": cache_name is not None, "cache_root": str(cache_root()),
              "input1": Uint8Images(images, rgb=extractor.name == INCEPTION), "input1_cache_name": cache_name}
    fe = create_feature_extractor(extractor.name, [extractor.feature], cuda=False, verbose=False)
    feats = extract_featuresdict_from_input_id_cached(1, fe, **kwargs)[extractor.feature]
    # rounded to what the store keeps, so metrics are computed on exactly the stored values
    return torch.from_numpy(feats.cpu().numpy().astype(store.FEATURE_DTYPE).astype(np.float64))


def image_features(images: torch.Tensor, extractor: Extractor) -> torch.Tensor:
    """The extractor's features of uint8 ``images``, one row per image, at the store's precision (as float64)."""
    return _features(images, extractor, None)


def reference_cache_name(dataset: str, split: str, resolution: int, n: int, extractor: Extractor) -> str:
    content = data.identity(dataset)
    safe = (f"{data.short_name(dataset)}-{content}" if content
            else "".join(c if c.isalnum() else "_" for c in dataset))
    return f"ref-{safe}-{split}-{resolution}px-n{n}-{extractor.weights_sha256[:16]}"


def reference_features(dataset: str, split: str, resolution: int, n: int, extractor: Extractor) -> torch.Tensor:
    ref = data.load(dataset, split, resolution).images
    if n > len(ref):
        raise UserError(f"quality.reference_n = {n} exceeds the {len(ref)} images of {dataset}/{split}")
    return _features(ref[:n], extractor, reference_cache_name(dataset, split, resolution, n, extractor))


def compute(images: torch.Tensor, ref_features: torch.Tensor, extractor: Extractor, bootstrap: int = 200,
            seed: int = 0) -> dict[str, float | int]:
    """FID (+ bootstrap 95% CI, FID∞), KID, precision and recall of uint8 ``images`` against the reference
    features."""
    return compute_from_features(image_features(images, extractor), ref_features, bootstrap, seed)


def compute_from_features(gen: torch.Tensor, ref_features: torch.Tensor, bootstrap: int = 200, seed: int = 0
                          ) -> dict[str, float | int]:
    """Every quality figure of a record from generated and reference features (rows are images)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    from bench import stats

    gen, ref_features = gen.double(), ref_features.double()
    n_gen, n_ref = len(gen), len(ref_features)
    ref_stats = fid_features_to_statistics(ref_features)

    def fid(features: torch.Tensor) -> float:
        return fid_statistics_to_metric(fid_features_to_statistics(features), ref_stats, False)[
            "frechet_inception_distance"]

    point = fid(gen)
    se = None
    if bootstrap > 1:  # resample the generated images, the reference fixed (vectorised: one symmetric eigenproblem
        # per draw; the same draws as resampling with default_rng(seed).integers(0, n, n) one draw at a time)
        draws = stats.Draws.fixed_reference(n_gen, n_ref, bootstrap, seed)
        boot = stats.bootstrap_metrics(gen.numpy(), stats.Reference(ref_features.numpy(), draws), ("fid",))["fid"]
        se = float(boot.std(ddof=1))
    kid = kid_features_to_metric(gen, ref_features, kid_subsets=100, kid_subset_size=min(1000, n_gen, n_ref),
                                 rng_seed=seed, verbose=False)
    prc = prc_features_to_metric(gen.float(), ref_features.float(), prc_neighborhood=3, prc_batch_size=10000,
                                 save_cpu_ram=True, verbose=False)
    return {
        "fid": point,
        # FID ± 1.96 bootstrap standard errors: the spread of FID at this N. Bootstrap FIDs themselves sit above the
        # point (resampling duplicates images), so neither their percentiles nor the basic interval bracket it.
        "fid_ci_low": max(0.0, point - 1.96 * se) if se is not None else None,
        "fid_ci_high": point + 1.96 * se if se is not None else None,
        "fid_bootstrap_se": se,
        "kid": kid["kernel_inception_distance_mean"],
        "kid_std": kid["kernel_inception_distance_std"],
        "precision": prc["precision"],
        "recall": prc["recall"],
        "n_generated": n_gen,
        "n_reference": n_ref,
        # FID at N' = N/4 … N fitted against 1/N'; the intercept estimates FID at N = ∞ for this reference set
        **stats.fid_infinity(gen.numpy(), ref_features.numpy(), seed=seed),
    }
