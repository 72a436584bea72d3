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

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ganaug.losses import GANLoss, LossContext, gradient_penalty, r1_penalty, unwrap
from ganaug.models.registry import DataInfo, GANFamily, register

# ----------------------------------------------------------------------------- helpers


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose instance, batch or none")


def _init_weights(module: nn.Module) -> None:
    """The DCGAN/pix2pix initialisation: N(0, 0.02) convs, N(1, 0.02) norm scales."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.InstanceNorm2d, nn.BatchNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _check_resolution(resolution: int) -> int:
    depth = int(math.log2(resolution)) if resolution > 0 else 0
    if 2 ** depth != resolution or not 4 <= resolution <= 1024:
        raise ValueError(f"resolution must be a power of two in [4, 1024], got {resolution}")
    return depth


def _autocast(ctx: LossContext):
    return ctx.autocast() if ctx.autocast is not None else contextlib.nullcontext()


@contextlib.contextmanager
def _frozen(module: nn.Module):
    """Run with the module's parameters frozen; gradients still flow to its inputs."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


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
        depth = _check_resolution(resolution)
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
                _norm("none" if innermost else norm, ch[i]),
            ))

        n_dropout = max(0, min(3, depth - 4)) if dropout > 0 else 0
        self.ups = nn.ModuleList()
        for j in range(depth):
            k = depth - 2 - j                       # encoder level this decoder level mirrors
            c_in = ch[-1] if j == 0 else 2 * ch[k + 1]
            if k < 0:                               # outermost: to image channels
                self.ups.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(c_in, out_channels, 4, 2, 1)))
                continue
            layers = [nn.ReLU(), nn.ConvTranspose2d(c_in, ch[k], 4, 2, 1, bias=norm == "none"), _norm(norm, ch[k])]
            if 1 <= j <= n_dropout:
                layers.append(nn.Dropout(dropout))
            self.ups.append(nn.Sequential(*layers))
        _init_weights(self)

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


class PatchDiscriminator(nn.Module):
    """Conditional PatchGAN: D(a, b) on concatenated channels -> patch logits [N, 1, h, w].

    n_layers stride-2 convs (default: 3 as in the 70x70 PatchGAN, fewer for small images so
    the patch grid stays >= 2x2), then a stride-1 conv and the 1-channel logit conv.
    """

    def __init__(self, resolution: int, in_channels: int = 3, out_channels: int = 3, width: int = 64,
                 max_width: int = 512, n_layers: int | None = None, norm: str = "instance",
                 spectral_norm: bool = False):
        super().__init__()
        depth = _check_resolution(resolution)
        if n_layers is None:
            n_layers = max(1, min(3, depth - 2))
        self.in_channels, self.out_channels = in_channels, out_channels
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        c = lambda i: min(width * 2 ** i, max_width)
        layers: list[nn.Module] = [nn.Conv2d(in_channels + out_channels, c(0), 4, 2, 1), nn.LeakyReLU(0.2)]
        for i in range(1, n_layers + 1):
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(c(i - 1), c(i), 4, stride, 1), _norm(norm, c(i)), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(c(n_layers), 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        _init_weights(self)
        if spectral_norm:  # after init, so the parametrisation wraps the initialised weights
            for m in self.net:
                if isinstance(m, nn.Conv2d):
                    sn(m)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([a, b], dim=1))


# ----------------------------------------------------------------------------- loss


