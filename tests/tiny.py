"""The tiny run config the unit tests train with: 16 px, the smallest widths, batch 8."""

from __future__ import annotations

from ganaug.config import RunConfig
from ganaug.families import FAMILIES as FAMILY_CONFIGS


def tiny_run_config(family: str = "cgan", resolution: int = 16, channels: int = 1, **training) -> RunConfig:
    cfg = RunConfig()
    cfg.model.family = family
    cfg.model.width, cfg.model.max_width = 8, 32
    for key, value in (("z_dim", 16), ("embed_dim", 8)):
        if key in FAMILY_CONFIGS.get(family).keys:  # a key of another family is an error
            setattr(cfg.model, key, value)
    cfg.data.resolution, cfg.data.channels = resolution, channels
    cfg.training.batch_size = 8
    for k, v in training.items():
        setattr(cfg.training, k, v)
    return cfg.validate()


def tiny_checkpoint(folder, family: str, class_names=(), resolution: int = 16, channels: int = 1, *,
                    seed: int = 0, width: int = 8, **meta) -> str:
    """An untrained tiny checkpoint (seeded) of `family` at `folder`; `class_names` only for a
    conditional family. Extra keyword arguments go into its model.json (e.g. native_size)."""
    import torch

    from ganaug import checkpoint
    from ganaug.config import ModelConfig
    from ganaug.models.registry import DataInfo, get_family

    fam = get_family(family)
    data = DataInfo(resolution, channels, len(class_names), list(class_names))
    model = ModelConfig(family=family, width=width, z_dim=16, max_width=max(32, width), embed_dim=8)
    kwargs = fam.generator_kwargs(model, data)
    torch.manual_seed(seed)
    uri = str(folder)
    checkpoint.save_checkpoint(uri, generator_ema=fam.build_generator(kwargs), meta={
        "family": family, "kind": fam.kind, "generator_kwargs": kwargs, "resolution": resolution,
        "channels": channels, "num_classes": len(class_names), "class_names": list(class_names), **meta})
    return uri


def tiny_cgan_checkpoint(folder, class_names: list[str], resolution: int = 16, channels: int = 1) -> str:
    """An untrained tiny cgan checkpoint (seeded) with the given class names, at `folder`."""
    return tiny_checkpoint(folder, "cgan", class_names, resolution, channels)
