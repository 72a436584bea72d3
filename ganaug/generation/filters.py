"""Generation filters (`--filter NAME:ARG`): keep only images a filter accepts, deterministically.

A filter rejects candidate images; rejected rows are re-drawn from a deterministic stream,
so a filtered set is still a pure function of the arguments:

  candidate j of row i uses seed S + i + j*N   (N = rows in the set; j = 0 is the plain seed)

Row i keeps its first accepted candidate, and the `seed` column records that candidate's
seed, so the row can be re-made exactly (and served). After MAX_FILTER_TRIES rejections the
last candidate is kept and counted in the manifest (`filter.fallback_rows`).
A filter must judge each image on its own (batch-invariant), or determinism is lost. It runs
in the sampling stage, next to the model, on the images G made (before any --size resize).

How `--filter fidelity:0.9` plugs in (evaluation owns it): a module listed in
FILTER_PLUGINS (e.g. ganaug/metrics/filters.py) calls at import time

    register_filter("fidelity", build=lambda arg, sampler: FidelityFilter(float(arg), sampler),
                    check=check_fraction)

`check(arg)` validates the argument on the driver before any work; once the output is known to
be writable and shards are missing, the driver calls `check(arg, meta, checkpoint_uri)` again
so the filter can prepare shared state (e.g. train and cache its classifier) before the
actors start. `build` runs once in every sampling actor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ganaug.registry import Registry


class ImageFilter(Protocol):
    def accept(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """uint8 NHWC images + int64 labels -> bool mask of the images to keep."""


@dataclass(frozen=True)
class FilterEntry:
    name: str
    build: Callable[[str, Any], ImageFilter]        # (argument, Sampler) -> filter, in each actor
    check: Callable[..., None] | None = None        # check(arg[, meta, checkpoint_uri]) on the driver


FILTER_PLUGINS = ("ganaug.metrics.filters",)
MAX_FILTER_TRIES = 8


def _load_filter_plugins() -> None:
    import importlib

    for mod in FILTER_PLUGINS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # the plugin exists but one of its imports is missing: a real bug
                raise


FILTERS: Registry[FilterEntry] = Registry("filter", loader=_load_filter_plugins)


def register_filter(name: str, build: Callable[[str, Any], ImageFilter],
                    check: Callable[..., None] | None = None) -> None:
    FILTERS.register(name, FilterEntry(name, build, check))


def parse_filter(spec: str | None, *context: Any) -> tuple[FilterEntry, str] | None:
    if not spec:
        return None
    name, _, arg = spec.partition(":")
    entry = FILTERS.get(name.strip(), f"--filter {spec}")
    if entry.check is not None:
        entry.check(arg, *context)
    return entry, arg


def generate_rows(sampler, rows: np.ndarray, labels: np.ndarray, seed: int, truncation: float,
                  total: int, image_filter: ImageFilter | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Images and their seeds for global rows `rows` (see the filter notes above).

    Returns (uint8 NHWC images, int64 seeds, rows that kept an unaccepted last candidate).
    """
    cond = labels if sampler.conditional else None
    seeds = (seed + rows).astype(np.int64)
    images = sampler.generate(seeds.tolist(), cond, truncation)
    if image_filter is None:
        return images, seeds, 0
    pending = np.arange(len(rows))
    for j in range(MAX_FILTER_TRIES):
        if j:
            cand_seeds = seed + rows[pending] + j * total
            cand = sampler.generate(cand_seeds.tolist(), None if cond is None else labels[pending], truncation)
            images[pending], seeds[pending] = cand, cand_seeds
        mask = np.asarray(image_filter.accept(images[pending], labels[pending]), dtype=bool)
        pending = pending[~mask]
        if not pending.size:
            break
    return images, seeds, int(pending.size)


def candidates_drawn(seeds: np.ndarray, first_row: int, seed: int, total: int) -> int:
    """Filter candidates drawn for these rows, read back from the seeds they kept.

    Row i's candidate j has seed S + i + j*N, so a kept seed says how many candidates were
    tried; this works for shards reused from an earlier run too.
    """
    rows = np.arange(first_row, first_row + len(seeds), dtype=np.int64)
    return int(((np.asarray(seeds, dtype=np.int64) - seed - rows) // max(total, 1) + 1).sum())
