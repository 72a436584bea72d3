"""Family registry: a name -> GANFamily mapping, so callers never branch on family names.

A family bundles a generator class, a discriminator class and a loss class. Every family has
exactly one generator module and one discriminator module (CycleGAN keeps both directions
inside one module each), so checkpoints, DDP wrapping and EMA are family-agnostic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch.nn as nn

if TYPE_CHECKING:
    from ganaug.config import ModelConfig, TrainingConfig


@dataclass
class DataInfo:
    """What a model must know about its data."""

    resolution: int
    channels: int
    num_classes: int = 0               # 0 = unlabelled
    class_names: list[str] = field(default_factory=list)


class GANFamily:
    """Base class of a registered family.

    kind == "noise": G(z, labels, truncation=1.0) -> images in [-1, 1], NCHW. G exposes
        `z_dim` and `num_classes` attributes. Batches are {"image", "label"}.
    kind == "translation": G(x) -> translated images in [-1, 1] (A -> B). Batches are
        {"a", "b"} (paired for pix2pix, independent for cyclegan).
    """

    name: ClassVar[str]
    kind: ClassVar[str]  # "noise" | "translation"
    paired: ClassVar[bool] = True  # translation batch source: A and B from the same rows
    generator_cls: ClassVar[type[nn.Module]]
    discriminator_cls: ClassVar[type[nn.Module]]
    loss_cls: ClassVar[type]

    # ------------------------------------------------------------------ defaults
    # A config key left unset (None) means "this family's reference value". `defaults` maps
    # "section.key" -> value; RunConfig.validate() fills the unset keys from it, so the saved run
    # config holds the resolved values. A preset (any value that is set) always wins.
    @classmethod
    def defaults(cls, model: "ModelConfig", data: Any = None, training: Any = None) -> dict[str, Any]:
        """Generic values (the SNGAN/BigGAN-style noise setup ganaug used before per-family defaults)."""
        return {
            "model.spectral_norm": True,
            "model.mode_seeking": 0.0,
            "training.loss": "hinge",
            "training.lr_g": 2e-4,
            "training.lr_d": 2e-4,
            "training.beta1": 0.0,
            "training.beta2": 0.99,
            "training.r1_gamma": 0.0,
            "training.lr_decay": "none",
            "training.pl_weight": 0.0,
        }

    @classmethod
    def model_value(cls, model: "ModelConfig", key: str) -> Any:
        """model.<key>, or this family's default when it is unset (None)."""
        value = getattr(model, key)
        return cls.defaults(model)[f"model.{key}"] if value is None else value

    @classmethod
    def generator_kwargs(cls, model: "ModelConfig", data: DataInfo) -> dict[str, Any]:
        """JSON-able constructor kwargs of the generator; saved in model.json."""
        raise NotImplementedError

    @classmethod
    def discriminator_kwargs(cls, model: "ModelConfig", data: DataInfo) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def loss_kwargs(cls, model: "ModelConfig", data: DataInfo) -> dict[str, Any]:
        """Extra keyword arguments of `loss_cls` (e.g. L1 or cycle weights); none by default."""
        return {}

    @classmethod
    def build_generator(cls, kwargs: dict[str, Any]) -> nn.Module:
        return cls.generator_cls(**kwargs)

    @classmethod
    def build_discriminator(cls, kwargs: dict[str, Any]) -> nn.Module:
        return cls.discriminator_cls(**kwargs)


class TranslationFamily(GANFamily):
    """Base of the kind == "translation" families (pix2pix, cyclegan).

    Their discriminators are PatchGANs built from the same keyword arguments: InstanceNorm,
    or no norm when spectral norm is on.

    Defaults follow junyanz/pytorch-CycleGAN-and-pix2pix: no spectral norm (so InstanceNorm in
    D; the reference's pix2pix BatchNorm at its batch size of 1 is the same per-sample
    normalisation), Adam lr 2e-4 with betas (0.5, 0.999), the lr constant for the first half
    of the steps then decaying linearly to 0 (its n_epochs + n_epochs_decay schedule), no R1.
    """

    kind = "translation"

    @classmethod
    def defaults(cls, model, data=None, training=None) -> dict[str, Any]:
        return {**super().defaults(model, data, training),
                "model.spectral_norm": False, "model.mode_seeking": 0.0,
                "training.beta1": 0.5, "training.beta2": 0.999, "training.lr_decay": "linear"}

    @classmethod
    def discriminator_kwargs(cls, model: ModelConfig, data: DataInfo) -> dict[str, Any]:
        sn = bool(cls.model_value(model, "spectral_norm"))
        return {"resolution": data.resolution, "in_channels": data.channels, "out_channels": data.channels,
                "width": model.width, "max_width": model.max_width, "n_layers": None,
                "norm": "none" if sn else "instance", "spectral_norm": sn}


_REGISTRY: dict[str, type[GANFamily]] = {}


def register(family: type[GANFamily]) -> type[GANFamily]:
    """Class decorator: make a family available by its `name`."""
    if family.name in _REGISTRY and _REGISTRY[family.name] is not family:
        raise ValueError(f"GAN family {family.name!r} registered twice")
    _REGISTRY[family.name] = family
    return family


def _load_builtin_families() -> None:
    # Importing the modules runs their @register decorators.
    import ganaug.models  # noqa: F401


def get_family(name: str) -> type[GANFamily]:
    _load_builtin_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown GAN family {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def family_names() -> list[str]:
    _load_builtin_families()
    return sorted(_REGISTRY)
