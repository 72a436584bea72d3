"""Class-conditional GAN: SNGAN/BigGAN-style residual nets with a projection discriminator.

Generator: a shared class embedding e(y) is concatenated to z for the first linear layer and
drives conditional BatchNorm (per-class gains/biases predicted from e(y)) in every
upsampling residual block. Discriminator: downsampling residual blocks (spectral norm when
model.spectral_norm), global sum pooling h, and the projection logit of Miyato & Koyama
(2018): psi(h) + <embed(y), h>. With model.aux_classifier > 0 an ACGAN head (Odena et al.
2017) also predicts the class, trained on real images only (training it on fakes too lets D
and G agree on easy-to-classify fakes) and used by G on its fakes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ganaug.errors import UserError
from ganaug.losses import LossContext, NoiseGANLoss, autocast, unwrap
from ganaug.models.layers import (
    ConditionalBatchNorm2d,
    channels_at,
    init_weights,
    log2_int,
    maybe_sn,
    minibatch_stddev,
)
from ganaug.models.registry import DataInfo, GANFamily, register

# ----------------------------------------------------------------------------- generator


class GBlock(nn.Module):
    """CBN -> ReLU -> up x2 -> conv3x3 -> CBN -> ReLU -> conv3x3, plus up -> conv1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int):
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(c_in, cond_dim)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.bn2 = ConditionalBatchNorm2d(c_out, cond_dim)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.skip = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, cond)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), cond)))
        return h + self.skip(F.interpolate(x, scale_factor=2, mode="nearest"))


class CGANGenerator(nn.Module):
    """G(z, labels, truncation=1.0) -> images in [-1, 1], NCHW.

    Truncation scales z (there is no W space). In eval mode all BatchNorms use running
    statistics, so each output depends only on its own (z, label).
    """

    def __init__(self, z_dim: int, num_classes: int, resolution: int, channels: int, width: int = 64,
                 max_width: int = 256, embed_dim: int = 64):
        super().__init__()
        n_up = log2_int(resolution, low=8, high=1024) - 2
        if num_classes < 1:
            raise ValueError("cgan needs labelled data (num_classes >= 1)")
        self.z_dim, self.num_classes, self.resolution, self.channels = z_dim, num_classes, resolution, channels
        ch = lambda s: channels_at(s, resolution, width, max_width)
        self.c0 = ch(4)
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.fc = nn.Linear(z_dim + embed_dim, self.c0 * 16)
        self.blocks = nn.ModuleList()
        s = 4
        for _ in range(n_up):
            self.blocks.append(GBlock(ch(s), ch(2 * s), embed_dim))
            s *= 2
        self.bn_out = nn.BatchNorm2d(ch(resolution))
        self.to_img = nn.Conv2d(ch(resolution), channels, 3, 1, 1)
        init_weights(self, kind="xavier")
        nn.init.normal_(self.embed.weight, 0.0, 1.0)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, truncation: float = 1.0) -> torch.Tensor:
        if labels is None:
            raise ValueError("cgan generator needs labels")
        if truncation != 1.0:
            z = z * truncation
        e = self.embed(labels.long())
        h = self.fc(torch.cat([z, e.to(z.dtype)], dim=1)).view(z.shape[0], self.c0, 4, 4)
        for block in self.blocks:
            h = block(h, e)
        return torch.tanh(self.to_img(F.relu(self.bn_out(h))))


# ----------------------------------------------------------------------------- discriminator


class DBlock(nn.Module):
    """(ReLU) -> conv3x3 -> ReLU -> conv3x3 -> (avgpool), plus a conv1x1 (+ avgpool) shortcut.

    The first block skips the leading ReLU (its input is the image) and pools before its
    shortcut conv, as in SNGAN's "optimized" block.
    """

    def __init__(self, c_in: int, c_out: int, *, down: bool, first: bool, sn: bool):
        super().__init__()
        self.down, self.first = down, first
        self.conv1 = maybe_sn(nn.Conv2d(c_in, c_out, 3, 1, 1), sn)
        self.conv2 = maybe_sn(nn.Conv2d(c_out, c_out, 3, 1, 1), sn)
        self.skip = maybe_sn(nn.Conv2d(c_in, c_out, 1), sn) if (c_in != c_out or down) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        if self.down:
            h = F.avg_pool2d(h, 2)
        s = x
        if self.first:
            s = F.avg_pool2d(s, 2) if self.down else s
            s = self.skip(s) if self.skip is not None else s
        else:
            s = self.skip(s) if self.skip is not None else s
            s = F.avg_pool2d(s, 2) if self.down else s
        return h + s


