"""ganaug.data: every spec scheme on real files (local and S3), slicing, streaming, bad items."""

from __future__ import annotations

import gzip
import io
import json
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ganaug import storage
from ganaug.data import (
    DatasetError,
    DatasetSpec,
    ImageSet,
    conform,
    dataset_summary,
    iter_dataset,
    label_histogram,
    load_dataset,
    parse_spec,
)
from ganaug.errors import UserError

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"

# ---------------------------------------------------------------------------- helpers


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def pattern(i: int, h: int = 6, w: int = 6, c: int = 3) -> np.ndarray:
    """A small image whose pixels encode i, so rows can be told apart after a round trip."""
    a = (np.arange(h * w * c).reshape(h, w, c) + 7 * i) % 256
    return a.astype(np.uint8) if c > 1 else a[:, :, 0].astype(np.uint8)


SHARD_SCHEMA = pa.schema([
    ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ("label", pa.int64()),
    ("class_name", pa.string()),
])


def shard_table(rows: list[tuple[bytes, int, str]]) -> pa.Table:
    return pa.table({
        "image": [{"bytes": b, "path": None} for b, _, _ in rows],
        "label": [lab for _, lab, _ in rows],
        "class_name": [n for _, _, n in rows],
    }, schema=SHARD_SCHEMA)


def write_idx(path, arr: np.ndarray, magic: int, gz: bool = True) -> None:
    header = struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.fixture
