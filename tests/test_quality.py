"""Quality metrics on the offline extractor: they separate real from degraded images, and the reference cache is
keyed by (dataset, split, resolution, N, extractor hash)."""

import torch

from bench import data, train
from bench.measure import quality


def test_fid_orders_real_blurred_noise() -> None:
    extractor = train.resolve_extractor("auto", "digits", 8, steps=150)
    ref = quality.reference_features("digits", "test", 8, 300, extractor)
    real = data.load("digits", "train", 8).images[:300]
    blurred = torch.nn.functional.avg_pool2d(real.float(), 3, 1, 1).round().to(torch.uint8)
    noise = torch.randint(0, 256, real.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    q_real, q_blur, q_noise = (quality.compute(x, ref, extractor, bootstrap=30) for x in (real, blurred, noise))
    assert q_real["fid"] < q_blur["fid"] < q_noise["fid"]
    assert q_real["precision"] > q_noise["precision"]
    assert q_real["fid_ci_low"] <= q_real["fid"] <= q_real["fid_ci_high"]
    assert q_real["n_generated"] == 300 and q_real["n_reference"] == 300
    name = quality.reference_cache_name("digits", "test", 8, 300, extractor)
    assert extractor.weights_sha256[:16] in name
    assert list(quality.cache_root().glob(f"{name}*"))
