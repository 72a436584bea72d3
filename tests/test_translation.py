"""Image-to-image families (pix2pix, cyclegan): shapes, save/load, loss phases, batch
invariance, and a real learning check on scikit-learn digits (A = inverted digit, B = digit)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ganaug.config import ModelConfig
from ganaug.losses import LossContext, make_adversarial_loss
from ganaug.models import cyclegan, pix2pix  # noqa: F401  (registers the families)
from ganaug.models.registry import DataInfo, get_family

FAMILIES = ["pix2pix", "cyclegan"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cfg(family: str, **kw) -> ModelConfig:
    base = {"family": family, "width": 8, "max_width": 32, "res_blocks": 2, "spectral_norm": True}
    base.update(kw)
    return ModelConfig(**base)


def build(family: str, resolution: int, channels: int, **kw):
    fam = get_family(family)
    cfg, info = tiny_cfg(family, **kw), DataInfo(resolution=resolution, channels=channels)
    gk, dk = fam.generator_kwargs(cfg, info), fam.discriminator_kwargs(cfg, info)
    torch.manual_seed(0)
    return fam, cfg, fam.build_generator(gk), fam.build_discriminator(dk), gk, dk


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def lsgan_ctx(**kw) -> LossContext:
    return LossContext(adversarial=make_adversarial_loss("lsgan"), augment=lambda x: x, **kw)


def make_loss(fam, cfg, G, D, ctx):
    return fam.loss_cls(G, D, ctx, **fam.loss_kwargs(cfg))


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize("family", FAMILIES)
def test_registered_and_kwargs_json(family):
    fam = get_family(family)
    assert fam.name == family and fam.kind == "translation"
    info = DataInfo(resolution=32, channels=3)
    for kwargs in (fam.generator_kwargs(ModelConfig(), info), fam.discriminator_kwargs(ModelConfig(), info)):
        assert json.loads(json.dumps(kwargs)) == kwargs


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("resolution,channels", [(16, 1), (16, 3), (32, 1), (32, 3), (64, 3)])
def test_forward_shapes(family, resolution, channels):
    _, _, G, D, _, _ = build(family, resolution, channels)
    assert G.num_classes == 0 and G.in_channels == channels and G.out_channels == channels
    x = torch.rand(2, channels, resolution, resolution) * 2 - 1
    y = G(x)
    assert y.shape == x.shape and y.abs().max() <= 1
    if family == "pix2pix":
        logits = D(x, y)
        assert logits.ndim == 4 and logits.shape[:2] == (2, 1) and logits.shape[2] >= 2
    else:
        assert G.translate(x, "ba").shape == x.shape
        assert torch.equal(G.translate(x, "ab"), G(x))
        out = G(x, x[:1])  # a and b batches may differ in size
        assert set(out) == {"fake_b", "rec_a", "fake_a", "rec_b", "idt_b", "idt_a"}
        assert out["fake_b"].shape == out["rec_a"].shape == out["idt_a"].shape == x.shape
        assert out["fake_a"].shape == out["rec_b"].shape == out["idt_b"].shape == x[:1].shape
        la, lb = D(x, x[:1])
        assert la.shape[:2] == (2, 1) and lb.shape[:2] == (1, 1) and la.shape[2] >= 2


@pytest.mark.parametrize("family", FAMILIES)
def test_safetensors_round_trip(family, tmp_path):
    fam, _, G, D, gk, dk = build(family, 32, 3)
    # A few train-mode forwards move spectral-norm vectors; they must survive the trip too.
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        for _ in range(2):
            D(x, x)
    save_file(G.state_dict(), str(tmp_path / "g.safetensors"))
    save_file(D.state_dict(), str(tmp_path / "d.safetensors"))
    G2, D2 = fam.build_generator(json.loads(json.dumps(gk))), fam.build_discriminator(json.loads(json.dumps(dk)))
    G2.load_state_dict(load_file(str(tmp_path / "g.safetensors")))
    D2.load_state_dict(load_file(str(tmp_path / "d.safetensors")))
    for m in (G, D, G2, D2):
        m.eval()
    with torch.no_grad():
        assert torch.equal(G(x), G2(x))
        if family == "pix2pix":
            assert torch.equal(D(x, x), D2(x, x))
        else:
            assert torch.equal(G.translate(x, "ba"), G2.translate(x, "ba"))
            assert all(torch.equal(p, q) for p, q in zip(D(x, x), D2(x, x)))


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_batch_invariance(family):
    """The promise is the Sampler's: it runs G in fixed-size padded chunks, so an image's bytes
    do not depend on how many were asked for at once. A raw G(x[i:i+1]) against a row of G(x)
    is NOT promised (kernels may take another path per batch shape), so it is checked only to
    float tolerance."""
    from ganaug.sampling import Sampler

    # pix2pix at 32x32 has a dropout layer: eval mode must switch it off.
    _, _, G, _, _, _ = build(family, 32, 3)
    meta = {"kind": "translation", "family": family, "num_classes": 0, "class_names": [],
            "resolution": 32, "channels": 3}
    sampler = Sampler(G, meta, device="cpu")
    imgs = (torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8).numpy()
    together = sampler.translate(imgs)
    for i in range(5):
        assert sampler.translate(imgs[i:i + 1]).tobytes() == together[i:i + 1].tobytes()
    assert sampler.translate(imgs[1:4]).tobytes() == together[1:4].tobytes()
    assert sampler.translate(imgs).tobytes() == together.tobytes()  # deterministic in eval
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    G.eval()
    with torch.no_grad():
        batched = G(x)
        for i in range(4):
            assert torch.allclose(G(x[i:i + 1]), batched[i:i + 1], atol=1e-5)


# ----------------------------------------------------------------------------- loss phases


def _snapshot(m):
    return [p.detach().clone() for p in m.parameters()]


def _changed(before, m):
    return any(not torch.equal(b, p) for b, p in zip(before, m.parameters()))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", ["plain", "gp_r1", "autocast"])
def test_one_step_each_phase(family, variant):
    fam, cfg, G, D, _, _ = build(family, 16, 1, spectral_norm=variant != "gp_r1")
    kw = {}
    if variant == "gp_r1":
        kw = {"use_gp": True, "r1_gamma": 1.0, "r1_every": 1}
    elif variant == "autocast":
        kw = {"autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}
    loss = make_loss(fam, cfg, G, D, lsgan_ctx(**kw))
    opt = {"G": torch.optim.Adam(G.parameters(), 1e-3), "D": torch.optim.Adam(D.parameters(), 1e-3)}
    g = torch.Generator().manual_seed(1)
    batch = {"a": torch.rand(4, 1, 16, 16, generator=g) * 2 - 1, "b": torch.rand(4, 1, 16, 16, generator=g) * 2 - 1}
    extra = {"pix2pix": "l1", "cyclegan": "cycle"}[family]
    expected = {"D": {"loss_d", "d_real", "d_fake", "d_real_sign"}, "G": {"loss_g", extra}}
    phases = ["D", "Dreg", "G"] if variant == "gp_r1" else ["D", "G"]
    for phase in phases:
        trained, other = (G, D) if phase == "G" else (D, G)
        before_t, before_o = _snapshot(trained), _snapshot(other)
        G.zero_grad(set_to_none=True)
        D.zero_grad(set_to_none=True)
        stats = loss.accumulate_gradients(phase, batch, step=0)
        assert stats and all(np.isfinite(v) for v in stats.values()), (phase, stats)
        assert expected.get(phase, {"r1"}) <= set(stats)
        assert all(p.grad is None for p in other.parameters()), f"{phase} phase leaked grads into the other net"
        assert all(p.requires_grad for p in D.parameters())  # frozen D restored after the G phase
        opt["G" if phase == "G" else "D"].step()
        assert _changed(before_t, trained) and not _changed(before_o, other), phase
    if variant == "gp_r1":
        assert "gp" in loss.accumulate_gradients("D", batch, step=1)
    else:
        assert loss.accumulate_gradients("Dreg", batch, step=0) == {}  # r1 off


def test_cyclegan_identity_off_skips_identity_outputs():
    fam, cfg, G, D, _, _ = build("cyclegan", 16, 1, identity_weight=0.0)
    loss = make_loss(fam, cfg, G, D, lsgan_ctx())
    x = torch.zeros(2, 1, 16, 16)
    assert "idt_a" not in G(x, x, identity=False)
    assert "idt" not in loss.accumulate_gradients("G", {"a": x, "b": x}, step=0)


# ----------------------------------------------------------------------------- learning on real data


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    imgs = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0 * 2 - 1)[:, None]
    x = F.interpolate(imgs, size=16, mode="bilinear", align_corners=False).clamp(-1, 1)
    return x[:1500], x[1500:]  # train, held out (297)


def _heldout_l1(G, test):
    """Mean |G(a) - b| on held-out pairs, a = -b."""
    was = G.training
    G.eval()
    with torch.no_grad():
        err = (G(-test) - test).abs().mean().item()
    G.train(was)
    return err


def _train(family, train, steps, paired, **cfg_kw):
    fam, cfg, G, D, _, _ = build(family, 16, 1, spectral_norm=False, **cfg_kw)
    loss = make_loss(fam, cfg, G, D, lsgan_ctx())
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        i = torch.randint(0, len(train), (32,), generator=g)
        j = i if paired else torch.randint(0, len(train), (32,), generator=g)  # unpaired: independent draws
        batch = {"a": -train[i], "b": train[j]}
        for phase, opt in (("D", opt_d), ("G", opt_g)):
            opt.zero_grad(set_to_none=True)
            loss.accumulate_gradients(phase, batch, step)
            opt.step()
    return G


@pytest.mark.parametrize("family,steps,paired,ratio,cfg_kw", [
    ("pix2pix", 200, True, 0.25, {}),
    # The identity loss asks G_ab(b) ~ b, which contradicts an inversion mapping, so it is off.
    ("cyclegan", 150, False, 0.5, {"identity_weight": 0.0}),
])
def test_learns_inversion_on_digits(digits, family, steps, paired, ratio, cfg_kw, capsys):
    train, test = digits
    _, _, G0, _, _, _ = build(family, 16, 1, spectral_norm=False, **cfg_kw)
    before = _heldout_l1(G0, test)
    t0 = time.time()
    G = _train(family, train, steps, paired, **cfg_kw)
    after = _heldout_l1(G, test)
    with capsys.disabled():
        print(f"\n{family}: held-out L1 {before:.3f} -> {after:.3f} ({after / before:.2f}x) "
              f"in {steps} steps, {time.time() - t0:.1f}s")
    assert after < ratio * before, (before, after)


# ----------------------------------------------------------------------------- the generic loop


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("loss", ["hinge", "wgan-gp"])
def test_generic_loop_trains_translation_family(family, loss):
    """The family plugs into GANTrainer: batches {"a", "b"}, loss_kwargs, R1, ADA augment."""
    from ganaug.config import RunConfig
    from ganaug.training import GANTrainer

    cfg = RunConfig()
    cfg.model.family, cfg.model.width, cfg.model.max_width = family, 8, 32
    if family == "cyclegan":  # a key of another family is an error
        cfg.model.res_blocks = 1
    cfg.data.resolution, cfg.data.channels, cfg.data.source_transform = 16, 1, "invert"
    t = cfg.training
    t.batch_size, t.loss, t.r1_gamma, t.r1_every = 4, loss, 1.0, 2
    t.augment, t.ada_p, t.ada_interval = "color,translation,cutout", 0.5, 1
    cfg.validate()
    images = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 1), dtype=np.uint8)
    tr = GANTrainer(cfg, images, np.zeros(16, dtype=np.int64), ["0"])
    seen: set[str] = set()
    for _ in range(2):
        stats = tr.train_step()
        assert all(np.isfinite(v) for v in stats.values()), stats
        seen |= set(stats)
    extra = {"pix2pix": "l1", "cyclegan": "cycle"}[family]
    assert {"loss_g", "loss_d", "d_real", "d_fake", "d_real_sign", "r1", extra} <= seen
    assert ("gp" in seen) == (loss == "wgan-gp")
    x = torch.zeros(2, 1, 16, 16)
    assert tr.G_ema(x).shape == x.shape


# ----------------------------------------------------------------------------- issue 14


def test_r1_and_gp_on_patch_logits_use_the_patch_mean():
    """R1/WGAN-GP differentiate the per-sample mean of the patch logits (what the losses use), so
    a penalty weight means the same at every patch count: replicating one logit over an h x w
    grid leaves the penalty unchanged (the sum made it (h*w)**2 larger)."""
    from ganaug.losses import gradient_penalty, r1_penalty

    x = torch.randn(3, 2, 8, 8, requires_grad=True)
    logit = (x.square().sum(dim=(1, 2, 3)) * 0.1)            # [N]
    for grid in (1, 4, 30):
        patches = logit[:, None, None, None].expand(3, 1, grid, grid)
        torch.testing.assert_close(r1_penalty(patches, x), r1_penalty(logit, x))
        torch.testing.assert_close(gradient_penalty(patches, x), gradient_penalty(logit, x))


def test_pix2pix_colour_augmentation_keeps_the_halves_apart():
    """Colour ops take their statistics per half of the (A | B) pair, while both halves share every
    random draw: B's augmented pixels do not depend on A's content, and the geometry matches."""
    from ganaug.augment import AugmentPipe
    from ganaug.models.pix2pix import Pix2PixLoss

    pipe = AugmentPipe("color,translation,cutout", p=1.0, target=0.0)
    ctx = LossContext(adversarial=make_adversarial_loss("lsgan"), augment=pipe)
    seen = []
    loss = Pix2PixLoss(None, None, ctx)
    b = torch.rand(4, 3, 16, 16) * 2 - 1
    for a in (torch.rand(4, 3, 16, 16) * 2 - 1, -torch.ones(4, 3, 16, 16)):
        torch.manual_seed(5)
        loss._d(lambda a_aug, b_aug: seen.append((a_aug, b_aug)) or b_aug.mean((1, 2, 3)), a, b)
    (a1, b1), (a2, b2) = seen
    assert torch.equal(b1, b2)
    # Shared geometry: A2 is a constant image, so its zeros are exactly the cutout / shift padding,
    # which B got at the same pixels.
    assert (b1 == 0).any() and torch.equal(a2 == 0, b1 == 0)
