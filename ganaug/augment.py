"""Differentiable augmentation of everything D sees, with an adaptive probability.

DiffAugment (Zhao et al. 2020): color (brightness, saturation, contrast), translation (integer
shifts, zero padding) and cutout, written as differentiable torch ops so G's gradient flows
back through them. Each op is applied to each sample independently with probability p.
`ada` instead selects ADA's own pipeline (Karras et al. 2020, "bgc": flips, rotations,
translations, scalings, colour; ganaug/augment_ada.py), an op that takes p itself
(`takes_p`) and applies each of its transforms with probability p; it stands alone.
ADA's heuristic (Karras et al. 2020) adapts p for either choice: every `interval` steps,
r_t = E[sign(D(aug(real)))]; p += sign(r_t - target) * (images in the interval) / (kimg * 1000),
clamped to [0, 1]. target == 0 disables adaptation (p stays at its initial value).

Only D's inputs are augmented (the loss calls the pipe); samples from G are never touched, so
nothing leaks into generated data ("non-leaking" in ADA's sense needs p < ~0.8 for these
ops, which the heuristic keeps when the data is not tiny).

Randomness: the global torch RNG on the input's device. The training loop seeds it per
(seed, rank, step), so a resumed run draws exactly the same augmentations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ganaug.choices import AUGMENT_POLICIES, augment_combination_error
from ganaug.errors import UserError

# ----------------------------------------------------------------------------- ops
# Each op: (x [N, C, H, W] in [-1, 1], mask [N] bool of the samples to augment, groups) -> x';
# an op with `takes_p = True` (ada) is called as (x, p, groups) and draws its own chances.
# `groups` (channel counts summing to C, or None = one group) splits x into images that share
# every random draw but keep their own colour statistics, e.g. pix2pix's (A | B) pairs.


def _group_mean(x: torch.Tensor, groups, dims) -> torch.Tensor:
    """Mean over `dims` (which include the channel dim 1) within each channel group, broadcast back."""
    if groups is None:
        return x.mean(dim=dims, keepdim=True)
    parts = [p.mean(dim=dims, keepdim=True).expand_as(p) for p in x.split(list(groups), dim=1)]
    return torch.cat(parts, dim=1)


def _where(mask: torch.Tensor, aug: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.where(mask[:, None, None, None], aug, x)


def brightness(x: torch.Tensor, mask: torch.Tensor, groups=None) -> torch.Tensor:
    shift = torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5
    return _where(mask, x + shift, x)


def saturation(x: torch.Tensor, mask: torch.Tensor, groups=None) -> torch.Tensor:
    mean = _group_mean(x, groups, (1,))
    scale = torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) * 2
    return _where(mask, (x - mean) * scale + mean, x)


def contrast(x: torch.Tensor, mask: torch.Tensor, groups=None) -> torch.Tensor:
    mean = _group_mean(x, groups, (1, 2, 3))
    scale = torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5
    return _where(mask, (x - mean) * scale + mean, x)


def translation(x: torch.Tensor, mask: torch.Tensor, groups=None, ratio: float = 0.125) -> torch.Tensor:
    """Shift by up to ratio * size pixels in each axis, filling with zeros (mid-grey)."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (n, 1, 1), device=x.device) * mask[:, None, None]
    tx = torch.randint(-sw, sw + 1, (n, 1, 1), device=x.device) * mask[:, None, None]
    gb, gy, gx = torch.meshgrid(
        torch.arange(n, device=x.device), torch.arange(h, device=x.device), torch.arange(w, device=x.device),
        indexing="ij",
    )
    gy = (gy + ty + 1).clamp(0, h + 1)
    gx = (gx + tx + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    return padded.permute(0, 2, 3, 1)[gb, gy, gx].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, mask: torch.Tensor, groups=None, ratio: float = 0.5) -> torch.Tensor:
    """Zero a random square of ratio * size (centre anywhere, clipped at the border)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)
    ox = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)
    gy = torch.arange(h, device=x.device)[None, :, None]
    gx = torch.arange(w, device=x.device)[None, None, :]
    inside = ((gy - oy + ch // 2) >= 0) & ((gy - oy + ch // 2) < ch) & ((gx - ox + cw // 2) >= 0) & ((gx - ox + cw // 2) < cw)
    keep = ~(inside & mask[:, None, None])
    return x * keep[:, None].to(x.dtype)


# The policy names live in ganaug/choices.py (torch-free, so config.py can check them).
COLOR_OPS = (brightness, saturation, contrast)
TRANSLATION_OPS = (translation,)
CUTOUT_OPS = (cutout,)
POLICIES = AUGMENT_POLICIES


def parse_policies(policies: str | Sequence[str]) -> list[str]:
    names = [p.strip() for p in (policies.split(",") if isinstance(policies, str) else policies) if p.strip()]
    POLICIES.check(names)
    problem = augment_combination_error(names)
    if problem:
        raise UserError(problem)
    return names


# ----------------------------------------------------------------------------- pipe


class AugmentPipe:
    """Callable x -> aug(x) for D's inputs, with ADA-style adaptive probability `p`.

    The loop calls `accumulate(mean_sign_real_logits)` every step and `adjust(images)` every
    `interval` steps (after reducing the accumulators across ranks, see `stats`/`set_stats`).
    """

    def __init__(self, policies: str | Sequence[str] = "translation,cutout", p: float = 0.0, *,
                 target: float = 0.6, interval: int = 4, kimg: float = 100.0):
        self.policies = parse_policies(policies)
        self.p = float(p)
        self.target, self.interval, self.kimg = float(target), int(interval), float(kimg)
        self.acc_sum, self.acc_n = 0.0, 0

    @property
    def adaptive(self) -> bool:
        return self.target > 0 and bool(self.policies)

    def __call__(self, x: torch.Tensor, groups: Sequence[int] | None = None) -> torch.Tensor:
        """aug(x); `groups` (channel counts) marks stacked images that share the draws but
        take colour means apart (see the ops above)."""
        if self.p <= 0 or not self.policies:
            return x  # no RNG draws either: p == 0 is exactly "no augmentation"
        if groups is not None and sum(groups) != x.shape[1]:
            raise ValueError(f"channel groups {list(groups)} do not sum to {x.shape[1]} channels")
        for name in self.policies:
            for op in POLICIES.get(name):
                if getattr(op, "takes_p", False):  # a whole pipeline with its own per-op chances (ada)
                    x = op(x, self.p, groups)
                    continue
                mask = torch.rand(x.shape[0], device=x.device) < self.p
                x = op(x, mask, groups)
        return x

    # -- ADA -----------------------------------------------------------------------------
    def accumulate(self, mean_sign: float, count: int = 1) -> None:
        if self.adaptive:
            self.acc_sum += float(mean_sign) * count
            self.acc_n += int(count)

    def adjust(self, images: int) -> float:
        """Move p after `images` real images (global) since the last adjustment; reset stats."""
        if self.adaptive and self.acc_n > 0:
            rt = self.acc_sum / self.acc_n
            delta = images / max(self.kimg * 1000.0, 1e-8)
            step = delta if rt > self.target else (-delta if rt < self.target else 0.0)
            self.p = float(min(1.0, max(0.0, self.p + step)))
        self.acc_sum, self.acc_n = 0.0, 0
        return self.p

    def state_dict(self) -> dict:
        return {"p": float(self.p), "acc_sum": float(self.acc_sum), "acc_n": int(self.acc_n)}

    def load_state_dict(self, state: dict) -> None:
        self.p = float(state["p"])
        self.acc_sum = float(state["acc_sum"])
        self.acc_n = int(state["acc_n"])

    def __repr__(self) -> str:
        return f"AugmentPipe(policies={self.policies}, p={self.p:.4f}, target={self.target})"
