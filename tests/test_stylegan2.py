"""StyleGAN2 family: shapes, truncation, style mixing, eval determinism, save/load, one training step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ganaug.config import ModelConfig
from ganaug.losses import LossContext, make_adversarial_loss
from ganaug.models.registry import DataInfo, get_family
from ganaug.models.stylegan2 import (
    StyleGAN2Discriminator,
    StyleGAN2Family,
    StyleGAN2Generator,
    StyleGAN2Loss,
    minibatch_stddev,
)

torch.set_num_threads(1)

TINY = {"z_dim": 16, "w_dim": 16, "mapping_layers": 2, "width": 8, "max_width": 16, "embed_dim": 8}


def make_g(resolution=16, channels=1, num_classes=0, **kw):
    torch.manual_seed(0)
    return StyleGAN2Generator(resolution=resolution, channels=channels, num_classes=num_classes,
                              **{**TINY, **kw})


def make_d(resolution=16, channels=1, num_classes=0):
    torch.manual_seed(1)
    return StyleGAN2Discriminator(resolution=resolution, channels=channels, width=8, max_width=16,
                                  num_classes=num_classes)


def to_bytes(x: torch.Tensor) -> bytes:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("resolution,channels,num_classes", [
    (16, 1, 0), (16, 3, 10), (32, 1, 10), (32, 3, 0), (64, 3, 5),
])
def test_forward_shapes(resolution, channels, num_classes):
    G, D = make_g(resolution, channels, num_classes), make_d(resolution, channels, num_classes)
    assert G.z_dim == 16 and G.num_classes == num_classes
    z = torch.randn(3, G.z_dim)
    y = torch.tensor([0, 1, 2]) if num_classes else None
    x = G(z, y)
    assert x.shape == (3, channels, resolution, resolution)
    assert torch.isfinite(x).all()
    logits = D(x, y)
    assert logits.shape == (3,)
    assert torch.isfinite(logits).all()


def test_constructs_for_all_resolutions():
    for r in (16, 32, 64, 128, 256):
        G = StyleGAN2Generator(resolution=r, channels=3, **TINY)
        D = StyleGAN2Discriminator(resolution=r, channels=3, width=8, max_width=16)
        assert G.num_ws == 2 * (int(np.log2(r)) - 1)
        assert len(D.blocks) == int(np.log2(r)) - 2


def test_conditional_needs_labels():
    G, D = make_g(num_classes=3), make_d(num_classes=3)
    with pytest.raises(ValueError):
        G(torch.randn(2, 16))
    with pytest.raises(ValueError):
        D(torch.randn(2, 1, 16, 16))


def test_labels_change_output():
    G = make_g(num_classes=4).eval()
    z = torch.randn(1, 16).repeat(2, 1)
    with torch.no_grad():
        x = G(z, torch.tensor([0, 3]))
    assert not torch.equal(x[0], x[1])


@pytest.mark.parametrize("num_classes", [0, 4])
def test_truncation(num_classes):
    G = make_g(num_classes=num_classes)
    # Give w_avg (and the per-class means) a value by running train-mode forwards.
    with torch.no_grad():
        for _ in range(3):
            y = torch.randint(0, 4, (8,)) if num_classes else None
            G(torch.randn(8, 16), y)
    assert G.w_avg.abs().sum() > 0
    if num_classes:
        assert G.w_avg_class.abs().sum(1).gt(0).all()
    G.eval()
    z = torch.randn(2, 16)
    y = torch.tensor([2, 2]) if num_classes else None
    with torch.no_grad():
        x0 = G(z, y, truncation=0.0)
        x1 = G(z, y, truncation=1.0)
        xh = G(z, y, truncation=0.5)
    assert torch.equal(x0[0], x0[1])          # psi = 0: everything collapses to w_avg
    assert not torch.equal(x1[0], x1[1])
    assert not torch.equal(xh[0], xh[1])
    # A per-sample truncation tensor matches scalar calls.
    with torch.no_grad():
        xm = G(z, y, truncation=torch.tensor([0.0, 1.0]))
    assert torch.equal(xm[0], x0[0]) and torch.equal(xm[1], x1[1])


def test_style_mixing_train_mode():
    G = make_g(num_classes=3, style_mixing=1.0).train()
    z, y = torch.randn(4, 16), torch.tensor([0, 1, 2, 0])
    ws = G.mapping_ws(z, y)
    assert ws.shape == (4, G.num_ws, 16)
    # Mixing always on: the first and last layer get different latents.
    assert not torch.equal(ws[:, 0], ws[:, -1])
    assert G(z, y).shape == (4, 1, 16, 16)
    G.style_mixing = 0.0
    ws = G.mapping_ws(z, y)
    assert torch.equal(ws[:, 0], ws[:, -1])


def test_train_mode_noise_is_random_eval_is_fixed():
    G = make_g()
    with torch.no_grad():
        for layer in G.modules():
            if hasattr(layer, "noise_strength"):
                layer.noise_strength.fill_(0.5)
        z = torch.randn(2, 16)
        G.style_mixing = 0.0
        G.train()
        a, b = G(z), G(z)
        G.eval()
        c, d = G(z), G(z)
    assert not torch.equal(a, b)
    assert torch.equal(c, d)


@pytest.mark.parametrize("num_classes,fused", [(0, False), (10, False), (10, True)])
def test_eval_fixed_chunk_invariance(num_classes, fused, monkeypatch):
    """The Sampler's guarantee: in a fixed-size chunk (sampling.CHUNK rows), a row's bytes depend
    only on its own (z, label, truncation): not on its neighbours, nor on its position. For both
    inference conv forms (the shared conv, CPU's default, and the fused grouped conv)."""
    from ganaug.models import stylegan2
    from ganaug.sampling import CHUNK

    monkeypatch.setattr(stylegan2, "FUSED_INFERENCE", fused)

    G = make_g(resolution=32, channels=3, num_classes=num_classes).eval()
    with torch.no_grad():
        for layer in G.modules():
            if hasattr(layer, "noise_strength"):
                layer.noise_strength.normal_()
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2 * CHUNK, 16, generator=gen)
    y = torch.randint(10, (2 * CHUNK,), generator=gen) if num_classes else None
    target_z = torch.randn(1, 16, generator=gen)
    target_y = torch.tensor([7]) if num_classes else None
    outs = []
    with torch.no_grad():
        for k, pos in enumerate((0, 5, CHUNK - 1)):
            zc = z[k:k + CHUNK].clone()          # different neighbours each time
            zc[pos] = target_z[0]
            yc = None
            if num_classes:
                yc = y[k:k + CHUNK].clone()
                yc[pos] = target_y[0]
            outs.append(G(zc, yc, truncation=0.7)[pos])
        again = G(zc, yc, truncation=0.7)[pos]
    for o in outs[1:]:
        assert torch.equal(o, outs[0])
    assert torch.equal(again, outs[-1])


