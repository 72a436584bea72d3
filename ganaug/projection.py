"""Real images into StyleGAN2's W+, and restyling them (no Ray).

Projection (after the reference projector, with one change): optimise a per-layer latent
ws [N, num_ws, w_dim] so that `G.synthesis(ws)` reproduces each target, starting from the mean
latent (the target class's mean for a conditional model). The loss is the pixel MSE plus a
feature MSE in the domain feature space (the SmallCNN of `metrics.features.DomainFeatures`),
since no LPIPS weights can be downloaded here. The synthesis noise is the generator's fixed
buffers (eval mode), so a projection is deterministic for (image, label, steps, lr) on one
machine. Each image's loss depends only on its own latent and Adam is element-wise, so a
batch is N independent projections.

Restyling: the layers of W+ fall into three groups by resolution, coarse (the first third of
the layers: pose, shape, the class's identity), middle and fine (texture, stroke, colour).
`restyle(group="fine")` takes that group's layers from a seeded style latent and keeps the
projected image's own layers elsewhere (its content): class-preserving variants of the user's
own images. `group="coarse"` is the reverse: the image's texture on another shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ganaug.choices import RESTYLE_GROUPS
from ganaug.errors import UserError
from ganaug.sampling import from_uint8, latents_for_seeds, to_uint8

GROUPS = RESTYLE_GROUPS


@dataclass
class Projection:
    ws: torch.Tensor              # [N, num_ws, w_dim]
    error: np.ndarray             # per-image pixel MSE of the reconstruction ([-1, 1] scale)
    start_error: np.ndarray       # the same for the mean latent (what the projection improves on)


def layer_groups(num_ws: int) -> dict[str, slice]:
    """coarse / middle / fine: the first, second and last third of the W+ layers."""
    a, b = round(num_ws / 3), round(2 * num_ws / 3)
    return {"coarse": slice(0, a), "middle": slice(a, b), "fine": slice(b, num_ws)}


def _check_stylegan(G) -> None:
    if not (hasattr(G, "synthesis") and hasattr(G, "num_ws") and hasattr(G, "w_avg")):
        raise UserError(f"projection and --restyle need a StyleGAN2 generator; got {type(G).__name__}")


def mean_latents(G, labels: np.ndarray | None, n: int) -> torch.Tensor:
    """The projection's start: w_avg (per class when conditional), repeated over the layers."""
    dev = G.w_avg.device
    if labels is not None and getattr(G, "num_classes", 0) and hasattr(G, "w_avg_class"):
        w = G.w_avg_class[torch.as_tensor(labels, dtype=torch.long, device=dev)]
    else:
        w = G.w_avg.unsqueeze(0).expand(n, -1)
    return w.unsqueeze(1).repeat(1, G.num_ws, 1).clone()


def project(G, images: np.ndarray, labels: np.ndarray | None = None, *, steps: int = 200, lr: float = 0.05,
            features: Callable[[torch.Tensor], torch.Tensor] | None = None, feature_weight: float = 1.0) -> Projection:
    """W+ latents that reproduce uint8 NHWC `images` (see the module docstring)."""
    _check_stylegan(G)
    G = G.eval().requires_grad_(False)
    dev = G.w_avg.device
    target = from_uint8(images, dev)
    ws = mean_latents(G, labels, len(images)).requires_grad_(True)
    target_feat = features((target + 1) / 2).detach() if features is not None else None

    def per_image_mse(x: torch.Tensor) -> torch.Tensor:
        return (x - target).pow(2).flatten(1).mean(1)

    with torch.no_grad():
        start = per_image_mse(G.synthesis(ws)).cpu().numpy()
    opt = torch.optim.Adam([ws], lr=lr, betas=(0.9, 0.999))
    for _ in range(steps):
        fake = G.synthesis(ws)
        loss = per_image_mse(fake).sum()
        if features is not None:
            loss = loss + feature_weight * (features((fake + 1) / 2) - target_feat).pow(2).flatten(1).mean(1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        ws = ws.detach()
        error = per_image_mse(G.synthesis(ws)).cpu().numpy()
    return Projection(ws=ws, error=error, start_error=start)


@torch.no_grad()
def restyle(G, content_ws: torch.Tensor, group: str, style_seeds: Sequence[int], labels: np.ndarray | None = None,
            truncation: float = 1.0) -> np.ndarray:
    """uint8 images: `group`'s layers from the style latent of seed style_seeds[j] (with the
    image's own label when the model is conditional), every other layer from `content_ws`."""
    _check_stylegan(G)
    if group not in GROUPS:
        raise UserError(f"--restyle {group!r}: choose from {', '.join(GROUPS)}")
    G = G.eval()
    dev = content_ws.device
    z = latents_for_seeds(style_seeds, G.z_dim).to(dev)
    lab = torch.as_tensor(labels, dtype=torch.long, device=dev) if labels is not None and G.num_classes else None
    style_ws = G.mapping_ws(z, lab, truncation)
    mixed = content_ws.clone()
    part = layer_groups(G.num_ws)[group]
    mixed[:, part] = style_ws[:, part]
    return to_uint8(G.synthesis(mixed))


def domain_feature_fn(extractor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A differentiable feature map from a DomainFeatures extractor (float NCHW in [0, 1])."""
    net = extractor.classifier.eval().requires_grad_(False)
    return lambda x: net.features(x)


def reconstruction_report(p: Projection) -> dict:
    return {"mse_mean_latent": float(np.mean(p.start_error)), "mse_projected": float(np.mean(p.error)),
            "psnr_projected_db": float(np.mean(10 * np.log10(4.0 / np.maximum(p.error, 1e-12))))}
