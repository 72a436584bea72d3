"""ADA's own augmentation pipeline (`training.augment: ada`): "bgc" of Karras et al. 2020.

"Training Generative Adversarial Networks with Limited Data" (stylegan2-ada), appendix B: the
pipeline of pixel blitting (b), general geometric (g) and colour (c) transforms. Every op is
applied to each sample independently with probability p * (the op's multiplier, 1 in bgc), and
draws its parameter whether or not it is applied (so the RNG stream does not depend on p; the
RGB-only colour ops draw nothing for grayscale images):

  geometric, composed into ONE inverse affine matrix per sample (output pixel -> input pixel,
  pixel units, origin at the image centre), then resampled once:
    xflip       horizontal mirror (x -> -x) with probability 1/2
    rot90       rotation by k * 90 degrees, k uniform in {0, 1, 2, 3}
    xint        integer translation, uniform in [-xint_max, xint_max] * size, rounded to pixels
    scale       isotropic scaling by 2^N(0, scale_std^2)
    rotate      pre-rotation, uniform in [-rotate_max, rotate_max] * pi, with probability
                p_rot = 1 - sqrt(1 - p) (so P(pre or post rotation) = p)
    aniso       anisotropic scaling by 2^N(0, aniso_std^2) on x and its inverse on y
    rotate      post-rotation, as the pre-rotation
    xfrac       fractional translation by N(0, xfrac_std^2) * size
  colour, composed into ONE 4x4 matrix (homogeneous RGB) per sample:
    brightness  add N(0, brightness_std^2)
    contrast    scale by 2^N(0, contrast_std^2) (about 0, the mid-grey of [-1, 1] images)
    lumaflip    Householder reflection about the luma axis v = (1, 1, 1) / sqrt(3), prob. 1/2
    hue         rotation about v, uniform in [-hue_max, hue_max] * pi
    saturation  scale the components orthogonal to v by 2^N(0, saturation_std^2)

Constants are the reference's bgc: xint_max 0.125, scale_std 0.2, rotate_max 1, aniso_std 0.2,
xfrac_std 0.125, brightness_std 0.2, contrast_std 0.5, hue_max 1, saturation_std 1.

Resampling (anti-aliased, no black borders): the image is reflect-padded as far as the
transformed output needs (at most size - 1 per side, as the reference; beyond that grid_sample
reflects), upsampled 2x with the orthogonal sym6 wavelet low-pass (polyphase), sampled
bilinearly at 2x the output resolution, and filtered and decimated back with the same low-pass
reversed. This is the reference's scheme (sym6, 2x supersampling, reflect padding), written here
with depthwise conv2d and grid_sample; it is the identity up to float rounding for an identity
matrix (orthogonal filter: up then down reconstructs), samples whose matrix is exactly the
identity are not resampled at all, and integer translations are exact pixel shifts. One
addition: sym6's group delay (0.2 px) is compensated (see _DELAY), so flips and quarter turns
of band-limited images match the exact pixel permutations closely.

Channels: colour needs 1- or 3-channel images (or `groups` of 1 and 3 channels, each taking
the same colour matrix). Luma flip, hue and saturation act on 3-channel images only; a
1-channel image gets brightness and contrast (the reference would also apply luma flip to
grayscale, where it is x -> -x; that is left out here on purpose).

Numerics: computed in float32 (float64 stays float64) with autocast off, returned in the input's
dtype and memory format (channels_last in, channels_last out). Differentiable w.r.t. the images,
twice (R1 differentiates D(aug(x)) w.r.t. x and then w.r.t. D's weights). Deterministic given
the global torch RNG on the input's device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Daubechies' least-asymmetric orthogonal low-pass with 6 vanishing moments ("sym6"): taps sum
# to sqrt(2) and are orthonormal under even shifts (tests/test_augment_ada.py checks both).
_SYM6 = (
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
)
_TAPS = len(_SYM6)   # 12
# sym6 is not symmetric: its low-frequency group delay sum(k h_k) / sum(h_k) = 5.098 is not the
# centre 5.5, so the upsampled image sits _DELAY px off its nominal grid (and the decimation,
# with the taps reversed, reads _DELAY px the other way). An identity warp cancels the two; any
# other warp is conjugated by a _DELAY shift so that flips and rotations are not off by 0.4 px.
_DELAY = (5.5 - sum(k * t for k, t in enumerate(_SYM6)) / sum(_SYM6)) / 2
_Q = 3               # output pixels on each side that the decimation filter reads (2 * _Q >= 12 / 2 - 1)


def _matrices(n: int, rows, device, dtype) -> torch.Tensor:
    """[n, R, C] from a nested list whose entries are numbers or [n] tensors."""
    out = torch.zeros(n, len(rows), len(rows[0]), device=device, dtype=dtype)
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            if not (isinstance(v, (int, float)) and v == 0):
                out[:, i, j] = v
    return out


def _rotation_inv(c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Inverse of a rotation with cos c, sin s (i.e. the rotation by minus that angle)."""
    return _matrices(c.shape[0], [[c, s, 0], [-s, c, 0], [0, 0, 1]], c.device, c.dtype)


