"""uint8 HWC arrays -> PNG/JPEG bytes: the one encoder of every image ganaug writes (shards,
served images, sample grids, client uploads). Decoding of untrusted files is elsewhere, in
data/images.py, with its limits. Light on purpose (numpy and Pillow): the HTTP client uses it."""

from __future__ import annotations

import io

import numpy as np

# Fixed encoder settings keep the bytes reproducible: "seed S+i gives the same bytes" holds
# for the encoded files too (PIL writes no time chunk).
PNG_COMPRESS_LEVEL = 6
JPEG_QUALITY = 95


def to_pil(image: np.ndarray):
    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(a))


def encode_png(image: np.ndarray, upscale: int = 1) -> bytes:
    """PNG of one uint8 H x W (x 1|3) image; `upscale` > 1 enlarges it by nearest neighbour."""
    from PIL import Image

    im = to_pil(image)
    if upscale > 1:
        im = im.resize((im.width * upscale, im.height * upscale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def encode_jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    to_pil(image).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    return buf.getvalue()
