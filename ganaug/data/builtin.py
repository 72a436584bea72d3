"""builtin:digits: scikit-learn's bundled 1,797 8x8 digits (no download)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np

from ganaug.data.base import RawBatch, Reader, chunks


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    # Pixel values are 0..16; scale to the full 0..255 range.
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    images.setflags(write=False)
    labels = d.target.astype(np.int64)
    labels.setflags(write=False)
    return images, labels


class DigitsReader(Reader):
    def num_rows(self) -> int:
        return len(_digits()[1])

    def class_names(self) -> list[str]:
        return [str(i) for i in range(10)]

    def labels(self, start: int, stop: int) -> np.ndarray:
        return _digits()[1][start:stop].copy()

    def iter_raw(self, start: int, stop: int, batch_rows: int) -> Iterator[RawBatch]:
        images, labels = _digits()
        for lo, hi in chunks(start, stop, batch_rows):
            yield RawBatch(
                sources=[f"row:{i}" for i in range(lo, hi)],
                wheres=[f"builtin:digits row {i}" for i in range(lo, hi)],
                labels=labels[lo:hi].copy(),
                images=images[lo:hi],
            )
