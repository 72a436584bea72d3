"""Failure modes a single FID hides: wrong labels, mode collapse, memorisation.

- label fidelity: does the domain classifier agree with the label a sample was asked for?
- per-class diversity and coverage: is every class present, and as varied as the real one?
- nearest neighbours to the training set: are samples copies of training images?

Thresholds are relative to real-vs-real references measured on the same data,
never absolute numbers, so they carry over between datasets and feature spaces.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ganaug.metrics.classifier import SmallCNN, predict_proba
from ganaug.metrics.distribution import distance_chunks, knn_radii, nearest_distances

# ---------------------------------------------------------------------------- label fidelity


@dataclass
class LabelFidelity:
    accuracy: float  # share of samples classified as the label they were generated for
    mean_confidence: float  # mean softmax probability of the requested label
    per_class: dict[str, float | None]  # accuracy per requested label


def label_fidelity(classifier: SmallCNN, images: np.ndarray, labels: np.ndarray,
                   class_names: Sequence[str]) -> LabelFidelity:
    labels = np.asarray(labels, dtype=np.int64)
    probs = predict_proba(classifier, images)
    hit = probs.argmax(1) == labels
    conf = probs[np.arange(len(labels)), labels]
    per_class = {n: (float(hit[labels == c].mean()) if (labels == c).any() else None) for c, n in enumerate(class_names)}
    return LabelFidelity(float(hit.mean()), float(conf.mean()), per_class)


# ---------------------------------------------------------------------------- diversity / collapse


def mean_pairwise_distance(x: np.ndarray, *, max_points: int = 1000, seed: int = 0) -> float:
    """Mean distance over distinct pairs (diagonal excluded); NaN for fewer than 2 points."""
    if len(x) < 2:
        return float("nan")
    if len(x) > max_points:  # O(n^2): a random subset estimates the mean well enough
        x = x[np.random.default_rng(seed).choice(len(x), max_points, replace=False)]
    total = 0.0
    for _, d in distance_chunks(x, x):
        total += float(d.sum())
    return total / (len(x) * (len(x) - 1))


def distinct_fraction(images: np.ndarray) -> float:
    """Share of byte-distinct images: 1/N for a generator that always returns the same image."""
    if len(images) == 0:
        return float("nan")
    return len({hashlib.blake2b(im.tobytes(), digest_size=16).digest() for im in images}) / len(images)


@dataclass
class ClassDiversity:
    name: str
    n_real: int
    n_fake: int
    diversity_real: float  # mean pairwise feature distance within the class
    diversity_fake: float
    ratio: float | None  # fake / real; ~1 healthy, -> 0 collapsed
    coverage: float | None  # share of real class points with a sample of the class in their k-NN ball


@dataclass
class DiversityResult:
    per_class: list[ClassDiversity]
    distinct_fraction: float | None
    missing_classes: list[str]
    min_ratio: float | None
    mean_coverage: float | None
    collapse: bool
    reasons: list[str] = field(default_factory=list)


def diversity(
    real: np.ndarray,
    real_labels: np.ndarray,
    fake: np.ndarray,
    fake_labels: np.ndarray,
    class_names: Sequence[str],
    *,
    fake_images: np.ndarray | None = None,
    k: int = 5,
    ratio_threshold: float = 0.5,
    coverage_threshold: float = 0.25,
    distinct_threshold: float = 0.5,
    seed: int = 0,
) -> DiversityResult:
    """Per-class diversity ratio and coverage on features, plus a ``collapse`` flag.

    ``real`` should be features the extractor did not train on (held-out), like the
    samples, so that both sides are judged by the same, unfitted, yardstick.
    Collapse = a class missing, any class below ``ratio_threshold`` of the real
    diversity, mean per-class coverage below ``coverage_threshold``, or fewer than
    ``distinct_threshold`` byte-distinct images.
    """
    real_labels, fake_labels = np.asarray(real_labels), np.asarray(fake_labels)
    rows: list[ClassDiversity] = []
    missing: list[str] = []
    for c, name in enumerate(class_names):
        r, f = real[real_labels == c], fake[fake_labels == c]
        if len(r) == 0:  # nothing to compare against: not the generator's fault
            continue
        if len(f) == 0:
            missing.append(name)
        div_r, div_f = mean_pairwise_distance(r, seed=seed), mean_pairwise_distance(f, seed=seed)
        ratio = div_f / div_r if len(f) >= 2 and div_r > 0 else None
        cov = None
        if len(f) and len(r) > 1:
            radii = knn_radii(r, min(k, len(r) - 1))
            cov = float((nearest_distances(r, f) <= radii).mean())
        rows.append(ClassDiversity(name, len(r), len(f), div_r, div_f, ratio, cov))

    ratios = [row.ratio for row in rows if row.ratio is not None]
    covs = [row.coverage for row in rows if row.coverage is not None]
    distinct = distinct_fraction(fake_images) if fake_images is not None else None
    min_ratio = min(ratios) if ratios else None
    mean_cov = float(np.mean(covs)) if covs else None

    reasons = []
    if missing:
        reasons.append(f"classes without samples: {missing}")
    collapsed = [row.name for row in rows if row.n_fake and (row.ratio is None or row.ratio < ratio_threshold)]
    if collapsed:
        reasons.append(f"intra-class diversity below {ratio_threshold} of real in classes {collapsed}")
    if mean_cov is not None and mean_cov < coverage_threshold:
        reasons.append(f"mean per-class coverage {mean_cov:.3f} < {coverage_threshold}")
    if distinct is not None and distinct < distinct_threshold:
        reasons.append(f"only {distinct:.3f} of the samples are distinct images")
    return DiversityResult(rows, distinct, missing, min_ratio, mean_cov, bool(reasons), reasons)


# ---------------------------------------------------------------------------- memorisation


def pixel_vectors(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 [N, H*W*C] in [0, 1], for pixel-space nearest neighbours."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


@dataclass
class Memorisation:
    space: str  # "pixel" or "feature"
    quantile: float  # of held-out-to-train NN distances that defines a near-copy
    threshold: float
    near_copy_fraction: float  # share of samples closer to the training set than the threshold
    expected_fraction: float  # what real unseen images give by construction (= quantile)
    flag_fraction: float  # near_copy_fraction above this -> memorised
    exact_copy_fraction: float
    median_nn: float
    median_reference_nn: float  # median held-out-to-train NN distance
    memorised: bool
    n: int


def memorisation(train: np.ndarray, heldout: np.ndarray, samples: np.ndarray, *, space: str = "pixel",
                 quantile: float = 0.01, flag_factor: float = 10.0) -> Memorisation:
    """Nearest-neighbour copy check against the training set.

    A real image the generator never saw sits at a typical distance from its
    nearest training image; the ``quantile`` of those held-out distances is the
    near-copy threshold, so unseen real images are below it ``quantile`` of the
    time. More than ``flag_factor`` times that among the samples means copying.
    The factor is generous because the quantile comes from a few hundred held-out
    images and real datasets hold near-duplicates (same writer, same object):
    unseen digits land at 2-4% for a 1% quantile.
    Inputs are vectors in one space (``pixel_vectors`` or features).
    """
    ref = nearest_distances(heldout, train)
    nn = nearest_distances(samples, train)
    threshold = float(np.quantile(ref, quantile))
    frac = float((nn <= threshold).mean())
    return Memorisation(
        space=space, quantile=quantile, threshold=threshold, near_copy_fraction=frac,
        expected_fraction=quantile, flag_fraction=flag_factor * quantile, exact_copy_fraction=float((nn <= 1e-6).mean()),
        median_nn=float(np.median(nn)), median_reference_nn=float(np.median(ref)),
        memorised=bool(frac > flag_factor * quantile), n=len(samples),
    )


__all__ = [
    "ClassDiversity", "DiversityResult", "LabelFidelity", "Memorisation", "distinct_fraction", "diversity",
    "label_fidelity", "mean_pairwise_distance", "memorisation", "pixel_vectors",
]
