"""A compact StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN").

Modelled on NVlabs/stylegan2-ada-pytorch (`training/networks.py`, `training/loss.py`), cut down
for 16-256 px and tiny CPU tests, and self-contained (it owns its layers):

- Mapping: pixel-normalised z (+ a normalised label embedding when conditional) -> `mapping_layers`
  equalised-lr FC layers (lr multiplier 0.01) -> w. `w_avg` (global) and `w_avg_class` (one row per
  class) are EMA-tracked in train mode and used by the truncation trick
  w = w_avg + psi * (w - w_avg); conditional models truncate towards their own class's mean.
- Synthesis: learned 4x4 constant, modulated/demodulated 3x3 convs, per-channel noise strengths,
  toRGB skip outputs, bilinear x2 upsampling. As in the reference, training modulates the
  activations around ONE shared-weight conv (cheap, keeps channels_last, plain conv backward);
  inference fuses the per-sample weights into one grouped conv (`modulated_conv2d(fused=...)`). Channels at resolution r are
  min(max_width, width * resolution / r).
- Style mixing (train mode only): with probability `style_mixing` the layers from a random cutoff
  on take the w of a second z, drawn inside the same forward (one forward per phase under DDP).
- Noise: fresh random noise per call in train mode, the fixed `noise_const` buffers in eval mode.
- Eval mode is one batched forward with no cross-sample op (every conv, matmul and norm is per
  row); the Sampler runs it on fixed-size padded chunks, so an image's bytes depend only on its
  own z / label / truncation, not on its chunk neighbours (tests/test_stylegan2.py checks this).
- Discriminator: residual, minibatch-stddev (contiguous groups of min(4, chunk), which must
  divide the chunk), projection conditioning logit += <embed(y), h> / sqrt(C).
- Loss: phases "D", "Dreg" (lazy R1), "G", "Greg" (lazy path length); see `StyleGAN2Loss`.

Spectral norm (`model.spectral_norm`) is ignored here: StyleGAN2 relies on equalised learning rate
plus R1 instead (set `training.r1_gamma` > 0).
"""

from __future__ import annotations

import math
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
    mode_seeking_loss,
    paired_labels,
    r1_penalty,
    unwrap,
)
from ganaug.models.layers import channels_at, minibatch_stddev
from ganaug.models.registry import DataInfo, GANFamily, register

_LRELU_GAIN = math.sqrt(2.0)
# Inference (eval mode) on CUDA fuses the per-sample weights into one grouped conv, as the reference
# does; on CPU the shared-conv form measured ~2x faster (benchmarks/stylegan2_sampling.py reports
# both). None = that rule; True / False force one form. Training always uses the shared conv.
FUSED_INFERENCE: bool | None = None


def _fused(x: torch.Tensor, training: bool) -> bool:
    if training:
        return False
    return x.is_cuda if FUSED_INFERENCE is None else bool(FUSED_INFERENCE)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    # Gain sqrt(2) keeps activations' second moment constant (equalised lr, He init).
    return F.leaky_relu(x, 0.2) * _LRELU_GAIN


def _normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def _check_resolution(resolution: int) -> int:
    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"stylegan2: resolution must be a power of two >= 8, got {resolution}")
    return int(math.log2(resolution))


# ------------------------------------------------------------------------------ layers

