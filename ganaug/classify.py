"""The downstream classifier job's library side (no Ray): its typed config, the classifier
architectures, one optimiser step, and the held-out tally (ARCHITECTURE.md §3.9).

`classify_job.py` runs it data-parallel on Ray Train over a mixed (or real-only) stream. With
`model.arch: smallcnn` and the same step budget it trains the network and optimiser of
`ganaug evaluate`'s gain arms (metrics/classifier.py), so the two can be compared.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ganaug.config import (
    ConfigError,
    StorageConfig,
    apply_overrides,
    build_dataclass,
    read_yaml_mapping,
)
from ganaug.registry import Registry

# name -> builder(in_channels, num_classes, resolution, cfg: ClassifyModel) -> nn.Module on [0, 1] NCHW
ARCHITECTURES: Registry = Registry("classifier architecture")
ARCHITECTURES.register_lazy("smallcnn", "ganaug.classify:_smallcnn")
ARCHITECTURES.register_lazy("resnet18", "ganaug.classify:_resnet18")
ARCHITECTURES.register_lazy("resnet34", "ganaug.classify:_resnet34")


@dataclass
class ClassifyModel:
    arch: str = "resnet18"
    width: int = 32          # smallcnn only
    dropout: float = 0.2     # smallcnn only


@dataclass
class ClassifyData:
    train: str = ""          # real training rows (any dataset spec)
    heldout: str = ""        # real held-out rows: only ever judged on
    synthetic: str = ""      # a generated set URI, or
    checkpoint: str = ""     # a run/checkpoint URI sampled on the fly
    ratio: float = 0.0       # synthetic fraction of the training rows (0 = real only)
    balance: bool = False    # give the generator's rows to the rarest classes first
    resolution: int = 0      # 0 = the real data's own size
    channels: int = 0        # 0 = the real data's own channels
    truncation: float = 1.0


@dataclass
class ClassifyTraining:
    epochs: int = 10
    steps: int = 0           # > 0 replaces epochs by a fixed number of optimiser steps
    batch_size: int = 64     # per worker
    lr: float = 2e-3
    weight_decay: float = 5e-4
    augment: str = "classic"  # classic | none
    hflip: bool = False
    seed: int = 0
    workers: int = 2
    use_gpu: bool = False
    max_failures: int = 2
    checkpoint_every: int = 0  # optimiser steps between checkpoints (0 = once per epoch)


@dataclass
class ClassifyConfig:
    model: ClassifyModel = field(default_factory=ClassifyModel)
    data: ClassifyData = field(default_factory=ClassifyData)
    training: ClassifyTraining = field(default_factory=ClassifyTraining)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def validate(self) -> ClassifyConfig:
        m, d, t = self.model, self.data, self.training
        if m.arch not in ARCHITECTURES:
            raise ConfigError(f"config key 'model.arch': {ARCHITECTURES.unknown_message(m.arch)}")
        for key, value in (("data.train", d.train), ("data.heldout", d.heldout)):
            if not value:
                raise ConfigError(f"config key '{key}' is required (a dataset spec)")
        if d.train == d.heldout:
            raise ConfigError("config keys 'data.train' and 'data.heldout' name the same rows; "
                              "held-out rows must never be trained on")
        if d.synthetic and d.checkpoint:
            raise ConfigError("config keys 'data.synthetic' and 'data.checkpoint': give one of them, not both")
        if not 0.0 <= d.ratio < 1.0:
            raise ConfigError(f"config key 'data.ratio' must be in [0, 1) (the synthetic fraction), got {d.ratio}")
        if d.ratio > 0 and not (d.synthetic or d.checkpoint):
            raise ConfigError("config key 'data.ratio' > 0 needs 'data.synthetic' (a set) or 'data.checkpoint'")
        if d.channels not in (0, 1, 3):
            raise ConfigError(f"config key 'data.channels' must be 0 (the data's own), 1 or 3, got {d.channels}")
        if t.augment not in ("classic", "none"):
            raise ConfigError(f"config key 'training.augment' must be 'classic' or 'none', got {t.augment!r}")
        for key in ("epochs", "batch_size", "workers"):
            if getattr(t, key) < 1:
                raise ConfigError(f"config key 'training.{key}' must be >= 1, got {getattr(t, key)}")
        for key, value in (("training.steps", t.steps), ("training.seed", t.seed),
                           ("training.max_failures", t.max_failures),
                           ("training.checkpoint_every", t.checkpoint_every), ("data.resolution", d.resolution)):
            if value < 0:
                raise ConfigError(f"config key '{key}' must be >= 0, got {value}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_classify_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ClassifyConfig:
    """A classify YAML (+ `--set key=value` overrides) -> a validated ClassifyConfig."""
    data = read_yaml_mapping(path) if path else {}
    data = apply_overrides(data, list(overrides or []))
    return build_dataclass(ClassifyConfig, data, "").validate()


# ----------------------------------------------------------------------------- architectures

def _smallcnn(in_channels: int, num_classes: int, resolution: int, cfg: ClassifyModel):
    from ganaug.metrics.classifier import SmallCNN

    return SmallCNN(in_channels, num_classes, cfg.width, cfg.dropout)


def _resnet(depth: int):
    def build(in_channels: int, num_classes: int, resolution: int, cfg: ClassifyModel):
        from torchvision.models import resnet18, resnet34

        net = (resnet18 if depth == 18 else resnet34)(weights=None, num_classes=num_classes)
        if resolution <= 64:
            # Small images (CIFAR-style stem): a 3x3 stride-1 first conv and no max-pool, so a
            # 32-px image is not down to 8 px before the first residual stage.
            net.conv1 = torch.nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            net.maxpool = torch.nn.Identity()
        elif in_channels != 3:
            net.conv1 = torch.nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        return _Centred(net)
    return build


_resnet18, _resnet34 = _resnet(18), _resnet(34)


class _Centred(torch.nn.Module):
    """[0, 1] input -> [-1, 1] for the wrapped network (SmallCNN centres its own)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2.0 - 1.0)


def build_classifier(cfg: ClassifyConfig, in_channels: int, num_classes: int, resolution: int):
    return ARCHITECTURES.get(cfg.model.arch, "model.arch")(in_channels, num_classes, resolution, cfg.model)


# ----------------------------------------------------------------------------- steps

def batch_tensors(batch: dict, device, augment=None):
    """A stream batch (image uint8 NHWC, label) -> (x float NCHW in [0, 1], y) on `device`."""
    from ganaug.metrics.classifier import augment_batch

    images = batch["image"]
    x = torch.as_tensor(np.ascontiguousarray(images)) if not isinstance(images, torch.Tensor) else images
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if augment is not None:
        x = augment_batch(augment, x)
    y = torch.as_tensor(batch["label"]).long()
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def train_step(model, optimizer, scheduler, x, y) -> float:
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return float(loss.detach())


def tally(model, x, y, num_classes: int):
    """(correct per class, seen per class) of one held-out batch, as int64 tensors."""
    with torch.no_grad():
        pred = model(x).argmax(1)
    correct = torch.bincount(y[pred == y], minlength=num_classes)
    seen = torch.bincount(y, minlength=num_classes)
    return correct, seen


def accuracy_report(correct: np.ndarray, seen: np.ndarray, class_names: list[str]) -> dict:
    """Held-out accuracy overall and per class name (None for a class with no held-out row)."""
    per_class = {name: (float(c / s) if s else None) for name, c, s in zip(class_names, correct, seen)}
    return {"accuracy": float(correct.sum() / max(seen.sum(), 1)), "heldout_rows": int(seen.sum()),
            "per_class": per_class}
