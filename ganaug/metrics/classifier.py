"""The one small CNN every classifier-based measure shares.

CAS, the augmentation-gain arms and the ``domain`` feature space all train this
same network, so their numbers are comparable with each other and across runs:
a metric that changed its judge between runs would measure the judge.

Inputs are uint8 NHWC numpy arrays (16..64 px, 1 or 3 channels); adaptive
pooling makes the head independent of the resolution.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.transforms import v2

Augment = Literal["none", "classic"]


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture and optimiser settings. Part of the domain-feature fingerprint."""

    width: int = 32
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    dropout: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)


# Frozen, so one shared instance is a safe default argument.
DEFAULT_CLASSIFIER = ClassifierConfig()


class SmallCNN(nn.Module):
    """Three conv stages (w, 2w, 4w channels), global average pool, linear head.

    ``features`` returns the pooled 4w-dim vector: the penultimate layer that the
    ``domain`` feature extractor uses.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.2):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.width = width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        w = width
        self.body = nn.Sequential(
            *block(in_channels, w), *block(w, w), nn.MaxPool2d(2),
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(4 * w, num_classes)

    @property
    def feature_dim(self) -> int:
        return 4 * self.width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # Centre the [0, 1] input here so that callers never need to know a mean/std.
        return self.body(x * 2.0 - 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC numpy -> float32 NCHW in [0, 1]."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 NHWC images, got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def classic_augmentation(channels: int, *, hflip: bool = False) -> v2.Transform:
    """The 'classic' arm: small affine jitter, optional flip, colour jitter for RGB.

    Flips are opt-in because they change the class of digits and text (a mirrored 7
    is not a 7); colour jitter is meaningless on one channel.
    """
    ops: list[v2.Transform] = [v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))]
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    if channels == 3:
        ops.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2))
    return v2.Compose(ops)


def augment_batch(transform: v2.Transform, x: torch.Tensor) -> torch.Tensor:
    # v2 transforms draw ONE set of parameters per call, so a batched call would
    # move every image identically; per-sample calls keep the jitter independent.
    return torch.stack([transform(xi) for xi in x])


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    epochs: int = 15,
    steps: int | None = None,
    seed: int = 0,
    augment: Augment = "none",
    hflip: bool = False,
    sample_weights: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    config: ClassifierConfig = DEFAULT_CLASSIFIER,
) -> SmallCNN:
    """Train the fixed CNN from scratch; deterministic for a given seed (on one device).

    ``steps`` (when set) replaces ``epochs`` by a fixed number of optimiser steps, so
    arms with different amounts of data get the same training budget and differ only
    in what they see. ``sample_weights`` draws batches with replacement in proportion
    to the weights (used to give real and synthetic images equal say).
    """
    if augment not in ("none", "classic"):
        raise ValueError(f"augment must be 'none' or 'classic', got {augment!r}")
    labels = np.asarray(labels, dtype=np.int64)
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need matching non-empty images/labels, got {len(images)} and {len(labels)}")
    if sample_weights is not None and len(sample_weights) != len(labels):
        raise ValueError(f"sample_weights has {len(sample_weights)} entries for {len(labels)} images")
    device = torch.device(device)
    x_all = to_tensor(images)
    y_all = torch.from_numpy(labels)
    n, channels = x_all.shape[0], x_all.shape[1]
    bs = min(config.batch_size, n)
    if steps is None:
        steps = epochs * math.ceil(n / bs)
    transform = classic_augmentation(channels, hflip=hflip) if augment == "classic" else None

    # fork_rng: the seed fixes init, batch order, dropout and augmentation without
    # disturbing the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = SmallCNN(channels, num_classes, config.width, config.dropout).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        # Cosine decay to zero: the last steps settle the BatchNorm statistics and weights.
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
        weights = None if sample_weights is None else torch.as_tensor(sample_weights, dtype=torch.float64)
        model.train()
        order = torch.empty(0, dtype=torch.long)
        for _ in range(steps):
            if weights is not None:
                idx = torch.multinomial(weights, bs, replacement=True, generator=gen)
            else:
                if len(order) < bs:  # reshuffle once per pass: every image is seen each epoch
                    order = torch.cat([order, torch.randperm(n, generator=gen)])
                idx, order = order[:bs], order[bs:]
            xb, yb = x_all[idx], y_all[idx]
            if transform is not None:
                xb = augment_batch(transform, xb)
            xb, yb = xb.to(device), yb.to(device)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


@torch.no_grad()
def predict_proba(model: SmallCNN, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities [N, num_classes] (float32)."""
    model.eval()
    device = next(model.parameters()).device
    out = [
        F.softmax(model(to_tensor(images[i : i + batch_size]).to(device)), dim=1).cpu()
        for i in range(0, len(images), batch_size)
    ]
    if not out:
        return np.zeros((0, model.num_classes), np.float32)
    return torch.cat(out).numpy().astype(np.float32)


def predict(model: SmallCNN, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Predicted labels (int64)."""
    return predict_proba(model, images, batch_size=batch_size).argmax(1).astype(np.int64)


def accuracy(model: SmallCNN, images: np.ndarray, labels: np.ndarray) -> float:
    return float((predict(model, images) == np.asarray(labels)).mean())


def per_class_accuracy(model: SmallCNN, images: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy per true class; NaN for a class with no test images."""
    return per_class_accuracy_from_predictions(predict(model, images), np.asarray(labels), num_classes)


def per_class_accuracy_from_predictions(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    acc = np.full(num_classes, np.nan)
    for c in range(num_classes):
        mask = labels == c
        if mask.any():
            acc[c] = float((pred[mask] == c).mean())
    return acc