class Pix2PixLoss(GANLoss):
    """Phases: "D" (real vs fake pairs, one D forward), "G" (adversarial + L1), "Dreg" (R1).

    D's augmentation is applied to the 2C-channel pair (a, b) so both halves of a pair get the
    same geometric transform; otherwise D could tell fakes by misalignment alone.
    """

    def __init__(self, G: nn.Module, D: nn.Module, ctx: LossContext, model: Any = None,
                 l1_weight: float | None = None):
        super().__init__(G, D, ctx)
        if l1_weight is None:
            l1_weight = getattr(model, "l1_weight", 100.0) if model is not None else 100.0
        self.l1_weight = float(l1_weight)

    def _d(self, D: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = self.ctx.augment(torch.cat([a, b], dim=1))
        a_aug, b_aug = x.split([a.shape[1], b.shape[1]], dim=1)
        with _autocast(self.ctx):
            return D(a_aug, b_aug).float()

    def accumulate_gradients(self, phase: str, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        a, b = batch["a"], batch["b"]
        n = a.shape[0]
        if phase == "D":
            with torch.no_grad(), _autocast(self.ctx):
                fake_b = unwrap(self.G)(a).float()
            a_parts, b_parts = [a, a], [b, fake_b]
            if self.ctx.use_gp:  # interpolates ride along in the same D forward
                eps = torch.rand(n, 1, 1, 1, device=b.device, dtype=b.dtype)
                interp = (eps * b + (1 - eps) * fake_b).requires_grad_(True)
                a_parts.append(a)
                b_parts.append(interp)
            logits = self._d(self.D, torch.cat(a_parts), torch.cat(b_parts))
            chunks = logits.split(n)
            real_l, fake_l = chunks[0], chunks[1]
            loss = self.ctx.adversarial.d_loss(real_l, fake_l)
            stats = {}
            if self.ctx.use_gp:
                gp = gradient_penalty(chunks[2], interp)
                loss = loss + self.ctx.gp_weight * gp
                stats["gp"] = gp.item()
            loss.backward()
            stats.update(loss_d=loss.item(), d_real=real_l.mean().item(), d_fake=fake_l.mean().item(),
                         d_real_sign=real_l.sign().mean().item())
            return stats
        if phase == "Dreg":
            if self.ctx.r1_gamma <= 0:
                return {}
            b_req = b.detach().requires_grad_(True)
            logits = self._d(self.D, a, b_req)
            r1 = r1_penalty(logits, b_req)
            # logits * 0 puts every D parameter in the graph (the last bias has no input
            # gradient), which DDP needs to finish its reduction.
            (r1 * (self.ctx.r1_gamma / 2) * self.ctx.r1_every + logits.sum() * 0).backward()
            return {"r1": r1.item()}
        if phase == "G":
            with _autocast(self.ctx):
                fake_b = self.G(a).float()
            with _frozen(unwrap(self.D)) as D_raw:
                fake_l = self._d(D_raw, a, fake_b)
            adv = self.ctx.adversarial.g_loss(fake_l)
            l1 = F.l1_loss(fake_b, b)
            loss = adv + self.l1_weight * l1
            loss.backward()
            return {"loss_g": loss.item(), "loss_g_adv": adv.item(), "l1": l1.item()}
        raise ValueError(f"unknown phase {phase!r}")


# ----------------------------------------------------------------------------- family


@register
class Pix2Pix(GANFamily):
    name = "pix2pix"
    kind = "translation"
    paired = True  # batch source: A = source_transform(B) of the same rows
    generator_cls = UNetGenerator
    discriminator_cls = PatchDiscriminator
    loss_cls = Pix2PixLoss

    @classmethod
    def generator_kwargs(cls, model, data: DataInfo) -> dict[str, Any]:
        return {"resolution": data.resolution, "in_channels": data.channels, "out_channels": data.channels,
                "width": model.width, "max_width": model.max_width, "norm": "instance", "dropout": 0.5}

    @classmethod
    def discriminator_kwargs(cls, model, data: DataInfo) -> dict[str, Any]:
        return {"resolution": data.resolution, "in_channels": data.channels, "out_channels": data.channels,
                "width": model.width, "max_width": model.max_width, "n_layers": None,
                "norm": "none" if model.spectral_norm else "instance", "spectral_norm": model.spectral_norm}

    @classmethod
    def loss_kwargs(cls, model, data: DataInfo | None = None) -> dict[str, Any]:
        """Extra keyword arguments for loss_cls(G, D, ctx, **kwargs)."""
        return {"l1_weight": model.l1_weight}
