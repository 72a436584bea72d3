"""Do synthetic images help a classifier? The measures users actually care about.

- CAS (Ravuri & Vinyals 2019): train the shared CNN ONLY on synthetic images,
  test on real held-out images. High CAS = samples carry the class information.
- Augmentation gain: with k real images per class, compare four arms
  (real; real+classic; real+GAN; real+classic+GAN) over several seeds. The
  number that justifies a GAN is real+classic+GAN minus real+classic: what it
  adds beyond free augmentation.

Every arm trains for the same number of optimiser steps, so an arm with more
(synthetic) images gets no more compute, only more data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ganaug.metrics.classifier import (
    DEFAULT_CLASSIFIER,
    ClassifierConfig,
    per_class_accuracy_from_predictions,
    predict,
    train_classifier,
)

Arrays = tuple[np.ndarray, np.ndarray]  # (uint8 NHWC images, int64 labels)
ARMS = ("real", "real+classic", "real+gan", "real+classic+gan")


def _mean_per_class(per_seed: list[np.ndarray], class_names: Sequence[str]) -> dict[str, float | None]:
    stacked = np.stack(per_seed)
    out = {}
    for c, name in enumerate(class_names):
        col = stacked[:, c]
        out[name] = None if np.isnan(col).all() else float(np.nanmean(col))
    return out


# ---------------------------------------------------------------------------- CAS


@dataclass
class CASResult:
    accuracy: float  # mean over seeds
    accuracy_std: float
    accuracies: list[float]
    per_class: dict[str, float | None]  # mean over seeds, per true class of the test image
    seeds: list[int]
    n_train: int
    n_test: int
    augment: str


def classification_accuracy_score(
    train: Arrays,
    test: Arrays,
    class_names: Sequence[str],
    *,
    seeds: Sequence[int] = (0,),
    epochs: int = 15,
    steps: int | None = None,
    augment: str = "none",
    hflip: bool = False,
    device: str | torch.device = "cpu",
    config: ClassifierConfig = DEFAULT_CLASSIFIER,
) -> CASResult:
    """Train on ``train`` (synthetic for CAS; real train for its reference), score on ``test`` (real held-out)."""
    accs, per_class = [], []
    for seed in seeds:
        model = train_classifier(train[0], train[1], len(class_names), epochs=epochs, steps=steps, seed=seed,
                                 augment=augment, hflip=hflip, device=device, config=config)
        pred = predict(model, test[0])
        accs.append(float((pred == test[1]).mean()))
        per_class.append(per_class_accuracy_from_predictions(pred, np.asarray(test[1]), len(class_names)))
    return CASResult(
        accuracy=float(np.mean(accs)), accuracy_std=float(np.std(accs)), accuracies=accs,
        per_class=_mean_per_class(per_class, class_names), seeds=list(seeds),
        n_train=len(train[0]), n_test=len(test[0]), augment=augment,
    )


cas = classification_accuracy_score


# ---------------------------------------------------------------------------- augmentation gain


def per_class_indices(labels: np.ndarray, n: int, seed: int, num_classes: int, *,
                      replace_if_short: bool = False) -> np.ndarray:
    """Seeded choice of ``n`` indices per class (all of a class if it has fewer, unless replace_if_short)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    picks = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            continue
        if len(idx) >= n:
            picks.append(rng.choice(idx, n, replace=False))
        else:
            picks.append(rng.choice(idx, n, replace=True) if replace_if_short else idx)
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, np.int64)


def kshot_indices(labels: np.ndarray, k: int, seed: int, num_classes: int) -> np.ndarray:
    """The k-shot subset of the real train part used by the gain arms.

    Public so a caller that trains a GAN on the k-shot subset trains it on exactly
    the images the arms will use (pass the same seed as ``subset_seed``).
    """
    return per_class_indices(labels, k, seed, num_classes)


@dataclass
class ArmResult:
    arm: str
    mean: float
    std: float
    accuracies: list[float]  # one per seed, in the order of GainResult.seeds
    per_class: dict[str, float | None]


@dataclass
class GainAtK:
    k: int
    n_real: int
    n_synthetic: int
    arms: dict[str, ArmResult]
    gan_gain: float  # real+gan - real
    gan_gain_std: float  # std of the per-seed paired differences
    gan_over_classic: float  # real+classic+gan - real+classic: the gain beyond classic augmentation
    gan_over_classic_std: float


@dataclass
class GainResult:
    ks: list[GainAtK]
    seeds: list[int]
    gan_per_class: int
    real_fraction: float | None
    steps: int
    subset_seed: int | None


