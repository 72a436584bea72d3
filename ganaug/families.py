"""Each GAN family's config: the model keys it reads and its reference defaults, without torch.

config.py checks `model.family` and the `model.*` keys against FAMILIES and fills unset keys
from a family's `defaults`, so reading or validating a config never imports a model. The
family's GANFamily class (ganaug/models/, torch) is named by `impl` and imported only by
`get_family`. A new family adds its FamilyConfig here and its module under ganaug/models/.

`ModelConfig` stays the one typed container of every model key (so `cfg.model.<key>` works
everywhere and a run's config.yaml lists them all); `keys` says which of them the family
reads. A key outside them must keep its default (what ganaug itself writes): anything else is
a ConfigError naming the key and the family.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ganaug.registry import Registry

if TYPE_CHECKING:
    from ganaug.config import DataConfig, ModelConfig, TrainingConfig

Defaults = Callable[["ModelConfig", "DataConfig | None", "TrainingConfig | None"], dict[str, Any]]


@dataclass(frozen=True)
class FamilyConfig:
    name: str
    keys: tuple[str, ...]   # the model.* keys it reads (model.family aside), in ModelConfig's order
    # "section.key" -> the family's reference value for a key left unset (None); see
    # RunConfig.resolve_defaults. A preset (any value that is set) always wins.
    defaults: Defaults
    impl: str               # "module:Class" of its GANFamily

    def load(self) -> Any:
        """The GANFamily class (imports torch and the family's module)."""
        module, _, cls = self.impl.partition(":")
        return getattr(importlib.import_module(module), cls)


FAMILIES: Registry[FamilyConfig] = Registry("GAN family")


# ---------------------------------------------------------------------------- defaults

def noise_defaults(model: ModelConfig, data: DataConfig | None = None,
                   training: TrainingConfig | None = None) -> dict[str, Any]:
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


def _cgan_defaults(model, data=None, training=None) -> dict[str, Any]:
    # Conditioning alone let small classes collapse on MNIST; MSGAN's term fixed it.
    return {**noise_defaults(model, data, training), "model.mode_seeking": 1.0}


def _dcgan_defaults(model, data=None, training=None) -> dict[str, Any]:
    # Unconditional: MSGAN's term targets collapse within a condition (all of its experiments
    # are conditional); here D and the whole latent space carry the diversity, so it is off.
    return {**noise_defaults(model, data, training), "model.mode_seeking": 0.0}


def _stylegan2_defaults(model, data=None, training=None) -> dict[str, Any]:
    """stylegan2-ada-pytorch's `auto` config: lr 0.0025 (equalised lr), betas (0, 0.99), ns
    loss, R1 gamma = 0.0002 * res**2 / batch (per-worker batch here: lr and gamma are not
    rescaled with the worker count). Path-length regularisation (weight 2) only from 64 px:
    the reference's low-resolution (cifar) config turns it off. Mode seeking follows
    conditioning, as for the other noise families."""
    out = {**noise_defaults(model, data, training),
           "model.mode_seeking": 1.0 if model.conditional else 0.0,
           "training.loss": "ns", "training.lr_g": 0.0025, "training.lr_d": 0.0025,
           "training.beta1": 0.0, "training.beta2": 0.99}
    if data is not None and training is not None:
        out["training.r1_gamma"] = round(0.0002 * data.resolution ** 2 / training.batch_size, 8)
    if data is not None:
        out["training.pl_weight"] = 2.0 if data.resolution >= 64 else 0.0
    return out


def translation_defaults(model, data=None, training=None) -> dict[str, Any]:
    """junyanz/pytorch-CycleGAN-and-pix2pix: no spectral norm (so InstanceNorm in D; the
    reference's pix2pix BatchNorm at its batch size of 1 is the same per-sample normalisation),
    Adam lr 2e-4 with betas (0.5, 0.999), the lr constant for the first half of the steps then
    decaying linearly to 0 (its n_epochs + n_epochs_decay schedule), no R1."""
    return {**noise_defaults(model, data, training),
            "model.spectral_norm": False, "model.mode_seeking": 0.0,
            "training.beta1": 0.5, "training.beta2": 0.999, "training.lr_decay": "linear"}


def _pix2pix_defaults(model, data=None, training=None) -> dict[str, Any]:
    return {**translation_defaults(model, data, training), "training.loss": "ns"}  # the reference's "vanilla"


def _cyclegan_defaults(model, data=None, training=None) -> dict[str, Any]:
    return {**translation_defaults(model, data, training), "training.loss": "lsgan"}


# ---------------------------------------------------------------------------- the families

_SIZE = ("width", "max_width")
for _config in (
    FamilyConfig("cgan", ("z_dim", *_SIZE, "embed_dim", "spectral_norm", "aux_classifier", "mbstd_group",
                          "mode_seeking"), _cgan_defaults, "ganaug.models.cgan:CGAN"),
    FamilyConfig("cyclegan", (*_SIZE, "spectral_norm", "res_blocks", "cycle_weight", "identity_weight",
                              "pool_size"), _cyclegan_defaults, "ganaug.models.cyclegan:CycleGAN"),
    FamilyConfig("dcgan", ("z_dim", *_SIZE, "spectral_norm", "mode_seeking"), _dcgan_defaults,
                 "ganaug.models.dcgan:DCGAN"),
    FamilyConfig("pix2pix", (*_SIZE, "spectral_norm", "l1_weight"), _pix2pix_defaults,
                 "ganaug.models.pix2pix:Pix2Pix"),
    # StyleGAN2 relies on equalised lr, not spectral norm (ganaug/models/stylegan2.py).
    FamilyConfig("stylegan2", ("z_dim", *_SIZE, "w_dim", "mapping_layers", "embed_dim", "conditional",
                               "mode_seeking", "style_mixing"), _stylegan2_defaults,
                 "ganaug.models.stylegan2:StyleGAN2Family"),
):
    FAMILIES.register(_config.name, _config)
