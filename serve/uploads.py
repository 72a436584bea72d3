"""Decoding an uploaded image for a translation model (Pillow only; nothing is unpickled)."""

from __future__ import annotations

import io

import numpy as np


def decode_upload(data: bytes, info: dict, limits: dict) -> np.ndarray:
    """Uploaded image bytes -> uint8 1 x R x R x C at the model's resolution and channels."""
    from PIL import Image, UnidentifiedImageError

    from ganaug.data.images import BadImage, conform, decode_image
    from serve.api import bad

    if not data:
        raise bad("image", "image: empty upload")
    try:
        with Image.open(io.BytesIO(data)) as im:  # header only: check the size before decoding
            w, h = im.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise bad("image", "image: the upload is not an image Pillow can read (PNG, JPEG, ...)") from None
    max_px = limits["max_upload_pixels"]
    if w * h > max_px:
        raise bad("image", f"image is {w}x{h}; at most {max_px} pixels (max_upload_pixels)", max_px)
    try:
        arr = conform(decode_image(data), info["resolution"], info["channels"])
    except (BadImage, ValueError, OSError, Image.DecompressionBombError) as e:
        raise bad("image", f"image: cannot use the upload: {str(e).splitlines()[0][:200]}") from None
    return arr[None]
