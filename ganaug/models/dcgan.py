"""DCGAN (Radford et al. 2016): the unconditional baseline.

Generator: z -> linear -> 4x4 map, then one stride-2 transposed conv per doubling (BatchNorm +
ReLU), a 3x3 conv to image channels and tanh. Discriminator: stride-2 4x4 convs with
LeakyReLU down to 4x4, then a linear logit. D has no BatchNorm (spectral norm when
model.spectral_norm), so real and fake can share one D forward without leaking statistics.

Labels are accepted and ignored, so the family plugs into the shared noise loss and the
sampler like a conditional one (num_classes == 0).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ganaug.losses import NoiseGANLoss
from ganaug.models.layers import channels_at, init_weights, log2_int, maybe_sn
from ganaug.models.registry import DataInfo, GANFamily, register


class DCGANGenerator(nn.Module):
    """G(z, labels=None, truncation=1.0) -> images in [-1, 1], NCHW.

    No W space, so truncation scales z (z * psi). In eval mode BatchNorm uses running
    statistics: every output depends only on its own z (batch-size invariance).
    """

    num_classes = 0

    def __init__(self, z_dim: int, resolution: int, channels: int, width: int = 64, max_width: int = 256):
        super().__init__()
        n_up = log2_int(resolution, low=8, high=1024) - 2
        self.z_dim, self.resolution, self.channels = z_dim, resolution, channels
        ch = lambda s: channels_at(s, resolution, width, max_width)
        self.c0 = ch(4)
        self.fc = nn.Linear(z_dim, self.c0 * 16, bias=False)
        self.bn0 = nn.BatchNorm2d(self.c0)
        blocks = []
        s = 4
        for _ in range(n_up):
            blocks += [nn.ConvTranspose2d(ch(s), ch(2 * s), 4, 2, 1, bias=False), nn.BatchNorm2d(ch(2 * s)), nn.ReLU()]
            s *= 2
        self.blocks = nn.Sequential(*blocks)
        self.to_img = nn.Conv2d(ch(resolution), channels, 3, 1, 1)
        init_weights(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, truncation: float = 1.0) -> torch.Tensor:
        if truncation != 1.0:
            z = z * truncation
        h = self.fc(z).view(z.shape[0], self.c0, 4, 4)
        h = torch.relu(self.bn0(h))
        return torch.tanh(self.to_img(self.blocks(h)))


class DCGANDiscriminator(nn.Module):
    """D(x, labels=None) -> logits [N]."""

    def __init__(self, resolution: int, channels: int, width: int = 64, max_width: int = 256,
                 spectral_norm: bool = True):
        super().__init__()
        n_down = log2_int(resolution, low=8, high=1024) - 2
        ch = lambda s: channels_at(s, resolution, width, max_width)
        layers: list[nn.Module] = []
        c_in, s = channels, resolution
        for _ in range(n_down):
            layers += [nn.Conv2d(c_in, ch(s // 2), 4, 2, 1), nn.LeakyReLU(0.2)]
            c_in, s = ch(s // 2), s // 2
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in * 16, 1)
        init_weights(self)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                maybe_sn(m, spectral_norm)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                mbstd_chunk: int | None = None) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1)).squeeze(1)


class DCGANLoss(NoiseGANLoss):
    """The shared noise-family loss; labels are never passed (num_classes == 0)."""


@register
class DCGAN(GANFamily):
    name = "dcgan"
    kind = "noise"
    generator_cls = DCGANGenerator
    discriminator_cls = DCGANDiscriminator
    loss_cls = DCGANLoss

    @classmethod
    def generator_kwargs(cls, model, data: DataInfo) -> dict[str, Any]:
        return {"z_dim": model.z_dim, "resolution": data.resolution, "channels": data.channels,
                "width": model.width, "max_width": model.max_width}

    @classmethod
    def discriminator_kwargs(cls, model, data: DataInfo) -> dict[str, Any]:
        return {"resolution": data.resolution, "channels": data.channels, "width": model.width,
                "max_width": model.max_width, "spectral_norm": bool(cls.model_value(model, "spectral_norm"))}

    @classmethod
    def loss_kwargs(cls, model, data: DataInfo) -> dict[str, Any]:
        return {"mode_seeking": float(cls.model_value(model, "mode_seeking"))}