def _scale_inv(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    return _matrices(sx.shape[0], [[1 / sx, 0, 0], [0, 1 / sy, 0], [0, 0, 1]], sx.device, sx.dtype)


def _translate_inv(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    return _matrices(tx.shape[0], [[1, 0, -tx], [0, 1, -ty], [0, 0, 1]], tx.device, tx.dtype)


def _reflect_pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Reflection padding of any width (repeated reflections when wider than the image)."""
    while left or right or top or bottom:
        h, w = x.shape[-2:]
        pads = [min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1)]
        x = F.pad(x, pads, mode="reflect")
        left, right, top, bottom = left - pads[0], right - pads[1], top - pads[2], bottom - pads[3]
    return x


def _upsample2(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """[M, C, H + 6, W + 6] -> [M, C, 2H, 2W]: zero-stuffing + sqrt(2) * h per axis, in polyphase
    form (the even outputs use the even taps, the odd ones the odd taps; depthwise convolutions).
    Output pixel m sits at input position m / 2 - 1/4 + 3 (pixel-centre convention; the 3 border
    pixels are consumed)."""
    m, c = x.shape[:2]
    g = h * math.sqrt(2)
    k = torch.zeros(2, _TAPS // 2 + 1, device=h.device, dtype=h.dtype)
    k[0, :-1], k[1, 1:] = g[0::2], g[1::2]
    k = k.repeat(c, 1)                                                     # [2C, 7]: (channel, phase)
    y = F.conv2d(x, k.view(2 * c, 1, 1, -1), groups=c)                    # [M, 2C, H + 6, W]
    hh, ww = y.shape[2:]
    y = y.reshape(m, c, 2, hh, ww).permute(0, 1, 3, 4, 2).reshape(m, c, hh, 2 * ww)  # interleave along W
    y = F.conv2d(y, k.view(2 * c, 1, -1, 1), groups=c)                    # [M, 2C, H, 2W]
    hh = y.shape[2]
    return y.reshape(m, c, 2, hh, 2 * ww).transpose(2, 3).reshape(m, c, 2 * hh, 2 * ww)  # ... along H


def _downsample2(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """[M, C, 2(H + 2Q), 2(W + 2Q)] -> [M, C, H, W]: h reversed / sqrt(2) per axis, every other
    sample. With `_upsample2` and an identity resampling in between this reconstructs exactly."""
    c = x.shape[1]
    g = (h.flip(0) / math.sqrt(2)).repeat(c, 1)                            # [C, 12]
    x = F.conv2d(x[..., 1:, 1:], g.view(c, 1, 1, -1), stride=(1, 2), groups=c)
    return F.conv2d(x, g.view(c, 1, -1, 1), stride=(2, 1), groups=c)


def _resample(x: torch.Tensor, g_inv: torch.Tensor) -> torch.Tensor:
    """Warp x [M, C, H, W] by the inverse matrices g_inv [M, 3, 3] (output -> input, centred
    pixel coordinates), anti-aliased: see the module docstring."""
    m, c, h, w = x.shape
    if h < 2 or w < 2:
        raise ValueError(f"ada augmentation needs images of at least 2x2 pixels, got {h}x{w}")
    dev, dt = x.device, x.dtype
    shift = torch.tensor([[1, 0, _DELAY], [0, 1, _DELAY], [0, 0, 1]], device=dev, dtype=dt)
    unshift = torch.tensor([[1, 0, -_DELAY], [0, 1, -_DELAY], [0, 0, 1]], device=dev, dtype=dt)
    g_inv = shift @ g_inv @ unshift  # see _DELAY
    # How far outside the image the (extended) output's corners land; +1 for bilinear taps.
    ex, ey = w / 2 + _Q, h / 2 + _Q
    corners = torch.tensor([[-ex, ex, ex, -ex], [-ey, -ey, ey, ey], [1, 1, 1, 1]], device=dev, dtype=dt)
    src = g_inv @ corners                                                  # [M, 3, 4]
    need = torch.stack([-src[:, 0].amin() - w / 2, -src[:, 1].amin() - h / 2,
                        src[:, 0].amax() - w / 2, src[:, 1].amax() - h / 2]) + 1
    mx0, my0, mx1, my1 = (int(v) for v in need.clamp(min=0).ceil().tolist())
    mx0, mx1, my0, my1 = min(mx0, w - 1), min(mx1, w - 1), min(my0, h - 1), min(my1, h - 1)
    wm, hm = w + mx0 + mx1, h + my0 + my1
    filt = torch.tensor(_SYM6, device=dev, dtype=dt)

    up = _upsample2(_reflect_pad(x, mx0 + 3, mx1 + 3, my0 + 3, my1 + 3), filt)  # [M, C, 2hm, 2wm]
    # Normalised output coordinate -> centred output pixel: v = n * (size + 2Q) / 2; centred input
    # pixel u -> normalised input coordinate: (2u + m0 - m1) / padded size (align_corners=False).
    out_of = torch.diag(torch.tensor([(w + 2 * _Q) / 2, (h + 2 * _Q) / 2, 1.0], device=dev, dtype=dt))
    to_in = torch.tensor([[2 / wm, 0, (mx0 - mx1) / wm], [0, 2 / hm, (my0 - my1) / hm], [0, 0, 1]],
                         device=dev, dtype=dt)
    theta = (to_in @ g_inv @ out_of)[:, :2, :]
    size = [m, c, 2 * (h + 2 * _Q), 2 * (w + 2 * _Q)]
    grid = F.affine_grid(theta, size, align_corners=False)
    y = F.grid_sample(up, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return _downsample2(y, filt)


class AdaAugment:
    """The bgc pipeline as a callable `(x [N, C, H, W] in [-1, 1], p, groups=None) -> x'`.

    `p` (float or 0-dim tensor) is the adaptive probability the ADA controller (AugmentPipe)
    moves; each op fires with probability `multiplier * p`. The multipliers are 1 (bgc); set one
    to 0 to switch that op off (the tests isolate ops that way). `groups` (channel counts summing
    to C) marks stacked images (pix2pix's A | B) that share every draw; each group is 1 or 3
    channels.
    """

    takes_p = True  # AugmentPipe hands this op p itself, not a per-sample mask

    def __init__(self, *, xflip: float = 1, rotate90: float = 1, xint: float = 1, scale: float = 1,
                 rotate: float = 1, aniso: float = 1, xfrac: float = 1, brightness: float = 1,
                 contrast: float = 1, lumaflip: float = 1, hue: float = 1, saturation: float = 1,
                 xint_max: float = 0.125, scale_std: float = 0.2, rotate_max: float = 1.0,
                 aniso_std: float = 0.2, xfrac_std: float = 0.125, brightness_std: float = 0.2,
                 contrast_std: float = 0.5, hue_max: float = 1.0, saturation_std: float = 1.0):
        self.xflip, self.rotate90, self.xint, self.scale = xflip, rotate90, xint, scale
        self.rotate, self.aniso, self.xfrac = rotate, aniso, xfrac
        self.brightness, self.contrast, self.lumaflip = brightness, contrast, lumaflip
        self.hue, self.saturation = hue, saturation
        self.xint_max, self.scale_std, self.rotate_max = xint_max, scale_std, rotate_max
        self.aniso_std, self.xfrac_std = aniso_std, xfrac_std
        self.brightness_std, self.contrast_std = brightness_std, contrast_std
        self.hue_max, self.saturation_std = hue_max, saturation_std

    # ------------------------------------------------------------------ parameters
    @staticmethod
    def _fires(n: int, prob: torch.Tensor, device) -> torch.Tensor:
        return torch.rand(n, device=device) < prob

    def _geometry(self, n: int, h: int, w: int, p: torch.Tensor, device, dt) -> torch.Tensor:
        """[n, 3, 3] inverse matrices, output pixel -> input pixel (exactly I where nothing fired)."""
        g = torch.eye(3, device=device, dtype=dt).expand(n, 3, 3)
        one, zero = torch.ones(n, device=device, dtype=dt), torch.zeros(n, device=device, dtype=dt)

        def draw(values, multiplier_p, default):
            values = values.to(dt)
            return torch.where(self._fires(n, multiplier_p, device), values, default)

        if self.xflip > 0:
            i = draw(torch.randint(0, 2, (n,), device=device), self.xflip * p, zero)
            g = g @ _scale_inv(1 - 2 * i, one)
        if self.rotate90 > 0:
            k = torch.randint(0, 4, (n,), device=device)
            k = torch.where(self._fires(n, self.rotate90 * p, device), k, torch.zeros_like(k))
            cos = torch.tensor([1.0, 0.0, -1.0, 0.0], device=device, dtype=dt)[k]  # exact quarter turns
            sin = torch.tensor([0.0, 1.0, 0.0, -1.0], device=device, dtype=dt)[k]
            g = g @ _rotation_inv(cos, sin)
        if self.xint > 0:
            t = (torch.rand(n, 2, device=device) * 2 - 1) * self.xint_max
            t = torch.where(self._fires(n, self.xint * p, device)[:, None], t, torch.zeros_like(t)).to(dt)
            g = g @ _translate_inv(torch.round(t[:, 0] * w), torch.round(t[:, 1] * h))
        if self.scale > 0:
            s = draw(torch.exp2(torch.randn(n, device=device) * self.scale_std), self.scale * p, one)
            g = g @ _scale_inv(s, s)
        p_rot = 1 - torch.sqrt((1 - self.rotate * p).clamp(0, 1))  # P(pre or post) = rotate * p
        if self.rotate > 0:
            a = draw((torch.rand(n, device=device) * 2 - 1) * math.pi * self.rotate_max, p_rot, zero)
            g = g @ _rotation_inv(torch.cos(a), torch.sin(a))
        if self.aniso > 0:
            s = draw(torch.exp2(torch.randn(n, device=device) * self.aniso_std), self.aniso * p, one)
            g = g @ _scale_inv(s, 1 / s)
        if self.rotate > 0:
            a = draw((torch.rand(n, device=device) * 2 - 1) * math.pi * self.rotate_max, p_rot, zero)
            g = g @ _rotation_inv(torch.cos(a), torch.sin(a))
        if self.xfrac > 0:
            t = torch.randn(n, 2, device=device) * self.xfrac_std
            t = torch.where(self._fires(n, self.xfrac * p, device)[:, None], t, torch.zeros_like(t)).to(dt)
            g = g @ _translate_inv(t[:, 0] * w, t[:, 1] * h)
        return g

    def _colour(self, n: int, rgb: bool, p: torch.Tensor, device, dt) -> tuple[torch.Tensor, torch.Tensor]:
        """([n, 4, 4] for RGB, [n, 4, 4] brightness/contrast only for grayscale); I where nothing fired.
        Every matrix is written as I + (something that is exactly 0 when the op did not fire)."""
        eye = torch.eye(4, device=device, dtype=dt)
        mat = eye.expand(n, 4, 4)
        zero = torch.zeros(n, device=device, dtype=dt)

        def draw(values, multiplier_p, default):
            return torch.where(self._fires(n, multiplier_p, device), values.to(dt), default)

        if self.brightness > 0:
            b = draw(torch.randn(n, device=device) * self.brightness_std, self.brightness * p, zero)
            mat = _matrices(n, [[1, 0, 0, b], [0, 1, 0, b], [0, 0, 1, b], [0, 0, 0, 1]], device, dt) @ mat
        if self.contrast > 0:
            c = draw(torch.exp2(torch.randn(n, device=device) * self.contrast_std), self.contrast * p, zero + 1)
            mat = _matrices(n, [[c, 0, 0, 0], [0, c, 0, 0], [0, 0, c, 0], [0, 0, 0, 1]], device, dt) @ mat
        gray = mat
        if rgb:
            v = torch.tensor([1.0, 1.0, 1.0, 0.0], device=device, dtype=dt) / math.sqrt(3)
            vv = torch.outer(v, v)                                  # projection onto the luma axis
            off_axis = torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.0], device=device, dtype=dt)) - vv
            if self.lumaflip > 0:
                i = draw(torch.randint(0, 2, (n,), device=device), self.lumaflip * p, zero)
                mat = (eye - 2 * i[:, None, None] * vv) @ mat       # Householder reflection
            if self.hue > 0:
                a = draw((torch.rand(n, device=device) * 2 - 1) * math.pi * self.hue_max, self.hue * p, zero)
                cross = torch.zeros(4, 4, device=device, dtype=dt)  # [v]_x: cross product with v
                cross[0, 1], cross[0, 2], cross[1, 2] = -v[2], v[1], -v[0]
                cross = cross - cross.T
                # Rodrigues about v: I + sin(a) [v]_x + (1 - cos(a)) (vv^T - I) on the RGB block.
                mat = (eye + torch.sin(a)[:, None, None] * cross
                       - (1 - torch.cos(a))[:, None, None] * off_axis) @ mat
            if self.saturation > 0:
                s = draw(torch.exp2(torch.randn(n, device=device) * self.saturation_std), self.saturation * p,
                         zero + 1)
                mat = (eye + (s - 1)[:, None, None] * off_axis) @ mat
        return mat, gray

    # ------------------------------------------------------------------ apply
    def __call__(self, x: torch.Tensor, p, groups: Sequence[int] | None = None) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"ada augmentation expects [N, C, H, W] images, got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        groups = [c] if groups is None else [int(g) for g in groups]
        if sum(groups) != c or any(g not in (1, 3) for g in groups):
            raise ValueError(f"ada augmentation needs 1- or 3-channel images (or channel groups of 1 and 3), "
                             f"got {c} channels in groups {groups}")
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        dev = x.device
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        with torch.autocast(dev.type, enabled=False):
            p = torch.as_tensor(p, device=dev, dtype=torch.float32)
            y = x.to(dt).contiguous()

            g_inv = self._geometry(n, h, w, p, dev, dt)
            moved = (g_inv != torch.eye(3, device=dev, dtype=dt)).any(dim=2).any(dim=1)
            idx = moved.nonzero().squeeze(1)
            if idx.numel() == n:
                y = _resample(y, g_inv)
            elif idx.numel() > 0:
                y = y.index_copy(0, idx, _resample(y.index_select(0, idx), g_inv.index_select(0, idx)))

            rgb_mat, gray_mat = self._colour(n, 3 in groups, p, dev, dt)
            eye4 = torch.eye(4, device=dev, dtype=dt)
            parts, start = [], 0
            for size in groups:
                part = y[:, start:start + size]
                start += size
                mat = rgb_mat if size == 3 else gray_mat
                changed = (mat != eye4).any(dim=2).any(dim=1)[:, None, None, None]
                if size == 3:
                    out = torch.einsum("nij,njhw->nihw", mat[:, :3, :3], part) + mat[:, :3, 3, None, None]
                else:
                    # Gray as R = G = B through the RGB matrix, averaged back: scale and offset.
                    rows = mat[:, :3, :].mean(dim=1)
                    out = part * rows[:, :3].sum(dim=1)[:, None, None, None] + rows[:, 3, None, None, None]
                parts.append(torch.where(changed, out, part))
            y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        y = y.to(x.dtype)
        return y.contiguous(memory_format=torch.channels_last) if channels_last else y


# The registry entry (ganaug/choices.py, "ada"): a one-op policy that takes p itself.
ADA_OPS = (AdaAugment(),)
