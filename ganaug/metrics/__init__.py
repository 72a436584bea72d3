"""Evaluation: does a synthetic set look real, cover every class, avoid copying, and help?

A registry maps metric names to small functions of an ``EvalContext`` (as in
stylegan2-ada's metric_main); ``evaluate_arrays`` runs the requested ones and
writes the report. The context computes features and the domain classifier
once and shares them, so asking for ten metrics costs one feature pass per set.

Each distribution number comes with a real-vs-real ``reference`` measured in
the same run and feature space (real train vs real held-out, at the same sample
count), which is what the report's verdicts compare against.

Inputs are arrays: uint8 NHWC images and int64 labels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ganaug.errors import UserError
from ganaug.metrics.classifier import ClassifierConfig, accuracy
from ganaug.metrics.distribution import (
    DensityCoverage,
    KIDResult,
    PrecisionRecall,
    density_coverage,
    fid,
    kid,
    per_class_fid,
    precision_recall,
)
from ganaug.metrics.diversity import (
    DiversityResult,
    LabelFidelity,
    Memorisation,
    diversity,
    label_fidelity,
    memorisation,
    pixel_vectors,
)
from ganaug.metrics.downstream import (
    CASResult,
    GainResult,
    augmentation_gain,
    classification_accuracy_score,
)
from ganaug.metrics.features import (
    DomainFeatures,
    DomainSettings,
    FeatureExtractor,
    FeatureMapper,
    build_extractor,
    extract_features_batched,
)
from ganaug.metrics.report import to_jsonable, verdicts, write_report
from ganaug.registry import Registry

Arrays = tuple[np.ndarray, np.ndarray]


class EvaluationInputError(UserError, ValueError):
    """Bad arrays or options passed to the evaluation (the CLI prints it on one line)."""


@dataclass
class EvalOptions:
    ks: Sequence[int] = (10, 20)
    seeds: Sequence[int] = (0, 1, 2)
    feature: str = "domain"
    cache_dir: str | Path | None = None
    device: str = "cpu"
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    domain: DomainSettings = field(default_factory=DomainSettings)
    cas_epochs: int = 15
    gain_steps: int = 500
    gan_per_class: int = 100
    real_fraction: float | None = 0.5
    subset_seed: int | None = None
    hflip: bool = False
    pr_k: int = 3
    dc_k: int = 5
    kid_subsets: int = 50
    max_samples: int = 10000
    near_copy_quantile: float = 0.01


@dataclass
class EvalContext:
    """Inputs plus lazily computed, shared intermediates (extractor, features, domain classifier)."""

    real_train: Arrays
    real_heldout: Arrays
    synthetic: Arrays
    class_names: list[str]
    options: EvalOptions = field(default_factory=EvalOptions)
    # Optional: features of the WHOLE synthetic set with their labels (e.g. from the Ray Data
    # path), when ``synthetic`` holds only a subsample of its images. Feature-space metrics
    # then use every row; image-level ones (fidelity, CAS, gain, pixel copies) the subsample.
    synthetic_features: tuple[np.ndarray, np.ndarray] | None = None
    # Optional: {k: synthetic pool} from GANs trained on the k-shot subsets (the gain arms).
    gain_pools: dict[int, Arrays] | None = None
    _domain: DomainFeatures | None = None
    _extractor: FeatureExtractor | None = None
    _features: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def domain(self) -> DomainFeatures:
        """The domain CNN on real train: the judge for label fidelity, and the default feature space."""
        if self._domain is None:
            o = self.options
            self._domain = DomainFeatures.from_training(
                self.real_train[0], self.real_train[1], self.num_classes,
                settings=o.domain, cache_dir=o.cache_dir, device=o.device,
            )
        return self._domain

    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            if self.options.feature == "domain":
                self._extractor = self.domain()
            else:
                self._extractor = build_extractor(self.options.feature, device=self.options.device)
        return self._extractor

    def features(self, which: str) -> np.ndarray:
        """Features of 'train', 'heldout' or 'synthetic', computed once."""
        if which == "synthetic" and self.synthetic_features is not None:
            return self.synthetic_features[0]
        if which not in self._features:
            images = {"train": self.real_train, "heldout": self.real_heldout, "synthetic": self.synthetic}[which][0]
            self._features[which] = self.extractor()(images)
        return self._features[which]

    def labels(self, which: str) -> np.ndarray:
        if which == "synthetic" and self.synthetic_features is not None:
            return self.synthetic_features[1]
        return {"train": self.real_train, "heldout": self.real_heldout, "synthetic": self.synthetic}[which][1]

    def matched(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(synthetic, train) features subsampled to one count, with labels, for fair real-vs-real references.

        FID and the k-NN measures drift with sample size, so the reference must use as many points as the value.
        """
        n_syn = len(self.labels("synthetic"))
        n = min(n_syn, len(self.real_train[0]), self.options.max_samples)
        rng = np.random.default_rng(0)
        si = np.sort(rng.choice(n_syn, n, replace=False))
        ti = np.sort(rng.choice(len(self.real_train[0]), n, replace=False))
        return self.features("synthetic")[si], self.labels("synthetic")[si], self.features("train")[ti], self.labels("train")[ti]


