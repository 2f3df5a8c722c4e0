"""Quality statistics on per-image features: FID, KID, precision and recall written as functions of resampling
*weights*, so that one bootstrap draw (of seed indices, and of reference indices) applies to every cell alike.

Every cell generates image i from seed i, so two cells' feature rows are paired by seed. A paired bootstrap draws
the same seed indices for both cells (and the same reference indices), recomputes each metric on both and takes the
difference: what the two cells share (the seeds' noise, the reference sample) cancels, which is why a paired
interval is much narrower than two unpaired ones side by side.

Conventions (kept identical to torch-fidelity where it defines them):
- FID: means and covariances (ddof 1) of float64 features, tr√(Σ₁Σ₂) from the eigenvalues of Σ₁Σ₂.
- KID: the polynomial kernel (x·y/d + 1)³ and the full-sample unbiased MMD² (diagonals excluded); torch-fidelity's
  KID averages the same estimator over random subsets, so both estimate the same quantity.
- Precision/recall (Kynkäänniemi et al. 2019, k = 3): a point is inside the other set's manifold when it lies in
  some ball whose radius is that point's distance to its k-th nearest neighbour within its own set. Under resampling
  the radii stay those of the full sets (a resampled set with duplicates has zero-radius balls) and the union runs
  over the drawn points only.
- Intervals: Δ ± 1.96 bootstrap standard errors (as the per-cell FID interval): bootstrap FIDs sit above the point
  (duplicated images), so their percentiles do not bracket it; the standard error does not depend on that offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

PRC_NEIGHBORHOOD = 3
Z95 = 1.959964
LOWER_IS_BETTER = {"fid": True, "kid": True, "precision": False, "recall": False, "class_accuracy": False}
METRICS = ("fid", "kid", "precision", "recall")  # the feature metrics; class accuracy is paired from its own bits


def as_float64(features: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(features, dtype=np.float64)


# -- FID ----------------------------------------------------------------------------------------------------------
def moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), np.cov(x, rowvar=False)


def weighted_moments(x: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof 1) of the rows of ``x`` repeated ``counts[b, i]`` times, for each draw b."""
    n = counts.sum(axis=1, keepdims=True).astype(np.float64)  # (B, 1)
    mu = counts @ x / n  # (B, d)
    second = np.stack([(x * c[:, None]).T @ x for c in counts.astype(np.float64)])  # (B, d, d)
    cov = (second - n[:, :, None] * mu[:, :, None] * mu[:, None, :]) / (n[:, :, None] - 1)
    return mu, cov


def frechet(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """Fréchet distance; leading dimensions broadcast (one FID per bootstrap draw)."""
    diff = mu1 - mu2
    eig = np.linalg.eigvals(s1 @ s2).astype(np.complex128)
    tr_covmean = np.sqrt(eig).real.sum(axis=-1)
    return (diff * diff).sum(axis=-1) + np.trace(s1, axis1=-2, axis2=-1) + np.trace(s2, axis1=-2, axis2=-1) \
        - 2 * tr_covmean


def sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of (a stack of) covariance matrices."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))[..., None, :]) @ np.swapaxes(v, -1, -2)


def frechet_rooted(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray, root2: np.ndarray
                   ) -> np.ndarray:
    """:func:`frechet` with √Σ₂ given: tr√(Σ₁Σ₂) = tr√(√Σ₂ Σ₁ √Σ₂), a symmetric eigenproblem (4× faster, for the
    bootstrap's hundreds of draws)."""
    diff = mu1 - mu2
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root2 @ s1 @ root2), 0, None)).sum(axis=-1)
    return (diff * diff).sum(axis=-1) + np.trace(s1, axis1=-2, axis2=-1) + np.trace(s2, axis1=-2, axis2=-1) \
        - 2 * tr_covmean


def fid(gen: np.ndarray, ref: np.ndarray) -> float:
    return float(frechet(*moments(as_float64(gen)), *moments(as_float64(ref))))


