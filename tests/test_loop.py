"""The training loop: determinism, exact resume, every loss, ADA, data streams, DDP."""

from __future__ import annotations

import io
import os
import socket

import numpy as np
import pytest
import torch

from ganaug.augment import AugmentPipe
from ganaug.config import RunConfig
from ganaug.training import GANTrainer, IndexStream, make_batch_source
from ganaug.training.pairs import SOURCE_TRANSFORMS, source_transform

torch.set_num_threads(1)


def tiny_cfg(family: str = "cgan", **training) -> RunConfig:
    cfg = RunConfig()
    cfg.model.family = family
    cfg.model.width, cfg.model.max_width, cfg.model.z_dim, cfg.model.embed_dim = 8, 32, 16, 8
    cfg.data.resolution, cfg.data.channels = 16, 1
    cfg.training.batch_size = 8
    for k, v in training.items():
        setattr(cfg.training, k, v)
    return cfg.validate()


def random_data(n=32, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 16, 16, 1), dtype=np.uint8)
    return images, (np.arange(n) % classes).astype(np.int64), [str(i) for i in range(classes)]


def flat(state: dict) -> dict[str, torch.Tensor]:
    return {f"{m}.{k}": v for m in ("G", "D", "G_ema") for k, v in state[m].items()}


def assert_same_weights(a: dict, b: dict) -> None:
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert torch.equal(fa[k], fb[k]), k


def roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# A config that exercises every source of randomness: augmentation at p > 0 with ADA
# adjusting it, lazy R1, BatchNorm, and data epochs (32 images, batch 8).
RICH = dict(r1_gamma=1.0, r1_every=2, ada_p=0.5, ada_target=0.6, ada_interval=2, ada_kimg=1.0,
            augment="color,translation,cutout")


def test_determinism_same_seed_same_weights():
    images, labels, names = random_data()
    states = []
    for _ in range(2):
        tr = GANTrainer(tiny_cfg(**RICH), images, labels, names)
        for _ in range(3):
            tr.train_step()
        states.append(tr.state_dict())
    assert_same_weights(*states)
    tr3 = GANTrainer(tiny_cfg(seed=1, **RICH), images, labels, names)
    tr3.train_step()
    assert not torch.equal(flat(tr3.state_dict())["G.fc.weight"], flat(states[0])["G.fc.weight"])


@pytest.mark.parametrize("family", ["cgan", "dcgan"])
def test_exact_resume(family):
    images, labels, names = random_data()
    cfg = tiny_cfg(family, **RICH)
    a = GANTrainer(cfg, images, labels, names)
    for _ in range(5):  # stops mid-epoch and mid-ADA-interval
        a.train_step()
    state = roundtrip(a.state_dict())
    cont = [a.train_step() for _ in range(4)]

    b = GANTrainer(cfg, images, labels, names)
    b.load_state_dict(state)
    assert b.step == 5 and b.images_seen == 40
    resumed = [b.train_step() for _ in range(4)]
    assert cont == resumed
    assert_same_weights(a.state_dict(), b.state_dict())

    # The checkpoint layout: weights as separate files, the rest in train_state.pt.
    c = GANTrainer(cfg, images, labels, names)
    light = roundtrip(b.state_dict(include_weights=False))
    assert "G" not in light
    w = b.weights()
    c.load_state_dict({**light, "G": w["generator"], "D": w["discriminator"], "G_ema": w["generator_ema"]})
    assert c.train_step() == b.train_step()


def test_state_dict_is_a_snapshot():
    images, labels, names = random_data()
    tr = GANTrainer(tiny_cfg(), images, labels, names)
    tr.train_step()
    state = tr.state_dict()
    w = state["G"]["fc.weight"].clone()
    tr.train_step()
    assert torch.equal(state["G"]["fc.weight"], w)  # not a view of the live weights


@pytest.mark.parametrize("loss", ["ns", "hinge", "lsgan", "wgan-gp"])
@pytest.mark.parametrize("family", ["cgan", "dcgan"])
def test_losses_finite(family, loss):
    images, labels, names = random_data()
    tr = GANTrainer(tiny_cfg(family, loss=loss, r1_gamma=0.5, r1_every=2, ada_p=0.3), images, labels, names)
    seen = set()
    for _ in range(2):
        stats = tr.train_step()
        seen |= set(stats)
        assert all(np.isfinite(v) for v in stats.values()), stats
    assert {"loss_g", "loss_d", "d_real", "d_fake", "d_real_sign", "r1", "ada_p"} <= seen
    if loss == "wgan-gp":
        assert "gp" in seen


def test_ada_p_rises_when_d_overfits():
    # 8 images, a D that memorises them quickly: r_t = E[sign(D(real))] -> 1 > target.
    images, labels, names = random_data(n=8)
    cfg = tiny_cfg("dcgan", ada_target=0.6, ada_p=0.0, ada_interval=1, ada_kimg=0.5, lr_d=1e-3)
    tr = GANTrainer(cfg, images, labels, names)
    ps = [tr.train_step()["ada_p"] for _ in range(12)]
    assert ps[-1] > 0.0
    assert max(ps) <= 1.0


def test_ada_disabled_keeps_p():
    images, labels, names = random_data()
    tr = GANTrainer(tiny_cfg("dcgan", ada_target=0.0, ada_p=0.25), images, labels, names)
    assert [tr.train_step()["ada_p"] for _ in range(3)] == [0.25] * 3


def test_ada_adjust_rule():
    pipe = AugmentPipe("translation", p=0.5, target=0.6, interval=4, kimg=1.0)
    for _ in range(4):
        pipe.accumulate(1.0)
    assert pipe.adjust(images=100) == pytest.approx(0.6)     # +100/1000
    for _ in range(4):
        pipe.accumulate(-1.0)
    assert pipe.adjust(images=1000) == 0.0                     # clamped at 0
    assert pipe.acc_n == 0


