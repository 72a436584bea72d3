"""ImageSet and the one image-conversion path shared by every reader.

Every reader hands over either decoded arrays or encoded bytes; `decode_image` turns bytes
(PNG/JPEG/... via Pillow, or .npy) into an array, and `conform` makes it uint8 H x W x C at
the requested resolution and channel count. Keeping this in one place means a digit, an MNIST
image, a folder PNG and a Parquet row go through exactly the same conversion.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFile, ImageOps

from ganaug.errors import first_line

# A truncated file must be an error (named by the caller), never silently padded.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Set deliberately rather than left at Pillow's default (which only warns up to 2x of it):
# no image ganaug reads may exceed 16384 x 16384 pixels, whatever the target resolution.
# Pillow raises DecompressionBombError beyond 2x this; decode_image refuses beyond 1x.
MAX_PIXELS = 16384 * 16384
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# With a target resolution, an image may have at most this many times its pixel count
# (i.e. 16x the target side): larger ones only cost memory and are almost always bombs.
PIXELS_PER_TARGET = 256

_NPY_MAGIC = b"\x93NUMPY"


class BadImage(Exception):
    """One image could not be decoded or converted; the caller names the file/row."""


@dataclass
class ImageSet:
    images: np.ndarray       # uint8, N x H x W x C
    labels: np.ndarray       # int64, N   (-1 when unlabelled)
    class_names: list[str]   # index = label
    sources: list[str]       # per-row id: file path/URI, "row:<i>" (provenance for translate)
    bad: list[str] = field(default_factory=list)  # "<where>: <reason>" per skipped item (skip_bad=True)
    spec: str = ""

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def pixel_limit(resolution: int | None) -> int:
    """The most pixels an input image may have when it is read for `resolution`."""
    if not resolution:
        return MAX_PIXELS
    return min(MAX_PIXELS, PIXELS_PER_TARGET * max(resolution, 256) ** 2)


def decode_image(data, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded bytes (any Pillow format, or .npy) -> uint8 array H x W or H x W x C.

    The format is told from the content, not the file name (a GIF named .png reads as the
    GIF it is). The EXIF orientation is applied. Images over `max_pixels` are refused from
    their header, before any pixel is decoded.
    """
    if isinstance(data, np.ndarray):
        return data
    if isinstance(data, BaseException):
        raise BadImage(first_line(data))
    if data is None or len(data) == 0:
        raise BadImage("empty image data")
    data = bytes(data)
    if data.startswith(_NPY_MAGIC):
        try:
            a = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad image
            raise BadImage(f"invalid .npy image: {first_line(e)}") from None
        if a.ndim >= 2 and a.shape[0] * a.shape[1] > max_pixels:
            raise BadImage(f"image of {a.shape[1]}x{a.shape[0]} pixels exceeds the limit of {max_pixels}")
        return a
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise BadImage(f"image of {w}x{h} pixels exceeds the limit of {max_pixels} "
                               "(decompression bomb, or far larger than the target resolution)")
            im.load()
            return _pil_to_array(ImageOps.exif_transpose(im))
    except BadImage:
        raise
    except Exception as e:  # noqa: BLE001 - UnidentifiedImageError, truncated, bombs, ...
        raise BadImage(f"cannot decode image: {first_line(e)}") from None