# -- KID ----------------------------------------------------------------------------------------------------------
def poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _weighted_within(k: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Σ_{i≠j} w_i w_j k_ij / Σ_{i≠j} w_i w_j for each row of weights ``w`` (pairs of one original point with itself,
    duplicates included, are excluded like the diagonal of the unbiased estimator)."""
    diag = np.diagonal(k)
    num = ((w @ k) * w).sum(axis=1) - (w * w) @ diag
    den = w.sum(axis=1) ** 2 - (w * w).sum(axis=1)
    return num / den


def kid_terms(gen: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return poly_kernel(gen, gen), poly_kernel(gen, ref), poly_kernel(ref, ref)


def kid(gen: np.ndarray, ref: np.ndarray) -> float:
    g, r = as_float64(gen), as_float64(ref)
    kxx, kxy, kyy = kid_terms(g, r)
    ones_g, ones_r = np.ones((1, len(g))), np.ones((1, len(r)))
    return float(_weighted_within(kxx, ones_g)[0] + _weighted_within(kyy, ones_r)[0] - 2 * kxy.mean())


# -- precision / recall -------------------------------------------------------------------------------------------
def _kth_radius(x: np.ndarray, k: int = PRC_NEIGHBORHOOD) -> np.ndarray:
    d = np.sqrt(np.maximum(_sqdist(x, x), 0.0))
    return np.partition(d, k, axis=1)[:, k]  # k-th neighbour, the point itself (distance 0) being the 0-th


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T


def prc_inside(gen: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``gen_in[i, j]``: generated i inside reference j's ball; ``ref_in[j, i]``: reference j inside generated i's."""
    d = np.sqrt(np.maximum(_sqdist(gen, ref), 0.0))
    return d <= _kth_radius(ref)[None, :], (d <= _kth_radius(gen)[:, None]).T


def precision_recall(gen: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    gen_in, ref_in = prc_inside(as_float64(gen), as_float64(ref))
    return float(gen_in.any(1).mean()), float(ref_in.any(1).mean())


# -- all four, point and bootstrap --------------------------------------------------------------------------------
def point_metrics(gen: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """FID, full-sample KID, precision and recall of ``gen`` against ``ref`` (rows are images)."""
    p, r = precision_recall(gen, ref)
    return {"fid": fid(gen, ref), "kid": kid(gen, ref), "precision": p, "recall": r}


@dataclass(frozen=True)
class Draws:
    """Bootstrap draws shared by every cell of a comparison: resampling counts over the n seeds and over the m
    reference images (``counts[b, i]``: how often index i appears in draw b)."""

    gen_counts: np.ndarray  # (B, n)
    ref_counts: np.ndarray  # (B, m)

    @classmethod
    def make(cls, n: int, m: int, draws: int, seed: int = 0) -> Draws:
        rng = np.random.default_rng(seed)
        gen = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(draws)])
        ref = np.stack([np.bincount(rng.integers(0, m, m), minlength=m) for _ in range(draws)])
        return cls(gen, ref)

    @classmethod
    def fixed_reference(cls, n: int, m: int, draws: int, seed: int = 0) -> Draws:
        """Draws over the seeds only, the reference held fixed (the per-cell interval a record stores)."""
        return cls(cls.make(n, 1, draws, seed).gen_counts, np.ones((draws, m), dtype=np.int64))


class Reference:
    """The reference features and everything about them that every cell's bootstrap reuses: its moments, kernel
    term and ball radii, full and under each draw (each computed on first use)."""

    def __init__(self, features: np.ndarray, draws: Draws) -> None:
        self.x = as_float64(features)
        self.draws = draws
        if draws.ref_counts.shape[1] != len(self.x):
            raise ValueError("bootstrap draws do not match the reference size")
        self.weights = draws.ref_counts.astype(np.float64)

    @cached_property
    def boot_moments(self) -> tuple[np.ndarray, np.ndarray]:
        if (self.draws.ref_counts == 1).all():  # the reference held fixed: one moment for every draw
            mu, cov = moments(self.x)
            b = len(self.weights)
            return np.broadcast_to(mu, (b, *mu.shape)), np.broadcast_to(cov, (b, *cov.shape))
        return weighted_moments(self.x, self.draws.ref_counts)

    @cached_property
    def boot_roots(self) -> np.ndarray:
        if (self.draws.ref_counts == 1).all():
            return np.broadcast_to(sqrt_psd(self.boot_moments[1][0]), self.boot_moments[1].shape)
        return sqrt_psd(self.boot_moments[1])

    @cached_property
    def radius(self) -> np.ndarray:
        return _kth_radius(self.x)

    @cached_property
    def kyy_boot(self) -> np.ndarray:
        return _weighted_within(poly_kernel(self.x, self.x), self.weights)

    @cached_property
    def drawn(self) -> np.ndarray:
        return (self.draws.ref_counts > 0).astype(np.float64)


def bootstrap_metrics(gen: np.ndarray, reference: Reference, metrics: Sequence[str] = METRICS
                      ) -> dict[str, np.ndarray]:
    """Each metric under every draw (a vector of length B); the same ``reference`` (hence draws) for two cells
    pairs them."""
    g, r, draws = as_float64(gen), reference.x, reference.draws
    if draws.gen_counts.shape[1] != len(g):
        raise ValueError(f"bootstrap draws are over {draws.gen_counts.shape[1]} seeds, the cell has {len(g)}")
    wg, wr = draws.gen_counts.astype(np.float64), reference.weights
    out: dict[str, np.ndarray] = {}
    if "fid" in metrics:
        out["fid"] = frechet_rooted(*weighted_moments(g, draws.gen_counts), *reference.boot_moments,
                                    reference.boot_roots)
    if "kid" in metrics:
        cross = ((wg @ poly_kernel(g, r)) * wr).sum(1) / (wg.sum(1) * wr.sum(1))
        out["kid"] = _weighted_within(poly_kernel(g, g), wg) + reference.kyy_boot - 2 * cross
    if "precision" in metrics or "recall" in metrics:
        d = np.sqrt(np.maximum(_sqdist(g, r), 0.0))
        gen_in = (d <= reference.radius[None, :]).astype(np.float64)  # (n, m)
        ref_in = (d <= _kth_radius(g)[:, None]).T.astype(np.float64)  # (m, n)
        # an image is inside the other set's manifold when a ball of a *drawn* point of that set holds it
        inside_gen = (gen_in @ reference.drawn.T) > 0  # (n, B)
        inside_ref = (ref_in @ (draws.gen_counts > 0).T.astype(np.float64)) > 0  # (m, B)
        out["precision"] = (wg * inside_gen.T).sum(1) / wg.sum(1)
        out["recall"] = (wr * inside_ref.T).sum(1) / wr.sum(1)
    return out


@dataclass(frozen=True)
class Difference:
    """``metric(A) − metric(B)`` with its paired 95% interval and what it decides about A relative to B."""

    metric: str
    a: float
    b: float
    delta: float
    low: float
    high: float
    n: int

    @property
    def decided(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def verdict(self) -> str:
        """``better``/``worse`` for A against B where the interval excludes zero, else ``undecided``; ``same`` when
        the two cells' features are identical (the same images)."""
        if self.low == self.high == self.delta == 0:
            return "same"
        if not self.decided:
            return "undecided"
        a_lower = self.high < 0
        return "better" if a_lower == LOWER_IS_BETTER[self.metric] else "worse"

    def as_dict(self) -> dict[str, float | int | str]:
        return {"metric": self.metric, "a": self.a, "b": self.b, "delta": self.delta, "low": self.low,
                "high": self.high, "n": self.n, "verdict": self.verdict}


def paired_differences(gen_a: np.ndarray, gen_b: np.ndarray, ref: np.ndarray, draws: int = 500, seed: int = 0,
                       boot_a: dict[str, np.ndarray] | None = None, boot_b: dict[str, np.ndarray] | None = None,
                       point_a: dict[str, float] | None = None, point_b: dict[str, float] | None = None,
                       ) -> dict[str, Difference]:
    """Paired bootstrap of A − B over shared seeds (row i of both is seed i) and a resampled reference. Precomputed
    bootstrap vectors and point metrics (from :func:`bootstrap_metrics` with the same draws) may be passed in."""
    if len(gen_a) != len(gen_b):
        raise ValueError(f"paired cells need the same seeds: {len(gen_a)} vs {len(gen_b)} images")
    if boot_a is None or boot_b is None:
        reference = Reference(ref, Draws.make(len(gen_a), len(ref), draws, seed))
        boot_a = boot_a or bootstrap_metrics(gen_a, reference)
        boot_b = boot_b or bootstrap_metrics(gen_b, reference)
    point_a = point_a or point_metrics(gen_a, ref)
    point_b = point_b or point_metrics(gen_b, ref)
    return differences(point_a, point_b, boot_a, boot_b, len(gen_a), np.array_equal(gen_a, gen_b))


def differences(point_a: dict[str, float], point_b: dict[str, float], boot_a: dict[str, np.ndarray],
                boot_b: dict[str, np.ndarray], n: int, identical: bool = False) -> dict[str, Difference]:
    """A − B per metric from point values and paired bootstrap vectors (the same draws for both)."""
    out = {}
    for metric in METRICS:
        delta = point_a[metric] - point_b[metric]
        se = 0.0 if identical else float(np.std(boot_a[metric] - boot_b[metric], ddof=1))
        out[metric] = Difference(metric, point_a[metric], point_b[metric], delta, delta - Z95 * se, delta + Z95 * se,
                                 n)
    return out


def proportion_interval(successes: int, n: int) -> tuple[float, float]:
    """Wilson's 95% score interval for a proportion (sound near 0 and 1, where the normal one leaves [0, 1])."""
    if n == 0:
        return float("nan"), float("nan")
    p, z2 = successes / n, Z95 ** 2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return float(centre - half), float(centre + half)


def paired_proportion(a: np.ndarray, b: np.ndarray, gen_counts: np.ndarray) -> Difference:
    """A − B of the fraction of images a test passes (class accuracy: 1 where the classifier finds the requested
    class), over the same seeds, with the paired bootstrap over seeds (``gen_counts``: the draws that pair the
    feature metrics)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = len(a)
    counts = gen_counts[:, :n].astype(np.float64)
    delta = float(a.mean() - b.mean())
    se = float(np.std(counts @ (a - b) / counts.sum(axis=1), ddof=1)) if not np.array_equal(a, b) else 0.0
    return Difference("class_accuracy", float(a.mean()), float(b.mean()), delta, delta - Z95 * se,
                      delta + Z95 * se, n)


# -- FID against 1/N (Chong & Forsyth 2020) -----------------------------------------------------------------------
def fid_infinity(gen: np.ndarray, ref: np.ndarray, points: int = 8, repeats: int = 3, seed: int = 0
                 ) -> dict[str, float | list[float] | list[int] | None]:
    """Extrapolate FID to infinitely many generated images: FID at N' = n/4 … n (``points`` values, each the mean of
    ``repeats`` random subsets; never below twice the feature dimension, where the covariance is far from full
    rank), a least-squares line FID = FID∞ + slope / N', and its intercept. The reference set stays whole."""
    g, r = as_float64(gen), as_float64(ref)
    n, d = g.shape
    low = min(n, max(2 * d, n // 4))
    sizes = sorted({int(round(v)) for v in np.linspace(low, n, points)})
    mu_r, s_r = moments(r)
    rng = np.random.default_rng(seed)
    values = []
    for size in sizes:
        reps = 1 if size == n else repeats
        values.append(float(np.mean([frechet(*moments(g[rng.choice(n, size, replace=False)]), mu_r, s_r)
                                     for _ in range(reps)])))
    x = 1.0 / np.asarray(sizes, dtype=np.float64)
    y = np.asarray(values)
    if len(sizes) < 2:
        return {"fid_inf": None, "fid_inf_slope": None, "fid_inf_r2": None, "fid_inf_n": sizes,
                "fid_inf_values": values}  # too few images for a fit
    slope, intercept = np.polyfit(x, y, 1)
    fitted = intercept + slope * x
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - fitted) ** 2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return {"fid_inf": float(intercept), "fid_inf_slope": float(slope), "fid_inf_r2": r2, "fid_inf_n": sizes,
            "fid_inf_values": values}


# -- latency ratio ------------------------------------------------------------------------------------------------
def median_ratio(a: Sequence[float], b: Sequence[float], draws: int = 2000, seed: int = 0
                 ) -> tuple[float, float, float]:
    """median(b) / median(a) with a 95% percentile interval from a bootstrap of each side's raw samples (the two
    runs are independent, so each is resampled on its own)."""
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    ma = np.median(xa[rng.integers(0, len(xa), (draws, len(xa)))], axis=1)
    mb = np.median(xb[rng.integers(0, len(xb), (draws, len(xb)))], axis=1)
    ratios = mb / ma
    return float(np.median(xb) / np.median(xa)), float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))
