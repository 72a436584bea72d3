"""Small building blocks shared by the model families.

Generic on purpose (no family logic here): the spectral-norm switch, DCGAN-style weight init,
a channel schedule, a norm-layer switch, conditional BatchNorm and the PatchGAN discriminator.
A family file stays readable on its own and only borrows these.
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


def norm_layer(kind: str, channels: int) -> nn.Module:
    """The 2-d norm layer named `kind`: "instance" (affine), "batch" or "none" (identity)."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose instance, batch or none")


def init_weights(module: nn.Module, std: float = 0.02, *, kind: str = "normal") -> None:
    """Initialise convs/linears: "normal" = N(0, std) (DCGAN), "xavier" = Xavier-uniform
    (SNGAN/BigGAN); norm scales N(1, std) for "normal", 1 for "xavier"; biases zero.

    Embeddings are left to their owners. Linear layers inside ConditionalBatchNorm2d are
    initialised too (BigGAN's reference does the same).
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


def mbstd_group_for(group_size: int, batch: int) -> int:
    """The minibatch-stddev group used for a batch (chunk) of `batch` rows: min(group_size, batch),
    as stylegan2-ada-pytorch; a clear error when it does not divide the batch (the group used to
    shrink silently, down to 1 (no signal at all) on odd batches)."""
    g = min(int(group_size), int(batch))
    if g < 1 or batch % g:
        raise ValueError(f"minibatch-stddev group {group_size} does not divide a batch of {batch} rows; "
                         f"use a per-worker training.batch_size that is a multiple of {group_size} "
                         f"(or smaller than it)")
    return g


def minibatch_stddev(x: torch.Tensor, group_size: int, chunk: int | None = None) -> torch.Tensor:
    """Append one channel: the std over contiguous groups of samples, averaged over C, H, W.

    The group is `mbstd_group_for(group_size, chunk)` (chunk = N by default); when the batch is
    [real; fake] pass chunk = len(real) so no group mixes reals with fakes.
    """
    n, c, h, w = x.shape
    if chunk is None or chunk <= 0 or n % chunk:
        chunk = n
    g = mbstd_group_for(group_size, chunk)
    y = x.float().reshape(n // g, g, c, h, w)
    y = (y.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=[1, 2, 3])        # [N/g]
    y = y.repeat_interleave(g).reshape(n, 1, 1, 1).expand(n, 1, h, w).to(x.dtype)
    return torch.cat([x, y], dim=1)


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose per-channel gain and bias are predicted from a condition vector.

    out = BN(x) * (1 + gain(c)) + bias(c), with BN affine-free (de Vries et al. 2017; BigGAN uses
    a shared class embedding as c). The gain/bias projections are zero until the owner runs its
    weight init; as in BigGAN, whose ccbn layers take the generator's global init, the owners
    (cgan) then initialise them like every other linear layer (`init_weights`), so classes
    differ from the first step. In eval mode BN uses its running
    statistics, so each output depends only on its own input and condition (batch-size invariance).
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


def patchgan_layers(depth: int) -> int:
    """Default `n_layers` of a PatchGAN on 2**depth images: 3 (the 70x70 PatchGAN), fewer for
    small images so the patch grid stays >= 2x2."""
    return max(1, min(3, depth - 2))


class PatchGAN(nn.Module):
    """PatchGAN (Isola et al. 2017): image -> patch logits [N, 1, h, w].

    n_layers stride-2 convs (70x70 receptive field at n_layers=3), then a stride-1 conv and the
    1-channel logit conv; every conv but the first and the logit one is followed by `norm`.
    Conv i has min(width * 2**i, max_width) channels. Used unconditionally by CycleGAN (one per
    domain) and conditioned on the input by pix2pix (a subclass that concatenates channels).
    """

    def __init__(self, channels: int, width: int, max_width: int, n_layers: int, norm: str = "instance",
                 spectral_norm: bool = False):
        super().__init__()
        c = lambda i: min(width * 2 ** i, max_width)
        layers: list[nn.Module] = [nn.Conv2d(channels, c(0), 4, 2, 1), nn.LeakyReLU(0.2)]
        for i in range(1, n_layers + 1):
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(c(i - 1), c(i), 4, stride, 1), norm_layer(norm, c(i)), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(c(n_layers), 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        init_weights(self)
        for m in self.net:  # after init, so the parametrisation wraps the initialised weights
            if isinstance(m, nn.Conv2d):
                maybe_sn(m, spectral_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
