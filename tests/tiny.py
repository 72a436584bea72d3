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
