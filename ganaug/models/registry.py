"""Family lookup: a name -> GANFamily class, so callers never branch on family names.

The names, model keys and defaults of the families live torch-free in ganaug/families.py
(FAMILIES); `get_family` imports the class a FamilyConfig names.

A family bundles a generator class, a discriminator class and a loss class. Every family has
exactly one generator module and one discriminator module (CycleGAN keeps both directions
inside one module each), so checkpoints, DDP wrapping and EMA are family-agnostic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch.nn as nn

from ganaug.families import FAMILIES

if TYPE_CHECKING:
    from ganaug.config import ModelConfig


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
    @classmethod
    def defaults(cls, model: "ModelConfig", data: Any = None, training: Any = None) -> dict[str, Any]:
        """"section.key" -> this family's reference value (declared in ganaug/families.py)."""
        return FAMILIES.get(cls.name).defaults(model, data, training)

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

    Their defaults follow junyanz/pytorch-CycleGAN-and-pix2pix (families.translation_defaults).
    """

    kind = "translation"

    @classmethod
    def discriminator_kwargs(cls, model: ModelConfig, data: DataInfo) -> dict[str, Any]:
        sn = bool(cls.model_value(model, "spectral_norm"))
        return {"resolution": data.resolution, "in_channels": data.channels, "out_channels": data.channels,
                "width": model.width, "max_width": model.max_width, "n_layers": None,
                "norm": "none" if sn else "instance", "spectral_norm": sn}


def register(family: type[GANFamily]) -> type[GANFamily]:
    """Class decorator: check that `family` is the class its FamilyConfig names (a typo in
    ganaug/families.py then fails when the module is imported, not on first use)."""
    impl = FAMILIES.get(family.name, f"@register {family.__qualname__} (declare it in ganaug/families.py)").impl
    if impl != f"{family.__module__}:{family.__qualname__}":
        raise ValueError(f"GAN family {family.name!r}: ganaug/families.py names {impl!r}, "
                         f"not {family.__module__}:{family.__qualname__}")
    return family


def get_family(name: str) -> type[GANFamily]:
    """The family's class; an unknown name is registry.UnknownNameError."""
    return FAMILIES.get(name).load()


def family_names() -> list[str]:
    return sorted(FAMILIES.names())
