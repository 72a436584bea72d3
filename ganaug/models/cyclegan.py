"""CycleGAN (Zhu et al. 2017): unpaired image-to-image translation A <-> B.

Two ResNet generators (G_ab, G_ba) and two PatchGAN discriminators (D_a, D_b). They live in ONE
generator module and ONE discriminator module, because checkpoints, EMA and DDP all treat
"the generator" and "the discriminator" as single modules:

  G(x)                -> G_ab(x), the product's translation A -> B
  G(a, b)             -> dict with every tensor the G phase needs, in one forward
                         {fake_b, rec_a, fake_a, rec_b[, idt_b, idt_a]}
  G.translate(x, "ab" | "ba")
  D(a_images, b_images) -> (D_a logits, D_b logits), patch grids [N, 1, h, w]

Loss: adversarial both ways + cycle_weight * (|G_ba(G_ab(a)) - a| + |G_ab(G_ba(b)) - b|)
      + identity_weight * cycle_weight * (|G_ab(b) - b| + |G_ba(a) - a|).

InstanceNorm everywhere: an output depends only on its own input (batch invariance in eval),
and concatenating several image sets into one batch changes nothing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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


class ResnetBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False),
            norm_layer("instance", channels), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False),
            norm_layer("instance", channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """c7s1-w, n_down stride-2 convs, res_blocks residual blocks, mirrored upsampling, c7s1 + tanh."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 64, max_width: int = 256,
                 res_blocks: int = 6, n_down: int = 2):
        super().__init__()
        c = lambda i: min(width * 2 ** i, max_width)
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, c(0), 7, bias=False),
                                   norm_layer("instance", c(0)), nn.ReLU()]
        for i in range(n_down):
            layers += [nn.Conv2d(c(i), c(i + 1), 3, 2, 1, bias=False), norm_layer("instance", c(i + 1)),
                       nn.ReLU()]
        layers += [ResnetBlock(c(n_down)) for _ in range(res_blocks)]
        for i in reversed(range(n_down)):
            layers += [nn.ConvTranspose2d(c(i + 1), c(i), 3, 2, 1, output_padding=1, bias=False),
                       norm_layer("instance", c(i)), nn.ReLU()]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c(0), out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CycleGANGenerator(nn.Module):
    """Both directions in one module. `G(x)` is A -> B; `G(a, b)` is the whole training forward."""

    num_classes = 0  # translation families are unconditional

    def __init__(self, resolution: int, in_channels: int = 3, out_channels: int = 3, width: int = 64,
                 max_width: int = 256, res_blocks: int = 6, n_down: int | None = None):
        super().__init__()
        depth = log2_int(resolution, low=8, high=1024)
        if n_down is None:
            n_down = min(2, depth - 2)  # 16x16 -> 4x4 bottleneck at most
        self.resolution, self.in_channels, self.out_channels = resolution, in_channels, out_channels
        self.g_ab = ResnetGenerator(in_channels, out_channels, width, max_width, res_blocks, n_down)
        self.g_ba = ResnetGenerator(out_channels, in_channels, width, max_width, res_blocks, n_down)
        init_weights(self)

    def translate(self, x: torch.Tensor, direction: str = "ab") -> torch.Tensor:
        if direction == "ab":
            return self.g_ab(x)
        if direction == "ba":
            return self.g_ba(x)
        raise ValueError(f"direction must be 'ab' or 'ba', got {direction!r}")

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None, identity: bool = True):
        if b is None:
            return self.g_ab(a)
        na, nb = a.shape[0], b.shape[0]
        out: dict[str, torch.Tensor] = {}
        if identity and self.in_channels == self.out_channels:
            # Each generator sees its translation input and its identity input in one batch.
            out["fake_b"], out["idt_b"] = self.g_ab(torch.cat([a, b])).split([na, nb])
            out["fake_a"], out["idt_a"] = self.g_ba(torch.cat([b, a])).split([nb, na])
        else:
            out["fake_b"], out["fake_a"] = self.g_ab(a), self.g_ba(b)
        out["rec_a"] = self.g_ba(out["fake_b"])
        out["rec_b"] = self.g_ab(out["fake_a"])
        return out


# ----------------------------------------------------------------------------- discriminator


