"""The generated-set format (ARCHITECTURE.md §3): Parquet shards + `_manifest.json`, written last.

    out/
        part-00000.parquet   rows [0, R)        one file per --rows-per-shard rows, in row order
        part-00001.parquet   rows [R, 2R)
        _generation.json     the arguments of the run filling this folder (written first)
        _manifest.json       rows, counts, files + sha256, checkpoint, arguments  <- marker, last

Shard bytes depend only on the rows they hold: fixed compression, no timestamps, fixed row
order, one row group. That is what makes re-runs and resumed runs byte-identical.
Names starting with '_' or '.' are skipped by pyarrow/pandas/Ray Data dataset readers.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ganaug import storage
from ganaug.errors import UserError
from ganaug.imagecodec import encode_jpeg, encode_png

SCHEMA_VERSION = 1
MANIFEST = "_manifest.json"
INTENT = "_generation.json"
# Per-shard records of an unfinished set ({"rows", "size", "sha256", "counts", ...}), written
# right after their shard: a resume checks a shard by its footer and size against its record
# instead of downloading it. Deleted with the intent once the manifest is written.
RECORDS = "_shards"


def record_name(index: int) -> str:
    return f"{RECORDS}/{SHARD_PATTERN.format(index)}.json"
SHARD_PATTERN = "part-{:05d}.parquet"
COMPRESSION = "snappy"   # image bytes are already compressed; the small columns barely matter


class ShardError(UserError):
    pass


# ----------------------------------------------------------------------------- encoding

@dataclass(frozen=True)
class Encoder:
    name: str
    ext: str
    encode_one: Callable[[np.ndarray], bytes]




def _npy(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(image), allow_pickle=False)  # never pickle
    return buf.getvalue()


ENCODERS: dict[str, Encoder] = {e.name: e for e in (
    Encoder("png", "png", encode_png),
    Encoder("jpeg", "jpg", encode_jpeg),
    Encoder("npy", "npy", _npy),
)}


def get_encoder(fmt: str) -> Encoder:
    try:
        return ENCODERS[fmt]
    except KeyError:
        raise ShardError(f"--format {fmt}: unknown image format; use one of {', '.join(ENCODERS)}") from None


def encode_images(images: np.ndarray, fmt: str) -> list[bytes]:
    enc = get_encoder(fmt).encode_one
    return [enc(img) for img in images]


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


# ----------------------------------------------------------------------------- schema

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def schema(translated: bool = False) -> pa.Schema:
    fields = [
        pa.field("image", IMAGE_TYPE),
        pa.field("label", pa.int64()),
        pa.field("class_name", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("truncation", pa.float32()),
        pa.field("generator", pa.string()),
    ]
    if translated:
        fields.append(pa.field("source", pa.string()))
    # Hugging Face `datasets` reads this key and decodes `image` as an Image feature.
    features = {"image": {"_type": "Image"}, "label": {"dtype": "int64", "_type": "Value"},
                "class_name": {"dtype": "string", "_type": "Value"}, "seed": {"dtype": "int64", "_type": "Value"},
                "truncation": {"dtype": "float32", "_type": "Value"},
                "generator": {"dtype": "string", "_type": "Value"}}
    if translated:
        features["source"] = {"dtype": "string", "_type": "Value"}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}, sort_keys=True).encode(),
            b"ganaug": json.dumps({"schema_version": SCHEMA_VERSION}).encode()}
    return pa.schema(fields, metadata=meta)


def shard_name(index: int) -> str:
    return SHARD_PATTERN.format(index)


def image_path(row: int, ext: str) -> str:
    """The `image.path` of global row `row`: '00000042.png'."""
    return f"{row:08d}.{ext}"


def build_table(
    encoded: Sequence[bytes],
    rows: Sequence[int],
    labels: np.ndarray,
    class_names: Sequence[str],
    seeds: np.ndarray,
    truncation: float,
    generator: str,
    ext: str,
    sources: Sequence[str] | None = None,
) -> pa.Table:
    n = len(encoded)
    image = pa.StructArray.from_arrays(
        [pa.array(list(encoded), pa.binary()), pa.array([image_path(int(r), ext) for r in rows], pa.string())],
        fields=list(IMAGE_TYPE),
    )
    cols = [
        image,
        pa.array(np.asarray(labels, dtype=np.int64)),
        pa.array(list(class_names), pa.string()),
        pa.array(np.asarray(seeds, dtype=np.int64)),
        pa.array(np.full(n, truncation, dtype=np.float32)),
        pa.array([generator] * n, pa.string()),
    ]
    if sources is not None:
        cols.append(pa.array(list(sources), pa.string()))
    return pa.Table.from_arrays(cols, schema=schema(translated=sources is not None))


# The Parquet settings of every shard. Shard bytes are a function of the table and these; the
# streamed writer (write_shard) and table_bytes use the very same ones, one row group per shard.
WRITER_OPTIONS = {"compression": COMPRESSION, "use_dictionary": ["class_name", "generator"],
                  "write_statistics": True, "write_page_index": False, "store_schema": True}


def _write_parquet(table: pa.Table, sink) -> None:
    # = pq.write_table(table, sink, row_group_size=n, **WRITER_OPTIONS), which is exactly this
    with pq.ParquetWriter(sink, table.schema, **WRITER_OPTIONS) as writer:
        writer.write_table(table, row_group_size=max(1, table.num_rows))


def table_bytes(table: pa.Table) -> bytes:
    """Deterministic Parquet bytes: one row group, fixed compression, no timestamps."""
    buf = io.BytesIO()
    _write_parquet(table, buf)
    return buf.getvalue()


class HashingSink:
    """A write-only file that hashes and counts the bytes passing through to `target`.

    ParquetWriter streams a shard into it; the target is storage's temporary file or S3
    upload. So the sha256 and size of a shard are known once it is written, without the
    whole shard ever being one bytes object in memory.
    """

    def __init__(self, target):
        self.target = target
        self.hash = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data) -> int:
        view = memoryview(data)
        self.hash.update(view)
        self.target.write(view)
        self.size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def close(self) -> None:  # ParquetWriter closes its sink; the target belongs to storage
        self.closed = True


@dataclass(frozen=True)
class Written:
    size: int
    sha256: str


def write_shard(uri: str, table: pa.Table) -> Written:
    """Stream `table` as a Parquet shard to `uri` (atomically); its bytes equal table_bytes(table)."""

    def fill(f) -> Written:
        sink = HashingSink(f)
        _write_parquet(table, sink)
        return Written(sink.size, sink.hash.hexdigest())

    return storage.write_stream(uri, fill)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_shard_bytes(data: bytes, expected_rows: int) -> str | None:
    """None when `data` is a complete Parquet shard of expected_rows rows, else why not."""
    try:
        meta = pq.ParquetFile(io.BytesIO(data)).metadata
    except Exception as e:  # noqa: BLE001 - any unreadable footer means "regenerate"
        return f"unreadable Parquet ({type(e).__name__})"
    if meta.num_rows != expected_rows:
        return f"{meta.num_rows} rows, expected {expected_rows}"
    return None


# ----------------------------------------------------------------------------- manifest

def build_manifest(*, rows: int, counts: dict[int, int], files: list[dict], checkpoint_uri: str,
                   checkpoint_id: str, arguments: dict, class_names: Sequence[str], fmt: str,
                   translated: bool, extra: dict | None = None) -> dict:
    from ganaug import __version__

    return {
        "schema_version": SCHEMA_VERSION,
        "rows": int(rows),
        "counts": {str(k): int(v) for k, v in sorted(counts.items())},
        "class_names": list(class_names),
        "files": files,
        "checkpoint": {"uri": checkpoint_uri, "id": checkpoint_id},
        "arguments": arguments,
        "fingerprint": fingerprint(arguments),
        "format": fmt,
        "columns": schema(translated).names,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ganaug_version": __version__,
        **(extra or {}),
    }


def fingerprint(arguments: dict) -> str:
    """A digest of the arguments that determine shard bytes (the set's identity)."""
    return hashlib.sha256(json.dumps(arguments, sort_keys=True).encode()).hexdigest()[:16]


def read_manifest(out: str) -> dict | None:
    uri = storage.join(out, MANIFEST)
    return storage.read_json(uri) if storage.exists(uri) else None


def write_manifest(out: str, manifest: dict) -> None:
    storage.write_json(storage.join(out, MANIFEST), manifest)