class EqualLinear(nn.Module):
    """FC layer with equalised learning rate: weights ~ N(0, 1/lr_mul), scaled at runtime."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bias_init: float = 0.0,
                 lr_multiplier: float = 1.0, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias is not None else None
        if w.shape[0] == 1:
            # A single output as an elementwise product: F.linear's backward would hand this [1, C]
            # weight a grad with transposed strides, which DDP warns about.
            x = (x * w.to(x.dtype)).sum(dim=-1, keepdim=True) + (0 if b is None else b.to(x.dtype))
        else:
            x = F.linear(x, w.to(x.dtype), None if b is None else b.to(x.dtype))
        return _lrelu(x) if self.activation else x


class EqualConv2d(nn.Module):
    """Conv with equalised learning rate; `down` average-pools by 2 after the conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: bool = True, down: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2
        self.activation = activation
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        x = F.conv2d(x, w, b, padding=self.padding)
        if self.down:
            x = F.avg_pool2d(x, 2)
        return _lrelu(x) if self.activation else x


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     demodulate: bool = True, padding: int = 0, fused: bool = False) -> torch.Tensor:
    """Per-sample modulated (and demodulated) conv, StyleGAN2 Fig. 2d.

    x [N, I, H, W], weight [O, I, k, k], styles [N, I].
    fused=False (training): scale x by the styles, one conv with the shared weight, scale the
    output by the demodulation coefficients; the same maths as the fused form, with no [N, O, I, k, k]
    tensor and a memory format that follows x (channels_last stays channels_last).
    fused=True (inference): build the per-sample weights and run one grouped conv.
    """
    n, in_ch, h, w_ = x.shape
    out_ch, _, kh, kw = weight.shape
    if not fused:
        dcoefs = None
        if demodulate:  # sum_{i,k} (w_oik s_i)^2 = (s^2) @ (sum_k w_oik^2)^T
            dcoefs = (styles.float().square() @ weight.float().square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()
        x = x * styles.to(x.dtype).reshape(n, in_ch, 1, 1)
        x = F.conv2d(x, weight.to(x.dtype), padding=padding)
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(n, out_ch, 1, 1)
        return x
    wgt = weight.unsqueeze(0) * styles.reshape(n, 1, in_ch, 1, 1)           # [N, O, I, k, k]
    if demodulate:
        dcoefs = (wgt.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()           # [N, O]
        wgt = wgt * dcoefs.reshape(n, out_ch, 1, 1, 1)
    x = x.reshape(1, n * in_ch, h, w_)
    out = F.conv2d(x, wgt.reshape(n * out_ch, in_ch, kh, kw).to(x.dtype), padding=padding, groups=n)
    return out.reshape(n, out_ch, out.shape[2], out.shape[3])


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (+ optional x2 upsample) -> noise -> bias -> lrelu."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool = False):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros(out_channels))   # per channel, starts off
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.up = up
        self.resolution = resolution

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = modulated_conv2d(x, self.weight, styles, demodulate=True, padding=1, fused=_fused(x, self.training))
        if self.training:
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
        else:
            noise = self.noise_const.to(x.dtype).reshape(1, 1, self.resolution, self.resolution)
        x = x + noise * self.noise_strength.to(x.dtype).reshape(1, -1, 1, 1)
        return _lrelu(x + self.bias.to(x.dtype).reshape(1, -1, 1, 1))


class ToRGB(nn.Module):
    """Modulated 1x1 conv without demodulation (StyleGAN2's tRGB)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=_fused(x, self.training))
        return x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)


class SynthesisBlock(nn.Module):
    """One resolution: [up-conv] conv -> toRGB, with the skip image upsampled and added."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int):
        super().__init__()
        self.first = resolution == 4
        if self.first:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution)
        self.torgb = ToRGB(out_channels, img_channels, w_dim)
        self.num_ws = 2 if self.first else 3   # ws consumed; the toRGB w is shared with the next block

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor):
        if self.first:
            x = self.const.to(ws.dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0])
        else:
            x = self.conv0(x, ws[:, 0])
            x = self.conv1(x, ws[:, 1])
        y = self.torgb(x, ws[:, -1])
        if img is not None:
            img = F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
            y = y + img
        return x, y


# ------------------------------------------------------------------------------ generator

class MappingNetwork(nn.Module):
    def __init__(self, z_dim: int, w_dim: int, num_layers: int, num_classes: int = 0, embed_dim: int = 0,
                 lr_multiplier: float = 0.01):
        super().__init__()
        self.num_classes = num_classes
        self.embed = EqualLinear(num_classes, embed_dim) if num_classes > 0 else None
        dims = [z_dim + (embed_dim if num_classes > 0 else 0)] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            EqualLinear(dims[i], dims[i + 1], lr_multiplier=lr_multiplier, activation=True)
            for i in range(num_layers)
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        x = _normalize_2nd_moment(z)
        if self.embed is not None:
            onehot = F.one_hot(labels.long(), self.num_classes).to(z.dtype)
            x = torch.cat([x, _normalize_2nd_moment(self.embed(onehot))], dim=1)
        for layer in self.layers:
            x = layer(x)
        return x


