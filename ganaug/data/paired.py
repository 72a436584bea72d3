"""Real image pairs for the image-to-image families (pix2pix): domain A -> domain B.

  paired:A_DIR,B_DIR  two folders (local, file:// or s3://) whose files match by name: the
                      path below the folder without its extension, so A/x.jpg pairs with
                      B/x.png. A name on one side only is an error that lists them.
  sidebyside:DIR      every image is A|B side by side (the pix2pix datasets' layout): the
                      left half is A, the right half B. An odd width is a bad image.

Read as a plain dataset (load_dataset, info, evaluate, the `native` size), a pair spec is
its B side: the target images, unlabelled (label -1). `load_pairs` gives both sides,
row-aligned, for training; `load_side(spec, "a")` the inputs, for `ganaug translate`.
Decoding and resizing go through ganaug.data.images like every other reader.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ganaug import storage
from ganaug.data.base import RawBatch, Reader, chunks
from ganaug.data.images import BadImage, ImageSet, decode_image
from ganaug.data.imagefolder import IMAGE_EXTENSIONS
from ganaug.data.spec import DatasetError

PAIRED_SCHEMES = ("paired", "sidebyside")
SIDES = ("a", "b")


def is_paired_spec(spec: str) -> bool:
    return isinstance(spec, str) and spec.strip().split(":", 1)[0].lower() in PAIRED_SCHEMES


def _images_in(folder: str, spec: str) -> dict[str, str]:
    """{name without extension: URI} of the images below a folder (hidden files skipped)."""
    if not storage.isdir(folder):
        what = "is a file, not a folder" if storage.exists(folder) else storage.missing_reason(folder)
        raise DatasetError(f"dataset {spec!r}: folder {folder}: {what}")
    out: dict[str, str] = {}
    for rel in storage.list_files(folder, recursive=True):
        if any(p.startswith(".") for p in rel.split("/")) or not rel.lower().endswith(IMAGE_EXTENSIONS):
            continue
        key = os.path.splitext(rel)[0]
        if key in out:
            raise DatasetError(f"dataset {spec!r}: {folder} holds two images named {key!r} "
                               f"({storage.basename(out[key])} and {storage.basename(rel)}); pairs match by name")
        out[key] = storage.join(folder, rel)
    if not out:
        raise DatasetError(f"dataset {spec!r}: no images in {folder}")
    return out


def _read(uri: str):
    try:
        return storage.read_bytes(uri)
    except Exception as e:  # noqa: BLE001 - an unreadable file is a bad item, named later
        return e


class _PairReader(Reader):
    """Rows in name order; `side` picks which half of each pair the rows carry."""

    side = "b"

    def view(self, side: str) -> _PairReader:
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        other = copy.copy(self)  # shares the (immutable) file lists
        other.side = side
        return other

    def num_rows(self) -> int:
        return len(self.keys)

    def class_names(self) -> list[str]:
        return []

    def labels(self, start: int, stop: int) -> np.ndarray:
        return np.full(max(0, min(stop, len(self.keys)) - start), -1, np.int64)

    def row_key(self, source: str) -> str:
        """The pair name of a row's source id (to align the two sides after skipped rows)."""
        return self._key_of[source]

    def _files(self, lo: int, hi: int) -> list[str]:
        raise NotImplementedError

    def _payload(self, data):
        return data

    def iter_raw(self, start: int, stop: int, batch_rows: int) -> Iterator[RawBatch]:
        pool = ThreadPoolExecutor(8) if storage.is_s3(self.location) else None  # hide S3 latency
        try:
            for lo, hi in chunks(start, stop, batch_rows):
                files = self._files(lo, hi)
                data = list(pool.map(_read, files)) if pool else [_read(f) for f in files]
                yield RawBatch(sources=list(files), wheres=list(files), labels=np.full(hi - lo, -1, np.int64),
                               payloads=[self._payload(d) for d in data])
        finally:
            if pool:
                pool.shutdown(wait=False, cancel_futures=True)


