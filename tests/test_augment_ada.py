"""training.augment: ada — ADA's own "bgc" pipeline (ganaug/augment_ada.py), on tiny CPU tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_run_config

from ganaug import augment_ada
from ganaug.augment import AugmentPipe
from ganaug.augment_ada import ADA_OPS, AdaAugment
from ganaug.config import ConfigError
from ganaug.errors import UserError

torch.set_num_threads(1)

GEOMETRIC = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
COLOUR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
RGB_ONLY = ("lumaflip", "hue", "saturation")


def only(*ops: str) -> AdaAugment:
    """The pipeline with every op but `ops` switched off (multiplier 0)."""
    return AdaAugment(**{op: (1.0 if op in ops else 0.0) for op in GEOMETRIC + COLOUR})


def smooth(n: int = 8, c: int = 3, size: int = 16, seed: int = 0, lo: float = -0.8, hi: float = 0.8) -> torch.Tensor:
    """Smooth random images in [lo, hi] (band-limited, so resampling is near-exact on them)."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, c, 4, 4, generator=g), size=(size, size), mode="bicubic", align_corners=True)
    x = (x - x.amin()) / (x.amax() - x.amin())
    return lo + (hi - lo) * x


def run(aug, x, p, seed=0, groups=None):
    torch.manual_seed(seed)
    return aug(x, p, groups)


def test_sym6_taps_are_an_orthonormal_lowpass():
    h = np.array(augment_ada._SYM6)
    assert h.sum() == pytest.approx(math.sqrt(2), abs=1e-12)
    for shift in range(6):  # sum h[k] h[k + 2s] = delta(s): up then down reconstructs exactly
        assert (h[: len(h) - 2 * shift] * h[2 * shift:]).sum() == pytest.approx(float(shift == 0), abs=1e-11)


@pytest.mark.parametrize("op", GEOMETRIC + COLOUR)
@pytest.mark.parametrize("channels", [1, 3])
def test_each_op_is_identity_at_p0_and_changes_at_p1(op, channels):
    x = torch.rand(8, channels, 16, 16) * 2 - 1
    aug = only(op)
    assert torch.equal(run(aug, x, 0.0), x)
    y = run(aug, x, 1.0)
    assert y.shape == x.shape and torch.isfinite(y).all()
    if channels == 1 and op in RGB_ONLY:
        assert torch.equal(y, x)  # luma flip, hue, saturation act on RGB only
    else:
        assert (y - x).abs().amax() > 1e-2


def test_whole_pipeline_identity_at_p0_and_through_the_augment_pipe():
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    assert torch.equal(run(AdaAugment(), x, 0.0), x)
    assert torch.equal(run(AdaAugment(), x, torch.tensor(0.0)), x)  # p as a tensor
    assert AugmentPipe("ada", p=0.0)(x) is x
    pipe = AugmentPipe("ada", p=1.0, target=0.0)
    assert ADA_OPS[0].takes_p
    torch.manual_seed(3)
    y = pipe(x)
    assert torch.equal(y, run(AdaAugment(), x, 1.0, seed=3))  # the pipe hands its p to the op
    assert not torch.allclose(y, x)


def test_flip_and_quarter_turns_are_exact_permutations_of_smooth_images():
    x = smooth()
    y = run(only("xflip"), x, 1.0)
    errs = torch.stack([(y - x).abs().mean((1, 2, 3)), (y - x.flip(-1)).abs().mean((1, 2, 3))])
    assert errs.amin(0).amax() < 0.01        # every sample is x or its mirror image
    assert (errs.argmin(0) == 1).any() and (errs.argmin(0) == 0).any()
    y = run(only("rotate90"), x, 1.0, seed=1)
    errs = torch.stack([(y - torch.rot90(x, k, (2, 3))).abs().mean((1, 2, 3)) for k in range(4)])
    assert errs.amin(0).amax() < 0.01
    assert len(set(errs.argmin(0).tolist())) > 1


def test_integer_translation_is_a_reflect_padded_shift():
    x = torch.rand(8, 2 + 1, 16, 16) * 2 - 1  # white noise: any fractional resampling would show
    y = run(only("xint"), x, 1.0)
    padded = F.pad(x, [2, 2, 2, 2], mode="reflect")  # xint_max 0.125 * 16 = 2 pixels at most
    shifted = [padded[..., 2 - dy:18 - dy, 2 - dx:18 - dx] for dy in range(-2, 3) for dx in range(-2, 3)]
    errs = torch.stack([(y - s).abs().amax((1, 2, 3)) for s in shifted])
    assert errs.amin(0).amax() < 1e-4
    assert (errs.argmin(0) != 12).any()       # 12 = the zero shift


