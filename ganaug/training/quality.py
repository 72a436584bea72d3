"""Checkpoint selection by quality (`training.select_by: kid`), without Ray.

With a few hundred images the last checkpoint is often not the best one: D overfits and G
drifts or collapses. So at every checkpoint rank 0 scores G_ema with KID in the domain feature
space (the evaluate command's `domain` features: a small CNN trained on the rows the GAN trains
on, cached by fingerprint) against a held-back slice of the training data, a class-stratified
`data.holdout` share of `data.spec` that the GAN never trains on. The fake sample is
fixed (seeds 0..n-1, labels j mod K), so scores differ only by the weights.

The run's `best.json` names the checkpoint with the lowest KID so far; `--checkpoint RUN` then
resolves to it (checkpoint.resolve_checkpoint; best.json is checkpoint.BEST). Ray Train keeps the best checkpoints (score
`quality` = -KID) and always the latest, so the best one is never pruned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ganaug.errors import UserError

KID_SUBSETS = 20

def holdout_split(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held back) row indices: `fraction` of each class (at least one row of any class
    with two or more), chosen by a seeded permutation, so every rank cuts the same slice."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        n = min(len(rows) - 1, max(1, round(fraction * len(rows)))) if len(rows) > 1 else 0
        held.append(rng.permutation(rows)[:n])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    keep = np.ones(len(labels), bool)
    keep[held_idx] = False
    return np.flatnonzero(keep), held_idx


@dataclass
class QualityJudge:
    """KID of a generator's fixed sample against the held-back rows, in the domain feature space."""

    extractor: Any            # metrics.features.DomainFeatures
    reference: np.ndarray     # features of the held-back rows
    seeds: np.ndarray
    labels: np.ndarray | None

    @classmethod
    def build(cls, train_images: np.ndarray, train_labels: np.ndarray, holdout_images: np.ndarray,
              num_classes: int, conditional: bool, samples: int, device: str = "cpu") -> QualityJudge:
        from ganaug.metrics.features import DomainFeatures

        classes = len(np.unique(train_labels))
        if classes < 2 or len(holdout_images) < 2:
            raise UserError(f"training.select_by kid needs a labelled dataset of at least 2 classes and 2 held-back "
                            f"rows (the domain feature network is a classifier); this one has {classes} class(es) "
                            f"and {len(holdout_images)} held-back row(s): raise data.holdout or set "
                            "training.select_by: none")
        extractor = DomainFeatures.from_training(train_images, train_labels, num_classes, device=device)
        labels = (np.arange(samples) % num_classes).astype(np.int64) if conditional else None
        return cls(extractor, extractor(holdout_images), np.arange(samples, dtype=np.int64), labels)

    def kid(self, sampler) -> float:
        """KID (lower is better) of the fixed sample a checkpoint's Sampler draws."""
        from ganaug.metrics.distribution import kid

        fake = self.extractor(sampler.generate(self.seeds, self.labels))
        result = kid(self.reference, fake, subsets=KID_SUBSETS, subset_size=min(len(self.reference), len(fake)))
        return float(result.mean)


def better(kid_value: float, best: dict | None) -> bool:
    return best is None or kid_value < float(best.get("kid", float("inf")))


def best_record(step: int, checkpoint_uri: str, kid_value: float) -> dict:
    return {"metric": "kid", "kid": kid_value, "step": step, "checkpoint": checkpoint_uri}