def _train_eval(images, labels, weights, test: Arrays, num_classes, *, steps, seed, augment, hflip, device, config):
    model = train_classifier(images, labels, num_classes, steps=steps, seed=seed, augment=augment, hflip=hflip,
                             sample_weights=weights, device=device, config=config)
    pred = predict(model, test[0])
    return float((pred == test[1]).mean()), per_class_accuracy_from_predictions(pred, np.asarray(test[1]), num_classes)


def _paired(accs: dict[str, list[float]], arm: str, base: str, n: int) -> np.ndarray:
    if arm in accs and base in accs:
        return np.subtract(accs[arm], accs[base])
    return np.full(n, np.nan)


def augmentation_gain(
    real_train: Arrays,
    test: Arrays,
    synthetic: Arrays | Mapping[int, Arrays],
    class_names: Sequence[str],
    *,
    ks: Sequence[int] = (10, 20),
    seeds: Sequence[int] = (0, 1, 2),
    gan_per_class: int = 100,
    real_fraction: float | None = 0.5,
    steps: int = 500,
    subset_seed: int | None = None,
    hflip: bool = False,
    device: str | torch.device = "cpu",
    config: ClassifierConfig = DEFAULT_CLASSIFIER,
    arms: Sequence[str] = ARMS,
) -> GainResult:
    """Four arms per k, each over ``seeds``; accuracy on ``test`` (real held-out).

    ``synthetic``: one pool for all k (GAN trained on the full train part), or
    ``{k: pool}`` for GANs trained on the k-shot subsets, which then must be fixed:
    give ``subset_seed`` (otherwise each seed draws its own k-shot subset).
    ``gan_per_class`` samples per class are drawn from the pool per seed.
    ``real_fraction``: share of each batch (in expectation) that is real, so a few
    real images are not drowned by many synthetic ones; None = plain concatenation.
    ``arms``: a subset of ARMS to train (a search over pools or ratios retrains only the
    arms it changes); a paired difference whose arms were not trained is NaN.
    """
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown gain arms {unknown}; known {list(ARMS)}")
    if isinstance(synthetic, Mapping) and subset_seed is None:
        raise ValueError("per-k synthetic pools need a fixed subset_seed (the subset their GAN was trained on)")
    num_classes = len(class_names)
    kw = {"steps": steps, "hflip": hflip, "device": device, "config": config}
    out = []
    for k in ks:
        pool = synthetic[k] if isinstance(synthetic, Mapping) else synthetic
        accs: dict[str, list[float]] = {a: [] for a in arms}
        per_class: dict[str, list[np.ndarray]] = {a: [] for a in arms}
        n_real = n_syn = 0
        for seed in seeds:
            ri = kshot_indices(real_train[1], k, seed if subset_seed is None else subset_seed, num_classes)
            si = per_class_indices(pool[1], gan_per_class, seed, num_classes, replace_if_short=True)
            xr, yr = real_train[0][ri], np.asarray(real_train[1])[ri]
            xs, ys = pool[0][si], np.asarray(pool[1])[si]
            n_real, n_syn = len(ri), len(si)
            x_mix, y_mix = np.concatenate([xr, xs]), np.concatenate([yr, ys])
            w_mix = None
            if real_fraction is not None and n_syn:
                w_mix = np.concatenate([np.full(n_real, real_fraction / n_real),
                                        np.full(n_syn, (1 - real_fraction) / n_syn)])
            for arm in arms:
                gan, aug = "gan" in arm, ("classic" if "classic" in arm else "none")
                x, y, w = (x_mix, y_mix, w_mix) if gan else (xr, yr, None)
                a, pc = _train_eval(x, y, w, test, num_classes, seed=seed, augment=aug, **kw)
                accs[arm].append(a)
                per_class[arm].append(pc)
        results = {
            a: ArmResult(a, float(np.mean(accs[a])), float(np.std(accs[a])), accs[a],
                         _mean_per_class(per_class[a], class_names))
            for a in arms
        }
        # Paired differences: same subset, same init seed; cancels most seed noise.
        d_gan = _paired(accs, "real+gan", "real", len(seeds))
        d_cls = _paired(accs, "real+classic+gan", "real+classic", len(seeds))
        out.append(GainAtK(k, n_real, n_syn, results, float(d_gan.mean()), float(d_gan.std()),
                           float(d_cls.mean()), float(d_cls.std())))
    return GainResult(out, list(seeds), gan_per_class, real_fraction, steps, subset_seed)
