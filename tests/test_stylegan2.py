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


@pytest.mark.parametrize("num_classes", [0, 10])
def test_eval_batch_invariance(num_classes):
    G = make_g(resolution=32, channels=3, num_classes=num_classes).eval()
    with torch.no_grad():
        for layer in G.modules():
            if hasattr(layer, "noise_strength"):
                layer.noise_strength.normal_()
    z = torch.randn(5, 16)
    y = torch.tensor([3, 1, 4, 1, 5]) if num_classes else None
    with torch.no_grad():
        batch = G(z, y, truncation=0.7)
        for i in range(5):
            # Same batch shape, the row alone among padding (the Sampler's fixed-size chunks):
            # identical bytes. A batch of one is another kernel path: float tolerance only.
            pad_z = torch.cat([z[i:i + 1], torch.zeros(4, 16)])
            pad_y = None if y is None else torch.cat([y[i:i + 1], torch.zeros(4, dtype=torch.long)])
            alone = G(pad_z, pad_y, truncation=0.7)[:1]
            assert to_bytes(alone) == to_bytes(batch[i:i + 1])
            single = G(z[i:i + 1], None if y is None else y[i:i + 1], truncation=0.7)
            assert torch.allclose(single, batch[i:i + 1], atol=1e-5)
        again = G(z, y, truncation=0.7)
    assert torch.equal(batch, again)


def test_minibatch_stddev_groups():
    for n in (1, 2, 3, 5, 6, 8):
        out = minibatch_stddev(torch.randn(n, 4, 4, 4), 4)
        assert out.shape == (n, 5, 4, 4)
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
    batch = {"image": torch.rand(6, 1, 16, 16) * 2 - 1, "label": torch.tensor([0, 1, 2, 0, 1, 2])}

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