def test_geometric_chain_keeps_the_mean_without_black_borders():
    aug = only(*GEOMETRIC)
    flat = torch.full((8, 1, 16, 16), 0.7)
    assert (run(aug, flat, 1.0) - 0.7).abs().amax() < 1e-4  # reflection everywhere: nothing to fill
    x = smooth(n=16, lo=0.2, hi=0.9)
    for seed in range(3):
        y = run(aug, x, 1.0, seed=seed)
        assert (y.mean() - x.mean()).abs() < 0.05
        assert y.amin() > 0.1 and y.amax() < 1.0   # no -1 (black) or 0 (zero padding) corners


def test_colour_matrix_on_grey_and_rgb():
    # A grey RGB image stays grey under hue and saturation (they rotate / scale about the luma axis).
    grey = torch.rand(8, 1, 8, 8).expand(8, 3, 8, 8) * 2 - 1
    y = run(only("hue", "saturation"), grey, 1.0)
    assert torch.allclose(y[:, 0], y[:, 1], atol=1e-5) and torch.allclose(y[:, 0], y[:, 2], atol=1e-5)
    assert torch.allclose(y, grey, atol=1e-5)
    # Luma flip of an RGB image negates its luma and keeps its chroma.
    x = torch.rand(8, 3, 8, 8) * 2 - 1
    y = run(only("lumaflip"), x, 1.0)
    luma_x, luma_y = x.mean(1), y.mean(1)
    flipped = torch.isclose(luma_y, -luma_x, atol=1e-5).all(dim=(1, 2))
    kept = torch.isclose(y, x, atol=1e-6).all(dim=(1, 2, 3))
    assert (flipped | kept).all() and flipped.any()
    assert torch.allclose((y - luma_y[:, None])[flipped], (x - luma_x[:, None])[flipped], atol=1e-5)


def test_gradients_flow_to_the_input_also_twice():
    x = (torch.rand(4, 3, 12, 12) * 2 - 1).requires_grad_(True)
    w = torch.randn(4, 3, 12, 12)
    y = run(AdaAugment(), x, 0.8)
    (g,) = torch.autograd.grad((y * w).sum(), x, create_graph=True)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # R1 differentiates D(aug(x)) w.r.t. x, then that w.r.t. D's weights: a second-order path.
    scale = torch.ones((), requires_grad=True)
    y = run(AdaAugment(), x, 0.8)
    (g,) = torch.autograd.grad((y * scale).square().sum(), x, create_graph=True)
    g.square().sum().backward()
    assert torch.isfinite(scale.grad) and scale.grad.abs() > 0