# ---------------------------------------------------------------------------- registry

MetricFn = Callable[[EvalContext], Any]
METRICS: Registry[MetricFn] = Registry("metric")


def register_metric(name: str) -> Callable[[MetricFn], MetricFn]:
    return METRICS.register(name)


@dataclass
class WithReference:
    value: Any  # synthetic vs real held-out
    reference: Any  # real train vs real held-out, same sample count
    n_real: int
    n_fake: int


@register_metric("fid")
def _fid(ctx: EvalContext) -> WithReference:
    syn, _, tr, _ = ctx.matched()
    held = ctx.features("heldout")
    return WithReference(fid(held, syn), fid(held, tr), len(held), len(syn))


@register_metric("kid")
def _kid(ctx: EvalContext) -> WithReference:
    syn, _, tr, _ = ctx.matched()
    held, n = ctx.features("heldout"), ctx.options.kid_subsets
    value: KIDResult = kid(held, syn, subsets=n)
    return WithReference(value, kid(held, tr, subsets=n), len(held), len(syn))


@dataclass
class PRDC:
    precision: float
    recall: float
    density: float
    coverage: float
    k_pr: int
    k_dc: int


def _prdc_of(real: np.ndarray, fake: np.ndarray, o: EvalOptions) -> PRDC:
    pr: PrecisionRecall = precision_recall(real, fake, k=o.pr_k, max_samples=o.max_samples)
    dc: DensityCoverage = density_coverage(real, fake, k=o.dc_k, max_samples=o.max_samples)
    return PRDC(pr.precision, pr.recall, dc.density, dc.coverage, o.pr_k, o.dc_k)


@register_metric("prdc")
def _prdc(ctx: EvalContext) -> WithReference:
    syn, _, tr, _ = ctx.matched()
    held = ctx.features("heldout")
    return WithReference(_prdc_of(held, syn, ctx.options), _prdc_of(held, tr, ctx.options), len(held), len(syn))


@register_metric("fid_per_class")
def _fid_per_class(ctx: EvalContext) -> WithReference:
    syn, syn_y, tr, tr_y = ctx.matched()
    held, held_y = ctx.features("heldout"), ctx.labels("heldout")
    return WithReference(per_class_fid(held, held_y, syn, syn_y, ctx.class_names),
                         per_class_fid(held, held_y, tr, tr_y, ctx.class_names), len(held), len(syn))


@dataclass
class FidelityResult(LabelFidelity):
    reference_accuracy: float = float("nan")  # the same classifier on real held-out images


@register_metric("fidelity")
def _fidelity(ctx: EvalContext) -> FidelityResult:
    clf = ctx.domain().classifier
    f = label_fidelity(clf, ctx.synthetic[0], ctx.synthetic[1], ctx.class_names)
    return FidelityResult(**vars(f), reference_accuracy=accuracy(clf, *ctx.real_heldout))


@register_metric("diversity")
def _diversity(ctx: EvalContext) -> DiversityResult:
    return diversity(ctx.features("heldout"), ctx.labels("heldout"), ctx.features("synthetic"), ctx.labels("synthetic"),
                     ctx.class_names, fake_images=ctx.synthetic[0], k=ctx.options.dc_k)


@dataclass
class MemorisationResult:
    memorised: bool
    checks: list[Memorisation]


@register_metric("memorisation")
def _memorisation(ctx: EvalContext) -> MemorisationResult:
    q = ctx.options.near_copy_quantile
    px = memorisation(pixel_vectors(ctx.real_train[0]), pixel_vectors(ctx.real_heldout[0]),
                      pixel_vectors(ctx.synthetic[0]), space="pixel", quantile=q)
    ft = memorisation(ctx.features("train"), ctx.features("heldout"), ctx.features("synthetic"), space="feature", quantile=q)
    return MemorisationResult(px.memorised or ft.memorised, [px, ft])


@dataclass
class CASReport:
    synthetic: CASResult  # trained only on synthetic images
    real: CASResult  # the same budget on real train: the ceiling CAS is read against


