"""pix2pix (Isola et al. 2017): paired image-to-image translation A -> B.

Generator: a U-Net. The encoder halves the resolution down to 1x1 and the decoder mirrors it,
each decoder level concatenating the encoder features of the same size (skip connections),
so low-level structure (edges, stroke positions) passes straight through.
Discriminator: a PatchGAN conditioned on the input, D(a, b) -> a grid of patch logits, each
judging whether its receptive field of b is a plausible translation of a.
Loss: adversarial + l1_weight * L1(G(a), b).

InstanceNorm everywhere: every sample is normalised with its own statistics, so in eval mode
an output depends only on its own input (batch invariance), and D can see real and fake pairs
in one concatenated batch without the two leaking into each other's statistics.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ganaug.augment import AugmentPipe
from ganaug.losses import (
    GANLoss,
    LossContext,
    autocast,
    d_stats,
    frozen,
    gradient_penalty,
    r1_penalty,
    unwrap,
)
from ganaug.models.layers import (
    PatchGAN,
    init_weights,
    log2_int,
    norm_layer,
    patchgan_layers,
)
from ganaug.models.registry import DataInfo, TranslationFamily, register

# ----------------------------------------------------------------------------- generator


class UNetGenerator(nn.Module):
    """U-Net: G(x) -> translated image in [-1, 1], same spatial size as x.

    depth = log2(resolution) encoder levels, so the bottleneck is 1x1 (as in pix2pix's
    unet_256). Level i has min(width * 2**i, max_width) channels. The outermost encoder layer
    and the 1x1 bottleneck carry no norm (InstanceNorm over one pixel is degenerate).
    Dropout (train mode only) sits in up to three decoder levels next to the bottleneck,
    as in the paper, but only for nets deep enough to afford it.
    """

    num_classes = 0  # translation families are unconditional

    def __init__(self, resolution: int, in_channels: int = 3, out_channels: int = 3, width: int = 64,
                 max_width: int = 512, norm: str = "instance", dropout: float = 0.5):
        super().__init__()
        depth = log2_int(resolution, low=4, high=1024)
        self.resolution, self.in_channels, self.out_channels = resolution, in_channels, out_channels
        ch = [min(width * 2 ** i, max_width) for i in range(depth)]

        self.downs = nn.ModuleList()
        for i in range(depth):
            if i == 0:
                self.downs.append(nn.Conv2d(in_channels, ch[0], 4, 2, 1))
                continue
            innermost = i == depth - 1
            self.downs.append(nn.Sequential(
                nn.LeakyReLU(0.2),
                nn.Conv2d(ch[i - 1], ch[i], 4, 2, 1, bias=innermost or norm == "none"),
                norm_layer("none" if innermost else norm, ch[i]),
            ))

        n_dropout = max(0, min(3, depth - 4)) if dropout > 0 else 0
        self.ups = nn.ModuleList()
        for j in range(depth):
            k = depth - 2 - j                       # encoder level this decoder level mirrors
            c_in = ch[-1] if j == 0 else 2 * ch[k + 1]
            if k < 0:                               # outermost: to image channels
                self.ups.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(c_in, out_channels, 4, 2, 1)))
                continue
            layers = [nn.ReLU(), nn.ConvTranspose2d(c_in, ch[k], 4, 2, 1, bias=norm == "none"),
                      norm_layer(norm, ch[k])]
            if 1 <= j <= n_dropout:
                layers.append(nn.Dropout(dropout))
            self.ups.append(nn.Sequential(*layers))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for down in self.downs:
            h = down(h)
            skips.append(h)
        h = skips.pop()                             # the bottleneck
        for up in self.ups:
            h = up(h)
            if skips:
                h = torch.cat([h, skips.pop()], dim=1)
        return torch.tanh(h)

    def translate(self, x: torch.Tensor, direction: str = "ab") -> torch.Tensor:
        if direction != "ab":
            raise ValueError(f"pix2pix translates A -> B only; got direction {direction!r}")
        return self(x)


# ----------------------------------------------------------------------------- discriminator


class PatchDiscriminator(PatchGAN):
    """Conditional PatchGAN: D(a, b) on concatenated channels -> patch logits [N, 1, h, w].

    The shared PatchGAN (ganaug.models.layers) on in_channels + out_channels input channels;
    n_layers defaults to 3 (the 70x70 PatchGAN), fewer for small images.
    """

    def __init__(self, resolution: int, in_channels: int = 3, out_channels: int = 3, width: int = 64,
                 max_width: int = 512, n_layers: int | None = None, norm: str = "instance",
                 spectral_norm: bool = False):
        depth = log2_int(resolution, low=4, high=1024)
        if n_layers is None:
            n_layers = patchgan_layers(depth)
        super().__init__(in_channels + out_channels, width, max_width, n_layers, norm, spectral_norm)
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(torch.cat([a, b], dim=1))


# ----------------------------------------------------------------------------- loss


class Pix2PixLoss(GANLoss):
    """Phases: "D" (real vs fake pairs, one D forward), "G" (adversarial + L1), "Dreg" (R1).

    D's augmentation is applied to the 2C-channel pair (a, b) so both halves of a pair get the
    same geometric transform (otherwise D could tell fakes by misalignment alone); colour ops
    take their means per half, so one image's colours never leak into the other's.
    """

    def __init__(self, G: nn.Module, D: nn.Module, ctx: LossContext, model: Any = None,
                 l1_weight: float | None = None):
        super().__init__(G, D, ctx)
        if l1_weight is None:
            l1_weight = getattr(model, "l1_weight", 100.0) if model is not None else 100.0
        self.l1_weight = float(l1_weight)

    def _d(self, D: nn.Module, a: torch.Tensor, b: torch.Tensor, fp32: bool = False) -> torch.Tensor:
        # One call on the channel-concatenated pair: both halves share every random draw (the
        # same shift, cutout, brightness...), while colour statistics are taken per half.
        x, aug = torch.cat([a, b], dim=1), self.ctx.augment
        x = aug(x, groups=(a.shape[1], b.shape[1])) if isinstance(aug, AugmentPipe) else aug(x)
        a_aug, b_aug = x.split([a.shape[1], b.shape[1]], dim=1)
        with autocast(self.ctx, not fp32):
            return D(a_aug, b_aug).float()

    def accumulate_gradients(self, phase: str, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        a, b = batch["a"], batch["b"]
        n = a.shape[0]
        if phase == "D":
            with torch.no_grad(), autocast(self.ctx):
                fake_b = unwrap(self.G)(a).float()
            a_parts, b_parts = [a, a], [b, fake_b]
            if self.ctx.use_gp:  # interpolates ride along in the same D forward
                eps = torch.rand(n, 1, 1, 1, device=b.device, dtype=b.dtype)
                interp = (eps * b + (1 - eps) * fake_b).requires_grad_(True)
                a_parts.append(a)
                b_parts.append(interp)
            logits = self._d(self.D, torch.cat(a_parts), torch.cat(b_parts), fp32=self.ctx.use_gp)
            chunks = logits.split(n)
            real_l, fake_l = chunks[0], chunks[1]
            loss = self.ctx.adversarial.d_loss(real_l, fake_l)
            stats = {}
            if self.ctx.use_gp:
                gp = gradient_penalty(chunks[2], interp)
                loss = loss + self.ctx.gp_weight * gp
                stats["gp"] = gp.item()
            loss.backward()
            stats.update(d_stats(loss, real_l, fake_l))
            return stats
        if phase == "Dreg":
            if self.ctx.r1_gamma <= 0:
                return {}
            b_req = b.detach().requires_grad_(True)
            logits = self._d(self.D, a, b_req, fp32=True)
            r1 = r1_penalty(logits, b_req)
            # logits * 0 puts every D parameter in the graph (the last bias has no input
            # gradient), which DDP needs to finish its reduction.
            (r1 * (self.ctx.r1_gamma / 2) * self.ctx.r1_every + logits.sum() * 0).backward()
            return {"r1": r1.item()}
        if phase == "G":
            with autocast(self.ctx):
                fake_b = self.G(a).float()
            with frozen(unwrap(self.D)) as D_raw:
                fake_l = self._d(D_raw, a, fake_b)
            adv = self.ctx.adversarial.g_loss(fake_l)
            l1 = F.l1_loss(fake_b, b)
            loss = adv + self.l1_weight * l1
            loss.backward()
            return {"loss_g": loss.item(), "loss_g_adv": adv.item(), "l1": l1.item()}
        raise ValueError(f"unknown phase {phase!r}")


# ----------------------------------------------------------------------------- family


@register
class Pix2Pix(TranslationFamily):
    name = "pix2pix"
    paired = True  # batch source: A = source_transform(B) of the same rows
    generator_cls = UNetGenerator
    discriminator_cls = PatchDiscriminator
    loss_cls = Pix2PixLoss

    @classmethod
    def generator_kwargs(cls, model, data: DataInfo) -> dict[str, Any]:
        return {"resolution": data.resolution, "in_channels": data.channels, "out_channels": data.channels,
                "width": model.width, "max_width": model.max_width, "norm": "instance", "dropout": 0.5}

    @classmethod
    def loss_kwargs(cls, model, data: DataInfo | None = None) -> dict[str, Any]:
        """Extra keyword arguments for loss_cls(G, D, ctx, **kwargs)."""
        return {"l1_weight": model.l1_weight}
