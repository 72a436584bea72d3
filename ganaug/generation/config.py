"""The arguments of `ganaug generate` and `ganaug translate`, checked before any work starts.

No Ray and no torch here: a bad flag is a one-line GenerationError on the driver, before a
checkpoint is read or Ray starts.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from ganaug import shards
from ganaug.choices import RESTYLE_GROUPS
from ganaug.errors import UserError, require

DEFAULT_ROWS_PER_SHARD = 1000


class GenerationError(UserError):
    pass


class OtherSetError(GenerationError):
    """--out holds another set (other arguments, unknown shards, another environment): refused
    so sets never mix; --overwrite replaces it."""


def _check(cond: bool, msg: str) -> None:
    require(cond, msg, GenerationError)


def _check_common(out: str, rows_per_shard: int, fmt: str, workers: int | None) -> None:
    _check(bool(out and out.strip()), "--out is required: a folder path or s3://bucket/prefix")
    _check(rows_per_shard >= 1, f"--rows-per-shard must be >= 1, got {rows_per_shard}")
    shards.get_encoder(fmt)
    _check(workers is None or workers >= 1, f"--workers must be >= 1, got {workers}")


# Ray sets these from num_cpus / num_gpus (one CPU or one GPU per sampling actor); in a
# `resources` dict Ray refuses them, so say so here, naming the flag.
_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")
_RESOURCES_EXAMPLE = """e.g. --resources '{"gen_node": 1}'"""


def parse_resources(value: str | dict | None) -> dict[str, float]:
    """--resources: extra custom Ray resources each sampling actor asks for (a node type an
    autoscaler can start). A JSON object of non-negative numbers; {} when not given."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    shown = value if isinstance(value, str) else json.dumps(value)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise GenerationError(f"--resources {shown}: not valid JSON ({e.msg}); {_RESOURCES_EXAMPLE}") from None
    if not isinstance(value, dict):
        raise GenerationError(f"--resources {shown}: expected a JSON object of resource names to non-negative "
                              f"numbers; {_RESOURCES_EXAMPLE}")
    out: dict[str, float] = {}
    for name, amount in value.items():
        _check(isinstance(name, str) and bool(name.strip()), f"--resources {shown}: resource names must be "
               "non-empty strings")
        _check(name not in _BUILTIN_RESOURCES, f"--resources {shown}: {name} is not a custom resource (each "
               "sampling actor takes one CPU, or one GPU with --use-gpu); name custom resources only")
        ok = isinstance(amount, (int, float)) and not isinstance(amount, bool) and math.isfinite(amount)
        _check(ok and amount >= 0, f"--resources {shown}: {name} must be a non-negative number, got "
               f"{json.dumps(amount)}")
        # Ray's own rule, checked here so it fails before Ray starts, naming the flag
        _check(amount <= 1 or float(amount).is_integer(), f"--resources {shown}: {name} {amount:g}: amounts "
               "above 1 must be whole numbers (Ray's rule)")
        out[name] = amount
    return out


@dataclass
class GenerateConfig:
    """The arguments of `ganaug generate` (flags map 1:1)."""

    checkpoint: str = ""
    out: str = ""
    num: int | None = None
    labels: str | None = None          # None = uniform
    truncation: float = 1.0
    seed: int = 0
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    format: str = "png"
    workers: int | None = None         # sampling actors; None = one per cluster CPU less one (per GPU with use_gpu)
    use_gpu: bool = False
    filter: str | None = None
    overwrite: bool = False
    size: str | None = None            # HxW | native (model.json's native_size); None = the model's
    allow_env_change: bool = False     # resume a set begun in another environment (environment.py)
    shared_fs: bool = False            # plain paths are a filesystem every node mounts
    resources: Any = None              # --resources: JSON text or dict -> {name: amount} after validate()

    def validate(self) -> GenerateConfig:
        _check(bool(self.checkpoint), "--checkpoint is required: a checkpoint or run folder URI")
        _check_common(self.out, self.rows_per_shard, self.format, self.workers)
        _check(self.num is None or self.num >= 1, f"--num must be >= 1, got {self.num}")
        _check(self.seed >= 0, f"--seed must be >= 0, got {self.seed}")
        _check(0.0 <= self.truncation <= 2.0, f"--truncation must be in [0, 2], got {self.truncation}")
        self.resources = parse_resources(self.resources)
        return self


@dataclass
class TranslateConfig:
    """The arguments of `ganaug translate`."""

    checkpoint: str = ""
    input: str = ""
    out: str = ""
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    format: str = "png"
    workers: int | None = None
    use_gpu: bool = False
    overwrite: bool = False
    allow_env_change: bool = False
    shared_fs: bool = False
    resources: Any = None
    # --restyle GROUP (StyleGAN2): project each input image into W+ and take GROUP's layers
    # (coarse | middle | fine) from a style latent; output row r is input row r // variants,
    # styled by seed style_seed + r.
    restyle: str | None = None
    style_seed: int = 0
    variants: int = 1
    project_steps: int = 200

    def validate(self) -> TranslateConfig:
        _check(bool(self.checkpoint), "--checkpoint is required: a translation checkpoint or run URI")
        _check(bool(self.input), "--input is required: a dataset spec such as mnist:DIR or parquet:URI")
        _check_common(self.out, self.rows_per_shard, self.format, self.workers)
        self.resources = parse_resources(self.resources)
        if self.restyle is None:
            for flag, value, default in (("--style-seed", self.style_seed, 0), ("--variants", self.variants, 1),
                                         ("--project-steps", self.project_steps, 200)):
                _check(value == default, f"{flag} applies only with --restyle coarse|middle|fine")
            return self
        _check(self.restyle in RESTYLE_GROUPS,
               f"--restyle must be one of {', '.join(RESTYLE_GROUPS)}, got {self.restyle!r}")
        _check(self.style_seed >= 0, f"--style-seed must be >= 0, got {self.style_seed}")
        _check(self.variants >= 1, f"--variants must be >= 1, got {self.variants}")
        _check(self.project_steps >= 1, f"--project-steps must be >= 1, got {self.project_steps}")
        return self



def config_dict(cfg: GenerateConfig | TranslateConfig) -> dict:
    return asdict(cfg)