def test_training_and_inference_modulation_agree():
    """Training modulates activations around one shared conv; inference fuses the weights: same maths."""
    from ganaug.models.stylegan2 import modulated_conv2d

    torch.manual_seed(0)
    x, w, s = torch.randn(3, 8, 6, 6), torch.randn(5, 8, 3, 3), torch.randn(3, 8)
    for demod in (True, False):
        a = modulated_conv2d(x, w, s, demodulate=demod, padding=1, fused=False)
        b = modulated_conv2d(x, w, s, demodulate=demod, padding=1, fused=True)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # The training path keeps channels_last (the grouped reshape used to discard it).
    xc = x.contiguous(memory_format=torch.channels_last)
    out = modulated_conv2d(xc, w, s, padding=1, fused=False)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_minibatch_stddev_groups():
    for n in (1, 2, 3, 4, 8):  # groups of min(4, n)
        out = minibatch_stddev(torch.randn(n, 4, 4, 4), 4)
        assert out.shape == (n, 5, 4, 4)
        assert out[:, -1].min() > 0 or n == 1
    for n in (5, 6):  # a group that does not divide the batch is an error, not a silent group of 1
        with pytest.raises(ValueError, match="minibatch-stddev group 4 does not divide a batch of"):
            minibatch_stddev(torch.randn(n, 4, 4, 4), 4)
    # A [2 real + 2 fake] batch: by default one group of 4 spans both halves; with chunk = 2
    # the groups (of 2) never cross the real/fake boundary.
    x = torch.cat([torch.zeros(2, 2, 4, 4), torch.randn(2, 2, 4, 4)])
    mixed = minibatch_stddev(x, 4)
    assert mixed[:2, -1].min() > 0.1
    out = minibatch_stddev(x, 4, chunk=2)
    assert out[:2, -1].max() < 1e-3 and out[2:, -1].min() > 0.1