class CGANDiscriminator(nn.Module):
    """D(x, labels, return_aux=False, mbstd_chunk=None) -> logits [N] (and ACGAN class logits [N, K]).

    With mbstd_group > 0 the last block also sees the minibatch standard deviation (ProGAN),
    so a batch of near-identical fakes is told apart from a varied real batch.
    """

    def __init__(self, num_classes: int, resolution: int, channels: int, width: int = 64, max_width: int = 256,
                 spectral_norm: bool = True, aux_classes: int = 0, mbstd_group: int = 0):
        super().__init__()
        n_down = log2_int(resolution, low=8, high=1024) - 2
        self.num_classes, self.aux_classes, self.mbstd_group = num_classes, aux_classes, mbstd_group
        ch = lambda s: channels_at(s, resolution, width, max_width)
        blocks = []
        c_in, s = channels, resolution
        for i in range(n_down):
            blocks.append(DBlock(c_in, ch(s // 2), down=True, first=i == 0, sn=spectral_norm))
            c_in, s = ch(s // 2), s // 2
        # One more block at 4x4; it also sees the minibatch-stddev channel when mbstd_group > 0.
        blocks.append(DBlock(c_in + (1 if mbstd_group > 0 else 0), c_in, down=False, first=False, sn=spectral_norm))
        self.blocks = nn.Sequential(*blocks)
        self.c_out = c_in
        self.linear = nn.Linear(c_in, 1)
        self.embed = nn.Embedding(num_classes, c_in)
        self.aux = nn.Linear(c_in, aux_classes) if aux_classes > 0 else None
        init_weights(self, kind="xavier")
        nn.init.xavier_uniform_(self.embed.weight)
        # Spectral norm on the heads too (Miyato & Koyama normalise the projection embedding).
        maybe_sn(self.linear, spectral_norm)
        maybe_sn(self.embed, spectral_norm)
        if self.aux is not None:
            maybe_sn(self.aux, spectral_norm)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, return_aux: bool = False,
                mbstd_chunk: int | None = None):
        h = self.blocks[:-1](x)
        if self.mbstd_group > 0:
            h = minibatch_stddev(h, self.mbstd_group, mbstd_chunk)
        h = F.relu(self.blocks[-1](h)).sum(dim=(2, 3))
        out = self.linear(h).squeeze(1)
        if labels is not None:
            out = out + (self.embed(labels.long()) * h).sum(dim=1)
        if return_aux:
            return out, (self.aux(h) if self.aux is not None else None)
        return out


# ----------------------------------------------------------------------------- loss


class CGANLoss(NoiseGANLoss):
    """Shared noise loss + optional ACGAN cross-entropy (weight `aux_weight`)."""

    def __init__(self, G: nn.Module, D: nn.Module, ctx: LossContext, aux_weight: float = 0.0,
                 mode_seeking: float = 0.0):
        super().__init__(G, D, ctx, mode_seeking=mode_seeking)
        self.aux_weight = float(aux_weight) if getattr(unwrap(D), "aux", None) is not None else 0.0

    def _d_forward(self, D, x, labels, chunk, fp32=False):
        with autocast(self.ctx, not fp32):
            if self.aux_weight > 0:
                out, aux = D(x, labels, return_aux=True, mbstd_chunk=chunk)
                return out.float(), aux.float()
            return D(x, labels, mbstd_chunk=chunk).float(), None

    def _extra_d(self, extra, labels, n_real):
        if extra is None:
            return None, {}
        # Real rows only: see the module docstring. Fake rows get a zero term (DDP graph).
        ce = F.cross_entropy(extra[:n_real], labels[:n_real])
        return self.aux_weight * ce + self._touch(extra[n_real:]), {"aux_d": ce.item()}

    def _extra_g(self, extra, labels):
        if extra is None:
            return None, {}
        ce = F.cross_entropy(extra, labels)
        return self.aux_weight * ce, {"aux_g": ce.item()}


# ----------------------------------------------------------------------------- family


@register
class CGAN(GANFamily):
    name = "cgan"
    kind = "noise"
    generator_cls = CGANGenerator
    discriminator_cls = CGANDiscriminator
    loss_cls = CGANLoss

    @classmethod
    def _classes(cls, data: DataInfo) -> int:
        if data.num_classes < 1:
            raise UserError("model.family 'cgan' needs a labelled dataset (found no classes); "
                            "use an unconditional family such as 'dcgan'")
        return data.num_classes

    @classmethod
    def generator_kwargs(cls, model, data: DataInfo) -> dict[str, Any]:
        return {"z_dim": model.z_dim, "num_classes": cls._classes(data), "resolution": data.resolution,
                "channels": data.channels, "width": model.width, "max_width": model.max_width,
                "embed_dim": model.embed_dim}

    @classmethod
    def discriminator_kwargs(cls, model, data: DataInfo) -> dict[str, Any]:
        k = cls._classes(data)
        return {"num_classes": k, "resolution": data.resolution, "channels": data.channels,
                "width": model.width, "max_width": model.max_width,
                "spectral_norm": bool(cls.model_value(model, "spectral_norm")),
                "aux_classes": k if model.aux_classifier > 0 else 0, "mbstd_group": int(model.mbstd_group)}

    @classmethod
    def loss_kwargs(cls, model, data: DataInfo | None = None) -> dict[str, Any]:
        """Extra keyword arguments for loss_cls(G, D, ctx, **kwargs)."""
        return {"aux_weight": float(model.aux_classifier), "mode_seeking": float(cls.model_value(model, "mode_seeking"))}
