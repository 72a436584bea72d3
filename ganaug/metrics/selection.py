"""Choosing augmentation levers on a validation split (ARCHITECTURE.md §6).

The honest low-data gain needs its levers (checkpoint, fidelity filter, mixing ratio, GAN
hyper-parameters) chosen on a VALIDATION split, never on the held-out one. Both places that
choose share this module: `benchmarks/quality.py` (its k-shot protocol) and `ganaug tune`
(`ganaug/sweep.py`, whose trials are scored by `GainSplit.gain`).

- `sample_pool`: the generated pool, rows 0..N-1 of `ganaug generate --labels uniform --seed S
  [--filter F] --size HxW` (the same Sampler, seeds and filter stream, so the pool a sweep
  scores is the set `ganaug generate` writes with those flags);
- `GainSplit`: the classifier's real images, the split it is judged on, and its budget.
  `baseline()` trains the real+classic arm once; `gain(pool, real_fraction, baseline)` trains
  only the real+classic+gan arm and pairs it seed by seed with that baseline (same subset, same
  init seed): the gain = accuracy(real + classic + generated) - accuracy(real + classic).

No Ray here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ganaug.metrics.downstream import augmentation_gain

Arrays = tuple[np.ndarray, np.ndarray]  # (uint8 NHWC images, int64 labels)
BASE_ARM, GAN_ARM = "real+classic", "real+classic+gan"
POOL_CHUNK = 1024


def uniform_labels(sampler, num: int) -> np.ndarray:
    """The labels of rows 0..num-1 under `ganaug generate --labels uniform` (label i mod K)."""
    from ganaug.labels import PlanContext, parse_plan

    k = sampler.num_classes if sampler.conditional else 0
    return parse_plan("uniform", PlanContext(num, k, list(sampler.class_names))).labels()


def sample_pool(checkpoint_uri: str, num: int, *, seed: int = 0, truncation: float = 1.0,
                size: tuple[int, int] | None = None, filter_spec: str = "",
                device: str = "cpu") -> tuple[Arrays, dict]:
    """Rows 0..num-1 of `ganaug generate --labels uniform --seed SEED [--filter F]`, resized to
    `size` (H, W) when given. Returns ((images, labels), info); info describes the filter's work
    ({} without a filter)."""
    from ganaug.generation import candidates_drawn, generate_rows, parse_filter
    from ganaug.sampling import Sampler, resize_images

    sampler = Sampler.from_checkpoint(checkpoint_uri, device=device)
    parsed = parse_filter(filter_spec, sampler) if filter_spec else None
    image_filter = parsed[0].build(parsed[1], sampler) if parsed else None
    labels = uniform_labels(sampler, num)
    images = np.empty((num, sampler.resolution, sampler.resolution, sampler.channels), np.uint8)
    candidates = fallback = 0
    for a in range(0, num, POOL_CHUNK):
        rows = np.arange(a, min(a + POOL_CHUNK, num))
        images[rows], seeds, fb = generate_rows(sampler, rows, labels[rows], seed, truncation, num, image_filter)
        candidates += candidates_drawn(seeds, a, seed, num)
        fallback += fb
    info = {}
    if filter_spec:
        info = {"filter": filter_spec, "candidates": candidates,
                "rejection_rate": round(1 - num / max(candidates, 1), 4), "fallback_rows": fallback}
    return (resize_images(images, size), labels), info


@dataclass
class PairedGain:
    """real+classic+gan minus real+classic, paired over the classifier seeds."""

    mean: float
    std: float
    accuracies: list[float]            # real+classic+gan, one per seed
    baseline: list[float]              # real+classic, one per seed

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def baseline_accuracy(self) -> float:
        return float(np.mean(self.baseline))


@dataclass
class GainSplit:
    """The classifier's real images (`real`, of which `k` per class are drawn with `subset_seed`:
    give k >= the largest class to use them all), the split it is scored on (`val`), and its
    budget: `seeds` classifier seeds, `steps` optimiser steps per arm, `gan_per_class` generated
    images per class drawn from the pool for each seed."""

    real: Arrays
    val: Arrays
    class_names: list[str]
    k: int
    seeds: Sequence[int] = (0, 1, 2)
    steps: int = 500
    gan_per_class: int = 100
    subset_seed: int = 0
    hflip: bool = False
    device: str = "cpu"
    info: dict = field(default_factory=dict)

    def _run(self, pool: Arrays, real_fraction: float | None, arm: str) -> list[float]:
        result = augmentation_gain(self.real, self.val, {self.k: pool}, self.class_names, ks=(self.k,),
                                   seeds=list(self.seeds), gan_per_class=self.gan_per_class,
                                   real_fraction=real_fraction, steps=self.steps, subset_seed=self.subset_seed,
                                   hflip=self.hflip, device=self.device, arms=(arm,))
        return list(result.ks[0].arms[arm].accuracies)

    def baseline(self) -> list[float]:
        """Accuracy of the real+classic arm, one per seed. It does not depend on any generated
        pool (the real images stand in for it; that arm never reads it): compute it once."""
        return self._run(self.real, None, BASE_ARM)

    def gain(self, pool: Arrays, real_fraction: float | None, baseline: Sequence[float] | None = None) -> PairedGain:
        """Train only the real+classic+gan arm on real + `pool` (each batch `real_fraction` real,
        in expectation) and pair it with `baseline` (computed here when None)."""
        base = list(baseline) if baseline is not None else self.baseline()
        if len(base) != len(self.seeds):
            raise ValueError(f"baseline has {len(base)} accuracies for {len(self.seeds)} seeds")
        accs = self._run(pool, real_fraction, GAN_ARM)
        diff = np.subtract(accs, base)
        return PairedGain(float(diff.mean()), float(diff.std()), accs, base)


def largest_class(labels: np.ndarray) -> int:
    """The size of the largest class: as `k`, it makes a GainSplit use every real image."""
    labels = np.asarray(labels)
    labels = labels[labels >= 0]
    return int(np.bincount(labels).max()) if labels.size else 0
