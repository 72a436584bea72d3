"""Feature extractors: uint8 NHWC images -> float32 [N, D] features.

Every distribution measure (FID, KID, precision/recall, coverage) is only as good
as its feature space, and the usual Inception weights cannot be downloaded here.
So the default is ``domain``: the shared small CNN trained on the real training
part, cached on disk by a fingerprint so that every evaluation of the same
dataset uses the very same feature space (numbers stay comparable across runs).
``inception`` and ``torchscript`` take user-supplied local weights.

Specs: ``"domain"``, ``"inception:/path/weights.safetensors|.pth"``, ``"torchscript:/path/module.pt"``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ganaug.metrics.classifier import (
    ClassifierConfig,
    SmallCNN,
    to_tensor,
    train_classifier,
)
from ganaug.registry import Registry

# Bump when the architecture or training recipe changes: old caches must not match.
DOMAIN_FORMAT_VERSION = 1


class FeatureExtractor:
    """Base: batches the input, converts to float NCHW in [0, 1], calls ``_forward``."""

    name: str = "base"
    dim: int = 0

    def __init__(self, *, batch_size: int = 256, device: str | torch.device = "cpu"):
        self.batch_size = batch_size
        self.device = torch.device(device)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:  # x: float NCHW in [0, 1] on self.device
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = [
            self._forward(to_tensor(images[i : i + self.batch_size]).to(self.device)).flatten(1).float().cpu()
            for i in range(0, len(images), self.batch_size)
        ]
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return torch.cat(out).numpy().astype(np.float32, copy=False)


# ---------------------------------------------------------------------------- domain


@dataclass(frozen=True)
class DomainSettings:
    """Everything that shapes the domain feature space; hashed into the fingerprint."""

    epochs: int = 15
    seed: int = 0
    augment: str = "classic"  # a feature space that tolerates small shifts is a fairer judge of samples
    hflip: bool = False
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)

    def to_dict(self) -> dict:
        return {
            "epochs": self.epochs, "seed": self.seed, "augment": self.augment, "hflip": self.hflip,
            "classifier": self.classifier.to_dict(), "format_version": DOMAIN_FORMAT_VERSION,
        }


def domain_fingerprint(images: np.ndarray, labels: np.ndarray, num_classes: int, settings: DomainSettings) -> str:
    """sha256 over the training bytes, their shapes, and the settings."""
    h = hashlib.sha256()
    images = np.ascontiguousarray(images)
    labels = np.ascontiguousarray(np.asarray(labels, dtype=np.int64))
    h.update(json.dumps({"shape": list(images.shape), "dtype": str(images.dtype), "n_labels": len(labels),
                         "num_classes": num_classes, "settings": settings.to_dict()}, sort_keys=True).encode())
    h.update(images.tobytes())
    h.update(labels.tobytes())
    return h.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("GANAUG_CACHE", Path.home() / ".cache" / "ganaug")) / "domain"


class DomainFeatures(FeatureExtractor):
    """Penultimate layer of the shared CNN trained on the real training part.

    ``classifier`` is exposed so label fidelity uses the same network; ``cache_hit``
    says whether it was loaded rather than trained.
    """

    name = "domain"

    def __init__(self, classifier: SmallCNN, *, fingerprint: str = "", cache_hit: bool = False,
                 path: Path | None = None, batch_size: int = 256, device: str | torch.device = "cpu"):
        super().__init__(batch_size=batch_size, device=device)
        self.classifier = classifier.to(self.device).eval()
        self.dim = classifier.feature_dim
        self.fingerprint = fingerprint
        self.cache_hit = cache_hit
        self.path = path

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x)

    @classmethod
    def from_training(
        cls,
        images: np.ndarray,
        labels: np.ndarray,
        num_classes: int,
        *,
        settings: DomainSettings = DomainSettings(),
        cache_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
    ) -> DomainFeatures:
        """Load the cached feature network for this training set, or train and cache it."""
        fp = domain_fingerprint(images, labels, num_classes, settings)
        entry = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        entry = entry / fp[:32]
        loaded = _load_domain(entry, fp)
        if loaded is not None:
            return cls(loaded, fingerprint=fp, cache_hit=True, path=entry, device=device)
        model = train_classifier(
            images, labels, num_classes, epochs=settings.epochs, seed=settings.seed,
            augment=settings.augment, hflip=settings.hflip, device=device, config=settings.classifier,
        )
        meta = {
            "fingerprint": fp, "in_channels": model.in_channels, "num_classes": num_classes,
            "width": model.width, "dropout": settings.classifier.dropout, "resolution": list(images.shape[1:3]),
            "n_train": len(images), "settings": settings.to_dict(),
        }
        _save_domain(entry, model, meta)
        return cls(model, fingerprint=fp, cache_hit=False, path=entry, device=device)


def _save_domain(entry: Path, model: SmallCNN, meta: dict) -> None:
    """Write into a temp dir and rename, so concurrent evaluations never see half a cache."""
    from safetensors.torch import save_file

    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True))  # marker, written last
        try:
            os.replace(tmp, entry)
        except OSError:  # another process published the same fingerprint first: keep theirs
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_domain(entry: Path, fingerprint: str) -> SmallCNN | None:
    from safetensors.torch import load_file

    meta_path, weights = entry / "model.json", entry / "model.safetensors"
    if not (meta_path.is_file() and weights.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("fingerprint") != fingerprint:  # a prefix collision or a stale entry
        return None
    model = SmallCNN(meta["in_channels"], meta["num_classes"], meta["width"], meta["dropout"])
    model.load_state_dict(load_file(str(weights)))
    return model.eval()


# ---------------------------------------------------------------------------- inception


class InceptionFeatures(FeatureExtractor):
    """torchvision Inception-v3 pool3 (2048-d) with user-supplied local weights.

    The weights must fit ``torchvision.models.inception_v3`` (e.g. its ImageNet
    weights saved locally). The pytorch-fid / TF-FID Inception has different blocks
    and does not load here; FIDs from this extractor are therefore not the numbers
    published in papers, only comparable among themselves.
    """

    name = "inception"
    dim = 2048
    _MEAN = (0.485, 0.456, 0.406)
    _STD = (0.229, 0.224, 0.225)

    def __init__(self, weights_path: str | Path, *, transform_input: bool = False, batch_size: int = 32,
                 device: str | torch.device = "cpu"):
        super().__init__(batch_size=batch_size, device=device)
        from torchvision.models import inception_v3

        net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=transform_input)
        state = _load_state_dict(Path(weights_path))
        missing, unexpected = net.load_state_dict(state, strict=False)
        # A checkpoint saved with aux_logits=False lacks only the auxiliary head, unused here.
        missing = [k for k in missing if not k.startswith("AuxLogits.")]
        if missing or unexpected:
            raise ValueError(f"{weights_path}: not torchvision inception_v3 weights "
                             f"(missing {missing[:3]}..., unexpected {unexpected[:3]}...)")
        net.fc = torch.nn.Identity()  # eval-mode forward then ends at the pooled 2048-d pool3 vector
        self.net = net.to(self.device).eval()
        self.mean = torch.tensor(self._MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(self._STD, device=self.device).view(1, 3, 1, 1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net((x - self.mean) / self.std)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"inception weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


# ---------------------------------------------------------------------------- torchscript


class TorchScriptFeatures(FeatureExtractor):
    """A user TorchScript module: float32 NCHW in [0, 1] -> [N, D] (or anything that flattens to it)."""

    name = "torchscript"

    def __init__(self, path: str | Path, *, batch_size: int = 256, device: str | torch.device = "cpu"):
        super().__init__(batch_size=batch_size, device=device)
        if not Path(path).is_file():
            raise FileNotFoundError(f"torchscript module not found: {path}")
        with warnings.catch_warnings():  # torch.jit is deprecated upstream; user modules still come as TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            self.module = torch.jit.load(str(path), map_location=self.device).eval()
        self.path = Path(path)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        feats = super().__call__(images)
        self.dim = feats.shape[1] if feats.ndim == 2 else self.dim
        return feats


# ---------------------------------------------------------------------------- registry

# name -> factory(arg, **context). The context carries what `domain` needs to train.
FEATURES: Registry[Callable[..., FeatureExtractor]] = Registry("feature extractor")


def register_feature(name: str) -> Callable[[Callable[..., FeatureExtractor]], Callable[..., FeatureExtractor]]:
    return FEATURES.register(name)


@register_feature("domain")
def _make_domain(arg: str | None, *, real_train=None, num_classes=None, cache_dir=None, device="cpu",
                 domain_settings: DomainSettings | None = None, **_) -> DomainFeatures:
    if real_train is None or num_classes is None:
        raise ValueError("feature 'domain' needs real_train=(images, labels) and num_classes")
    return DomainFeatures.from_training(real_train[0], real_train[1], num_classes,
                                        settings=domain_settings or DomainSettings(),
                                        cache_dir=cache_dir, device=device)


@register_feature("inception")
def _make_inception(arg: str | None, *, device="cpu", **_) -> InceptionFeatures:
    if not arg:
        raise ValueError("feature 'inception' needs a local weights path: 'inception:/path/to/weights.safetensors'")
    return InceptionFeatures(arg, device=device)


@register_feature("torchscript")
def _make_torchscript(arg: str | None, *, device="cpu", **_) -> TorchScriptFeatures:
    if not arg:
        raise ValueError("feature 'torchscript' needs a path: 'torchscript:/path/to/module.pt'")
    return TorchScriptFeatures(arg, device=device)


def build_extractor(spec: str, **context) -> FeatureExtractor:
    """``"name"`` or ``"name:ARG"`` -> extractor. Context: real_train, num_classes, cache_dir, device."""
    name, _, arg = spec.partition(":")
    return FEATURES.get(name)(arg or None, **context)


def extract_features_batched(extractor: Callable[[np.ndarray], np.ndarray], batches: Iterable[np.ndarray]) -> np.ndarray:
    """Features of a stream of uint8 NHWC batches, concatenated (float32 [N, D]).

    Memory holds only one image batch at a time, so sets larger than RAM-as-pixels work.
    """
    parts = [np.asarray(extractor(np.asarray(b)), dtype=np.float32) for b in batches if len(b)]
    if not parts:
        return np.zeros((0, getattr(extractor, "dim", 0)), np.float32)
    return np.concatenate(parts)


class FeatureMapper:
    """A ``map_batches`` callable: {image_key: uint8 NHWC} -> adds {out_key: float32 [N, D]}.

    Ray builds one per actor, so pass a factory (e.g. ``lambda: build_extractor("torchscript:m.pt")``)
    and the model is loaded once per actor, not once per batch.
    """

    def __init__(self, make_extractor: Callable[[], Callable[[np.ndarray], np.ndarray]],
                 image_key: str = "image", out_key: str = "features", drop_images: bool = False):
        self.extractor = make_extractor()
        self.image_key, self.out_key = image_key, out_key
        self.drop_images = drop_images  # don't ship the pixels on to the next stage / the driver

    def __call__(self, batch: dict) -> dict:
        images = batch[self.image_key]
        if not isinstance(images, np.ndarray) or images.dtype == object:  # a list / ragged column of HWC arrays
            images = np.stack([np.asarray(im) for im in images])
        batch[self.out_key] = self.extractor(np.asarray(images, dtype=np.uint8))
        if self.drop_images:
            batch = {k: v for k, v in batch.items() if k != self.image_key}
        return batch