def test_augmentation_never_on_samples():
    images, labels, names = random_data()
    tr = GANTrainer(tiny_cfg(ada_p=1.0, ada_target=0.0, augment="color,translation,cutout"), images, labels, names)
    tr.train_step()
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    assert not torch.equal(tr.augment(x), x)  # p = 1: D's inputs are augmented
    z, y = torch.randn(4, 16), torch.tensor([0, 1, 2, 3])
    before = tr.sample(z, y)

    def boom(_x):
        raise AssertionError("augmentation applied to samples")
    tr.loss.ctx.augment = boom
    after = tr.sample(z, y)  # would raise if sampling went through the pipe
    assert torch.equal(before, after)


def test_fit_reports_and_checkpoints():
    images, labels, names = random_data()
    tr = GANTrainer(tiny_cfg("dcgan", r1_gamma=1.0, r1_every=2), images, labels, names)
    reports, ckpts = [], []
    tr.fit(5, report_every=2, checkpoint_every=3, on_report=reports.append, on_checkpoint=ckpts.append)
    assert [r["step"] for r in reports] == [2, 4, 5]
    assert ckpts == [3, 5]
    keys = {"step", "images_seen", "loss_g", "loss_d", "d_real", "d_fake", "ada_p", "images_per_s", "seconds"}
    for r in reports:
        assert keys <= set(r) and all(np.isfinite(r[k]) for k in keys)
    assert reports[-1]["images_seen"] == 40
    tr.fit(5, on_report=reports.append)  # already done: nothing happens
    assert len(reports) == 3


def test_model_meta():
    images, labels, names = random_data()
    meta = GANTrainer(tiny_cfg(), images, labels, names).model_meta()
    assert meta["family"] == "cgan" and meta["kind"] == "noise"
    assert meta["num_classes"] == 10 and meta["class_names"] == names
    assert (meta["resolution"], meta["channels"]) == (16, 1)
    assert meta["generator_kwargs"]["num_classes"] == 10


def test_bad_images_rejected():
    images, labels, names = random_data()
    with pytest.raises(ValueError, match="uint8 images of shape"):
        GANTrainer(tiny_cfg(), images[:, :8, :8], labels, names)


# ----------------------------------------------------------------------------- data


def test_index_stream_ranks_disjoint_and_epochs_shuffled():
    n, world = 23, 3
    streams = [IndexStream(n, seed=5, rank=r, world_size=world) for r in range(world)]
    first = [s.take(7) for s in streams]  # 7 = n // world: exactly one epoch per rank
    allidx = torch.cat(first)
    assert len(set(allidx.tolist())) == 21  # disjoint
    assert all(s.state_dict() == {"epoch": 1, "offset": 0} for s in streams)
    again = IndexStream(n, seed=5, rank=0, world_size=world)
    assert torch.equal(again.take(7), first[0])              # (seed, epoch) -> same order
    assert not torch.equal(streams[0].take(7), first[0])      # next epoch: a new permutation
    small = IndexStream(3, seed=0)
    assert sorted(small.take(6).tolist()) == [0, 0, 1, 1, 2, 2]  # batches span epochs


def test_source_transforms_and_translation_batches():
    images, labels, _ = random_data(n=16)
    for name in SOURCE_TRANSFORMS:
        out = source_transform(name, images)
        assert out.shape == images.shape and out.dtype == np.uint8
    assert np.array_equal(source_transform("invert", images), 255 - images)
    # Per image: the transform of one image does not depend on the others.
    assert np.array_equal(source_transform("blur", images[3:4]), source_transform("blur", images)[3:4])

    class Paired:
        kind, paired = "translation", True

    class Unpaired:
        kind, paired = "translation", False

    cfg = tiny_cfg()
    cfg.data.source_transform = "invert"
    src = make_batch_source(Paired, cfg, images, labels)
    b = src.next()
    assert set(b) == {"a", "b", "label"} and b["a"].shape == (8, 1, 16, 16)
    assert torch.allclose(b["a"], -b["b"], atol=1e-6)  # invert in [-1, 1] is negation: aligned pairs
    un = make_batch_source(Unpaired, cfg, images, labels).next()
    assert not torch.allclose(un["a"], -un["b"], atol=1e-6)


# ----------------------------------------------------------------------------- DDP (gloo, 2 ranks)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = tiny_cfg("cgan", r1_gamma=1.0, r1_every=2, ada_p=0.2, ada_interval=1)
        cfg.model.aux_classifier = 0.5
        images, labels, names = random_data()
        tr = GANTrainer(cfg, images, labels, names, rank=rank, world_size=world)
        assert tr.distributed
        reports = []
        tr.fit(3, report_every=3, checkpoint_every=100, on_report=reports.append)
        torch.save({"state": tr.state_dict(), "report": reports[-1]}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_ddp_two_ranks_stay_in_sync(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for m in ("G", "D"):  # gradients are all-reduced: identical parameters on both ranks
        for k, v in r0["state"][m].items():
            if "running" in k or k.endswith("_u") or k.endswith("_v") or "num_batches" in k:
                continue  # per-rank buffers (broadcast_buffers=False)
            assert torch.equal(v, r1["state"][m][k]), f"{m}.{k}"
    assert r0["state"]["augment"]["p"] == r1["state"]["augment"]["p"]
    assert r0["report"]["loss_d"] == r1["report"]["loss_d"]  # reports are averaged over ranks
    assert r0["state"]["images_seen"] == 3 * 8 * 2