@pytest.mark.parametrize("num_classes", [0, 3])
def test_safetensors_round_trip(tmp_path, num_classes):
    G, D = make_g(num_classes=num_classes), make_d(num_classes=num_classes)
    with torch.no_grad():
        G(torch.randn(4, 16), torch.tensor([0, 1, 2, 0]) if num_classes else None)  # move w_avg
    for name, m in (("g", G), ("d", D)):
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / f"{name}.safetensors"))
    torch.manual_seed(123)  # a different init, including different noise_const buffers
    G2 = StyleGAN2Generator(resolution=16, channels=1, num_classes=num_classes, **TINY)
    D2 = StyleGAN2Discriminator(resolution=16, channels=1, width=8, max_width=16, num_classes=num_classes)
    G2.load_state_dict(load_file(str(tmp_path / "g.safetensors")))
    D2.load_state_dict(load_file(str(tmp_path / "d.safetensors")))
    G.eval(), G2.eval()
    z = torch.randn(3, 16)
    y = torch.tensor([0, 1, 2]) if num_classes else None
    with torch.no_grad():
        a, b = G(z, y, truncation=0.5), G2(z, y, truncation=0.5)
        assert torch.equal(a, b)
        assert torch.equal(D(a, y), D2(a, y))


@pytest.mark.parametrize("num_classes", [0, 3])
def test_one_training_step_each_phase(num_classes):
    torch.manual_seed(0)
    G, D = make_g(num_classes=num_classes), make_d(num_classes=num_classes)
    ctx = LossContext(adversarial=make_adversarial_loss("ns"), augment=lambda x: x, r1_gamma=1.0, r1_every=1)
    loss = StyleGAN2Loss(G, D, ctx)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.99))
    batch = {"image": torch.rand(8, 1, 16, 16) * 2 - 1, "label": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])}

    for phase, opt, module, keys in (
        ("D", opt_d, D, ("loss_d", "d_real", "d_fake", "d_real_sign")),
        ("Dreg", opt_d, D, ("loss_r1",)),
        ("G", opt_g, G, ("loss_g",)),
    ):
        assert loss.wants_phase(phase, 0)
        G.zero_grad(set_to_none=True), D.zero_grad(set_to_none=True)
        before = {k: v.detach().clone() for k, v in module.named_parameters()}
        stats = loss.accumulate_gradients(phase, batch, 0)
        for k in keys:
            assert isinstance(stats[k], float) and np.isfinite(stats[k]), (phase, k, stats)
        other = G if module is D else D
        assert all(p.grad is None for p in other.parameters()), f"{phase} touched the other module"
        if phase == "G":
            grads = [p.grad for p in G.mapping.parameters()]
            assert all(g is not None for g in grads)
            assert sum(float(g.abs().sum()) for g in grads) > 0, "no gradient reached the mapping network"
            assert all(p.requires_grad for p in D.parameters())  # restored after the G phase
        opt.step()
        changed = [k for k, v in module.named_parameters() if not torch.equal(v, before[k])]
        assert changed, f"{phase} changed no weights"
        if phase != "Dreg":
            assert len(changed) == len(before), set(before) - set(changed)