class StyleGAN2Generator(nn.Module):
    """G(z, labels=None, truncation=1.0) -> images NCHW, roughly in [-1, 1] (not clamped).

    `truncation` is a float or a per-sample tensor [N]. Buffers: `w_avg` [w_dim],
    `w_avg_class` [num_classes, w_dim] (conditional only), `noise_const` per synthesis layer.
    """

    def __init__(self, resolution: int = 32, channels: int = 1, z_dim: int = 128, w_dim: int = 128,
                 mapping_layers: int = 4, width: int = 64, max_width: int = 256, num_classes: int = 0,
                 embed_dim: int = 64, style_mixing: float = 0.9, w_avg_beta: float = 0.995):
        super().__init__()
        log2 = _check_resolution(resolution)
        self.resolution, self.channels = resolution, channels
        self.z_dim, self.w_dim, self.num_classes = z_dim, w_dim, num_classes
        self.style_mixing = style_mixing
        self.w_avg_beta = w_avg_beta
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers, num_classes, embed_dim)
        blocks = []
        in_ch = 0
        for r in (2 ** i for i in range(2, log2 + 1)):
            out_ch = channels_at(r, resolution, width, max_width)
            blocks.append(SynthesisBlock(in_ch, out_ch, w_dim, r, channels))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        # Block b reads ws[start_b : start_b + num_ws_b]; consecutive blocks overlap by one (toRGB).
        self.num_ws = 2 * (log2 - 1)
        self.register_buffer("w_avg", torch.zeros(w_dim))
        if num_classes > 0:
            self.register_buffer("w_avg_class", torch.zeros(num_classes, w_dim))

    # -- mapping + truncation
    def _check_labels(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        if self.num_classes == 0:
            return None
        if labels is None:
            raise ValueError(f"class-conditional StyleGAN2 generator needs labels (0..{self.num_classes - 1})")
        labels = torch.as_tensor(labels, device=z.device).long().reshape(-1)
        if labels.shape[0] != z.shape[0]:
            raise ValueError(f"got {labels.shape[0]} labels for {z.shape[0]} latents")
        return labels

    @torch.no_grad()
    def _update_w_avg(self, w: torch.Tensor, labels: torch.Tensor | None) -> None:
        w = w.detach().float()
        self.w_avg.lerp_(w.mean(0), 1.0 - self.w_avg_beta)
        if labels is not None:
            # Per-class means for the classes present in this batch; cheap and makes truncation
            # pull towards each class's own average instead of a cross-class blur.
            sums = torch.zeros_like(self.w_avg_class).index_add_(0, labels, w)
            counts = torch.bincount(labels, minlength=self.num_classes).to(w.dtype)
            present = counts > 0
            means = sums[present] / counts[present].unsqueeze(1)
            old = self.w_avg_class[present]
            # A class's first batch sets its mean (an all-zero row = never seen: a mapping output
            # is never exactly 0), instead of a slow lerp from 0 that biases early truncation.
            fresh = (old == 0).all(dim=1, keepdim=True)
            self.w_avg_class[present] = torch.where(fresh, means, old.lerp(means, 1.0 - self.w_avg_beta))

    def _truncate(self, w: torch.Tensor, labels: torch.Tensor | None, truncation) -> torch.Tensor:
        if not torch.is_tensor(truncation) and float(truncation) == 1.0:
            return w
        psi = torch.as_tensor(truncation, dtype=w.dtype, device=w.device).reshape(-1, 1)
        center = self.w_avg_class[labels] if labels is not None else self.w_avg.unsqueeze(0)
        # lerp(a, b, 1) == b and lerp(a, b, 0) == a exactly.
        return torch.lerp(center.to(w.dtype), w, psi.expand_as(w))

    def mapping_ws(self, z: torch.Tensor, labels: torch.Tensor | None = None, truncation=1.0) -> torch.Tensor:
        """z -> ws [N, num_ws, w_dim], with style mixing (train mode) and truncation applied."""
        labels = self._check_labels(z, labels)
        n = z.shape[0]
        mix = self.training and self.style_mixing > 0 and torch.rand(()).item() < self.style_mixing
        if mix:
            # Both latents go through the mapping in one call: one forward per phase under DDP.
            z2 = torch.randn_like(z)
            w_all = self.mapping(torch.cat([z, z2]), None if labels is None else torch.cat([labels, labels]))
            w, w2 = w_all[:n], w_all[n:]
        else:
            w = self.mapping(z, labels)
        if self.training:
            self._update_w_avg(w, labels)
        w = self._truncate(w, labels, truncation)
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        if mix:
            w2 = self._truncate(w2, labels, truncation)
            cutoff = int(torch.randint(1, self.num_ws, ()).item())
            ws = torch.cat([ws[:, :cutoff], w2.unsqueeze(1).expand(-1, self.num_ws - cutoff, -1)], dim=1)
        return ws

    def synthesis(self, ws: torch.Tensor) -> torch.Tensor:
        x = img = None
        start = 0
        for block in self.blocks:
            x, img = block(x, img, ws[:, start:start + block.num_ws])
            start += block.num_ws - 1
        return img

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, truncation=1.0,
                return_ws: bool = False):
        """Images; with return_ws also the ws they came from (path-length regularisation)."""
        ws = self.mapping_ws(z, labels, truncation)
        img = self.synthesis(ws)
        return (img, ws) if return_ws else img


