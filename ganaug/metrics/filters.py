"""Generation filters backed by the evaluation models: `ganaug generate --filter fidelity:0.9`.

``fidelity:T`` keeps a sample only when the domain classifier gives the label it was
generated for a softmax probability >= T. The judge is the same ``DomainFeatures`` CNN the
evaluation uses for label fidelity: trained with the default ``DomainSettings`` on the
checkpoint's own training data (``model.json`` -> ``config.data.spec`` at the checkpoint's
resolution and channels), cached on disk by its content fingerprint (``$GANAUG_CACHE`` or
``~/.cache/ganaug``, see ``features.default_cache_dir``). So `ganaug evaluate` on the same
training data reuses the very same network, and the filter never needs a download.

Train once, load everywhere:
- ``warm_cache(checkpoint)`` (the driver-side hook; ``check`` calls it when the generation
  pipeline hands it the checkpoint) trains and caches the classifier before any actor starts;
- every actor's ``build`` then only loads it. Should an actor still find no cache entry, a
  per-cache-dir file lock makes one actor per machine train while the others wait and load.

Determinism: a filter must judge each image on its own (generation re-draws rejected rows
from a seeded stream). The classifier runs in eval mode (BatchNorm uses running statistics)
on fixed-size, zero-padded chunks, so a score never depends on which rows shared its batch.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ganaug.errors import UserError
from ganaug.generation import register_filter
from ganaug.metrics.classifier import SmallCNN, to_tensor
from ganaug.metrics.features import DomainFeatures, DomainSettings, default_cache_dir

CHUNK = 64  # fixed classifier batch: scores are independent of the filter's batch size


class FilterError(UserError):
    pass


def parse_threshold(arg: str) -> float:
    try:
        t = float(str(arg).strip())
    except ValueError:
        t = float("nan")
    if not (math.isfinite(t) and 0.0 < t <= 1.0):
        raise FilterError(f"--filter fidelity:{arg}: expected a confidence threshold in (0, 1], e.g. fidelity:0.9")
    return t


def training_data(meta: dict) -> tuple[str, int, int, bool]:
    """(data spec, resolution, channels, skip_bad) the checkpoint was trained on."""
    data = (meta.get("config") or {}).get("data") or {}
    spec = data.get("spec")
    if not spec:
        raise FilterError("--filter fidelity: the checkpoint's model.json has no training config "
                          "(config.data.spec); the filter's classifier is trained on the GAN's training data, "
                          "so use a checkpoint written by `ganaug train`")
    return str(spec), int(meta["resolution"]), int(meta["channels"]), bool(data.get("skip_bad", False))


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock across processes on this machine (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def domain_for_meta(meta: dict, *, cache_dir: str | Path | None = None,
                    device: str | torch.device = "cpu") -> DomainFeatures:
    """The checkpoint's fidelity judge: loaded from the cache, or trained once and cached."""
    from ganaug.data import load_dataset

    spec, resolution, channels, skip_bad = training_data(meta)
    num_classes = int(meta.get("num_classes", 0))
    if num_classes < 1:
        raise FilterError(f"--filter fidelity: model {meta.get('family')} is unconditional; "
                          "the filter needs a class-conditional model")
    data = load_dataset(spec, resolution, channels, skip_bad=skip_bad)
    if len(data) == 0:
        raise FilterError(f"--filter fidelity: the training data {spec!r} has no rows")
    if data.labels.min() < 0 or data.labels.max() >= num_classes:
        raise FilterError(f"--filter fidelity: the training data {spec!r} has labels outside "
                          f"0..{num_classes - 1} (the model's classes)")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    # One trainer per machine: concurrent actors wait here and then hit the cache.
    with _file_lock(root / ".fidelity-train.lock"):
        return DomainFeatures.from_training(data.images, data.labels, num_classes, settings=DomainSettings(),
                                            cache_dir=root, device=device)


def warm_cache(checkpoint_uri: str, *, cache_dir: str | Path | None = None) -> DomainFeatures:
    """Driver-side hook: train/cache the judge for a checkpoint (or run folder) before any actor starts."""
    from ganaug import checkpoint

    meta = checkpoint.load_meta(checkpoint.resolve_checkpoint(checkpoint_uri))
    return domain_for_meta(meta, cache_dir=cache_dir)


class FidelityFilter:
    """accept(images, labels) -> confidence of the requested label >= threshold."""

    def __init__(self, threshold: float, classifier: SmallCNN):
        self.threshold = float(threshold)
        self.classifier = classifier.eval()
        self.device = next(classifier.parameters()).device

    @torch.no_grad()
    def confidence(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Softmax probability of each image's own label (float32), in fixed padded chunks."""
        labels = np.asarray(labels, dtype=np.int64)
        out = np.empty(len(images), np.float32)
        for start in range(0, len(images), CHUNK):
            stop = min(start + CHUNK, len(images))
            x = torch.zeros((CHUNK, images.shape[3], images.shape[1], images.shape[2]))
            x[: stop - start] = to_tensor(images[start:stop])
            probs = F.softmax(self.classifier(x.to(self.device)).float(), dim=1)[: stop - start].cpu().numpy()
            out[start:stop] = probs[np.arange(stop - start), labels[start:stop]]
        return out

    def accept(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return self.confidence(images, labels) >= self.threshold


def _build(arg: str, sampler: Any) -> FidelityFilter:
    threshold = parse_threshold(arg)
    if not getattr(sampler, "conditional", False):
        raise FilterError(f"--filter fidelity:{arg}: model {getattr(sampler, 'family', '?')} is unconditional; "
                          "the filter needs a class-conditional model")
    domain = domain_for_meta(sampler.meta, device=sampler.device)
    if domain.classifier.num_classes != sampler.num_classes:
        raise FilterError(f"--filter fidelity:{arg}: the classifier has {domain.classifier.num_classes} classes, "
                          f"the model {sampler.num_classes}")
    return FidelityFilter(threshold, domain.classifier)


def _check(arg: str, *context: Any) -> None:
    """Validate the threshold; when the pipeline passes the checkpoint (URI, meta dict or Sampler), warm the cache."""
    parse_threshold(arg)
    for c in context:
        meta = c if isinstance(c, dict) else getattr(c, "meta", None)
        if isinstance(meta, dict) and "family" in meta:
            domain_for_meta(meta)
            return
        if isinstance(c, (str, os.PathLike)) and str(c):
            warm_cache(str(c))
            return


register_filter("fidelity", build=_build, check=_check)
