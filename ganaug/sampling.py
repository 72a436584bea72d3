"""One sampler shared by bulk generation, serving and `ganaug sample`.

Each image depends only on (model, seed, label, truncation), never on the batch it rode in:
- every sample's latent comes from its own `torch.Generator` seeded with its seed;
- the forward runs in fixed-size chunks, padded, so kernels always see the same shapes;
- on CUDA, deterministic algorithms are on.
That is what lets a served image equal row i of `ganaug generate` byte for byte.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ganaug import checkpoint
from ganaug.errors import UserError
from ganaug.imagecodec import encode_png

CHUNK = 16  # fixed forward size; requests are padded up to a multiple of it


class SamplingError(UserError):
    pass


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW float -> uint8 NHWC."""
    x = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 NHWC -> [-1, 1] float NCHW."""
    t = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return t.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def latents_for_seeds(seeds: Sequence[int], z_dim: int) -> torch.Tensor:
    out = torch.empty(len(seeds), z_dim)
    for i, s in enumerate(seeds):
        g = torch.Generator().manual_seed(int(s) % (2**63))
        out[i] = torch.randn(z_dim, generator=g)
    return out


def parse_size(text: str | None, meta: dict[str, Any] | None = None, *, flag: str = "--size") -> tuple[int, int] | None:
    """'HxW' | 'N' (square) | 'native' (the training data's size from model.json) -> (H, W);
    None/'' -> None (the model's own resolution). Errors name the flag."""
    if text is None or not str(text).strip():
        return None
    t = str(text).strip().lower()
    if t == "native":
        native = (meta or {}).get("native_size")
        if not native:
            raise SamplingError(f"{flag} native: the checkpoint does not record its training data's size "
                                "(trained before ganaug recorded native_size); give the size as HxW")
        return int(native[0]), int(native[1])
    h, sep, w = t.partition("x")
    try:
        size = (int(h), int(w if sep else h))
    except ValueError:
        raise SamplingError(f"{flag} {text!r}: expected HxW (e.g. 28x28), a single size, or native") from None
    if not all(1 <= v <= MAX_SIZE for v in size):
        raise SamplingError(f"{flag} {text!r}: height and width must be in 1..{MAX_SIZE}")
    return size


MAX_SIZE = 4096


def resize_images(images: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 NHWC -> uint8 N x H x W x C, image by image with Pillow's Lanczos filter
    (antialiased when shrinking, sharp when enlarging). Each output depends only on its own
    input, so a resized set stays byte-identical across batch shapes and actor counts."""
    if size is None or tuple(images.shape[1:3]) == tuple(size):
        return images
    from PIL import Image

    h, w = int(size[0]), int(size[1])
    out = np.empty((images.shape[0], h, w, images.shape[3]), np.uint8)
    for i, img in enumerate(images):
        im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        out[i] = np.asarray(im.resize((w, h), Image.Resampling.LANCZOS)).reshape(h, w, -1)
    return out


class Sampler:
    def __init__(self, G: torch.nn.Module, meta: dict[str, Any], *, device: str | torch.device | None = None,
                 checkpoint_uri: str | None = None, checkpoint_id: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda":
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.G = G.to(self.device).eval().requires_grad_(False)
        self.meta = meta
        self.kind: str = meta["kind"]
        self.family: str = meta["family"]
        self.num_classes: int = int(meta.get("num_classes", 0))
        self.class_names: list[str] = list(meta.get("class_names", []))
        self.resolution: int = int(meta["resolution"])
        self.channels: int = int(meta["channels"])
        self.checkpoint_uri = checkpoint_uri
        self.checkpoint_id = checkpoint_id

    @classmethod
    def from_checkpoint(cls, uri: str, device: str | torch.device | None = None) -> "Sampler":
        """Load only model.json + generator_ema.safetensors (a run folder means its latest checkpoint)."""
        uri = checkpoint.resolve_checkpoint(uri)
        G, meta = checkpoint.build_generator(uri, "generator_ema")
        return cls(G, meta, device=device, checkpoint_uri=uri, checkpoint_id=checkpoint.checkpoint_id(uri))

    @property
    def conditional(self) -> bool:
        return self.kind == "noise" and self.num_classes > 0

    def class_name(self, label: int) -> str:
        if 0 <= label < len(self.class_names):
            return self.class_names[label]
        return "" if label < 0 else str(label)

    def check_labels(self, labels: Sequence[int] | None, n: int) -> np.ndarray:
        if not self.conditional:
            if labels is not None and any(int(l) != -1 for l in labels):
                raise SamplingError(f"model {self.family} is unconditional: labels must be omitted")
            return np.full(n, -1, dtype=np.int64)
        if labels is None:
            raise SamplingError(f"model {self.family} is class-conditional: labels are required "
                                f"(0..{self.num_classes - 1})")
        arr = np.asarray(labels, dtype=np.int64).reshape(-1)
        if arr.shape[0] != n:
            raise SamplingError(f"got {arr.shape[0]} labels for {n} seeds")
        bad = arr[(arr < 0) | (arr >= self.num_classes)]
        if bad.size:
            raise SamplingError(f"label {int(bad[0])} out of range 0..{self.num_classes - 1}")
        return arr

    @torch.inference_mode()
    def generate(self, seeds: Sequence[int], labels: Sequence[int] | None = None,
                 truncation: float = 1.0) -> np.ndarray:
        """uint8 NHWC images, image i from (seeds[i], labels[i], truncation)."""
        if self.kind != "noise":
            raise SamplingError(f"model family {self.family} translates images; use translate()")
        n = len(seeds)
        labs = self.check_labels(labels, n)
        out = np.empty((n, self.resolution, self.resolution, self.channels), dtype=np.uint8)
        if n == 0:
            return out
        z = latents_for_seeds(seeds, self.G.z_dim)
        for start in range(0, n, CHUNK):
            stop = min(start + CHUNK, n)
            zc = torch.zeros(CHUNK, z.shape[1])
            zc[: stop - start] = z[start:stop]
            lc = None
            if self.conditional:
                lc = torch.zeros(CHUNK, dtype=torch.long)
                lc[: stop - start] = torch.from_numpy(labs[start:stop])
                lc = lc.to(self.device)
            img = self.G(zc.to(self.device), lc, truncation=float(truncation))
            out[start:stop] = to_uint8(img[: stop - start])
        return out

    @torch.inference_mode()
    def translate(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC at the model's resolution/channels -> translated uint8 NHWC."""
        if self.kind != "translation":
            raise SamplingError(f"model family {self.family} generates from noise; use generate()")
        expected = (self.resolution, self.resolution, self.channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise SamplingError(f"translate expects images of shape N x {expected}, got {images.shape}")
        n = images.shape[0]
        out = np.empty((n, *expected), dtype=np.uint8)
        for start in range(0, n, CHUNK):
            stop = min(start + CHUNK, n)
            xc = torch.zeros(CHUNK, self.channels, self.resolution, self.resolution)
            xc[: stop - start] = from_uint8(images[start:stop])
            out[start:stop] = to_uint8(self.G(xc.to(self.device))[: stop - start])
        return out

    def grid(self, per_class: int = 8, seed: int = 0, truncation: float = 1.0,
             inputs: np.ndarray | None = None) -> np.ndarray:
        """A uint8 HxWxC grid: one row per class (conditional), rows of 8 otherwise."""
        if self.kind == "translation":
            if inputs is None:
                raise SamplingError("a translation grid needs input images")
            rows = [inputs, self.translate(inputs)]
            return tile(np.stack(rows))
        if self.conditional:
            labels = np.repeat(np.arange(self.num_classes), per_class)
        else:
            labels = None
        n = per_class * max(self.num_classes, 1) if self.conditional else per_class * per_class
        imgs = self.generate(range(seed, seed + n), labels, truncation)
        return tile(imgs.reshape(-1, per_class, *imgs.shape[1:]))


def tile(rows: np.ndarray, pad: int = 1) -> np.ndarray:
    """R x C x H x W x ch -> one image, with a `pad`-pixel border between tiles."""
    r, c, h, w, ch = rows.shape
    out = np.zeros((r * (h + pad) + pad, c * (w + pad) + pad, ch), dtype=np.uint8)
    for i in range(r):
        for j in range(c):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = rows[i, j]
    return out


png_bytes = encode_png  # the name the CLI's `sample` and the training grids use
