"""The training loop: determinism, exact resume, every loss, ADA, data streams, DDP."""

from __future__ import annotations

import io
import os
import socket

import numpy as np
import pytest
import torch
from tiny import tiny_run_config

from ganaug.augment import AugmentPipe
from ganaug.config import RunConfig
from ganaug.families import FAMILIES as FAMILY_CONFIGS
from ganaug.training import GANTrainer, IndexStream, make_batch_source
from ganaug.training.pairs import SOURCE_TRANSFORMS, source_transform

torch.set_num_threads(1)


def tiny_cfg(family: str = "cgan", **training) -> RunConfig:
    return tiny_run_config(family, **training)


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


# ----------------------------------------------------------------------------- issue 14


def _bf16_ctx_pair(loss_name="ns"):
    from ganaug.losses import LossContext, make_adversarial_loss

    kw = dict(adversarial=make_adversarial_loss(loss_name), augment=lambda x: x, r1_gamma=1.0, r1_every=1)
    return LossContext(**kw), LossContext(**kw, autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))


@pytest.mark.parametrize("family", ["cgan", "stylegan2", "pix2pix", "cyclegan"])
def test_r1_gradients_under_autocast_match_fp32(family):
    """The regularisation phase runs in fp32 even when the main phases autocast to bf16
    (bf16 R1 had 40 % relative error in D's parameter gradient)."""
    from ganaug.losses import unwrap

    images, labels, names = random_data()
    tr = GANTrainer(tiny_cfg(family, r1_gamma=1.0, r1_every=1, augment=""), images, labels, names)
    batch = tr.batches.next()
    grads, d0 = [], {k: v.clone() for k, v in unwrap(tr.D).state_dict().items()}
    for ctx in _bf16_ctx_pair():
        unwrap(tr.D).load_state_dict(d0)  # spectral norm's power iteration moves u, v each forward
        loss = tr.family.loss_cls(tr.G, tr.D, ctx, **tr.family.loss_kwargs(tr.cfg.model, tr.data_info))
        unwrap(tr.D).zero_grad(set_to_none=True)
        assert loss.accumulate_gradients("Dreg", batch, 0)
        grads.append(torch.cat([p.grad.flatten() for p in unwrap(tr.D).parameters() if p.grad is not None]))
    ref, amp = grads
    assert ref.abs().sum() > 0
    assert ((amp - ref).norm() / ref.norm()).item() < 1e-5


def test_lazy_r1_scales_adam_and_lr_decays_linearly():
    images, labels, names = random_data()
    tr = GANTrainer(tiny_cfg(r1_gamma=1.0, r1_every=4, lr_d=1e-3, lr_g=2e-3, beta1=0.5, beta2=0.99),
                    images, labels, names)
    g, d = tr.opt_g.param_groups[0], tr.opt_d.param_groups[0]
    assert d["lr"] == pytest.approx(1e-3 * 4 / 5)
    assert d["betas"] == pytest.approx((0.5 ** 0.8, 0.99 ** 0.8))
    assert g["lr"] == pytest.approx(2e-3) and g["betas"] == pytest.approx((0.5, 0.99))  # no G regulariser
    off = GANTrainer(tiny_cfg(r1_gamma=0.0, lr_d=1e-3), images, labels, names)
    assert off.opt_d.param_groups[0]["lr"] == pytest.approx(1e-3)

    cfg = tiny_cfg("pix2pix", steps=10, lr_g=1e-3, lr_d=1e-3)
    assert cfg.training.lr_decay == "linear"  # the translation families' reference schedule
    tr = GANTrainer(cfg, images, labels, names)
    assert [round(tr.lr_factor(s), 3) for s in (0, 4, 5, 6, 9)] == [1.0, 1.0, 1.0, 0.8, 0.2]
    for _ in range(7):
        tr.train_step()
    assert tr.opt_g.param_groups[0]["lr"] == pytest.approx(1e-3 * tr.lr_factor(6))  # step 6 was the last