def over_black(a: np.ndarray) -> np.ndarray:
    """H x W x (2|4) uint8 with alpha last -> the colour composited over black, alpha dropped.
    Black, not white: transparent pixels become 0, the background of MNIST-like data."""
    colour = a[:, :, :-1].astype(np.uint16)
    alpha = a[:, :, -1:].astype(np.uint16)
    return ((colour * alpha + 127) // 255).astype(np.uint8)


def _pil_to_array(im: Image.Image) -> np.ndarray:
    """Defined conversions: L/RGB as they are; 16-bit grey scaled by 255/65535; palette
    expanded (with its transparency); RGBA/LA/PA composited over black; CMYK/YCbCr/... to RGB."""
    mode = im.mode
    if mode in ("L", "RGB"):
        return np.asarray(im)
    if mode.startswith("I;16"):  # 16-bit grey: the full 0..65535 range maps onto 0..255
        a = np.asarray(im).astype(np.float64)
        return np.clip(np.round(a * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
    if mode.startswith("I"):  # 32-bit grey: scale the full range down to 8 bits
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if a.max(initial=0) > 255 else 255.0
        return np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0
        return np.clip(np.round(a * scale), 0, 255).astype(np.uint8)
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode == "PA":
        im, mode = im.convert("RGBA"), "RGBA"
    if mode == "La":
        im, mode = im.convert("LA"), "LA"
    if mode == "RGBa":
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("LA", "RGBA"):
        return over_black(np.asarray(im))
    if mode == "RGB":
        return np.asarray(im)
    if mode == "1":
        return np.asarray(im.convert("L"))
    return np.asarray(im.convert("RGB"))  # CMYK, YCbCr, LAB, HSV, ...


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        if a.size and float(np.nanmax(a)) <= 1.0 and float(np.nanmin(a)) >= 0.0:
            a = a * 255.0
        return np.clip(np.round(np.nan_to_num(a)), 0, 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        if a.size and (a.min() < 0 or a.max() > 255):
            raise BadImage(f"pixel values {a.min()}..{a.max()} outside 0..255")
        return a.astype(np.uint8)
    raise BadImage(f"unsupported pixel type {a.dtype}")


def conform(img: np.ndarray, resolution: int | None = None, channels: int | None = None) -> np.ndarray:
    """Any decoded image -> uint8 H x W x C; resized to resolution x resolution when given
    (non-square images are stretched), with `channels` 1 (grey) or 3 (RGB) when given.

    Alpha is composited over black. Grey -> RGB replicates the channel; RGB -> grey uses Pillow's ITU-R 601-2
    luma. Upsampling uses bicubic, downsampling Lanczos (anti-aliased).
    """
    a = _to_uint8(np.asarray(img))
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise BadImage(f"unsupported image shape {tuple(a.shape)}")
    if a.shape[2] in (2, 4):
        a = over_black(a)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    target_c = channels or a.shape[2]
    if target_c == 1 and a.shape[2] == 3:  # reduce first: less to resize
        a = np.asarray(Image.fromarray(np.ascontiguousarray(a), "RGB").convert("L"))[:, :, None]
    if resolution and a.shape[:2] != (resolution, resolution):
        up = resolution * resolution > a.shape[0] * a.shape[1]
        resample = Image.Resampling.BICUBIC if up else Image.Resampling.LANCZOS
        if a.shape[2] == 1:
            im = Image.fromarray(np.ascontiguousarray(a[:, :, 0]), "L")
        else:
            im = Image.fromarray(np.ascontiguousarray(a), "RGB")
        a = np.asarray(im.resize((resolution, resolution), resample=resample))
        if a.ndim == 2:
            a = a[:, :, None]
    if target_c == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def conform_batch(arr: np.ndarray, resolution: int | None, channels: int | None) -> np.ndarray:
    """N x H x W (x C) array of same-size images -> N x H x W x C, vectorised when no resize."""
    a = _to_uint8(np.asarray(arr))
    if a.ndim == 3:
        a = a[:, :, :, None]
    native, c = a.shape[1:3], a.shape[3]
    no_resize = not resolution or native == (resolution, resolution)
    if no_resize and c in (1, 3) and (channels is None or channels == c or (channels, c) == (3, 1)):
        if channels == 3 and c == 1:
            a = np.repeat(a, 3, axis=3)
        return np.ascontiguousarray(a)
    if len(a) == 0:
        c = channels or (1 if a.shape[3] in (1, 2) else 3)
        h, w = (resolution, resolution) if resolution else native
        return np.zeros((0, h, w, c), np.uint8)
    return np.stack([conform(x, resolution, channels) for x in a])


def stack_images(images: list[np.ndarray], wheres: list[str]) -> np.ndarray:
    """Stack conformed H x W x C images; grey is promoted to RGB when the two are mixed."""
    if not images:
        return np.zeros((0, 0, 0, 1), np.uint8)
    if len({im.shape[2] for im in images}) > 1:
        images = [np.repeat(im, 3, axis=2) if im.shape[2] == 1 else im for im in images]
    first = images[0].shape[:2]
    for im, where in zip(images, wheres):
        if im.shape[:2] != first:
            raise BadImage(f"images differ in size: {wheres[0]} is {first[0]}x{first[1]}, "
                           f"{where} is {im.shape[0]}x{im.shape[1]}; set a resolution to resize them")
    return np.stack(images)