class CycleGANDiscriminator(nn.Module):
    """D_a judges domain-A images, D_b domain-B images; both in one call: D(a, b) -> (la, lb)."""

    def __init__(self, resolution: int, in_channels: int = 3, out_channels: int = 3, width: int = 64,
                 max_width: int = 256, n_layers: int | None = None, norm: str = "instance",
                 spectral_norm: bool = False):
        super().__init__()
        depth = log2_int(resolution, low=8, high=1024)
        if n_layers is None:
            n_layers = patchgan_layers(depth)  # keep the patch grid >= 2x2 on small images
        self.in_channels, self.out_channels = in_channels, out_channels
        self.d_a = PatchGAN(in_channels, width, max_width, n_layers, norm, spectral_norm)
        self.d_b = PatchGAN(out_channels, width, max_width, n_layers, norm, spectral_norm)

    def forward(self, a_images: torch.Tensor | None, b_images: torch.Tensor | None):
        la = self.d_a(a_images) if a_images is not None else None
        lb = self.d_b(b_images) if b_images is not None else None
        return la, lb


# ----------------------------------------------------------------------------- loss


class ImagePool:
    """Shrivastava et al. 2017 history buffer: D sometimes sees older fakes, which damps oscillation.

    As junyanz's ImagePool: until `size` fakes are stored every fake passes through (and is
    stored); then each fake, with probability 1/2, is swapped for a random stored one. The pool
    draws from its own CPU generator, so its state (`state_dict`: the stored images and the
    generator's state, plain tensors) makes a resumed run exact.
    """

    def __init__(self, size: int, seed: int = 0):
        self.size, self.images = int(size), []
        self.rng = torch.Generator().manual_seed(int(seed))

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size <= 0:
            return images
        out = []
        for img in images.detach():
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif float(torch.rand((), generator=self.rng)) < 0.5:
                i = int(torch.randint(self.size, (), generator=self.rng))
                out.append(self.images[i].to(img.device))
                self.images[i] = img.clone()
            else:
                out.append(img)
        return torch.stack(out)

    def state_dict(self) -> dict:
        images = torch.stack([t.cpu() for t in self.images]) if self.images else torch.empty(0)
        return {"images": images, "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.images = list(state["images"].unbind(0)) if state["images"].numel() else []
        self.rng.set_state(state["rng"])


class CycleGANLoss(GANLoss):
    """Phases: "D" (both discriminators, one D forward), "G" (one G forward), "Dreg" (R1).

    The identity term asks G_ab(b) ~ b. It preserves colour when A and B share a palette, but it
    contradicts mappings that change intensities (e.g. source_transform=invert): on digits with
    A = -B, identity_weight=0.5 leaves held-out |G_ab(a) - b| near 0.55 where 0 reaches 0.12.
    """

    def __init__(self, G: nn.Module, D: nn.Module, ctx: LossContext, model: Any = None,
                 cycle_weight: float | None = None, identity_weight: float | None = None, pool_size: int = 0):
        super().__init__(G, D, ctx)
        if cycle_weight is None:
            cycle_weight = getattr(model, "cycle_weight", 10.0) if model is not None else 10.0
        if identity_weight is None:
            identity_weight = getattr(model, "identity_weight", 0.5) if model is not None else 0.5
        self.cycle_weight, self.identity_weight = float(cycle_weight), float(identity_weight)
        self.pool_a, self.pool_b = ImagePool(pool_size, 1), ImagePool(pool_size, 2)

    def state_dict(self) -> dict:
        return {"pool_a": self.pool_a.state_dict(), "pool_b": self.pool_b.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "pool_a" in state:  # absent in checkpoints from before the pool was saved
            self.pool_a.load_state_dict(state["pool_a"])
            self.pool_b.load_state_dict(state["pool_b"])

    def _d(self, D: nn.Module, a: torch.Tensor, b: torch.Tensor, fp32: bool = False):
        a, b = self.ctx.augment(a), self.ctx.augment(b)
        with autocast(self.ctx, not fp32):
            la, lb = D(a, b)
        return la.float(), lb.float()

    @staticmethod
    def _interp(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        n = min(real.shape[0], fake.shape[0])
        eps = torch.rand(n, 1, 1, 1, device=real.device, dtype=real.dtype)
        return (eps * real[:n] + (1 - eps) * fake[:n]).requires_grad_(True)

    def accumulate_gradients(self, phase: str, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        a, b = batch["a"], batch["b"]
        na, nb = a.shape[0], b.shape[0]
        adv = self.ctx.adversarial
        if phase == "D":
            G_raw = unwrap(self.G)
            with torch.no_grad(), autocast(self.ctx):
                fake_b = G_raw.translate(a, "ab").float()
                fake_a = G_raw.translate(b, "ba").float()
            fake_a, fake_b = self.pool_a.query(fake_a), self.pool_b.query(fake_b)
            parts_a, parts_b = [a, fake_a], [b, fake_b]
            if self.ctx.use_gp:  # interpolates ride along in the same D forward
                interp_a, interp_b = self._interp(a, fake_a), self._interp(b, fake_b)
                parts_a.append(interp_a)
                parts_b.append(interp_b)
            la, lb = self._d(self.D, torch.cat(parts_a), torch.cat(parts_b), fp32=self.ctx.use_gp)
            real_a, fake_a_l = la[:na], la[na:na + fake_a.shape[0]]
            real_b, fake_b_l = lb[:nb], lb[nb:nb + fake_b.shape[0]]
            loss = adv.d_loss(real_a, fake_a_l) + adv.d_loss(real_b, fake_b_l)
            stats = {}
            if self.ctx.use_gp:
                gp = (gradient_penalty(la[na + fake_a.shape[0]:], interp_a)
                      + gradient_penalty(lb[nb + fake_b.shape[0]:], interp_b))
                loss = loss + self.ctx.gp_weight * gp
                stats["gp"] = gp.item()
            loss.backward()
            stats.update(d_stats(loss, torch.cat([real_a.flatten(), real_b.flatten()]),
                                 torch.cat([fake_a_l.flatten(), fake_b_l.flatten()])))
            return stats
        if phase == "Dreg":
            if self.ctx.r1_gamma <= 0:
                return {}
            a_req, b_req = a.detach().requires_grad_(True), b.detach().requires_grad_(True)
            la, lb = self._d(self.D, a_req, b_req, fp32=True)
            r1 = r1_penalty(la, a_req) + r1_penalty(lb, b_req)
            # The logits * 0 term puts every D parameter in the graph (the last biases have no
            # input gradient), which DDP needs to finish its reduction.
            (r1 * (self.ctx.r1_gamma / 2) * self.ctx.r1_every + (la.sum() + lb.sum()) * 0).backward()
            return {"r1": r1.item()}
        if phase == "G":
            use_idt = self.identity_weight > 0
            with autocast(self.ctx):
                out = self.G(a, b, identity=use_idt)
            out = {k: v.float() for k, v in out.items()}
            with frozen(unwrap(self.D)) as D_raw:
                la, lb = self._d(D_raw, out["fake_a"], out["fake_b"])
            loss_adv = adv.g_loss(la) + adv.g_loss(lb)
            cycle = F.l1_loss(out["rec_a"], a) + F.l1_loss(out["rec_b"], b)
            loss = loss_adv + self.cycle_weight * cycle
            stats = {}
            if "idt_a" in out:
                idt = F.l1_loss(out["idt_b"], b) + F.l1_loss(out["idt_a"], a)
                loss = loss + self.identity_weight * self.cycle_weight * idt
                stats["idt"] = idt.item()
            loss.backward()
            stats.update(loss_g=loss.item(), loss_g_adv=loss_adv.item(), cycle=cycle.item())
            return stats
        raise ValueError(f"unknown phase {phase!r}")


# ----------------------------------------------------------------------------- family


@register
class CycleGAN(TranslationFamily):
    name = "cyclegan"
    paired = False  # batch source: A and B drawn independently: the model never sees aligned pairs
    generator_cls = CycleGANGenerator
    discriminator_cls = CycleGANDiscriminator
    loss_cls = CycleGANLoss

    @classmethod
    def generator_kwargs(cls, model, data: DataInfo) -> dict[str, Any]:
        return {"resolution": data.resolution, "in_channels": data.channels, "out_channels": data.channels,
                "width": model.width, "max_width": model.max_width, "res_blocks": model.res_blocks,
                "n_down": None}

    @classmethod
    def loss_kwargs(cls, model, data: DataInfo | None = None) -> dict[str, Any]:
        """Extra keyword arguments for loss_cls(G, D, ctx, **kwargs)."""
        return {"cycle_weight": model.cycle_weight, "identity_weight": model.identity_weight,
                "pool_size": int(getattr(model, "pool_size", 0))}