def test_family_defaults_when_config_is_silent():
    from ganaug.config import load_config

    sg = load_config(None, ["model.family=stylegan2", "data.resolution=64", "training.batch_size=32"])
    t = sg.training
    assert (t.loss, t.lr_g, t.lr_d, t.beta1, t.beta2) == ("ns", 0.0025, 0.0025, 0.0, 0.99)
    assert t.r1_gamma == pytest.approx(0.0002 * 64 ** 2 / 32)
    assert t.pl_weight == 2.0 and sg.model.mode_seeking == 1.0
    assert load_config(None, ["model.family=stylegan2", "model.conditional=false"]).model.mode_seeking == 0.0
    for fam, loss in (("pix2pix", "ns"), ("cyclegan", "lsgan")):
        c = load_config(None, [f"model.family={fam}"])
        assert (c.training.loss, c.training.beta1, c.training.beta2, c.training.lr_decay) == (loss, 0.5, 0.999, "linear")
        assert c.model.spectral_norm is False  # -> InstanceNorm in the PatchGAN
    assert load_config(None, ["model.family=dcgan"]).model.mode_seeking == 0.0
    assert load_config(None, ["model.family=cgan"]).model.mode_seeking == 1.0
    # A preset wins, and the resolved values are what the saved run config holds.
    c = load_config(None, ["model.family=stylegan2", "training.lr_g=0.001", "training.loss=hinge"])
    assert c.training.lr_g == 0.001 and c.training.loss == "hinge" and c.training.lr_d == 0.0025
    assert "null" not in c.to_yaml() and "lr_d: 0.0025" in c.to_yaml()


def test_ema_batchnorm_uses_standing_statistics():
    """G_ema's BatchNorm statistics at a checkpoint are its own (BigGAN standing stats), not the
    live G's, which belong to other weights."""
    images, labels, names = random_data()
    tr = GANTrainer(tiny_cfg("cgan", ema_beta=0.9, ema_rampup=0.0), images, labels, names)
    seen = []
    tr.fit(6, checkpoint_every=3, on_checkpoint=lambda s: seen.append(
        {k: v.clone() for k, v in tr.G_ema.state_dict().items() if "running_mean" in k}))
    assert len(seen) == 2
    live = {k: v for k, v in tr.G.state_dict().items() if "running_mean" in k}
    bn = tr.G_ema.bn_out
    # Re-estimate by hand: the statistics of G_ema's own pre-BN activations.
    feats = []
    hook = bn.register_forward_hook(lambda m, inp, out: feats.append(inp[0]))
    gen = torch.Generator().manual_seed(1)
    tr.G_ema.eval()
    with torch.no_grad():
        for _ in range(8):
            tr.G_ema(torch.randn(8, 16, generator=gen), torch.randint(10, (8,), generator=gen))
    hook.remove()
    own_mean = torch.cat(feats).mean(dim=(0, 2, 3))
    ck = seen[-1]["bn_out.running_mean"]
    assert (ck - own_mean).abs().max() < 0.25 * own_mean.abs().max() + 1e-3
    assert not torch.allclose(ck, live["bn_out.running_mean"])


@pytest.mark.timeout(120)
def test_cyclegan_pool_from_config_and_exact_resume():
    images, labels, names = random_data()
    cfg = tiny_cfg("cyclegan", **RICH)
    cfg.model.pool_size = 12
    a = GANTrainer(cfg, images, labels, names)
    assert a.loss.pool_a.size == 12
    for _ in range(2):  # 16 fakes offered: the pool is full and swapping
        a.train_step()
    state = roundtrip(a.state_dict())
    assert state["loss"]["ranks"][0]["pool_a"]["images"].shape[0] == 12
    cont = [a.train_step() for _ in range(2)]
    b = GANTrainer(cfg, images, labels, names)
    b.load_state_dict(state)
    assert [b.train_step() for _ in range(2)] == cont
    assert_same_weights(a.state_dict(), b.state_dict())