def imagefolder(tmp_path):
    """cat/ (3 RGB PNGs), dog/ (2 grey PNGs + a note), and a stray root file."""
    root = tmp_path / "folder"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    for i in range(3):
        Image.fromarray(pattern(i)).save(root / "cat" / f"c{i}.png")
    for i in range(2):
        Image.fromarray(pattern(10 + i, c=1)).save(root / "dog" / f"d{i}.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("root files are ignored")
    return root


def truncate_png(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------------------- specs


def test_parse_spec():
    assert parse_spec("builtin:digits") == DatasetSpec("builtin", "digits", None, None)
    assert parse_spec("mnist:../shared/data/mnist[0:5000]") == DatasetSpec("mnist", "../shared/data/mnist", 0, 5000)
    assert parse_spec("parquet:s3://b/p[10:]") == DatasetSpec("parquet", "s3://b/p", 10, None)
    assert parse_spec("imagefolder:/x[:3]") == DatasetSpec("imagefolder", "/x", None, 3)
    assert str(parse_spec("parquet:s3://b/p[10:]")) == "parquet:s3://b/p[10:]"
    assert parse_spec("builtin:digits[5:10]").bounds(1797) == (5, 10)
    assert parse_spec("builtin:digits[1790:2000]").bounds(1797) == (1790, 1797)
    assert parse_spec("builtin:digits[9:3]").bounds(1797) == (9, 9)


@pytest.mark.parametrize("spec, match", [
    ("s3://bucket/x", r"unknown dataset scheme 's3'.*builtin:digits, mnist:DIR_OR_URI, imagefolder"),
    ("/data/images", r"missing dataset scheme.*parquet:URI"),
    ("cifar:/x", r"bad dataset spec 'cifar:/x'.*imagefolder:DIR_OR_URI"),
    ("mnist:/x[a:5]", r"row slice \[a:5\] must be \[a:b\] with integers >= 0"),
    ("mnist:/x[-5:]", r"integers >= 0"),
    ("parquet:", "missing location"),
    ("builtin:cifar", "unknown builtin dataset 'cifar'; available: builtin:digits"),
    ("", "empty dataset spec"),
])
def test_parse_spec_errors(spec, match):
    with pytest.raises(DatasetError, match=match):
        parse_spec(spec)
    assert issubclass(DatasetError, UserError)


# ---------------------------------------------------------------------------- conversion


def test_conform_channels_and_resize():
    rgb = pattern(1, 5, 7, 3)
    assert conform(rgb).shape == (5, 7, 3)
    grey = conform(rgb, channels=1)
    assert grey.shape == (5, 7, 1)
    assert grey[0, 0, 0] == np.asarray(Image.fromarray(rgb).convert("L"))[0, 0]
    up = conform(pattern(2, 8, 8, 1), resolution=32, channels=3)
    assert up.shape == (32, 32, 3) and up.dtype == np.uint8
    assert (up[..., 0] == up[..., 2]).all()  # grey replicated
    rgba = np.dstack([rgb, np.full((5, 7), 9, np.uint8)])
    # alpha is composited over black (rounded): colour * alpha / 255
    assert (conform(rgba) == ((rgb.astype(int) * 9 + 127) // 255)).all()
    opaque = np.dstack([rgb, np.full((5, 7), 255, np.uint8)])
    assert (conform(opaque) == rgb).all()
    assert conform(np.ones((4, 4), np.float32)).max() == 255  # [0, 1] floats scaled


# ---------------------------------------------------------------------------- builtin:digits


def test_digits():
    ds = load_dataset("builtin:digits")
    assert isinstance(ds, ImageSet) and len(ds) == 1797
    assert ds.images.shape == (1797, 8, 8, 1) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and ds.images.max() == 255 and ds.images.min() == 0
    assert ds.class_names == [str(i) for i in range(10)]
    hist, _ = label_histogram("builtin:digits")
    assert sum(hist.values()) == 1797 and set(hist) == set(range(10))
    assert hist == {i: int((ds.labels == i).sum()) for i in range(10)}
    assert all(170 <= c <= 190 for c in hist.values())
    assert ds.sources[:2] == ["row:0", "row:1"]


def test_digits_resize_channels_and_slice():
    ds = load_dataset("builtin:digits[100:150]", resolution=32, channels=3)
    assert ds.images.shape == (50, 32, 32, 3)
    full = load_dataset("builtin:digits")
    assert (ds.labels == full.labels[100:150]).all()
    assert ds.sources[0] == "row:100"
    assert len(load_dataset("builtin:digits[1790:]")) == 7
    assert len(load_dataset("builtin:digits[2000:]")) == 0
    chunks = list(iter_dataset("builtin:digits[:250]", batch_rows=100))
    assert [len(c) for c in chunks] == [100, 100, 50]
    assert dataset_summary("builtin:digits[:100]") == {
        "spec": "builtin:digits[:100]", "rows": 100, "shape": [8, 8, 1],
        "classes": {str(k): v for k, v in label_histogram("builtin:digits[:100]")[0].items()},
    }


# ---------------------------------------------------------------------------- imagefolder


def test_imagefolder(imagefolder):
    ds = load_dataset(f"imagefolder:{imagefolder}", channels=3)
    assert ds.class_names == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1]
    assert ds.images.shape == (5, 6, 6, 3)
    assert (ds.images[1] == pattern(1)).all()
    assert (ds.images[3][..., 0] == pattern(10, c=1)).all()
    assert ds.sources[0] == str(imagefolder / "cat" / "c0.png")
    # native channels: RGB and grey mixed in one set -> promoted to RGB
    assert load_dataset(f"imagefolder:{imagefolder}").images.shape == (5, 6, 6, 3)
    grey = load_dataset(f"imagefolder:file://{imagefolder}[1:4]", resolution=16, channels=1)
    assert grey.images.shape == (3, 16, 16, 1) and grey.labels.tolist() == [0, 0, 1]
    assert label_histogram(f"imagefolder:{imagefolder}") == ({0: 3, 1: 2}, ["cat", "dog"])
    summary = dataset_summary(f"imagefolder:{imagefolder}")
    assert summary["rows"] == 5 and summary["shape"] == [6, 6, 3] and summary["classes"] == {"cat": 3, "dog": 2}


def test_imagefolder_truncated_png(imagefolder):
    bad = imagefolder / "dog" / "d1.png"
    truncate_png(bad)
    spec = f"imagefolder:{imagefolder}"
    with pytest.raises(DatasetError, match=f"unreadable image {bad}: cannot decode image"):
        load_dataset(spec)
    # Only the sliced files are decoded: a slice without the bad file reads fine.
    assert len(load_dataset(spec + "[0:4]")) == 4
    ds = load_dataset(spec, skip_bad=True)
    assert len(ds) == 4 and len(ds.bad) == 1 and ds.bad[0].startswith(str(bad))
    assert str(bad) not in ds.sources
    # labels only: no decoding, so the bad file still counts
    assert label_histogram(spec)[0] == {0: 3, 1: 2}


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DatasetError, match=f"image folder {tmp_path / 'nope'}: not found"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images in class subfolders"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    (tmp_path / "sizes" / "a").mkdir(parents=True)
    Image.fromarray(pattern(0, 4, 4, 1)).save(tmp_path / "sizes" / "a" / "x.png")
    Image.fromarray(pattern(0, 5, 5, 1)).save(tmp_path / "sizes" / "a" / "y.png")
    with pytest.raises(DatasetError, match="differ in size.*set a resolution"):
        load_dataset(f"imagefolder:{tmp_path / 'sizes'}")
    assert load_dataset(f"imagefolder:{tmp_path / 'sizes'}", resolution=8).images.shape == (2, 8, 8, 1)


def test_imagefolder_on_s3(imagefolder, s3):
    prefix = s3.new_prefix()
    storage.copy_tree(str(imagefolder), prefix)
    ds = load_dataset(f"imagefolder:{prefix}[2:5]", channels=3)
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [0, 1, 1]
    assert ds.sources[0] == f"{prefix}/cat/c2.png"
    local = load_dataset(f"imagefolder:{imagefolder}[2:5]", channels=3)
    assert (ds.images == local.images).all()


# ---------------------------------------------------------------------------- parquet


def test_parquet_shard_schema_and_garbage_row(tmp_path):
    rows = [(png_bytes(pattern(i)), i % 3, ["zero", "one", "two"][i % 3]) for i in range(8)]
    rows[5] = (b"this is not an image", 2, "two")
    f = tmp_path / "set.parquet"
    pq.write_table(shard_table(rows), f, row_group_size=3)
    spec = f"parquet:{f}"
    with pytest.raises(DatasetError, match=f"unreadable image parquet row 5 of {f}"):
        load_dataset(spec)
    ds = load_dataset(spec, skip_bad=True)
    assert len(ds) == 7 and len(ds.bad) == 1
    assert ds.bad[0].startswith(f"parquet row 5 of {f}: cannot decode image")
    assert ds.class_names == ["zero", "one", "two"]
    assert ds.labels.tolist() == [0, 1, 2, 0, 1, 0, 1]
    assert "row:5" not in ds.sources and ds.sources[5] == "row:6"
    assert (ds.images[6] == pattern(7)).all()
    sl = load_dataset(spec + "[1:5]")
    assert sl.labels.tolist() == [1, 2, 0, 1] and (sl.images[0] == pattern(1)).all()
    assert label_histogram(spec) == ({0: 3, 1: 3, 2: 2}, ["zero", "one", "two"])


def test_parquet_generic_table(tmp_path):
    """Any table with a binary image column and an integer label column."""
    imgs = [png_bytes(pattern(i, c=1)) for i in range(4)]
    t = pa.table({"id": ["a", "b", "c", "d"], "img": pa.array(imgs, pa.binary()),
                  "target": pa.array([3, 1, 3, None], pa.int32())})
    pq.write_table(t, tmp_path / "t.parquet")
    ds = load_dataset(f"parquet:{tmp_path / 't.parquet'}", resolution=12, channels=3)
    assert ds.images.shape == (4, 12, 12, 3)
    assert ds.labels.tolist() == [3, 1, 3, -1] and ds.class_names == ["0", "1", "2", "3"]
    # npy-encoded images (ganaug generate --format npy) decode too
    buf = io.BytesIO()
    np.save(buf, pattern(3))
    pq.write_table(pa.table({"image": pa.array([buf.getvalue()], pa.binary())}), tmp_path / "u.parquet")
    un = load_dataset(f"parquet:{tmp_path / 'u.parquet'}")
    assert (un.images[0] == pattern(3)).all() and un.labels.tolist() == [-1] and un.class_names == []
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "noimg.parquet")
    with pytest.raises(DatasetError, match=f"{tmp_path / 'noimg.parquet'} has no image column"):
        load_dataset(f"parquet:{tmp_path / 'noimg.parquet'}")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError, match=f"cannot read parquet file {tmp_path / 'junk.parquet'}"):
        load_dataset(f"parquet:{tmp_path / 'junk.parquet'}")


def write_generated_set(folder, n_files=3, rows_per_file=4, manifest=True):
    folder.mkdir(parents=True, exist_ok=True)
    k = 0
    for fi in range(n_files):
        rows = []
        for _ in range(rows_per_file):
            rows.append((png_bytes(pattern(k)), k % 2, ["even", "odd"][k % 2]))
            k += 1
        pq.write_table(shard_table(rows), folder / f"part-{fi:05d}.parquet")
    if manifest:
        (folder / "_manifest.json").write_text(json.dumps({"rows": k}))
    return k


def test_parquet_generated_set_folder(tmp_path):
    folder = tmp_path / "gen"
    n = write_generated_set(folder)
    ds = load_dataset(f"parquet:{folder}")
    assert len(ds) == n and ds.class_names == ["even", "odd"]
    assert all((ds.images[i] == pattern(i)).all() for i in range(n))  # files in row order
    sl = load_dataset(f"parquet:{folder}[3:9]")  # crosses file boundaries
    assert sl.sources == [f"row:{i}" for i in range(3, 9)]
    assert all((sl.images[j] == pattern(3 + j)).all() for j in range(6))
    assert [len(c) for c in iter_dataset(f"parquet:{folder}", batch_rows=3)] == [3, 1] * 3


def test_parquet_incomplete_set_refused(tmp_path):
    folder = tmp_path / "gen"
    write_generated_set(folder, manifest=False)
    with pytest.raises(DatasetError, match=r"incomplete generated set \(no _manifest.json\).*allow_incomplete"):
        load_dataset(f"parquet:{folder}")
    with pytest.raises(DatasetError, match="incomplete generated set"):
        label_histogram(f"parquet:{folder}")
    assert len(load_dataset(f"parquet:{folder}", allow_incomplete=True)) == 12
    assert sum(label_histogram(f"parquet:{folder}", allow_incomplete=True)[0].values()) == 12


def _corrupt_image_chunks(path, row_groups: list[int]) -> None:
    """Overwrite the image bytes column chunk of the given row groups with garbage."""
    meta = pq.ParquetFile(path).metadata
    data = bytearray(path.read_bytes())
    for g in row_groups:
        rg = meta.row_group(g)
        for j in range(rg.num_columns):
            col = rg.column(j)
            if col.path_in_schema == "image.bytes":
                start = col.data_page_offset
                data[start:start + col.total_compressed_size] = b"\xff" * col.total_compressed_size
    path.write_bytes(bytes(data))


def test_parquet_slice_reads_only_needed_row_groups(tmp_path):
    """Streaming, checked without timing: the image data of every row group outside the slice
    is destroyed, and rows next to the slice inside a read row group are garbage images."""
    n_groups, per = 20, 5
    rows = [(png_bytes(pattern(i)), i % 10, str(i % 10)) for i in range(n_groups * per)]
    rows[44] = (b"garbage just before the slice", 4, "4")   # same row group (8) as rows 40..44
    rows[50] = (b"garbage just after the slice", 0, "0")    # row group 10
    f = tmp_path / "big.parquet"
    pq.write_table(shard_table(rows), f, row_group_size=per, compression="NONE", use_dictionary=False)
    _corrupt_image_chunks(f, [g for g in range(n_groups) if g not in (8, 9, 10)])
    with pytest.raises(DatasetError, match=f"cannot read parquet file {f}"):
        load_dataset(f"parquet:{f}")  # the whole file is indeed unreadable
    ds = load_dataset(f"parquet:{f}[45:50]")
    assert ds.sources == [f"row:{i}" for i in range(45, 50)] and not ds.bad
    assert all((ds.images[j] == pattern(45 + j)).all() for j in range(5))
    # Labels-only reads never touch the image column.
    assert label_histogram(f"parquet:{f}")[0] == {i: 10 for i in range(10)}


def test_parquet_on_s3(tmp_path, s3):
    folder = tmp_path / "gen"
    write_generated_set(folder)
    prefix = s3.new_prefix()
    storage.copy_tree(str(folder), prefix)
    ds = load_dataset(f"parquet:{prefix}[2:10]", resolution=8)
    assert len(ds) == 8 and ds.images.shape == (8, 8, 8, 3)
    assert ds.labels.tolist() == [0, 1] * 4 and ds.class_names == ["even", "odd"]
    assert label_histogram(f"parquet:{prefix}") == ({0: 6, 1: 6}, ["even", "odd"])
    storage.delete(storage.join(prefix, "_manifest.json"))
    with pytest.raises(DatasetError, match="incomplete generated set"):
        load_dataset(f"parquet:{prefix}")
    with pytest.raises(DatasetError, match="s3://no-such-bucket-ganaug/x: no such bucket"):
        load_dataset("parquet:s3://no-such-bucket-ganaug/x")
    with pytest.raises(DatasetError, match=f"{prefix}-nope: not found"):
        load_dataset(f"mnist:{prefix}-nope")


# ---------------------------------------------------------------------------- mnist


def _tiny_mnist(folder, prefix="t10k", n=12, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images, 2051, gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels, 2049, gz)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx(tmp_path, gz):
    images, labels = _tiny_mnist(tmp_path / "m", gz=gz)
    ds = load_dataset(f"mnist:{tmp_path / 'm'}")
    assert ds.images.shape == (12, 28, 28, 1) and (ds.images[..., 0] == images).all()
    assert ds.labels.tolist() == labels.tolist() and ds.class_names == [str(i) for i in range(10)]
    sl = load_dataset(f"mnist:{tmp_path / 'm'}[5:9]", resolution=16, channels=3)
    assert sl.images.shape == (4, 16, 16, 3) and sl.labels.tolist() == [5, 6, 7, 8]
    assert sl.sources == ["row:5", "row:6", "row:7", "row:8"]
    raw = load_dataset(f"mnist:{tmp_path / 'm'}[5:9]")
    assert (raw.images[..., 0] == images[5:9]).all()
    assert label_histogram(f"mnist:{tmp_path / 'm'}[0:10]")[0] == {i: 1 for i in range(10)}


def test_mnist_prefers_train_and_errors(tmp_path):
    _tiny_mnist(tmp_path / "m", "t10k", n=4, seed=1)
    train, _ = _tiny_mnist(tmp_path / "m", "train", n=6, seed=2)
    ds = load_dataset(f"mnist:{tmp_path / 'm'}")
    assert len(ds) == 6 and (ds.images[..., 0] == train).all()
    # pointing at one images file works too (its labels file is found next to it)
    assert len(load_dataset(f"mnist:{tmp_path / 'm' / 't10k-images-idx3-ubyte.gz'}")) == 4

    bad = tmp_path / "bad"
    _tiny_mnist(bad, n=3)
    write_idx(bad / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28)), 2049)  # wrong magic
    with pytest.raises(DatasetError, match=f"{bad / 't10k-images-idx3-ubyte.gz'}: not an idx images"):
        load_dataset(f"mnist:{bad}")
    short = tmp_path / "short"
    _tiny_mnist(short, n=3)
    write_idx(short / "t10k-labels-idx1-ubyte.gz", np.zeros(2), 2049)
    with pytest.raises(DatasetError, match="2 labels for 3 images"):
        load_dataset(f"mnist:{short}")
    trunc = tmp_path / "trunc"
    _tiny_mnist(trunc, n=3, gz=False)
    p = trunc / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=f"mnist file {p}: truncated"):
        load_dataset(f"mnist:{trunc}")
    assert len(load_dataset(f"mnist:{trunc}[0:2]")) == 2  # rows before the damage still read
    with pytest.raises(DatasetError, match="no MNIST idx files"):
        load_dataset(f"mnist:{tmp_path}")


def test_mnist_on_s3(tmp_path, s3):
    images, labels = _tiny_mnist(tmp_path / "m")
    prefix = s3.new_prefix()
    storage.copy_tree(str(tmp_path / "m"), prefix)
    ds = load_dataset(f"mnist:{prefix}[2:7]")
    assert (ds.images[..., 0] == images[2:7]).all() and ds.labels.tolist() == labels[2:7].tolist()


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"shared MNIST not present at {MNIST_DIR}")
def test_shared_mnist_first_5000():
    spec = f"mnist:{MNIST_DIR}[0:5000]"
    ds = load_dataset(spec, resolution=32)
    assert ds.images.shape == (5000, 32, 32, 1) and ds.images.dtype == np.uint8
    hist, _ = label_histogram(spec)
    assert sum(hist.values()) == 5000 and all(c > 350 for c in hist.values())
    assert hist == {i: int((ds.labels == i).sum()) for i in range(10)}
    assert dataset_summary(spec)["shape"] == [28, 28, 1]
