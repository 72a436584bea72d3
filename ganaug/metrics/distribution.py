"""How close the generated distribution is to the real one, measured on features.

FID and KID reuse torchmetrics' math (the matrix-square-root trace and the
polynomial-kernel MMD); precision/recall (Kynkäänniemi et al. 2019) and
density/coverage (Naeem et al. 2020) are k-NN-manifold estimates that
torchmetrics does not ship, written here over one chunked distance helper.

All inputs are float feature arrays [N, D]; nothing here knows about images.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.image.fid import _compute_fid
from torchmetrics.image.kid import poly_mmd

# Rows of the distance matrix computed at once: bounds memory to chunk * N * 8 bytes.
_CHUNK = 1024


def _t64(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def distance_chunks(a: np.ndarray, b: np.ndarray, chunk: int = _CHUNK) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (row offset, Euclidean distances [rows, len(b)]) in float64.

    float64 keeps the |a|^2 + |b|^2 - 2ab expansion accurate near zero, which is
    where near-copies live.
    """
    ta, tb = _t64(a).flatten(1), _t64(b).flatten(1)
    for i in range(0, len(ta), chunk):
        yield i, torch.cdist(ta[i : i + chunk], tb).clamp_min_(0.0)


def nearest_distances(a: np.ndarray, b: np.ndarray, *, exclude_self: bool = False) -> np.ndarray:
    """Distance from each row of ``a`` to its nearest row of ``b`` (float64 [len(a)]).

    ``exclude_self`` (when a is b) skips the diagonal, for real-vs-itself baselines.
    """
    out = np.empty(len(a))
    for i, d in distance_chunks(a, b):
        if exclude_self:
            idx = torch.arange(d.shape[0])
            d[idx, idx + i] = float("inf")
        out[i : i + len(d)] = d.min(dim=1).values.numpy()
    return out


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest neighbour in the same set (self excluded)."""
    if len(x) <= k:
        raise ValueError(f"k-NN radii need more than k={k} points, got {len(x)}")
    out = np.empty(len(x))
    for i, d in distance_chunks(x, x):
        # Self is one of the zeros, so the k-th neighbour is the (k+1)-th smallest.
        out[i : i + len(d)] = d.kthvalue(k + 1, dim=1).values.numpy()
    return out


# ---------------------------------------------------------------------------- FID / KID


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the two feature sets."""
    if len(real) < 2 or len(fake) < 2:
        raise ValueError("FID needs at least 2 samples per set")
    r, f = _t64(real), _t64(fake)
    value = _compute_fid(r.mean(0), torch.cov(r.T), f.mean(0), torch.cov(f.T))
    # The eigenvalue route can dip a hair below zero for identical sets.
    return max(float(value), 0.0)


@dataclass
class KIDResult:
    mean: float
    std: float
    subsets: int
    subset_size: int


def kid(real: np.ndarray, fake: np.ndarray, *, subsets: int = 50, subset_size: int = 1000, seed: int = 0) -> KIDResult:
    """Kernel Inception Distance: unbiased cubic-polynomial MMD^2 averaged over random equal-size subsets.

    Same estimator as torchmetrics' KernelInceptionDistance (which needs equal sizes,
    hence the subsets); unlike FID it is unbiased for small sets.
    """
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    rng = np.random.default_rng(seed)
    r, f = _t64(real), _t64(fake)
    vals = [
        float(poly_mmd(r[rng.choice(len(r), m, replace=False)], f[rng.choice(len(f), m, replace=False)]))
        for _ in range(subsets)
    ]
    return KIDResult(float(np.mean(vals)), float(np.std(vals)), subsets, m)


# ---------------------------------------------------------------------------- k-NN manifolds


def _in_any_ball(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each point: is it inside any ball, and inside how many."""
    rad = torch.as_tensor(radii)[None, :]
    inside_any = np.empty(len(points), bool)
    count = np.empty(len(points), np.int64)
    for i, d in distance_chunks(points, centres):
        hit = d <= rad
        inside_any[i : i + len(d)] = hit.any(1).numpy()
        count[i : i + len(d)] = hit.sum(1).numpy()
    return inside_any, count


def _subsample(x: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    return x if n is None or len(x) <= n else x[rng.choice(len(x), n, replace=False)]


@dataclass
class PrecisionRecall:
    precision: float  # share of samples inside the real manifold: fidelity
    recall: float  # share of real points inside the generated manifold: diversity / mode coverage
    k: int
    n_real: int
    n_fake: int


def precision_recall(real: np.ndarray, fake: np.ndarray, *, k: int = 3, max_samples: int | None = 10000,
                     seed: int = 0) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al. 2019), manifolds = union of k-NN balls."""
    rng = np.random.default_rng(seed)
    real, fake = _subsample(real, max_samples, rng), _subsample(fake, max_samples, rng)
    prec, _ = _in_any_ball(fake, real, knn_radii(real, k))
    rec, _ = _in_any_ball(real, fake, knn_radii(fake, k))
    return PrecisionRecall(float(prec.mean()), float(rec.mean()), k, len(real), len(fake))


@dataclass
class DensityCoverage:
    density: float  # ~1 for a matching distribution; > 1 when samples crowd dense real regions
    coverage: float  # share of real points with a sample inside their k-NN ball
    k: int
    n_real: int
    n_fake: int


def density_coverage(real: np.ndarray, fake: np.ndarray, *, k: int = 5, max_samples: int | None = 10000,
                     seed: int = 0) -> DensityCoverage:
    """Density and coverage (Naeem et al. 2020); only real-point balls, so robust to fake outliers."""
    rng = np.random.default_rng(seed)
    real, fake = _subsample(real, max_samples, rng), _subsample(fake, max_samples, rng)
    radii = knn_radii(real, k)
    _, counts = _in_any_ball(fake, real, radii)
    density = counts.sum() / (k * len(fake))
    covered = nearest_distances(real, fake) <= radii
    return DensityCoverage(float(density), float(covered.mean()), k, len(real), len(fake))


# ---------------------------------------------------------------------------- per class


def per_class_fid(real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray, fake_labels: np.ndarray,
                  class_names: Sequence[str], *, min_samples: int = 2) -> dict[str, float | None]:
    """FID within each class; None where a side has fewer than ``min_samples``.

    With fewer samples than feature dimensions the covariances are rank-deficient
    and the value is biased upwards; compare per-class FIDs at equal sample counts.
    """
    out: dict[str, float | None] = {}
    for c, name in enumerate(class_names):
        r, f = real[real_labels == c], fake[fake_labels == c]
        out[name] = fid(r, f) if min(len(r), len(f)) >= max(min_samples, 2) else None
    return out