def _ddp_resume_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = tiny_cfg("stylegan2", ada_p=0.3, ada_interval=4, ada_kimg=1.0, r1_gamma=0.1, r1_every=2,
                       pl_weight=1.0, pl_every=2, checkpoint_every=3)
        cfg.model.w_dim, cfg.model.mapping_layers = 16, 1
        images, labels, names = random_data()
        a = GANTrainer(cfg, images, labels, names, rank=rank, world_size=world)
        saved = {}
        a.fit(3, on_checkpoint=lambda s: saved.update(state=a.state_dict()))  # step 3: mid ADA interval
        path = os.path.join(out_dir, "state.pt")
        if rank == 0:
            torch.save(saved["state"], path)
        a.fit(8)
        dist.barrier()
        b = GANTrainer(cfg, images, labels, names, rank=rank, world_size=world)
        b.load_state_dict(torch.load(path, weights_only=True))
        b.fit(8)
        torch.save({"a": a.state_dict(), "b": b.state_dict(), "saved_acc_n": saved["state"]["augment"]["acc_n"]},
                   os.path.join(out_dir, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_ddp_resume_mid_ada_interval_is_exact(tmp_path):
    """ADA's accumulators are all-reduced before a checkpoint (rank 0 saves the totals), and
    every rank's loss state is saved: a 2-rank resume at a step that is not a multiple of
    ada_interval moves p exactly as the uninterrupted run."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_resume_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for r in (0, 1):
        out = torch.load(tmp_path / f"r{r}.pt", weights_only=True)
        assert out["a"]["augment"]["p"] == out["b"]["augment"]["p"]
        assert out["a"]["augment"] == out["b"]["augment"]
        # Saved at step 3, mid-interval: rank 0 holds both ranks' 3 accumulated steps, the other none.
        assert out["saved_acc_n"] == (6 if r == 0 else 0)
        fa, fb = flat(out["a"]), flat(out["b"])
        for k in fa:  # rank 1 resumes from rank 0's per-rank buffers (w_avg): parameters only
            if r == 0 or "w_avg" not in k:
                assert torch.equal(fa[k], fb[k]), (r, k)
        assert torch.equal(out["a"]["loss"]["ranks"][0]["pl_mean"], out["b"]["loss"]["ranks"][0]["pl_mean"])


PRESETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jobs", "configs")


@pytest.mark.parametrize("family", ["dcgan", "cgan", "stylegan2", "pix2pix", "cyclegan"])
def test_every_family_trains_at_64px_rgb_from_its_preset(family):
    """The 64-px RGB presets load, and each family trains a few steps at 64 px RGB (tiny widths);
    the 128-px presets load too."""
    from ganaug.config import load_config

    tiny = ["model.width=4", "model.max_width=16", "model.z_dim=8", "model.w_dim=8", "model.embed_dim=4",
            "model.res_blocks=1", "model.pool_size=4", "training.batch_size=4", "training.r1_every=2",
            "training.pl_every=2", "training.augment=color,translation", "training.ada_p=0.2"]
    keys = FAMILY_CONFIGS.get(family).keys  # a key of another family is an error
    tiny = [o for o in tiny if not o.startswith("model.") or o.split("=")[0][len("model."):] in keys]
    cfg = load_config(os.path.join(PRESETS, f"{family}-64.yaml"), tiny)
    assert (cfg.data.resolution, cfg.data.channels) == (64, 3)
    if family == "stylegan2":
        assert cfg.training.r1_gamma > 0 and cfg.training.pl_weight > 0  # both regularisers run
    assert load_config(os.path.join(PRESETS, f"{family}-128.yaml")).data.resolution == 128
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    tr = GANTrainer(cfg, images, np.arange(8) % 2, ["a", "b"])
    for _ in range(2):
        stats = tr.train_step()
    assert np.isfinite(stats["loss_g"]) and np.isfinite(stats["loss_d"])
    if tr.family.kind == "noise":
        out = tr.sample(torch.randn(2, tr.G_ema.z_dim), torch.tensor([0, 1]))
    else:
        with torch.no_grad():
            out = tr.G_ema(torch.from_numpy(images[:2]).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert out.shape == (2, 3, 64, 64) and torch.isfinite(out).all()
