"""imagefolder:DIR_OR_URI: one subfolder per class (class names = sorted subfolder names).

The folder is listed once; only the files of the requested slice are read and decoded.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ganaug import storage
from ganaug.data.base import RawBatch, Reader, chunks
from ganaug.data.confine import check_inside
from ganaug.data.spec import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                    ".ppm", ".pgm", ".pbm", ".npy")


def _is_image(rel: str) -> bool:
    parts = rel.split("/")
    return (len(parts) >= 2 and not any(p.startswith(".") for p in parts)
            and rel.lower().endswith(IMAGE_EXTENSIONS))


class ImageFolderReader(Reader):
    """Files directly in the root are ignored; files in nested folders belong to their top folder.
    Only subfolders holding at least one image count as classes (S3 has no empty folders)."""

    def __init__(self, spec: str, location: str, allow_incomplete: bool = False):
        super().__init__(spec, location, allow_incomplete)
        if not storage.isdir(location):
            what = "is a file, not a folder" if storage.exists(location) else storage.missing_reason(location)
            raise DatasetError(f"dataset {spec!r}: image folder {location}: {what}")
        rels = [r for r in storage.list_files(location, recursive=True) if _is_image(r)]
        if not rels:
            raise DatasetError(f"dataset {spec!r}: no images in class subfolders of {location} "
                               f"(expected {location}/<class>/<image>{{{','.join(IMAGE_EXTENSIONS[:3])},...}})")
        self._classes = sorted({r.split("/", 1)[0] for r in rels})
        index = {c: i for i, c in enumerate(self._classes)}
        # Class order, then file name order within a class.
        rels.sort(key=lambda r: (index[r.split("/", 1)[0]], r))
        self._files = [storage.join(location, r) for r in rels]
        self._labels = np.array([index[r.split("/", 1)[0]] for r in rels], np.int64)
        self._parallel = storage.is_s3(location)

    def num_rows(self) -> int:
        return len(self._files)

    def class_names(self) -> list[str]:
        return list(self._classes)

    def labels(self, start: int, stop: int) -> np.ndarray:
        return self._labels[start:stop].copy()

    def _read(self, uri: str):
        try:
            check_inside(self.location, uri, "file")  # a symlink must not leave the folder
            return storage.read_bytes(uri)
        except Exception as e:  # noqa: BLE001 - an unreadable file is a bad item, named later
            return e

    def iter_raw(self, start: int, stop: int, batch_rows: int) -> Iterator[RawBatch]:
        pool = ThreadPoolExecutor(8) if self._parallel else None  # hide S3 latency
        try:
            for lo, hi in chunks(start, stop, batch_rows):
                files = self._files[lo:hi]
                payloads = list(pool.map(self._read, files)) if pool else [self._read(f) for f in files]
                yield RawBatch(sources=list(files), wheres=list(files),
                               labels=self._labels[lo:hi].copy(), payloads=payloads)
        finally:
            if pool:
                pool.shutdown(wait=False, cancel_futures=True)
