"""load_dataset / iter_dataset / label_histogram / dataset_summary over every spec scheme."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from ganaug.data.base import RawBatch, Reader
from ganaug.data.images import (
    BadImage,
    ImageSet,
    conform,
    conform_batch,
    decode_image,
    pixel_limit,
    stack_images,
)
from ganaug.data.spec import DatasetError, DatasetSpec, parse_spec
from ganaug.storage import StorageError


def _reader_class(scheme: str) -> type[Reader]:
    if scheme == "builtin":
        from ganaug.data.builtin import DigitsReader
        return DigitsReader
    if scheme == "mnist":
        from ganaug.data.mnist import MnistReader
        return MnistReader
    if scheme == "imagefolder":
        from ganaug.data.imagefolder import ImageFolderReader
        return ImageFolderReader
    if scheme in ("paired", "sidebyside"):
        from ganaug.data.paired import PairedFoldersReader, SideBySideReader
        return PairedFoldersReader if scheme == "paired" else SideBySideReader
    from ganaug.data.parquet import ParquetReader
    return ParquetReader


@contextlib.contextmanager
def _storage_errors(spec: str):
    """Storage failures (missing bucket, not found, ...) surface as DatasetErrors naming the spec."""
    try:
        yield
    except StorageError as e:
        raise DatasetError(f"dataset {spec!r}: {e}") from None


def open_reader(spec: str | DatasetSpec, allow_incomplete: bool = False) -> tuple[DatasetSpec, Reader]:
    parsed = spec if isinstance(spec, DatasetSpec) else parse_spec(spec)
    text = str(spec)
    with _storage_errors(text):
        reader = _reader_class(parsed.scheme)(text, parsed.location, allow_incomplete)
        if parsed.classes:
            from ganaug.data.classfilter import ClassFilterReader
            reader = ClassFilterReader(reader, parsed.classes, text)
        return parsed, reader


def _check_args(resolution, channels, batch_rows=1) -> None:
    if resolution is not None and (not isinstance(resolution, int) or resolution < 1):
        raise DatasetError(f"resolution must be a positive integer or None, got {resolution!r}")
    if channels not in (None, 1, 3):
        raise DatasetError(f"channels must be 1, 3 or None, got {channels!r}")
    if not isinstance(batch_rows, int) or batch_rows < 1:
        raise DatasetError(f"batch_rows must be a positive integer, got {batch_rows!r}")


def _convert(raw: RawBatch, spec: str, names: list[str], resolution, channels, skip_bad) -> ImageSet:
    """Decode + conform one raw batch; bad items raise (naming them) or are skipped and listed."""
    if raw.images is not None:
        try:
            images = conform_batch(raw.images, resolution, channels)
        except BadImage as e:
            raise DatasetError(f"dataset {spec!r}: {raw.wheres[0]}..{raw.wheres[-1]}: {e}") from None
        return ImageSet(images, raw.labels.astype(np.int64), names, list(raw.sources), [], spec)
    keep, imgs, bad = [], [], []
    limit = pixel_limit(resolution)
    for i, (where, data) in enumerate(zip(raw.wheres, raw.payloads)):
        try:
            imgs.append(conform(decode_image(data, limit), resolution, channels))
            keep.append(i)
        except BadImage as e:
            if not skip_bad:
                raise DatasetError(f"dataset {spec!r}: unreadable image {where}: {e} "
                                   "(skip_bad / --skip-bad skips and lists such items)") from None
            bad.append(f"{where}: {e}")
    try:
        images = stack_images(imgs, [raw.wheres[i] for i in keep])
    except BadImage as e:
        raise DatasetError(f"dataset {spec!r}: {e}") from None
    return ImageSet(images, raw.labels[keep].astype(np.int64), names,
                    [raw.sources[i] for i in keep], bad, spec)


def _iter(text: str, parsed: DatasetSpec, reader: Reader, batch_rows: int, resolution, channels,
          skip_bad) -> Iterator[ImageSet]:
    with _storage_errors(text):
        start, stop = parsed.bounds(reader.num_rows())
        names = reader.class_names()
        for raw in reader.iter_raw(start, stop, batch_rows):
            yield _convert(raw, text, names, resolution, channels, skip_bad)


def read_span(spec: str, parsed: DatasetSpec, reader: Reader, start: int, stop: int, resolution=None,
              channels=None, skip_bad: bool = False) -> ImageSet:
    """Rows [start, stop) of the spec's own rows (after its class filter and slice) from an
    already open reader: how a long-lived actor reads many spans without reopening the dataset."""
    with _storage_errors(spec):
        lo, hi = parsed.bounds(reader.num_rows())
        a, b = min(lo + start, hi), min(lo + stop, hi)
        names = reader.class_names()
        parts = [_convert(raw, spec, names, resolution, channels, skip_bad)
                 for raw in reader.iter_raw(a, b, max(1, b - a))]
    return _concat(parts, spec, names, resolution, channels)


def iter_dataset(spec: str, batch_rows: int = 1024, resolution: int | None = None,
                 channels: int | None = None, skip_bad: bool = False,
                 allow_incomplete: bool = False) -> Iterator[ImageSet]:
    """Stream a dataset (or its [a:b] slice) as ImageSets of at most batch_rows rows each.

    The spec is checked and the location opened now (errors raise here); rows are read and
    decoded lazily, only those of the slice. A chunk whose rows were all skipped as bad is
    still yielded (empty, with .bad filled) so callers can count them.
    """
    _check_args(resolution, channels, batch_rows)
    parsed, reader = open_reader(spec, allow_incomplete)
    return _iter(str(spec), parsed, reader, batch_rows, resolution, channels, skip_bad)


def _concat(parts: list[ImageSet], spec: str, names: list[str], resolution, channels) -> ImageSet:
    nonempty = [p for p in parts if len(p)]
    bad = [b for p in parts for b in p.bad]
    if not nonempty:
        c = channels or 1
        h = w = resolution or 0
        return ImageSet(np.zeros((0, h, w, c), np.uint8), np.zeros(0, np.int64), names, [], bad, spec)
    if len({p.images.shape[3] for p in nonempty}) > 1:  # grey and RGB mixed: promote to RGB
        for p in nonempty:
            if p.images.shape[3] == 1:
                p.images = np.repeat(p.images, 3, axis=3)
    shapes = {p.images.shape[1:3] for p in nonempty}
    if len(shapes) > 1:
        a, b = sorted(shapes)[:2]
        raise DatasetError(f"dataset {spec!r}: images differ in size ({a[0]}x{a[1]} and {b[0]}x{b[1]}); "
                           "set a resolution to resize them")
    return ImageSet(
        images=np.concatenate([p.images for p in nonempty]),
        labels=np.concatenate([p.labels for p in nonempty]),
        class_names=names,
        sources=[s for p in nonempty for s in p.sources],
        bad=bad,
        spec=spec,
    )


def load_dataset(spec: str, resolution: int | None = None, channels: int | None = None,
                 skip_bad: bool = False, allow_incomplete: bool = False) -> ImageSet:
    """The whole dataset (or its [a:b] slice) in memory as uint8 N x H x W x C + int64 labels."""
    _check_args(resolution, channels)
    parsed, reader = open_reader(spec, allow_incomplete)
    text = str(spec)
    parts = list(_iter(text, parsed, reader, 4096, resolution, channels, skip_bad))
    with _storage_errors(text):
        names = reader.class_names()
    return _concat(parts, text, names, resolution, channels)


def label_histogram(spec: str, allow_incomplete: bool = False) -> tuple[dict[int, int], list[str]]:
    """({label: count}, class_names) for the spec's rows, reading labels only (no image decoding).

    Every class index 0..K-1 is present (count 0 when absent from the slice); -1 counts
    unlabelled rows when there are any.
    """
    parsed, reader = open_reader(spec, allow_incomplete)
    with _storage_errors(str(spec)):
        start, stop = parsed.bounds(reader.num_rows())
        labels = reader.labels(start, stop)
        names = reader.class_names()
    hist = {i: 0 for i in range(len(names))}
    values, counts = np.unique(labels, return_counts=True)
    for v, c in zip(values.tolist(), counts.tolist()):
        hist[int(v)] = hist.get(int(v), 0) + int(c)
    return dict(sorted(hist.items())), names


def dataset_summary(spec: str, allow_incomplete: bool = False) -> dict:
    """{"spec", "rows", "shape": [H, W, C] of the first image at native size, "classes": {name: count}}."""
    parsed, reader = open_reader(spec, allow_incomplete)
    text = str(spec)
    with _storage_errors(text):
        start, stop = parsed.bounds(reader.num_rows())
        shape = None
        if stop > start:
            raw = next(iter(reader.iter_raw(start, start + 1, 1)))
            first = _convert(raw, text, [], None, None, skip_bad=False)
            shape = list(first.images.shape[1:])
    hist, names = label_histogram(spec, allow_incomplete)
    classes = {(names[k] if 0 <= k < len(names) else "unlabelled"): v for k, v in hist.items()}
    return {"spec": text, "rows": stop - start, "shape": shape, "classes": classes}
