"""Domain-A images for the image-to-image families: A = source_transform(B).

`data.source_transform` names one of the transforms below; each maps a uint8 NHWC batch to a
uint8 NHWC batch of the same shape, image by image (no statistics across images, so the same
image always gives the same A whatever batch it is in). Used by the training loop's
translation batch source, and by `translate` tooling that wants the same A domain.

  invert: 255 - x                      (a colour-space change; trivially invertible)
  edges : Sobel gradient magnitude, scaled by the image's own maximum (an edges -> photo task)
  blur  : Gaussian blur, sigma = resolution / 16 (a deblurring task)
  grayscale: luma with the ITU-R BT.601 weights (0.299 R + 0.587 G + 0.114 B), replicated to
          every channel (a colourisation task; on 1-channel data it is the identity)
  none  : identity (A == B, a sanity check)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# The transform names live in ganaug/choices.py (torch-free, so config.py can check them).
from ganaug.choices import SOURCE_TRANSFORMS


def _to_float(images: np.ndarray) -> torch.Tensor:
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 NHWC images, got {images.dtype} with shape {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(torch.float32)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _depthwise(x: torch.Tensor, kernel: torch.Tensor, pad_mode: str = "replicate") -> torch.Tensor:
    c = x.shape[1]
    kh, kw = kernel.shape
    w = kernel.to(x.dtype).expand(c, 1, kh, kw).contiguous()
    x = F.pad(x, [kw // 2, kw // 2, kh // 2, kh // 2], mode=pad_mode)
    return F.conv2d(x, w, groups=c)


def invert(images: np.ndarray) -> np.ndarray:
    _to_float(images[:0])  # validate dtype/shape
    return (255 - images).astype(np.uint8)


def edges(images: np.ndarray) -> np.ndarray:
    x = _to_float(images)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    gx, gy = _depthwise(x, kx), _depthwise(x, kx.t())
    mag = torch.sqrt(gx.square() + gy.square())
    peak = mag.flatten(1).amax(dim=1).clamp_min(1e-6)[:, None, None, None]
    return _to_uint8(mag / peak * 255.0)


def blur(images: np.ndarray, sigma: float | None = None) -> np.ndarray:
    x = _to_float(images)
    if sigma is None:
        sigma = max(0.5, x.shape[-1] / 16.0)
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    x = _depthwise(x, g[None, :])
    x = _depthwise(x, g[:, None])
    return _to_uint8(x)


BT601 = (0.299, 0.587, 0.114)  # the luma of JPEG / Pillow's convert("L")


def luma(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC (1 or 3 channels) -> uint8 NHW1 ITU-R BT.601 luma."""
    x = _to_float(images)
    if x.shape[1] == 1:
        return images.copy()
    if x.shape[1] != 3:
        raise ValueError(f"luma needs 1 or 3 channels, got {x.shape[1]}")
    w = torch.tensor(BT601, dtype=torch.float32)[None, :, None, None]
    return _to_uint8((x * w).sum(dim=1, keepdim=True))


def grayscale(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(luma(images), images.shape[3], axis=3))


def identity(images: np.ndarray) -> np.ndarray:
    _to_float(images[:0])
    return images.copy()


def source_transform(name: str, images: np.ndarray, *, chunk: int = 1024) -> np.ndarray:
    """Apply the named transform to uint8 NHWC images (in chunks, to bound memory)."""
    fn = SOURCE_TRANSFORMS.get(name)
    if len(images) == 0:
        return images.copy()
    return np.concatenate([fn(images[i:i + chunk]) for i in range(0, len(images), chunk)])
