"""mnist:DIR_OR_URI: the idx(.gz) files of MNIST (or Fashion-MNIST, which shares the format).

The idx headers are parsed here with numpy. A slice is read by seeking past the rows before
it (a .gz file is decompressed up to the slice as a stream, never whole into memory).
"""

from __future__ import annotations

import contextlib
import gzip
import struct
from collections.abc import Iterator

import numpy as np

from ganaug import storage
from ganaug.data.base import RawBatch, Reader, chunks
from ganaug.data.images import MAX_PIXELS
from ganaug.data.spec import DatasetError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_PREFIXES = ("train", "t10k")   # train is preferred when both are present


@contextlib.contextmanager
def _open(uri: str):
    """The file as a readable, forward-seekable stream; .gz files are decompressed on the fly."""
    raw = storage.open_input(uri)
    try:
        if uri.endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                yield gz
        else:
            yield raw
    finally:
        raw.close()


def _read_exact(f, n: int, uri: str, what: str) -> bytes:
    try:
        data = f.read(n)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DatasetError(f"mnist file {uri}: cannot read {what}: {e}") from None
    if len(data) != n:
        raise DatasetError(f"mnist file {uri}: truncated, {what} needs {n} bytes, got {len(data)}")
    return data


_READ_CHUNK = 1 << 20


def _read_chunked(f, n: int, uri: str, what: str) -> bytes:
    """_read_exact in bounded pieces: a header claiming far more than the file holds fails
    as truncated after reading what is there, never allocating the claimed size."""
    parts, got = [], 0
    while got < n:
        want = min(_READ_CHUNK, n - got)
        try:
            piece = f.read(want)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise DatasetError(f"mnist file {uri}: cannot read {what}: {e}") from None
        parts.append(piece)
        got += len(piece)
        if len(piece) < want:
            raise DatasetError(f"mnist file {uri}: truncated, {what} needs {n} bytes, got {got}")
    return b"".join(parts)


def check_claimed_size(uri: str, header_bytes: int, dims: tuple[int, ...], whole: bool) -> None:
    """Refuse an idx header whose dimensions are absurd, or (whole=True, a file read at once)
    more than the file holds, before anything of that size is allocated. Image rows are read
    a batch at a time, so rows before a truncation stay readable."""
    if any(d <= 0 for d in dims):
        raise DatasetError(f"mnist file {uri}: bad idx dimensions {dims} (each must be > 0)")
    if len(dims) == 3 and dims[1] * dims[2] > MAX_PIXELS:
        raise DatasetError(f"mnist file {uri}: idx header claims {dims[1]}x{dims[2]} images, "
                           f"over the limit of {MAX_PIXELS} pixels")
    if not whole or uri.endswith(".gz"):
        return  # the decompressed size is unknown up front; reads are bounded instead
    claimed = header_bytes + int(np.prod(np.array(dims, dtype=object)))
    actual = storage.size(uri)
    if actual < claimed:
        raise DatasetError(f"mnist file {uri}: truncated, the idx header claims {' x '.join(map(str, dims))} "
                           f"({claimed} bytes) but the file has {actual}")


def read_idx_header(f, uri: str, expect_magic: int) -> tuple[int, ...]:
    """Read an idx header: magic (0, 0, type 0x08 = uint8, ndim) then ndim big-endian int32 dims."""
    head = _read_exact(f, 4, uri, "the idx header")
    magic = struct.unpack(">i", head)[0]
    if magic != expect_magic:
        kind = "images (idx3)" if expect_magic == IMAGES_MAGIC else "labels (idx1)"
        raise DatasetError(f"mnist file {uri}: not an idx {kind} file "
                           f"(magic number {magic}, expected {expect_magic})")
    ndim = head[3]
    return struct.unpack(f">{ndim}i", _read_exact(f, 4 * ndim, uri, "the idx dimensions"))


def _candidates(prefix: str, kind: str) -> list[str]:
    idx = "idx3" if kind == "images" else "idx1"
    names = [f"{prefix}-{kind}-{idx}-ubyte", f"{prefix}-{kind}.{idx}-ubyte"]
    return [n + ext for n in names for ext in (".gz", "")]