# ------------------------------------------------------------------------------ discriminator

class DiscriminatorBlock(nn.Module):
    """Residual: (skip(x) + conv1(conv0(x))) / sqrt(2), halving the resolution."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, down=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.skip(F.avg_pool2d(x, 2))
        x = self.conv1(self.conv0(x))
        return (x + y) * math.sqrt(0.5)


class StyleGAN2Discriminator(nn.Module):
    """D(images, labels=None, mbstd_chunk=None) -> logits [N]. Projection-conditioned when num_classes > 0."""

    def __init__(self, resolution: int = 32, channels: int = 1, width: int = 64, max_width: int = 256,
                 num_classes: int = 0, mbstd_group: int = 4):
        super().__init__()
        log2 = _check_resolution(resolution)
        self.resolution, self.channels, self.num_classes = resolution, channels, num_classes
        self.mbstd_group = mbstd_group
        self.from_rgb = EqualConv2d(channels, channels_at(resolution, resolution, width, max_width), 1)
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(channels_at(2 ** i, resolution, width, max_width),
                               channels_at(2 ** (i - 1), resolution, width, max_width))
            for i in range(log2, 2, -1)
        )
        c4 = channels_at(4, resolution, width, max_width)
        self.conv = EqualConv2d(c4 + 1, c4, 3)
        self.fc = EqualLinear(c4 * 16, c4, activation=True)
        self.out = EqualLinear(c4, 1)
        self.embed = nn.Parameter(torch.randn(num_classes, c4)) if num_classes > 0 else None
        self.proj_gain = 1.0 / math.sqrt(c4)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                mbstd_chunk: int | None = None) -> torch.Tensor:
        x = self.from_rgb(images)
        for block in self.blocks:
            x = block(x)
        x = minibatch_stddev(x, self.mbstd_group, mbstd_chunk)
        h = self.fc(self.conv(x).flatten(1))
        logits = self.out(h).squeeze(1)
        if self.embed is not None:
            if labels is None:
                raise ValueError("class-conditional StyleGAN2 discriminator needs labels")
            e = self.embed[labels.long()].to(h.dtype)
            logits = logits + (e * h).sum(dim=1) * self.proj_gain
        return logits


# ------------------------------------------------------------------------------ loss

class StyleGAN2Loss(GANLoss):
    """Phases as in stylegan2-ada-pytorch's StyleGAN2Loss: "D", "Dreg" (lazy R1), "G" and
    "Greg" (lazy path-length regularisation, every `ctx.pl_every` steps when ctx.pl_weight > 0,
    on half the batch, pl_mean decay 0.01). Both regularisers run in fp32 (see ganaug.losses).

    Fakes are generated with the real batch's labels, so D sees matched class distributions.
    Each phase runs exactly one forward through the module it trains, then one backward.
    """

    PL_DECAY = 0.01
    PL_BATCH_SHRINK = 2

    def __init__(self, G: nn.Module, D: nn.Module, ctx: LossContext, mode_seeking: float = 0.0):
        super().__init__(G, D, ctx)
        self.mode_seeking = float(mode_seeking)
        self.pl_mean = torch.zeros((), device=next(unwrap(G).parameters()).device)

    def wants_phase(self, phase: str, step: int) -> bool:
        if phase == "Greg":
            return self.ctx.pl_weight > 0 and step % self.ctx.pl_every == 0
        return super().wants_phase(phase, step)

    def state_dict(self) -> dict:
        return {"pl_mean": self.pl_mean.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        if "pl_mean" in state:
            self.pl_mean = state["pl_mean"].to(self.pl_mean.device).clone()

    def _labels(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if unwrap(self.G).num_classes == 0:
            return None
        return batch["label"].to(batch["image"].device).long()

    def _z(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        real = batch["image"]
        return torch.randn(real.shape[0], unwrap(self.G).z_dim, device=real.device)

    def accumulate_gradients(self, phase: str, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        real = batch["image"]
        labels = self._labels(batch)
        adv, aug = self.ctx.adversarial, self.ctx.augment
        n = real.shape[0]

        if phase == "G":
            z = self._z(batch)
            if self.mode_seeking > 0:  # conditioning alone collapses small classes: see losses.mode_seeking_ratio
                labels = paired_labels(labels)
            with frozen(unwrap(self.D)) as D_raw:  # D is not trained here: no grads, no DDP sync
                with autocast(self.ctx):
                    fake = self.G(z, labels)
                    logits = D_raw(aug(fake), labels).float()
                ms_loss, stats = mode_seeking_loss(self.mode_seeking, fake, z)
                loss = adv.g_loss(logits) + ms_loss
                loss.backward()
            return {"loss_g": float(loss.detach()), "d_fake": float(logits.detach().mean()), **stats}

        if phase == "D":
            with torch.no_grad(), autocast(self.ctx):
                fake = unwrap(self.G)(self._z(batch), labels)
            both_labels = None if labels is None else torch.cat([labels, labels])
            with autocast(self.ctx):
                x = torch.cat([aug(real), aug(fake.detach().to(real.dtype))])
                logits = self.D(x, both_labels, mbstd_chunk=n).float()
            real_logits, fake_logits = logits[:n], logits[n:]
            loss = adv.d_loss(real_logits, fake_logits)
            loss.backward()
            return d_stats(loss, real_logits, fake_logits)

        if phase == "Dreg":
            if self.ctx.r1_gamma <= 0:
                return {}
            real_in = real.detach().requires_grad_(True)
            logits = self.D(aug(real_in), labels).float()  # fp32: R1 differentiates it twice
            r1 = r1_penalty(logits, real_in)
            loss = r1 * (self.ctx.r1_gamma / 2.0) * self.ctx.r1_every
            # `logits * 0` puts every D parameter (e.g. the output bias, which R1 does not reach)
            # in the graph, so DDP without find_unused_parameters still reduces all of them.
            (loss + logits.sum() * 0.0).backward()
            return {"loss_r1": float(loss.detach()), "r1": float(r1.detach())}

        if phase == "Greg":
            if self.ctx.pl_weight <= 0:
                return {}
            m = max(1, n // self.PL_BATCH_SHRINK)
            z = self._z(batch)[:m]
            img, ws = self.G(z, None if labels is None else labels[:m], return_ws=True)  # fp32
            noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
            (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
            lengths = grad.square().sum(dim=2).mean(dim=1).sqrt()
            pl_mean = self.pl_mean.lerp(lengths.mean(), self.PL_DECAY)
            self.pl_mean = pl_mean.detach()
            penalty = (lengths - pl_mean).square().mean()
            loss = penalty * self.ctx.pl_weight * self.ctx.pl_every
            # img * 0 keeps every G parameter in the graph for DDP (as the reference does).
            (loss + img[:, 0, 0, 0].sum() * 0.0).backward()
            return {"loss_pl": float(loss.detach()), "pl_length": float(lengths.mean().detach()),
                    "pl_mean": float(self.pl_mean)}

        raise ValueError(f"unknown phase {phase!r}")


# ------------------------------------------------------------------------------ family

@register
class StyleGAN2Family(GANFamily):
    name = "stylegan2"
    kind = "noise"
    generator_cls = StyleGAN2Generator
    discriminator_cls = StyleGAN2Discriminator
    loss_cls = StyleGAN2Loss

    @classmethod
    def _num_classes(cls, model, data: DataInfo) -> int:
        return int(data.num_classes) if model.conditional else 0

    @classmethod
    def generator_kwargs(cls, model, data: DataInfo) -> dict[str, Any]:
        return {
            "resolution": int(data.resolution),
            "channels": int(data.channels),
            "z_dim": int(model.z_dim),
            "w_dim": int(model.w_dim),
            "mapping_layers": int(model.mapping_layers),
            "width": int(model.width),
            "max_width": int(model.max_width),
            "num_classes": cls._num_classes(model, data),
            "embed_dim": int(model.embed_dim),
            "style_mixing": float(model.style_mixing),
        }

    @classmethod
    def discriminator_kwargs(cls, model, data: DataInfo) -> dict[str, Any]:
        return {
            "resolution": int(data.resolution),
            "channels": int(data.channels),
            "width": int(model.width),
            "max_width": int(model.max_width),
            "num_classes": cls._num_classes(model, data),
            "mbstd_group": 4,
        }

    @classmethod
    def loss_kwargs(cls, model, data: DataInfo) -> dict[str, Any]:
        return {"mode_seeking": float(cls.model_value(model, "mode_seeking"))}
