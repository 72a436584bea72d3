"""Hostile and corrupt inputs, made in the test from real files: each gives one line naming the
file or row (CLI exit 2, no traceback), --skip-bad / skip_bad counts and lists it, defined mode
conversions are asserted, and dataset-supplied names cannot read outside the dataset."""

from __future__ import annotations

import io
import json
import os
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ganaug.data import DatasetError, label_histogram, load_dataset
from ganaug.data.images import decode_image, pixel_limit

RGB = (np.arange(8 * 8 * 3).reshape(8, 8, 3) * 5 % 256).astype(np.uint8)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def corrupt_files() -> dict[str, bytes]:
    png, jpg = encode(Image.fromarray(RGB), "PNG"), encode(Image.fromarray(RGB), "JPEG")
    return {"truncated.png": png[: len(png) // 2], "truncated.jpg": jpg[: len(jpg) // 2],
            "zero.png": b"", "garbage.png": b"not an image at all"}


def one_image_folder(root, name: str, data: bytes) -> str:
    (root / "cls").mkdir(parents=True, exist_ok=True)
    (root / "cls" / name).write_bytes(data)
    return f"imagefolder:{root}"


@pytest.mark.parametrize("name", sorted(corrupt_files()))
def test_corrupt_image_one_line_and_skip_bad(tmp_path, cli_error, name):
    data = corrupt_files()[name]
    spec = one_image_folder(tmp_path / "f", name, data)
    assert f"unreadable image {tmp_path / 'f' / 'cls' / name}" in cli_error(["info", spec])
    Image.fromarray(RGB).save(tmp_path / "f" / "cls" / "ok.png")
    with pytest.raises(DatasetError, match=name) as e:
        load_dataset(spec)
    assert "\n" not in str(e.value)
    ds = load_dataset(spec, skip_bad=True)
    assert len(ds) == 1 and len(ds.bad) == 1 and name in ds.bad[0]
    # the same bytes as a Parquet row: the row and file are named
    pq.write_table(pa.table({"image": [data, encode(Image.fromarray(RGB), "PNG")], "label": [0, 0]}),
                   tmp_path / "t.parquet")
    line = cli_error(["info", f"parquet:{tmp_path / 't.parquet'}"])
    assert f"parquet row 0 of {tmp_path / 't.parquet'}" in line
    assert len(load_dataset(f"parquet:{tmp_path / 't.parquet'}", skip_bad=True).bad) == 1


def test_mode_conversions_are_defined():
    # RGBA and LA: composited over BLACK
    rgba = np.dstack([RGB, np.tile(np.array([0, 128, 255, 255, 0, 64, 255, 10], np.uint8), (8, 1))])
    want = ((RGB.astype(int) * rgba[:, :, 3:].astype(int) + 127) // 255).astype(np.uint8)
    assert (decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG")) == want).all()
    la = np.dstack([RGB[:, :, 0], rgba[:, :, 3]])
    got = decode_image(encode(Image.fromarray(la, "LA"), "PNG"))
    assert (got[:, :, 0] == ((RGB[:, :, 0].astype(int) * la[:, :, 1] + 127) // 255)).all()
    # 16-bit grey: 0..65535 scaled onto 0..255 (even when every value is small)
    g16 = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    got = decode_image(encode(Image.fromarray(g16), "PNG"))
    assert got.dtype == np.uint8 and (got == np.round(g16 * 255.0 / 65535.0)).all()
    # palette: expanded to its RGB colours
    pal = Image.fromarray(RGB).quantize(colors=16)
    assert (decode_image(encode(pal, "PNG")) == np.asarray(pal.convert("RGB"))).all()
    # CMYK JPEG: converted to RGB, 3 channels
    cmyk = decode_image(encode(Image.fromarray(RGB).convert("CMYK"), "JPEG", quality=95))
    assert cmyk.shape == (8, 8, 3) and np.abs(cmyk.astype(int) - RGB).mean() < 12
    # EXIF orientation 6 (rotate 90 CW to display) is applied
    tall = np.zeros((4, 8, 3), np.uint8)
    tall[:, :4] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6
    got = decode_image(encode(Image.fromarray(tall), "JPEG", exif=exif, quality=100))
    assert got.shape == (8, 4, 3) and got[:4].mean() > 200 and got[4:].mean() < 50
    # a GIF and a WebP posing as .png: read by content, not by name
    for fmt in ("GIF", "WEBP"):
        data = encode(Image.fromarray(RGB[:, :, 0]).convert("RGB"), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        assert decode_image(data).shape[:2] == (8, 8)


def test_gif_and_webp_named_png_in_a_folder(tmp_path):
    root = tmp_path / "f"
    one_image_folder(root, "a.png", encode(Image.fromarray(RGB), "GIF"))
    one_image_folder(root, "b.png", encode(Image.fromarray(RGB), "WEBP", lossless=True))
    ds = load_dataset(f"imagefolder:{root}")
    assert len(ds) == 2 and (ds.images[1] == RGB).all()


def test_pixel_bomb_refused_from_the_header(tmp_path):
    big = encode(Image.new("L", (5000, 5000)), "PNG")  # 25 Mpx of zeros compress to ~10 kB
    assert len(big) < 100_000
    assert pixel_limit(16) < 25_000_000 < pixel_limit(None)
    root = tmp_path / "f"
    one_image_folder(root, "bomb.png", big)
    with pytest.raises(DatasetError, match=r"bomb.png: image of 5000x5000 pixels exceeds the limit"):
        load_dataset(f"imagefolder:{root}", resolution=16)


def test_idx_header_claiming_1e12_items_does_not_allocate(tmp_path, cli_error):
    d = tmp_path / "m"
    d.mkdir()
    (d / "train-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, 1, 28, 28) + bytes(784))
    (d / "train-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, 1) + b"\x00")
    huge = struct.pack(">iiii", 2051, 2**31 - 1, 2**16, 2**16)  # ~10^12 x 4 Gpx claimed
    (d / "train-images-idx3-ubyte").write_bytes(huge + bytes(100))
    line = cli_error(["info", f"mnist:{d}"])
    assert "train-images-idx3-ubyte" in line and "over the limit" in line
    (d / "train-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, 2**31 - 1, 28, 28) + bytes(784))
    (d / "train-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, 2**31 - 1) + bytes(5))
    line = cli_error(["info", f"mnist:{d}"])
    assert "train-labels-idx1-ubyte: truncated" in line
    # truncated idx
    (d / "train-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, 3, 28, 28) + bytes(784 * 2 + 5))
    (d / "train-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, 3) + bytes(3))
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte: truncated"):
        load_dataset(f"mnist:{d}")


def test_parquet_corrupt_footer_and_wrong_image_type(tmp_path, cli_error):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"image": [encode(Image.fromarray(RGB), "PNG")], "label": [0]}), good)
    data = good.read_bytes()
    bad = tmp_path / "footer.parquet"
    bad.write_bytes(data[:-12] + b"\x00" * 8 + data[-4:])
    line = cli_error(["info", f"parquet:{bad}"])
    assert f"cannot read parquet file {bad}" in line
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"image": [1.5], "label": [0]}), wrong)
    line = cli_error(["info", f"parquet:{wrong}"])
    assert "column 'image'" in line and "has type double" in line


def test_huggingface_class_names(tmp_path):
    hf = {"info": {"features": {"img": {"_type": "Image"},
                                "label": {"names": ["airplane", "automobile", "bird"], "_type": "ClassLabel"}}}}
    png = encode(Image.fromarray(RGB), "PNG")
    t = pa.table({"img": [{"bytes": png, "path": None}] * 4, "label": [0, 2, 2, 0]})
    t = t.replace_schema_metadata({"huggingface": json.dumps(hf)})
    pq.write_table(t, tmp_path / "train.parquet")
    hist, names = label_histogram(f"parquet:{tmp_path / 'train.parquet'}")
    assert names == ["airplane", "automobile", "bird"] and hist == {0: 2, 1: 0, 2: 2}
    from ganaug.describe import describe

    assert describe(f"parquet:{tmp_path / 'train.parquet'}")["classes"] == \
        {"airplane": 2, "automobile": 0, "bird": 2}


# ------------------------------------------------------------------------- confinement

def path_table(folder, paths: list[str]) -> str:
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"image": pa.array([{"bytes": None, "path": p} for p in paths], image_type),
                             "label": [0] * len(paths)}), folder / "t.parquet")
    return f"parquet:{folder / 't.parquet'}"


def test_parquet_path_reads_confined(tmp_path, cli_error, monkeypatch):
    ds_dir = tmp_path / "ds"
    (ds_dir / "imgs").mkdir(parents=True)
    Image.fromarray(RGB).save(ds_dir / "imgs" / "a.png")
    secret = tmp_path / "secret.png"
    Image.fromarray(RGB).save(secret)
    ok = path_table(ds_dir, ["imgs/a.png", str(ds_dir / "imgs" / "a.png")])
    assert len(load_dataset(ok)) == 2  # relative, and absolute inside the folder
    for bad, why in [("../secret.png", "contains '..'"), (str(secret), "absolute path outside"),
                     (f"file://{secret}", "outside the dataset"),
                     ("s3://other-bucket/x.png", "another bucket"), ("http://169.254.169.254/x", "outside")]:
        spec = path_table(ds_dir, [bad])
        line = cli_error(["info", spec])
        assert f"parquet row 0 of {ds_dir / 't.parquet'}" in line and why in line, line
        assert "GANAUG_ALLOW_OUTSIDE_READS" in line
    spec = path_table(ds_dir, ["imgs/a.png", "../secret.png"])
    ds = load_dataset(spec, skip_bad=True)
    assert len(ds) == 1 and "row 1" in ds.bad[0]
    monkeypatch.setenv("GANAUG_ALLOW_OUTSIDE_READS", "1")  # the explicit opt-in
    assert len(load_dataset(path_table(ds_dir, ["../secret.png", str(secret)]))) == 2


def test_parquet_path_on_s3_confined_to_prefix(tmp_path, s3):
    from ganaug import storage

    prefix = s3.new_prefix()
    storage.write_bytes(f"{prefix}/ds/a.png", encode(Image.fromarray(RGB), "PNG"))
    storage.write_bytes(f"{prefix}/other/b.png", encode(Image.fromarray(RGB), "PNG"))
    local = tmp_path / "l"
    local.mkdir()
    path_table(local, ["a.png", f"{prefix}/ds/a.png"])
    storage.write_bytes(f"{prefix}/ds/t.parquet", (local / "t.parquet").read_bytes())
    assert len(load_dataset(f"parquet:{prefix}/ds/t.parquet")) == 2
    path_table(local, [f"{prefix}/other/b.png"])
    storage.write_bytes(f"{prefix}/ds/t.parquet", (local / "t.parquet").read_bytes())
    with pytest.raises(DatasetError, match="another bucket or prefix outside the dataset"):
        load_dataset(f"parquet:{prefix}/ds/t.parquet")


def test_imagefolder_symlink_leaving_the_folder(tmp_path, cli_error):
    root = tmp_path / "f"
    (root / "cls").mkdir(parents=True)
    Image.fromarray(RGB).save(root / "cls" / "a.png")
    outside = tmp_path / "secret.png"
    Image.fromarray(RGB).save(outside)
    os.symlink(root / "cls" / "a.png", root / "cls" / "b.png")  # inside: fine
    assert len(load_dataset(f"imagefolder:{root}")) == 2
    os.symlink(outside, root / "cls" / "0.png")
    line = cli_error(["info", f"imagefolder:{root}"])
    assert str(root / "cls" / "0.png") in line and "symlink" in line and "outside the dataset" in line
    ds = load_dataset(f"imagefolder:{root}", skip_bad=True)
    assert len(ds) == 2 and len(ds.bad) == 1
