"""The `{classes=NAME,...}` spec filter: a reader over only the rows of some classes.

It wraps any labelled reader. Its rows are the kept rows in their original order, relabelled
0..len(classes)-1 in the order the filter names them, so a cgan trained on `{classes=cat,dog}`
has two classes, and CycleGAN's two domains can be two class subsets of one table. The row
slice of the spec then applies to these rows (loader.py does that as for any reader).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ganaug.data.base import RawBatch, Reader
from ganaug.data.spec import DatasetError

# Rows read from the wrapped reader per step while looking for kept rows.
SCAN_ROWS = 4096


class ClassFilterReader(Reader):
    def __init__(self, inner: Reader, classes: tuple[str, ...], spec: str):
        super().__init__(spec, inner.location, inner.allow_incomplete)
        self.inner = inner
        self.classes = list(classes)
        names = list(inner.class_names())
        missing = [c for c in classes if c not in names]
        if missing:
            shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
            raise DatasetError(f"dataset {spec!r}: the class filter names {', '.join(map(repr, missing))}, "
                               f"which the dataset does not have; its classes: {shown or '(none)'}")
        old = np.asarray([names.index(c) for c in classes], np.int64)
        labels = inner.labels(0, inner.num_rows())
        keep = np.isin(labels, old)
        self._rows = np.flatnonzero(keep)                  # original row of each kept row
        remap = np.full(len(names), -1, np.int64)
        remap[old] = np.arange(len(old))
        self._labels = remap[labels[keep]]

    def num_rows(self) -> int:
        return int(self._rows.size)

    def class_names(self) -> list[str]:
        return list(self.classes)

    def labels(self, start: int, stop: int) -> np.ndarray:
        return self._labels[start:stop].copy()

    def iter_raw(self, start: int, stop: int, batch_rows: int) -> Iterator[RawBatch]:
        """Kept rows start..stop in batches of at most batch_rows, reading the wrapped reader
        only over the spans that hold them."""
        wanted = self._rows[start:stop]
        pending: list[RawBatch] = []
        count = 0
        for lo in range(0, wanted.size, SCAN_ROWS):
            part = wanted[lo:lo + SCAN_ROWS]
            first, last = int(part[0]), int(part[-1]) + 1
            for raw in self.inner.iter_raw(first, last, SCAN_ROWS):
                # iter_raw yields consecutive rows from `first`; keep those in `part`.
                offset = first
                first += len(raw)
                pos = np.flatnonzero(np.isin(np.arange(offset, offset + len(raw)), part))
                if pos.size:
                    pending.append(_take(raw, pos, self._labels[start + lo + np.searchsorted(part, offset + pos)]))
                    count += pos.size
                while count >= batch_rows:
                    batch, pending, count = _split(pending, batch_rows)
                    yield batch
        if count:
            yield _merge(pending)


def _take(raw: RawBatch, pos: np.ndarray, labels: np.ndarray) -> RawBatch:
    idx = pos.tolist()
    return RawBatch(sources=[raw.sources[i] for i in idx], wheres=[raw.wheres[i] for i in idx],
                    labels=labels.astype(np.int64),
                    images=None if raw.images is None else raw.images[pos],
                    payloads=None if raw.payloads is None else [raw.payloads[i] for i in idx])


def _merge(parts: list[RawBatch]) -> RawBatch:
    if len(parts) == 1:
        return parts[0]
    arrays = parts[0].images is not None
    return RawBatch(sources=[s for p in parts for s in p.sources], wheres=[w for p in parts for w in p.wheres],
                    labels=np.concatenate([p.labels for p in parts]),
                    images=np.concatenate([p.images for p in parts]) if arrays else None,
                    payloads=None if arrays else [x for p in parts for x in p.payloads])


def _split(parts: list[RawBatch], n: int) -> tuple[RawBatch, list[RawBatch], int]:
    """The first n rows of the pending parts as one batch, and what is left."""
    whole = _merge(parts)
    head = _take(whole, np.arange(n), whole.labels[:n])
    rest = len(whole) - n
    tail = [_take(whole, np.arange(n, len(whole)), whole.labels[n:])] if rest else []
    return head, tail, rest