def find_files(location: str, spec: str) -> tuple[str, str]:
    """(images URI, labels URI) in a folder, preferring train over t10k; or an images file itself."""
    if storage.isfile(location):
        name = storage.basename(location)
        for kind_a, kind_b in (("images-idx3", "labels-idx1"), ("images.idx3", "labels.idx1")):
            if kind_a in name:
                return location, storage.join(storage.parent(location), name.replace(kind_a, kind_b))
        raise DatasetError(f"dataset {spec!r}: {location} is a file but not an idx images file "
                           "(expected a name like t10k-images-idx3-ubyte.gz, or the folder)")
    names = set(storage.listdir(location))
    if not names:
        why = "is empty" if storage.exists(location) else storage.missing_reason(location)
        raise DatasetError(f"dataset {spec!r}: {location}: {why}")
    for prefix in _PREFIXES:
        imgs = [n for n in _candidates(prefix, "images") if n in names]
        if imgs:
            labs = [n for n in _candidates(prefix, "labels") if n in names]
            if not labs:
                raise DatasetError(f"dataset {spec!r}: {storage.join(location, imgs[0])} has no labels file "
                                   f"(expected {_candidates(prefix, 'labels')[0]} next to it)")
            return storage.join(location, imgs[0]), storage.join(location, labs[0])
    raise DatasetError(f"dataset {spec!r}: no MNIST idx files in {location} (expected "
                       "train-images-idx3-ubyte[.gz] or t10k-images-idx3-ubyte[.gz] with their labels)")


class MnistReader(Reader):
    def __init__(self, spec: str, location: str, allow_incomplete: bool = False):
        super().__init__(spec, location, allow_incomplete)
        self.images_uri, self.labels_uri = find_files(location, spec)
        with _open(self.images_uri) as f:
            dims = read_idx_header(f, self.images_uri, IMAGES_MAGIC)
        if len(dims) != 3:
            raise DatasetError(f"mnist file {self.images_uri}: expected 3 dimensions (N, H, W), got {dims}")
        self.n, self.h, self.w = dims
        self.header_bytes = 4 + 4 * len(dims)
        check_claimed_size(self.images_uri, self.header_bytes, dims, whole=False)
        self._labels = self._read_labels()

    def _read_labels(self) -> np.ndarray:
        uri = self.labels_uri
        with _open(uri) as f:
            dims = read_idx_header(f, uri, LABELS_MAGIC)
            if len(dims) != 1 or dims[0] != self.n:
                raise DatasetError(f"mnist file {uri}: {dims[0] if dims else 0} labels for "
                                   f"{self.n} images in {self.images_uri}")
            check_claimed_size(uri, 8, dims, whole=True)
            data = _read_chunked(f, self.n, uri, f"{self.n} labels")
        labels = np.frombuffer(data, np.uint8).astype(np.int64)
        if labels.size and labels.max() > 9:
            raise DatasetError(f"mnist file {uri}: label {int(labels.max())} outside 0..9")
        return labels

    def num_rows(self) -> int:
        return self.n

    def class_names(self) -> list[str]:
        return [str(i) for i in range(10)]

    def labels(self, start: int, stop: int) -> np.ndarray:
        return self._labels[start:stop].copy()

    def iter_raw(self, start: int, stop: int, batch_rows: int) -> Iterator[RawBatch]:
        if start >= stop:
            return
        px = self.h * self.w
        uri = self.images_uri
        with _open(uri) as f:
            try:
                f.seek(self.header_bytes + start * px)  # gzip: decompresses forward, streaming
            except (OSError, EOFError) as e:
                raise DatasetError(f"mnist file {uri}: cannot seek to row {start}: {e}") from None
            for lo, hi in chunks(start, stop, batch_rows):
                data = _read_exact(f, (hi - lo) * px, uri, f"rows {lo}..{hi - 1}")
                yield RawBatch(
                    sources=[f"row:{i}" for i in range(lo, hi)],
                    wheres=[f"row {i} of {uri}" for i in range(lo, hi)],
                    labels=self._labels[lo:hi].copy(),
                    images=np.frombuffer(data, np.uint8).reshape(hi - lo, self.h, self.w),
                )
