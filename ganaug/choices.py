"""Registries of the plain choices a run config names, declared without importing torch.

config.py checks `training.loss`, `training.augment` and `data.source_transform` against these
names; the objects behind them need torch, so each entry is lazy ('module:attr', imported on
the first `get`). Add a choice here and define it in the module named.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ganaug.registry import Registry

# name -> AdversarialLoss class (ganaug/losses.py)
LOSSES: Registry[Callable[[], Any]] = Registry("loss")
for _name, _cls in (("ns", "NonSaturating"), ("hinge", "Hinge"), ("lsgan", "LeastSquares"),
                    ("wgan-gp", "Wasserstein")):
    LOSSES.register_lazy(_name, f"ganaug.losses:{_cls}")

# DiffAugment policy -> its ops, applied in order (ganaug/augment.py)
AUGMENT_POLICIES: Registry[Sequence[Callable[..., Any]]] = Registry("augmentation policy")
for _name in ("color", "translation", "cutout"):
    AUGMENT_POLICIES.register_lazy(_name, f"ganaug.augment:{_name.upper()}_OPS")
# ADA's own "bgc" pipeline (ganaug/augment_ada.py): one op that takes p itself.
AUGMENT_POLICIES.register_lazy("ada", "ganaug.augment_ada:ADA_OPS")
# Policies that are a complete pipeline on their own, not to be listed with others.
STANDALONE_AUGMENT_POLICIES = ("ada",)


def augment_combination_error(names: Sequence[str]) -> str | None:
    """Why a list of augment policies cannot be combined, or None when it can."""
    alone = [n for n in names if n in STANDALONE_AUGMENT_POLICIES]
    if alone and len(names) > 1:
        return (f"augment policy '{alone[0]}' is ADA's complete pipeline (it has its own colour and "
                f"translation ops) and must stand alone; got {','.join(names)!r}: use '{alone[0]}' by "
                f"itself, or a comma list of the DiffAugment policies "
                f"{', '.join(n for n in AUGMENT_POLICIES.names() if n not in STANDALONE_AUGMENT_POLICIES)}")
    return None

# data.source_transform -> uint8 NHWC -> uint8 NHWC (ganaug/training/pairs.py)
SOURCE_TRANSFORMS: Registry[Callable[[Any], Any]] = Registry("source transform")
for _name, _fn in (("invert", "invert"), ("edges", "edges"), ("blur", "blur"),
                   ("grayscale", "grayscale"), ("none", "identity")):
    SOURCE_TRANSFORMS.register_lazy(_name, f"ganaug.training.pairs:{_fn}")

# StyleGAN2's W+ layer groups that `ganaug translate --restyle` can take from a style latent
# (ganaug/projection.py: the first, second and last third of the layers).
RESTYLE_GROUPS = ("coarse", "middle", "fine")
