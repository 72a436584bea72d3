"""The reader interface: each dataset scheme lists its rows cheaply and hands over only the
rows of a slice, as decoded arrays or as encoded bytes (decoded later by the loader)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass
class RawBatch:
    sources: list[str]              # per-row provenance id
    wheres: list[str]               # per-row name used in error messages ("FILE", "parquet row i of FILE")
    labels: np.ndarray              # int64
    images: np.ndarray | None = None  # N x H x W (x C), already decoded (arrays readers)
    payloads: list | None = None      # per-row encoded bytes, or an Exception when unreadable

    def __len__(self) -> int:
        return len(self.sources)


class Reader:
    """One dataset location. Subclasses must not decode images outside iter_raw's slice."""

    def __init__(self, spec: str, location: str, allow_incomplete: bool = False):
        self.spec = spec
        self.location = location
        self.allow_incomplete = allow_incomplete

    def num_rows(self) -> int:
        raise NotImplementedError

    def class_names(self) -> list[str]:
        raise NotImplementedError

    def labels(self, start: int, stop: int) -> np.ndarray:
        """int64 labels of rows [start, stop) without decoding images."""
        raise NotImplementedError

    def iter_raw(self, start: int, stop: int, batch_rows: int) -> Iterator[RawBatch]:
        raise NotImplementedError


def chunks(start: int, stop: int, size: int) -> Iterator[tuple[int, int]]:
    for lo in range(start, stop, size):
        yield lo, min(lo + size, stop)
