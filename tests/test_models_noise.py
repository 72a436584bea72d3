"""The noise families (dcgan, cgan): shapes, range, one step, batch invariance, safetensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import tiny_run_config

from ganaug.config import RunConfig
from ganaug.models.registry import DataInfo, get_family
from ganaug.training import GANTrainer

torch.set_num_threads(1)

FAMILIES = ["dcgan", "cgan"]


def tiny_cfg(family: str, resolution: int = 16, channels: int = 1, **training) -> RunConfig:
    return tiny_run_config(family, resolution, channels, **training)


def build(family: str, resolution: int, channels: int, num_classes: int = 10):
    cfg = tiny_cfg(family, resolution, channels)
    fam = get_family(family)
    info = DataInfo(resolution, channels, num_classes, [str(i) for i in range(num_classes)])
    gk, dk = fam.generator_kwargs(cfg.model, info), fam.discriminator_kwargs(cfg.model, info)
    json.dumps(gk), json.dumps(dk)  # saved in model.json: must be JSON-able
    torch.manual_seed(0)
    return fam, fam.build_generator(gk), fam.build_discriminator(dk), gk, dk


def random_data(n=32, resolution=16, channels=1, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, resolution, resolution, channels), dtype=np.uint8)
    labels = (np.arange(n) % classes).astype(np.int64)
    return images, labels, [str(i) for i in range(classes)]


def seeded_z(seeds, z_dim):
    # As the Sampler does: one generator per seed, so a latent depends only on its seed.
    return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("resolution,channels", [(16, 1), (16, 3), (32, 3), (32, 1), (64, 1)])
def test_forward_shapes(family, resolution, channels):
    fam, G, D, gk, _ = build(family, resolution, channels)
    assert fam.kind == "noise"
    assert G.z_dim == 16
    assert G.num_classes == (10 if family == "cgan" else 0)
    z = torch.randn(3, G.z_dim)
    y = torch.tensor([0, 4, 9])
    x = G(z, y)
    assert x.shape == (3, channels, resolution, resolution)
    logits = D(x, y)
    assert logits.shape == (3,)
    G.eval()
    with torch.no_grad():
        x = G(z, y, truncation=0.5)
    assert x.min() >= -1 and x.max() <= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_truncation_scales_z(family):
    _, G, _, _, _ = build(family, 16, 1)
    G.eval()
    z, y = torch.randn(2, G.z_dim), torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.equal(G(z, y, truncation=0.0), G(torch.zeros_like(z), y))
        assert torch.allclose(G(z, y, truncation=0.5), G(z * 0.5, y))


def test_cgan_aux_classifier_head():
    cfg = tiny_cfg("cgan")
    cfg.model.aux_classifier = 1.0
    fam = get_family("cgan")
    info = DataInfo(16, 1, 10)
    D = fam.build_discriminator(fam.discriminator_kwargs(cfg.model, info))
    logits, aux = D(torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3]), return_aux=True)
    assert logits.shape == (4,) and aux.shape == (4, 10)
    images, labels, names = random_data()
    tr = GANTrainer(cfg, images, labels, names)
    stats = tr.train_step()
    assert np.isfinite(stats["aux_d"]) and np.isfinite(stats["aux_g"])


@pytest.mark.parametrize("family", FAMILIES)
def test_one_training_step(family):
    images, labels, names = random_data()
    tr = GANTrainer(tiny_cfg(family), images, labels, names)
    def flat_weights():
        return {k: torch.cat([t.flatten().float() for t in v.values()]) for k, v in tr.weights().items()}

    before = flat_weights()
    stats = tr.train_step()
    for k in ("loss_g", "loss_d", "d_real", "d_fake"):
        assert np.isfinite(stats[k]), (k, stats)
    after = flat_weights()
    for k in ("generator", "discriminator", "generator_ema"):
        assert not torch.equal(before[k], after[k]), f"{k} did not change"
    assert tr.step == 1 and tr.images_seen == 8
    x = tr.sample(torch.randn(4, 16), torch.tensor([0, 1, 2, 3]))
    assert x.shape == (4, 1, 16, 16) and x.min() >= -1 and x.max() <= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_batch_invariance(family):
    """In eval mode an image depends only on its own (z, label), not on the batch around it."""
    images, labels, names = random_data()
    tr = GANTrainer(tiny_cfg(family), images, labels, names)
    for _ in range(2):
        tr.train_step()  # non-trivial BatchNorm running stats
    G = tr.G_ema
    assert not G.training
    seeds, chunk = [11, 12, 13, 14], 4
    z = seeded_z(seeds, G.z_dim)
    y = torch.tensor([3, 1, 4, 1])
    with torch.no_grad():
        together = G(z, y, truncation=0.7)
        for i in range(4):
            # Alone in a fixed-size chunk padded with other latents: identical bytes.
            pad_z = torch.cat([z[i:i + 1], seeded_z(range(100, 100 + chunk - 1), G.z_dim)])
            pad_y = torch.cat([y[i:i + 1], torch.zeros(chunk - 1, dtype=torch.long)])
            alone = G(pad_z, pad_y, truncation=0.7)[:1]
            assert np.array_equal(to_uint8(alone), to_uint8(together[i:i + 1]))
            # Unpadded (batch of one): equal up to float rounding.
            single = G(z[i:i + 1], y[i:i + 1], truncation=0.7)
            assert torch.allclose(single, together[i:i + 1], atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_safetensors_round_trip(family, tmp_path):
    images, labels, names = random_data(resolution=32, channels=3)
    tr = GANTrainer(tiny_cfg(family, 32, 3), images, labels, names)
    for _ in range(2):
        tr.train_step()
    fam = get_family(family)
    meta = json.loads(json.dumps(tr.model_meta()))
    for which, kwargs, build_fn in (
        ("generator_ema", meta["generator_kwargs"], fam.build_generator),
        ("discriminator", meta["discriminator_kwargs"], fam.build_discriminator),
    ):
        path = tmp_path / f"{which}.safetensors"
        save_file(tr.weights()[which], str(path))
        fresh = build_fn(kwargs)
        fresh.load_state_dict(load_file(str(path)), strict=True)
        fresh.eval()
        z, y = seeded_z([1, 2, 3], 16), torch.tensor([0, 5, 9])
        with torch.no_grad():
            if which == "generator_ema":
                assert torch.equal(fresh(z, y), tr.sample(z, y))
            else:
                x = torch.rand(3, 3, 32, 32) * 2 - 1
                orig = tr.D.eval()
                assert torch.equal(fresh(x, y), orig(x, y))
                orig.train()


def test_cgan_minibatch_stddev_sees_batch_variety_but_never_mixes_chunks():
    cfg = tiny_cfg("cgan")
    cfg.model.mbstd_group = 4
    fam = get_family("cgan")
    info = DataInfo(16, 1, 10)
    torch.manual_seed(0)
    D = fam.build_discriminator(fam.discriminator_kwargs(cfg.model, info)).eval()
    real, labels = torch.randn(8, 1, 16, 16), torch.arange(8) % 10
    alone = D(real, labels, mbstd_chunk=8)
    same = real[:1].expand(8, -1, -1, -1)  # a collapsed "fake" batch
    both = D(torch.cat([real, same]), labels.repeat(2), mbstd_chunk=8)
    torch.testing.assert_close(both[:8], alone)  # reals judged as if the fakes were not there
    # Identical inputs with identical labels differ only through the batch statistic.
    varied = D(torch.cat([real[:1], real[1:4]]), torch.zeros(4, dtype=torch.long), mbstd_chunk=4)
    collapsed = D(same[:4], torch.zeros(4, dtype=torch.long), mbstd_chunk=4)
    assert not torch.allclose(varied[0], collapsed[0])


def test_mode_seeking_pairs_share_labels_and_log_the_ratio():
    from ganaug.losses import mode_seeking_ratio

    z = torch.zeros(4, 3)
    z[2:] = 1.0  # |z1 - z2| = 1 per coordinate
    x = torch.zeros(4, 1, 2, 2)
    x[2:] = 0.5
    assert mode_seeking_ratio(x, z, 2).item() == pytest.approx(0.5)

    cfg = tiny_cfg("cgan")
    cfg.model.mode_seeking = 1.0
    images, labels, names = random_data()
    tr = GANTrainer(cfg, images, labels, names)
    seen = []
    G = tr.G
    hook = G.register_forward_hook(lambda m, args, out: seen.append(args[1].clone()) if m.training else None)
    stats = tr.train_step()
    hook.remove()
    assert np.isfinite(stats["mode_seeking"]) and stats["mode_seeking"] > 0
    g_labels = seen[-1]  # the G phase's labels: rows i and i + n/2 share one
    assert torch.equal(g_labels[:4], g_labels[4:])


def test_conditional_bn_init_matches_its_docstring():
    """CBN's own constructor starts the gain/bias projections at zero; cgan's generator then
    initialises them like its other linears (xavier, as BigGAN's global init), so the gain
    differs per class from the first step. The docstring used to promise zeros."""
    from ganaug.models.layers import ConditionalBatchNorm2d

    bare = ConditionalBatchNorm2d(4, 3)
    assert all(torch.count_nonzero(p) == 0 for p in (bare.gain.weight, bare.bias.weight))
    assert "initialise them like every other linear layer" in " ".join(ConditionalBatchNorm2d.__doc__.split())
    _, G, _, _, _ = build("cgan", 16, 1)
    cbns = [m for m in G.modules() if isinstance(m, ConditionalBatchNorm2d)]
    assert cbns
    for m in cbns:
        assert torch.count_nonzero(m.gain.weight) > 0 and torch.count_nonzero(m.gain.bias) == 0
        e = G.embed.weight[:3]
        assert not torch.allclose(m.gain(e)[0], m.gain(e)[1])  # class-dependent from the start


def test_trainer_rejects_a_batch_the_mbstd_group_does_not_divide():
    from ganaug.errors import UserError
    from ganaug.training import GANTrainer

    cfg = tiny_cfg("cgan")
    cfg.model.mbstd_group, cfg.training.batch_size = 4, 6
    images, labels, names = random_data()
    with pytest.raises(UserError, match="training.batch_size.*minibatch-stddev group 4 does not divide"):
        GANTrainer(cfg.validate(), images, labels, names)