def test_gradcheck_float64():
    x = (torch.rand(2, 3, 8, 8, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    aug = AdaAugment()
    assert torch.autograd.gradcheck(lambda t: run(aug, t, 1.0, seed=5), (x,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_same_seed_same_output_other_seed_other_output():
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    a, b, c = run(AdaAugment(), x, 0.5, seed=7), run(AdaAugment(), x, 0.5, seed=7), run(AdaAugment(), x, 0.5, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_channel_groups_share_every_draw():
    a = torch.rand(6, 3, 16, 16) * 2 - 1
    y = run(AdaAugment(), torch.cat([a, a], dim=1), 1.0, groups=(3, 3))
    assert torch.equal(y[:, :3], y[:, 3:])
    g = a[:, :1]
    y = run(AdaAugment(), torch.cat([g, a], dim=1), 1.0, groups=(1, 3))  # pix2pix grey -> RGB pairs
    assert y.shape == (6, 4, 16, 16) and torch.isfinite(y).all()
    pipe = AugmentPipe("ada", p=1.0, target=0.0)
    torch.manual_seed(0)
    y = pipe(torch.cat([a, a], dim=1), groups=(3, 3))
    assert torch.equal(y[:, :3], y[:, 3:])
    with pytest.raises(ValueError, match="1- or 3-channel"):
        run(AdaAugment(), torch.rand(2, 2, 8, 8), 1.0)


def test_channels_last_float32_under_autocast_and_bf16():
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    ref = run(AdaAugment(), x, 0.7)
    y = run(AdaAugment(), x.contiguous(memory_format=torch.channels_last), 0.7)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y, ref, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = run(AdaAugment(), x, 0.7)
    assert y.dtype == torch.float32 and torch.equal(y, ref)  # computed in float32 regardless
    y = run(AdaAugment(), x.bfloat16(), 0.7)
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), run(AdaAugment(), x.bfloat16().float(), 0.7), atol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs_in_float32_under_bf16_autocast():
    x = (torch.rand(4, 3, 16, 16, device="cuda") * 2 - 1).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = run(AdaAugment(), x, 0.7)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(run(AdaAugment(), x.detach(), 0.0), x.detach())


def test_config_takes_ada_alone():
    assert tiny_run_config(augment="ada").training.augment == "ada"
    with pytest.raises(ConfigError, match="'ada' is ADA's complete pipeline.*must stand alone"):
        tiny_run_config(augment="ada,cutout")
    with pytest.raises(UserError, match="must stand alone"):
        AugmentPipe("translation,ada")
    with pytest.raises(ConfigError, match="did you mean 'ada'"):
        tiny_run_config(augment="adaa")


def test_trainer_with_ada_pipeline_moves_p(monkeypatch):
    from ganaug.training import GANTrainer

    seen: list[float] = []
    call = AdaAugment.__call__

    def spy(self, x, p, groups=None):
        seen.append(float(p))
        return call(self, x, p, groups)

    monkeypatch.setattr(AdaAugment, "__call__", spy)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 16, 16, 1), dtype=np.uint8)
    labels, names = np.arange(8) % 4, [str(i) for i in range(4)]
    step = 8 / 500  # batch 8 per adjustment, ada_kimg 0.5
    for target in (1.0, 0.01):
        cfg = tiny_run_config("cgan", augment="ada", ada_p=0.5, ada_target=target, ada_interval=1, ada_kimg=0.5,
                              r1_gamma=1.0, r1_every=2, lr_d=1e-3)
        tr = GANTrainer(cfg, images, labels, names)
        seen.clear()
        p_before, moves = 0.5, []
        for _ in range(6):
            stats = tr.train_step()
            assert seen and all(p == pytest.approx(p_before) for p in seen)  # the op got the controller's p
            seen.clear()
            rt = stats["d_real_sign"]
            expected = p_before + (step if rt > target else -step if rt < target else 0.0)
            assert stats["ada_p"] == pytest.approx(min(1.0, max(0.0, expected)))
            moves.append(stats["ada_p"] - p_before)
            p_before = stats["ada_p"]
        if target == 1.0:  # r_t can never exceed 1: p only falls
            assert all(m <= 0 for m in moves) and p_before < 0.5
        else:              # this D soon calls every real image real: r_t = 1 > 0.01, p rises
            assert any(m > 0 for m in moves)


def test_trainer_with_ada_resumes_exactly():
    """The loop reseeds the RNG per step, so a resumed run redraws the same ada augmentations."""
    import io

    from ganaug.training import GANTrainer

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    labels, names = np.arange(16) % 4, [str(i) for i in range(4)]
    cfg = tiny_run_config("cgan", channels=3, augment="ada", ada_p=0.4, ada_interval=2, ada_kimg=1.0,
                          r1_gamma=1.0, r1_every=2)
    a = GANTrainer(cfg, images, labels, names)
    for _ in range(3):
        a.train_step()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    cont = [a.train_step() for _ in range(3)]
    b = GANTrainer(cfg, images, labels, names)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert [b.train_step() for _ in range(3)] == cont


def test_reports_carry_r_t_as_ada_rt():
    """fit's reports (and so metrics.jsonl) log the controller's input r_t as `ada_rt`: the
    window's mean of each D step's mean sign(D(real))."""
    from ganaug.training import GANTrainer

    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (8, 16, 16, 1), dtype=np.uint8)
    labels, names = np.arange(8) % 4, [str(i) for i in range(4)]
    tr = GANTrainer(tiny_run_config("cgan", augment="ada", ada_p=0.2, lr_d=1e-3), images, labels, names)
    signs: list[float] = []
    step = tr.train_step

    def recording_step():
        stats = step()
        signs.append(stats["d_real_sign"])
        return stats

    tr.train_step = recording_step
    reports: list[dict] = []
    tr.fit(4, report_every=2, on_report=reports.append)
    assert [r["step"] for r in reports] == [2, 4]
    for r, window in zip(reports, (signs[:2], signs[2:])):
        assert "d_real_sign" not in r
        assert r["ada_rt"] == pytest.approx(sum(window) / 2)
