"""parquet:URI: a generated set (folder of part-*.parquet + _manifest.json), a folder of
*.parquet files, or one file.

Schema: ganaug's shard schema (`image: struct<bytes: binary, path: string>`, `label` int64,
`class_name` string, see ganaug/shards.py), or any table with an image column (that struct
or plain binary) and an integer label column.

Streaming: only the footers and the label/class_name columns are read up front; images are
read one row group at a time, and only the row groups that overlap the requested slice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ganaug import storage
from ganaug.data.base import RawBatch, Reader
from ganaug.data.confine import confined_uri
from ganaug.data.spec import DatasetError
from ganaug.errors import first_line

MANIFEST = "_manifest.json"
IMAGE_COLUMNS = ("image", "img", "image_bytes", "png", "jpg", "jpeg", "bytes")
LABEL_COLUMNS = ("label", "labels", "target", "class_id", "class", "y")
CLASS_NAME_COLUMN = "class_name"


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or \
        (hasattr(pa.types, "is_binary_view") and pa.types.is_binary_view(t))


def _image_kind(t: pa.DataType) -> str | None:
    if _is_binary(t):
        return "binary"
    if pa.types.is_struct(t):
        idx = t.get_field_index("bytes")
        if idx >= 0 and _is_binary(t.field(idx).type):
            return "struct"
    return None


def list_parquet_files(location: str, spec: str, allow_incomplete: bool) -> list[str]:
    """The Parquet files of a location, in row order; refuses an incomplete generated set."""
    if storage.isfile(location):
        return [location]
    names = storage.listdir(location)
    if not names:
        why = "is empty" if storage.exists(location) else storage.missing_reason(location)
        raise DatasetError(f"dataset {spec!r}: {location}: {why}")
    parts = [n for n in names if n.startswith("part-") and n.endswith(".parquet")]
    if parts:
        if MANIFEST not in names and not allow_incomplete:
            raise DatasetError(
                f"dataset {spec!r}: {location} is an incomplete generated set (no {MANIFEST}); "
                "it may still be being written or its job crashed. Re-run the job to finish it, "
                "or pass allow_incomplete (--allow-incomplete) to read the shards that exist")
        files = parts
    else:
        files = [n for n in names if n.endswith(".parquet") and not n.startswith((".", "_"))]
    if not files:
        raise DatasetError(f"dataset {spec!r}: no .parquet files in {location}")
    return [storage.join(location, n) for n in sorted(files)]


class ParquetReader(Reader):
    def __init__(self, spec: str, location: str, allow_incomplete: bool = False):
        super().__init__(spec, location, allow_incomplete)
        self.files = list_parquet_files(location, spec, allow_incomplete)
        self.folder = location if len(self.files) != 1 or self.files[0] != location else storage.parent(location)
        if storage.is_s3(location) and len(self.files) > 1:
            with ThreadPoolExecutor(8) as pool:
                self.metas = list(pool.map(self._footer, self.files))
        else:
            self.metas = [self._footer(f) for f in self.files]
        self.counts = [m.num_rows for m in self.metas]
        schema = self.metas[0].schema.to_arrow_schema()
        self.image_col, self.image_kind = self._find_image_column(schema)
        self.label_col = self._find_label_column(schema)
        self.class_col = CLASS_NAME_COLUMN if CLASS_NAME_COLUMN in schema.names and self.label_col else None
        self.hf_names = _huggingface_class_names(schema, self.label_col)
        for uri, meta in zip(self.files[1:], self.metas[1:]):
            names = meta.schema.to_arrow_schema().names
            for col in (self.image_col, self.label_col, self.class_col):
                if col and col not in names:
                    raise DatasetError(f"dataset {spec!r}: parquet file {uri} has no column {col!r} "
                                       f"(present in {self.files[0]})")
        self._all_labels: np.ndarray | None = None
        self._names: list[str] | None = None

    # ------------------------------------------------------------------ metadata

    def _fail(self, uri: str, exc: BaseException) -> DatasetError:
        return DatasetError(f"dataset {self.spec!r}: cannot read parquet file {uri}: {first_line(exc)}")

    def _footer(self, uri: str) -> pq.FileMetaData:
        with storage.open_input(uri) as f:
            try:
                return pq.ParquetFile(f).metadata
            except (OSError, pa.ArrowException) as e:
                raise self._fail(uri, e) from None

    def _find_image_column(self, schema: pa.Schema) -> tuple[str, str]:
        for name in IMAGE_COLUMNS:
            if name in schema.names:
                kind = _image_kind(schema.field(name).type)
                if kind is None:
                    raise DatasetError(
                        f"dataset {self.spec!r}: column {name!r} of {self.files[0]} has type "
                        f"{schema.field(name).type}, expected struct<bytes: binary, path: string> or binary")
                return name, kind
        for f in schema:
            kind = _image_kind(f.type)
            if kind:
                return f.name, kind
        raise DatasetError(f"dataset {self.spec!r}: {self.files[0]} has no image column (a binary or "
                           f"struct<bytes, path> column such as 'image'); columns: {', '.join(schema.names)}")

    def _find_label_column(self, schema: pa.Schema) -> str | None:
        for name in LABEL_COLUMNS:
            if name in schema.names:
                t = schema.field(name).type
                if not pa.types.is_integer(t):
                    raise DatasetError(f"dataset {self.spec!r}: label column {name!r} of {self.files[0]} "
                                       f"has type {t}, expected an integer type")
                return name
        return None  # unlabelled: every label is -1

    def _scan_labels(self) -> None:
        """Read only the label (and class_name) columns of every file, once."""
        if self._all_labels is not None:
            return
        if self.label_col is None:
            self._all_labels = np.full(sum(self.counts), -1, np.int64)
            self._names = []
            return
        cols = [self.label_col] + ([self.class_col] if self.class_col else [])
        labels, names = [], {}
        for uri, meta in zip(self.files, self.metas):
            with storage.open_input(uri) as f:
                try:
                    t = pq.ParquetFile(f, metadata=meta).read(columns=cols, use_threads=False)
                except (OSError, pa.ArrowException) as e:
                    raise self._fail(uri, e) from None
            labels.append(_labels_of(t.column(self.label_col)))
            if self.class_col:
                pairs = t.group_by(cols).aggregate([])
                for lab, name in zip(pairs.column(self.label_col).to_pylist(),
                                     pairs.column(self.class_col).to_pylist()):
                    if lab is None or lab < 0 or name is None:
                        continue
                    if names.setdefault(lab, name) != name:
                        raise DatasetError(f"dataset {self.spec!r}: label {lab} has two class names, "
                                           f"{names[lab]!r} and {name!r} (in {uri})")
        self._all_labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        top = int(self._all_labels.max(initial=-1))
        k = max(top + 1, max(names, default=-1) + 1, len(self.hf_names))
        hf = dict(enumerate(self.hf_names))
        self._names = [names.get(i, hf.get(i, str(i))) for i in range(k)]

    def num_rows(self) -> int:
        return sum(self.counts)

    def class_names(self) -> list[str]:
        self._scan_labels()
        return list(self._names)

    def labels(self, start: int, stop: int) -> np.ndarray:
        self._scan_labels()
        return self._all_labels[start:stop].copy()

    # ------------------------------------------------------------------ rows

    def _payloads(self, col: pa.Array) -> list:
        if self.image_kind == "binary":
            return col.to_pylist()
        out = []
        for v in col.to_pylist():
            if v is None:
                out.append(None)
            elif v.get("bytes") is not None:
                out.append(v["bytes"])
            elif v.get("path"):
                out.append(self._read_path(v["path"]))  # Hugging Face style: image stored by path
            else:
                out.append(None)
        return out

    def _read_path(self, path: str):
        """A row's image stored by path: read only inside the dataset's own folder/prefix
        (a third-party table must not make workers read secrets or other buckets)."""
        try:
            return storage.read_bytes(confined_uri(self.folder, path, "image path"))
        except Exception as e:  # noqa: BLE001 - a bad item, named (with its row) by the loader
            return e

    def iter_raw(self, start: int, stop: int, batch_rows: int) -> Iterator[RawBatch]:
        cols = [self.image_col] + ([self.label_col] if self.label_col else [])
        offset = 0
        for uri, meta, n in zip(self.files, self.metas, self.counts):
            f_lo, offset = offset, offset + n
            if offset <= start:
                continue
            if f_lo >= stop:
                break
            lo, hi = max(start, f_lo) - f_lo, min(stop, offset) - f_lo   # rows wanted in this file
            groups, first_row, g_off = [], None, 0
            for g in range(meta.num_row_groups):
                g_n = meta.row_group(g).num_rows
                if g_off < hi and g_off + g_n > lo:
                    groups.append(g)
                    first_row = g_off if first_row is None else first_row
                g_off += g_n
            if not groups:
                continue
            with storage.open_input(uri) as f:
                pf = pq.ParquetFile(f, metadata=meta)
                row = first_row
                batches = pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=cols,
                                          use_threads=False)
                while row < hi:
                    try:
                        rb = next(batches)
                    except StopIteration:
                        break
                    except (OSError, pa.ArrowException) as e:
                        raise self._fail(uri, e) from None
                    b_lo, b_hi = max(lo - row, 0), min(hi - row, rb.num_rows)
                    if b_hi > b_lo:
                        part = rb.slice(b_lo, b_hi - b_lo)
                        local = range(row + b_lo, row + b_hi)
                        labels = (_labels_of(part.column(self.label_col)) if self.label_col
                                  else np.full(len(local), -1, np.int64))
                        yield RawBatch(
                            sources=[f"row:{f_lo + i}" for i in local],
                            wheres=[f"parquet row {i} of {uri}" for i in local],
                            labels=labels,
                            payloads=self._payloads(part.column(self.image_col)),
                        )
                    row += rb.num_rows


def _huggingface_class_names(schema: pa.Schema, label_col: str | None) -> list[str]:
    """ClassLabel names of the label column from the `huggingface` schema metadata, as
    Hugging Face `datasets` writes it ({"info": {"features": {col: {"_type": "ClassLabel",
    "names": [...]}}}}); [] when absent or malformed (labels then fall back to their index)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw or not label_col:
        return []
    try:
        feature = json.loads(raw)["info"]["features"][label_col]
    except (ValueError, KeyError, TypeError):
        return []
    names = feature.get("names") if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return []
    return list(names)


def _labels_of(col) -> np.ndarray:
    a = pc.fill_null(col, -1).cast(pa.int64())
    if isinstance(a, pa.ChunkedArray):
        a = a.combine_chunks()
    out = a.to_numpy(zero_copy_only=False).astype(np.int64, copy=True)
    out[out < 0] = -1
    return out