class PairedFoldersReader(_PairReader):
    def __init__(self, spec: str, location: str, allow_incomplete: bool = False):
        super().__init__(spec, location, allow_incomplete)
        parts = [p.strip() for p in location.split(",")]
        if len(parts) != 2 or not all(parts):
            raise DatasetError(f"bad dataset spec {spec!r}: expected paired:A_DIR,B_DIR (two folders)")
        a, b = (_images_in(p, spec) for p in parts)
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        if only_a or only_b:
            def some(names):
                return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            why = "; ".join(f"{len(n)} only in {p}: {some(n)}" for n, p in ((only_a, parts[0]), (only_b, parts[1]))
                            if n)
            raise DatasetError(f"dataset {spec!r}: unmatched file names ({why}); every A image needs a B image "
                               "of the same name (extension aside)")
        self.keys = sorted(a)
        self._uris = {"a": [a[k] for k in self.keys], "b": [b[k] for k in self.keys]}
        self._key_of = {uri: k for side in SIDES for k, uri in zip(self.keys, self._uris[side])}

    def _files(self, lo: int, hi: int) -> list[str]:
        return self._uris[self.side][lo:hi]


class SideBySideReader(_PairReader):
    def __init__(self, spec: str, location: str, allow_incomplete: bool = False):
        super().__init__(spec, location, allow_incomplete)
        files = _images_in(location, spec)
        self.keys = sorted(files)
        self._uris = [files[k] for k in self.keys]
        self._key_of = dict(zip(self._uris, self.keys))

    def _files(self, lo: int, hi: int) -> list[str]:
        return self._uris[lo:hi]

    def _payload(self, data):
        """Decode here (the shared decoder) and hand the loader this side's half as an array."""
        try:
            img = decode_image(data)
        except BadImage as e:
            return e
        w = img.shape[1] if img.ndim >= 2 else 0
        if w < 2 or w % 2:
            return BadImage(f"side-by-side image is {w} px wide; A|B needs an even width")
        half = w // 2
        return np.ascontiguousarray(img[:, :half] if self.side == "a" else img[:, half:])


def _open(spec: str) -> tuple:
    from ganaug.data.loader import open_reader

    parsed, reader = open_reader(spec)
    if not isinstance(reader, _PairReader):
        raise DatasetError(f"dataset {spec!r} is not a paired dataset; use paired:A_DIR,B_DIR or sidebyside:DIR")
    return parsed, reader


def load_side(spec: str, side: str, resolution: int | None = None, channels: int | None = None,
              skip_bad: bool = False, *, _opened: tuple | None = None) -> ImageSet:
    """One side ("a" inputs, "b" targets) of a pair spec (or its [a:b] slice) as an ImageSet."""
    from ganaug.data.loader import _check_args, _concat, _iter

    _check_args(resolution, channels)
    parsed, reader = _opened or _open(spec)
    view = reader.view(side)
    parts = list(_iter(str(spec), parsed, view, 4096, resolution, channels, skip_bad))
    return _concat(parts, str(spec), [], resolution, channels)


def load_pairs(spec: str, resolution: int | None = None, channels: int | None = None,
               skip_bad: bool = False) -> tuple[ImageSet, ImageSet]:
    """(A, B) ImageSets, row i of one paired with row i of the other. With skip_bad, a pair
    whose A or B image is unreadable is dropped from both sides (and listed in both .bad)."""
    opened = _open(spec)
    reader = opened[1]
    a = load_side(spec, "a", resolution, channels, skip_bad, _opened=opened)
    b = load_side(spec, "b", resolution, channels, skip_bad, _opened=opened)
    ka, kb = [reader.row_key(s) for s in a.sources], [reader.row_key(s) for s in b.sources]
    if ka != kb:
        both = set(ka) & set(kb)
        keep_a = np.array([k in both for k in ka], bool)
        keep_b = np.array([k in both for k in kb], bool)
        bad = a.bad + b.bad
        a = ImageSet(a.images[keep_a], a.labels[keep_a], [], [s for s, k in zip(a.sources, keep_a) if k], bad, a.spec)
        b = ImageSet(b.images[keep_b], b.labels[keep_b], [], [s for s, k in zip(b.sources, keep_b) if k], bad, b.spec)
    return a, b