@register_metric("cas")
def _cas(ctx: EvalContext) -> CASReport:
    o = ctx.options
    # Same number of optimiser steps for both, so the comparison is about data, not compute.
    steps = o.cas_epochs * math.ceil(max(len(ctx.synthetic[0]), len(ctx.real_train[0])) / o.classifier.batch_size)
    kw = {"seeds": o.seeds, "steps": steps, "device": o.device, "config": o.classifier}
    return CASReport(classification_accuracy_score(ctx.synthetic, ctx.real_heldout, ctx.class_names, **kw),
                     classification_accuracy_score(ctx.real_train, ctx.real_heldout, ctx.class_names, **kw))


@register_metric("gain")
def _gain(ctx: EvalContext) -> GainResult:
    o = ctx.options
    return augmentation_gain(
        ctx.real_train, ctx.real_heldout, ctx.gain_pools or ctx.synthetic, ctx.class_names, ks=o.ks, seeds=o.seeds,
        gan_per_class=o.gan_per_class, real_fraction=o.real_fraction, steps=o.gain_steps,
        subset_seed=o.subset_seed, hflip=o.hflip, device=o.device, config=o.classifier,
    )


ALL_METRICS = list(METRICS)


# ---------------------------------------------------------------------------- orchestration


def _check_arrays(name: str, arrays: Arrays, num_classes: int, shape: tuple | None) -> tuple:
    images, labels = arrays
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise EvaluationInputError(f"{name}: images must be uint8 N x H x W x C, got "
                                   f"{getattr(images, 'dtype', type(images))} {getattr(images, 'shape', '')}")
    labels = np.asarray(labels)
    if len(labels) != len(images):
        raise EvaluationInputError(f"{name}: {len(images)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise EvaluationInputError(f"{name}: labels must lie in 0..{num_classes - 1} (class_names has {num_classes})")
    if shape is not None and images.shape[1:] != shape:
        raise EvaluationInputError(f"{name}: image shape {images.shape[1:]} differs from real train {shape}")
    return images.shape[1:]


def _int_labels(arrays: Arrays) -> Arrays:
    return arrays[0], np.asarray(arrays[1], dtype=np.int64)


def _checked_sets(real_train: Arrays, real_heldout: Arrays, synthetic: Arrays,
                  num_classes: int) -> tuple[Arrays, Arrays, Arrays, tuple]:
    """The three sets with int64 labels, checked against each other; and real train's image shape."""
    real_train, real_heldout, synthetic = _int_labels(real_train), _int_labels(real_heldout), _int_labels(synthetic)
    shape = _check_arrays("real_train", real_train, num_classes, None)
    _check_arrays("real_heldout", real_heldout, num_classes, shape)
    _check_arrays("synthetic", synthetic, num_classes, shape)
    return real_train, real_heldout, synthetic, shape


def _checked_features(synthetic_features: tuple[np.ndarray, np.ndarray] | None,
                      num_classes: int) -> tuple[np.ndarray, np.ndarray] | None:
    if synthetic_features is None:
        return None
    feats, feat_labels = np.asarray(synthetic_features[0], np.float32), np.asarray(synthetic_features[1], np.int64)
    if feats.ndim != 2 or len(feats) != len(feat_labels) or len(feats) == 0:
        raise EvaluationInputError(f"synthetic_features: need [N, D] features with N labels, got "
                                   f"{feats.shape} and {feat_labels.shape}")
    if feat_labels.min() < 0 or feat_labels.max() >= num_classes:
        raise EvaluationInputError(f"synthetic_features: labels must lie in 0..{num_classes - 1}")
    return feats, feat_labels


def _checked_pools(gain_pools: dict[int, Arrays] | None, ks: Sequence[int], subset_seed: int | None,
                   num_classes: int, shape: tuple) -> dict[int, Arrays] | None:
    if gain_pools is None:
        return None
    gain_pools = {int(k): _int_labels(v) for k, v in gain_pools.items()}
    missing = sorted({int(k) for k in ks} - set(gain_pools))
    if missing:
        raise EvaluationInputError(f"gain_pools lacks k = {missing}")
    for k, pool in gain_pools.items():
        _check_arrays(f"gain_pools[{k}]", pool, num_classes, shape)
    if subset_seed is None:
        raise EvaluationInputError("gain_pools need subset_seed: the k-shot subsets their GANs were trained on")
    return gain_pools


def _merged_options(options: EvalOptions | None, overrides: dict[str, Any], *, ks: Sequence[int],
                    seeds: int | Sequence[int], feature: str, cache_dir: str | Path | None) -> EvalOptions:
    """`options` (or the defaults) with the call's own arguments and keyword overrides."""
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    bad = sorted(set(overrides) - set(EvalOptions.__dataclass_fields__))
    if bad:
        raise EvaluationInputError(f"unknown option(s) {bad}; known: {sorted(EvalOptions.__dataclass_fields__)}")
    o = options or EvalOptions()
    return EvalOptions(**{**vars(o), "ks": tuple(ks), "seeds": tuple(seed_list), "feature": feature,
                          "cache_dir": cache_dir, **overrides})


def _settings(ctx: EvalContext, metrics: list[str], shape: tuple) -> dict:
    """The report's settings: the options, the set sizes and the domain classifier used."""
    n_syn = len(ctx.synthetic_features[1]) if ctx.synthetic_features is not None else len(ctx.synthetic[0])
    settings = {**to_jsonable(vars(ctx.options)), "metrics": metrics, "n_train": len(ctx.real_train[0]),
                "n_heldout": len(ctx.real_heldout[0]), "n_synthetic": n_syn,
                "n_synthetic_images": len(ctx.synthetic[0]), "class_names": ctx.class_names,
                "resolution": list(shape[:2]), "channels": int(shape[2])}
    if ctx._domain is not None:
        settings["domain"] = {**settings["domain"], "fingerprint": ctx._domain.fingerprint,
                              "cache_hit": ctx._domain.cache_hit, "path": str(ctx._domain.path)}
    return settings


def evaluate_arrays(
    real_train: Arrays,
    real_heldout: Arrays,
    synthetic: Arrays,
    class_names: Sequence[str],
    metrics: Sequence[str] | None = None,
    *,
    ks: Sequence[int] = (10, 20),
    seeds: int | Sequence[int] = 3,
    feature: str = "domain",
    cache_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    metrics_jsonl: str | Path | None = None,
    options: EvalOptions | None = None,
    synthetic_features: tuple[np.ndarray, np.ndarray] | None = None,
    gain_pools: dict[int, Arrays] | None = None,
    **option_overrides: Any,
) -> dict:
    """Run ``metrics`` (default: all registered) and return a JSON-able dict; write the report if ``out_dir``.

    ``seeds``: a count (0..n-1) or explicit seeds, for CAS and the gain arms.
    Any ``EvalOptions`` field can be overridden by keyword (e.g. ``gain_steps=100``).
    ``synthetic_features``: (features [N, D], labels [N]) of the whole synthetic set in the
    ``feature`` space, computed elsewhere (Ray Data); ``synthetic`` may then be a subsample.
    ``gain_pools``: {k: (images, labels)} from GANs trained on the k-shot subsets; needs
    ``subset_seed`` (the subsets they were trained on, see downstream.kshot_indices).
    Result: {"settings", "metrics": {name: ...}, "verdicts": [...], "timing_s": {name: s}, "files"?}.
    """
    metrics = list(metrics) if metrics is not None else ALL_METRICS
    METRICS.check(metrics)
    class_names = [str(c) for c in class_names]
    # 1. Check the inputs against each other, and merge the options.
    real_train, real_heldout, synthetic, shape = _checked_sets(real_train, real_heldout, synthetic, len(class_names))
    synthetic_features = _checked_features(synthetic_features, len(class_names))
    subset_seed = option_overrides.get("subset_seed", getattr(options, "subset_seed", None))
    gain_pools = _checked_pools(gain_pools, ks, subset_seed, len(class_names), shape)
    o = _merged_options(options, option_overrides, ks=ks, seeds=seeds, feature=feature, cache_dir=cache_dir)
    ctx = EvalContext(real_train, real_heldout, synthetic, class_names, o, synthetic_features, gain_pools)
    # 2. Run each metric (the context computes shared features and the domain classifier once).
    results, timing = {}, {}
    for name in metrics:
        t0 = time.perf_counter()
        results[name] = to_jsonable(METRICS.get(name)(ctx))
        timing[name] = round(time.perf_counter() - t0, 3)
    # 3. The report; written when asked.
    report = {"settings": _settings(ctx, metrics, shape), "metrics": results,
              "verdicts": to_jsonable(verdicts(results)), "timing_s": timing}
    if out_dir is not None:
        report["files"] = write_report(out_dir, report, class_names=class_names, synthetic=synthetic,
                                       metrics_jsonl=metrics_jsonl)
    return report


__all__ = [
    "ALL_METRICS", "METRICS", "EvalContext", "EvalOptions", "EvaluationInputError", "FeatureExtractor",
    "FeatureMapper", "build_extractor", "evaluate_arrays", "extract_features_batched", "register_metric",
]
