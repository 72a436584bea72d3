"""Bulk generation (`ganaug generate`) and translation (`ganaug translate`) on Ray Data.

A run is a two-stage Ray Data pipeline over the *missing* shards (ARCHITECTURE.md §3.6):
sampling actors (GPU or CPU: the model, the filter, the resize) emit each shard's uint8
images as one tensor row; CPU write tasks encode them and stream the shard through
ParquetWriter into storage, hashing as it goes. The driver writes `_manifest.json` last.

- Determinism: row i uses seed S+i; a shard's bytes depend only on its rows (the Sampler is
  batch-invariant, one torch thread per actor, fixed Parquet settings), never on which actor
  or task made it or how many there were.
- Resume: a shard file exists only once complete (atomic write). A re-run verifies the
  existing shards (records, else footer + row count), makes only the missing ones, and ends
  with the same bytes as an uninterrupted run.
- Bounded memory: the label plan is lazy and the driver holds one small result per shard.

The modules, one job each:
    config.py    the arguments and their validation (GenerateConfig, TranslateConfig, --resources)
    filters.py   --filter: the registry and the deterministic re-draws
    plan.py      arguments -> RunPlan / ShardJob (checkpoint, label plan, fingerprint); no Ray
    stages.py    the sampling actors and the encode/write stage (Ray Data UDFs; no Ray import)
    pipeline.py  the Ray Data wiring and resources: the only module here importing Ray
    outdir.py    the output folder: prepare, intent, verify existing shards, environment, manifest
    run.py       the orchestrator: run_generate / run_translate
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ganaug.testing import faults

DIE_AFTER_ENV = faults.DIE_AFTER_ENV  # kept here: the tests import it from this package

# Names are loaded from their module on first use (PEP 562): a write task unpickling a
# ShardJob imports this package, and must not pay for torch and the checkpoint code it never
# runs (seconds and hundreds of MB in every worker process).
_EXPORTS = {
    "config": ("DEFAULT_ROWS_PER_SHARD", "GenerateConfig", "GenerationError", "OtherSetError", "TranslateConfig",
               "config_dict", "parse_resources"),
    "filters": ("FILTER_PLUGINS", "FILTERS", "MAX_FILTER_TRIES", "FilterEntry", "ImageFilter",
                "_load_filter_plugins", "candidates_drawn", "generate_rows", "parse_filter", "register_filter"),
    "plan": ("RunPlan", "ShardJob", "plan_generate", "plan_translate", "shard_ranges"),
    "run": ("run_generate", "run_plan", "run_translate"),
    "stages": ("SamplerActor", "TranslateActor", "write_shards"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
_MODULES = ("config", "filters", "plan", "stages", "pipeline", "outdir", "run")

__all__ = [  # noqa: RUF022 - grouped by module, as _EXPORTS
    "DIE_AFTER_ENV",
    "DEFAULT_ROWS_PER_SHARD", "GenerateConfig", "GenerationError", "OtherSetError", "TranslateConfig", "config_dict",
    "parse_resources",
    "FILTER_PLUGINS", "FILTERS", "MAX_FILTER_TRIES", "FilterEntry", "ImageFilter", "_load_filter_plugins",
    "candidates_drawn", "generate_rows", "parse_filter", "register_filter",
    "RunPlan", "ShardJob", "plan_generate", "plan_translate", "shard_ranges",
    "run_generate", "run_plan", "run_translate",
    "SamplerActor", "TranslateActor", "write_shards",
]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE) | set(_MODULES))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from ganaug.generation.config import (
        DEFAULT_ROWS_PER_SHARD,
        GenerateConfig,
        GenerationError,
        OtherSetError,
        TranslateConfig,
        config_dict,
        parse_resources,
    )
    from ganaug.generation.filters import (
        FILTER_PLUGINS,
        FILTERS,
        MAX_FILTER_TRIES,
        FilterEntry,
        ImageFilter,
        _load_filter_plugins,
        candidates_drawn,
        generate_rows,
        parse_filter,
        register_filter,
    )
    from ganaug.generation.plan import (
        RunPlan,
        ShardJob,
        plan_generate,
        plan_translate,
        shard_ranges,
    )
    from ganaug.generation.run import run_generate, run_plan, run_translate
    from ganaug.generation.stages import SamplerActor, TranslateActor, write_shards
