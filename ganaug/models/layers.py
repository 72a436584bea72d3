"""Small building blocks shared by the model families.

Generic on purpose (no family logic here): the spectral-norm switch, DCGAN-style weight init,
a channel schedule, and conditional BatchNorm. A family file stays readable on its own and
only borrows these.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def log2_int(n: int, *, low: int = 4, high: int = 1024, what: str = "resolution") -> int:
    """log2(n) for a power of two n in [low, high]; a clear error otherwise."""
    k = int(round(math.log2(n))) if n > 0 else -1
    if n <= 0 or 2 ** k != n or not low <= n <= high:
        raise ValueError(f"{what} must be a power of two in [{low}, {high}], got {n}")
    return k


def channels_at(spatial: int, resolution: int, width: int, max_width: int) -> int:
    """Channels of a feature map of size `spatial` in a net whose full size is `resolution`.

    The full-resolution layer has `width` channels; each halving of the spatial size doubles
    them, capped at `max_width` (the usual DCGAN/SNGAN pyramid).
    """
    return int(min(max_width, width * max(1, resolution // spatial)))


def maybe_sn(module: nn.Module, enabled: bool) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) when `enabled`, else the module unchanged.

    Uses the parametrization API: the state dict holds `parametrizations.weight.original`
    and the power-iteration vectors `_u`, `_v` as buffers (all plain tensors, safetensors-safe).
    Apply it after weight init so the parametrization wraps the initialised weight.
    """
    if enabled:
        return nn.utils.parametrizations.spectral_norm(module)
    return module


def init_weights(module: nn.Module, std: float = 0.02, *, kind: str = "normal") -> None:
    """Initialise convs/linears: "normal" = N(0, std) (DCGAN), "xavier" = Xavier-uniform
    (SNGAN/BigGAN); norm scales N(1, std) for "normal", 1 for "xavier"; biases zero.

    Embeddings are left to their owners (conditional gains must start at a known value).
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if kind == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.InstanceNorm2d, nn.GroupNorm)):
            if getattr(m, "weight", None) is not None:
                if kind == "xavier":
                    nn.init.ones_(m.weight)
                else:
                    nn.init.normal_(m.weight, 1.0, std)
                nn.init.zeros_(m.bias)


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose per-channel gain and bias are predicted from a condition vector.

    out = BN(x) * (1 + gain(c)) + bias(c), with BN affine-free. The gain/bias projections
    start at zero, so at init this is a plain BatchNorm (de Vries et al. 2017; BigGAN uses a
    shared class embedding as c). In eval mode BN uses its running statistics, so each
    output depends only on its own input and condition (batch-size invariance).
    """

    def __init__(self, num_features: int, cond_dim: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False, momentum=momentum, eps=eps)
        self.gain = nn.Linear(cond_dim, num_features)
        self.bias = nn.Linear(cond_dim, num_features)
        for lin in (self.gain, self.bias):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.bn(x)
        gain = (1.0 + self.gain(cond)).to(h.dtype)[:, :, None, None]
        bias = self.bias(cond).to(h.dtype)[:, :, None, None]
        return h * gain + bias


class ClassConditionalBatchNorm2d(ConditionalBatchNorm2d):
    """ConditionalBatchNorm2d keyed directly by integer class labels (one-hot condition)."""

    def __init__(self, num_features: int, num_classes: int, **kw):
        super().__init__(num_features, num_classes, **kw)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        onehot = nn.functional.one_hot(labels.long(), self.num_classes).to(self.gain.weight.dtype)
        return super().forward(x, onehot)