def test_family_registered_and_kwargs_json():
    import json

    fam = get_family("stylegan2")
    assert fam is StyleGAN2Family and fam.kind == "noise"
    cfg = ModelConfig(family="stylegan2", z_dim=16, w_dim=16, width=8, max_width=16, embed_dim=8,
                      mapping_layers=2, conditional=True)
    info = DataInfo(resolution=32, channels=1, num_classes=10)
    gk, dk = fam.generator_kwargs(cfg, info), fam.discriminator_kwargs(cfg, info)
    json.dumps(gk), json.dumps(dk)
    assert gk["num_classes"] == 10 and dk["num_classes"] == 10
    G, D = fam.build_generator(gk), fam.build_discriminator(dk)
    x = G(torch.randn(2, 16), torch.tensor([1, 2]))
    assert x.shape == (2, 1, 32, 32)
    assert D(x, torch.tensor([1, 2])).shape == (2,)
    cfg.conditional = False
    assert fam.generator_kwargs(cfg, info)["num_classes"] == 0
    assert fam.discriminator_kwargs(cfg, info)["num_classes"] == 0


def test_phases_under_ddp(tmp_path):
    """One forward per trained module per phase: DDP (gloo, world size 1) accepts every phase,
    including lazy R1's double backward, over several steps."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        G, D = make_g(num_classes=3), make_d(num_classes=3)
        ctx = LossContext(adversarial=make_adversarial_loss("hinge"), augment=lambda x: x,
                          r1_gamma=1.0, r1_every=2)
        loss = StyleGAN2Loss(DDP(G), DDP(D), ctx)
        opts = {"G": torch.optim.Adam(G.parameters(), 1e-3), "D": torch.optim.Adam(D.parameters(), 1e-3)}
        batch = {"image": torch.rand(4, 1, 16, 16) * 2 - 1, "label": torch.tensor([0, 1, 2, 0])}
        for step in range(3):
            for phase in ("D", "Dreg", "G"):
                if not loss.wants_phase(phase, step):
                    continue
                opt = opts["G" if phase == "G" else "D"]
                opt.zero_grad(set_to_none=True)
                stats = loss.accumulate_gradients(phase, batch, step)
                assert all(np.isfinite(v) for v in stats.values())
                opt.step()
    finally:
        dist.destroy_process_group()


def test_class_w_avg_starts_from_the_first_batch():
    G = make_g(num_classes=3).train()
    G.style_mixing = 0.0
    z, y = torch.randn(6, 16), torch.tensor([0, 0, 1, 1, 1, 0])
    with torch.no_grad():
        w = G.mapping(z, y)
        G.mapping_ws(z, y)
    torch.testing.assert_close(G.w_avg_class[0], w[y == 0].mean(0))
    torch.testing.assert_close(G.w_avg_class[1], w[y == 1].mean(0))
    assert torch.equal(G.w_avg_class[2], torch.zeros(16))   # class 2 not seen yet
    with torch.no_grad():  # later batches are an EMA again
        G.mapping_ws(z, y)
    torch.testing.assert_close(G.w_avg_class[0], w[y == 0].mean(0))


def test_path_length_regularisation_phase():
    """Greg: lazy (every pl_every steps), fp32, moves G's weights and pl_mean, saved in the loss state."""
    G, D = make_g(num_classes=3), make_d(num_classes=3)
    ctx = LossContext(adversarial=make_adversarial_loss("ns"), augment=lambda x: x, pl_weight=2.0, pl_every=4,
                      autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    loss = StyleGAN2Loss(G, D, ctx)
    assert loss.wants_phase("Greg", 0) and not loss.wants_phase("Greg", 1) and loss.wants_phase("Greg", 8)
    batch = {"image": torch.rand(8, 1, 16, 16) * 2 - 1, "label": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])}
    stats = loss.accumulate_gradients("Greg", batch, 0)
    assert stats["pl_length"] > 0 and stats["pl_mean"] == pytest.approx(0.01 * stats["pl_length"], rel=1e-5)
    assert all(p.grad is not None for p in G.parameters())
    assert sum(float(p.grad.abs().sum()) for p in G.mapping.parameters()) > 0
    state = loss.state_dict()
    fresh = StyleGAN2Loss(G, D, ctx)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.pl_mean, loss.pl_mean)
    off = StyleGAN2Loss(G, D, LossContext(adversarial=make_adversarial_loss("ns"), augment=lambda x: x))
    assert not off.wants_phase("Greg", 0) and off.accumulate_gradients("Greg", batch, 0) == {}
