"""Colour and low-data pieces: presets, grayscale source transform, paired datasets, resizing
to a user's size, the wall-clock budget (plain loop and Ray Train with 2 workers), and a
colourisation learning check. Tiny RGB data is built in the tests (../shared may be absent)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from ray_fixtures import ray_session  # noqa: F401

from ganaug import checkpoint
from ganaug.config import load_config
from ganaug.data import DatasetError, load_dataset
from ganaug.data.paired import load_pairs, load_side
from ganaug.errors import UserError
from ganaug.sampling import SamplingError, parse_size, resize_images
from ganaug.training.pairs import grayscale, source_transform

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ presets

@pytest.mark.parametrize("path", sorted((REPO / "jobs" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_loads_and_validates(path):
    cfg = load_config(path)
    if path.stem.endswith("-cpu"):
        assert cfg.training.max_minutes == 30 and not cfg.training.use_gpu
        gpu_twin = path.with_name(path.stem[:-4] + ".yaml")
        assert gpu_twin.exists(), f"{path.name} has no GPU twin"
        assert cfg.data.resolution >= 28  # CPU presets generate at least at MNIST's 28 px
    if path.stem.startswith("cifar10-"):
        assert cfg.data.channels == 3 and cfg.data.resolution == 32
        assert path.with_name(path.stem.removesuffix("-cpu") + "-cpu.yaml").exists()


def test_max_minutes_validation():
    with pytest.raises(UserError, match="training.max_minutes"):
        load_config(None, ["training.max_minutes=-1"])
    assert load_config(None, []).training.max_minutes == 0.0


# ------------------------------------------------------------------------------ grayscale

def test_grayscale_is_bt601_luma_replicated():
    img = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 200, 30]]], np.uint8)[None]  # 1x1x4x3
    out = grayscale(img)
    assert out.shape == img.shape and out.dtype == np.uint8
    expect = np.round(img.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
    assert (out[..., 0] == expect).all() and (out[..., 1] == out[..., 0]).all() and (out[..., 2] == out[..., 0]).all()
    # Pillow's convert("L") uses the same ITU-R 601-2 weights (within rounding).
    pil = np.asarray(Image.fromarray(img[0]).convert("L")).astype(int)
    assert np.abs(pil - out[0, ..., 0].astype(int)).max() <= 1
    grey = np.full((2, 4, 4, 1), 77, np.uint8)
    assert (source_transform("grayscale", grey) == grey).all()
    load_config(None, ["data.source_transform=grayscale", "data.channels=3"])


# ------------------------------------------------------------------------------ paired data

def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _pairs_on_disk(root: Path, n: int = 6, size: int = 8) -> tuple[str, str, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    b = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    a = grayscale(b)
    (root / "A").mkdir(parents=True)
    (root / "B").mkdir()
    for i in range(n):
        (root / "A" / f"img{i}.png").write_bytes(_png(a[i]))
        (root / "B" / f"img{i}.png").write_bytes(_png(b[i]))
    return str(root / "A"), str(root / "B"), a, b


def test_paired_folders_align_by_name_and_name_the_unmatched(tmp_path):
    da, db, a, b = _pairs_on_disk(tmp_path)
    A, B = load_pairs(f"paired:{da},{db}")
    assert (A.images == a).all() and (B.images == b).all() and (B.labels == -1).all()
    # As a plain dataset a pair spec is its B side (what info, evaluate and `native` see).
    assert (load_dataset(f"paired:{da},{db}[2:4]").images == b[2:4]).all()
    assert (load_side(f"paired:{da},{db}[2:4]", "a").images == a[2:4]).all()
    (tmp_path / "A" / "extra.png").write_bytes(_png(a[0]))
    with pytest.raises(DatasetError, match=r"unmatched file names \(1 only in .*A: extra"):
        load_pairs(f"paired:{da},{db}")
    with pytest.raises(DatasetError, match="paired:A_DIR,B_DIR"):
        load_dataset(f"paired:{da}")


def test_paired_folders_on_s3(s3, s3_prefix, tmp_path):
    from ganaug import storage

    da, db, a, b = _pairs_on_disk(tmp_path, n=3)
    for side in ("A", "B"):
        for f in sorted((tmp_path / side).iterdir()):
            storage.write_bytes(f"{s3_prefix}/{side}/{f.name}", f.read_bytes())
    A, B = load_pairs(f"paired:{s3_prefix}/A,{s3_prefix}/B")
    assert (A.images == a).all() and (B.images == b).all()


def test_sidebyside_splits_halves_and_rejects_odd_widths(tmp_path):
    rng = np.random.default_rng(1)
    b = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    a = grayscale(b)
    d = tmp_path / "sbs"
    d.mkdir()
    for i in range(4):
        (d / f"{i}.png").write_bytes(_png(np.concatenate([a[i], b[i]], axis=1)))
    A, B = load_pairs(f"sidebyside:{d}")
    assert (A.images == a).all() and (B.images == b).all()
    (d / "odd.png").write_bytes(_png(np.zeros((8, 7, 3), np.uint8)))
    with pytest.raises(DatasetError, match="odd.png.*7 px wide"):
        load_pairs(f"sidebyside:{d}")
    A, B = load_pairs(f"sidebyside:{d}", skip_bad=True)
    assert len(A) == len(B) == 4 and any("odd.png" in x for x in B.bad)


# ------------------------------------------------------------------------------ --size

def test_parse_size_and_resize():
    assert parse_size(None) is None and parse_size("28x30") == (28, 30) and parse_size("28") == (28, 28)
    assert parse_size("native", {"native_size": [28, 28]}) == (28, 28)
    with pytest.raises(SamplingError, match="--size native: the checkpoint does not record"):
        parse_size("native", {})
    with pytest.raises(SamplingError, match="--size 'ax3'"):
        parse_size("ax3")
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    out = resize_images(imgs, (28, 20))
    assert out.shape == (5, 28, 20, 3)
    # Image by image: the same image gives the same bytes whatever batch it is in.
    assert (resize_images(imgs[2:3], (28, 20))[0] == out[2]).all()
    # Antialiased: a 1-px checkerboard shrinks to flat grey, not to aliased stripes.
    board = ((np.indices((32, 32)).sum(0) % 2) * 255).astype(np.uint8)[None, :, :, None]
    small = resize_images(board, (16, 16)).astype(int)
    assert abs(small.mean() - 127.5) < 8 and small.std() < 20
    assert resize_images(imgs, None) is imgs


# ------------------------------------------------------------------------------ budget

def test_should_stop_ends_fit_at_a_checkpointed_step():
    from ganaug.training.loop import GANTrainer

    cfg = load_config(REPO / "jobs/configs/digits-cgan.yaml",
                      ["model.width=8", "model.max_width=16", "model.z_dim=16", "model.embed_dim=8",
                       "data.resolution=16", "training.batch_size=8", "training.steps=50"])
    rng = np.random.default_rng(0)
    trainer = GANTrainer(cfg, rng.integers(0, 256, (32, 16, 16, 1), dtype=np.uint8), rng.integers(0, 10, 32))
    reports, ckpts = [], []
    trainer.fit(50, report_every=2, checkpoint_every=100, on_report=lambda r: reports.append(r["step"]),
                on_checkpoint=ckpts.append, should_stop=lambda step: step == 5)
    assert trainer.step == 5 and ckpts == [5] and reports == [2, 4, 5]


def _tiny_run_cfg(*extra):
    return load_config(REPO / "jobs/configs/digits-cgan.yaml", [
        "model.width=8", "model.max_width=32", "model.z_dim=32", "model.embed_dim=16",
        "data.spec=builtin:digits", "data.resolution=16", "training.batch_size=16", "training.report_every=4",
        "training.checkpoint_every=1000", "training.steps=400", "training.threads_per_worker=1", *extra])


def test_max_minutes_under_ray_train_two_workers(ray_session, tmp_path):  # noqa: F811
    from ganaug.training import run_files
    from ganaug.training.worker import prepare_run, run_training

    store = str(tmp_path / "store")
    cfg = _tiny_run_cfg("training.max_minutes=0.002")  # 0.12 s: spent by the first report
    summary = run_training(cfg, workers=2, storage_root=store, name="budget", echo=None)
    step = summary["step"]
    assert 4 <= step < 400 and step % 4 == 0, summary
    assert summary["stopped_by"] == "max_minutes" and not summary["complete"]
    # Every rank reported the same number of times and stopped with identical weights.
    assert summary["ranks_in_sync"] and len(set(summary["g_hashes"])) == 1 and len(summary["g_hashes"]) == 2
    assert summary["reports"] == step // 4
    meta = checkpoint.load_meta(summary["checkpoint"])
    assert meta["step"] == step and meta["native_size"] == [8, 8]  # builtin:digits are 8x8
    assert run_files.read_metrics(summary["run"])[-1]["step"] == step
    # The same budget again: nothing to do, no worker started.
    again = run_training(cfg, workers=2, storage_root=store, name="budget", echo=None)
    assert again["step"] == step and again["stopped_by"] == "max_minutes" and "reports" not in again
    # generate --size native writes the set at the data's own size, byte-identical across actor counts.
    from ganaug import storage
    from ganaug.generation import GenerateConfig, run_generate

    mans = []
    for workers in (1, 2):
        out = str(tmp_path / f"set{workers}")
        run_generate(GenerateConfig(checkpoint=summary["checkpoint"], out=out, num=24, rows_per_shard=8,
                                    size="native", workers=workers), progress=False)
        mans.append(storage.read_json(f"{out}/_manifest.json"))
    assert mans[0]["image_size"] == [8, 8] and mans[0]["arguments"]["size"] == [8, 8]
    assert [f["sha256"] for f in mans[0]["files"]] == [f["sha256"] for f in mans[1]["files"]]
    assert load_dataset(f"parquet:{tmp_path / 'set1'}").images.shape == (24, 8, 8, 1)
    # A larger budget is not a model change: the run resumes (prepare_run accepts it).
    plan = prepare_run(_tiny_run_cfg("training.max_minutes=5"), 2, None, store, "budget")
    assert plan.resume_step == step and not plan.budget_spent


# ------------------------------------------------------------------------------ colourisation

def _coloured_shapes(n: int, seed: int, size: int = 16) -> np.ndarray:
    """Squares and discs on black: the square is red, the disc blue, each at a random place
    and brightness, so colour is predictable from the grey shape alone (a learnable
    colourisation task that copying the luma cannot solve)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        cy, cx = rng.integers(5, size - 5, 2)
        r = rng.integers(3, 5)
        bright = rng.uniform(0.6, 1.0)
        if i % 2:
            mask = (np.abs(yy - cy) <= r - 1) & (np.abs(xx - cx) <= r - 1)
            colour = np.array([255, 40, 40]) * bright
        else:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            colour = np.array([40, 80, 255]) * bright
        out[i][mask] = colour.astype(np.uint8)
    return out


def l1_psnr(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    d = pred.astype(np.float64) - target.astype(np.float64)
    mse = float((d ** 2).mean())
    return float(np.abs(d).mean()), float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def test_pix2pix_learns_colourisation_beyond_the_luma_baseline():
    from ganaug.sampling import Sampler
    from ganaug.training.loop import GANTrainer

    torch.set_num_threads(1)
    cfg = load_config(REPO / "jobs/configs/pix2pix-digits.yaml",
                      ["data.channels=3", "data.source_transform=grayscale", "model.width=16", "model.max_width=32",
                       "training.batch_size=16", "training.steps=500", "training.lr_g=0.001",
                       "training.ema_beta=0", "training.lr_decay=none"])  # constant lr: 500 steps is short
    train, heldout = _coloured_shapes(128, 0), _coloured_shapes(48, 1)
    trainer = GANTrainer(cfg, train, np.full(len(train), -1))
    trainer.fit(500)
    sampler = Sampler(trainer.G_ema, trainer.model_meta(), device="cpu")
    grey = grayscale(heldout)
    base_l1, base_psnr = l1_psnr(grey, heldout)
    l1, psnr = l1_psnr(sampler.translate(grey), heldout)
    print(f"colourisation held-out: L1 {base_l1:.1f} -> {l1:.1f}, PSNR {base_psnr:.1f} -> {psnr:.1f} dB")
    # 500 tiny steps: a modest margin over the trivial baseline (L1 9.3 vs 10.2 here; with
    # pix2pix's default linear decay over the second half, 10.4: too little learning left).
    assert l1 < base_l1 and psnr > base_psnr


def test_paired_spec_feeds_pix2pix_aligned_pairs(tmp_path):
    """The worker's data path for a pair spec: A from the spec's A side, row-aligned with B."""
    from ganaug.models.registry import get_family
    from ganaug.training.loop import make_batch_source

    da, db, a, b = _pairs_on_disk(tmp_path, n=8, size=16)
    cfg = load_config(REPO / "jobs/configs/pix2pix-digits.yaml",
                      [f"data.spec=paired:{da},{db}", "data.channels=3", "data.resolution=16", "training.batch_size=4"])
    A, B = load_pairs(cfg.data.spec, 16, 3)
    src = make_batch_source(get_family("pix2pix"), cfg, B.images, B.labels, source_images=A.images)
    assert src.paired
    batch = src.next()
    lum = torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]
    # A is the luma of B in every channel, pair by pair (up to uint8 rounding).
    assert torch.allclose(batch["a"][:, :1], (batch["b"] * lum).sum(1, keepdim=True), atol=0.01)


# ------------------------------------------------------------------------- class filter


def _hf_table(path: Path, n: int = 24) -> tuple[str, np.ndarray, np.ndarray]:
    """An RGB table with Hugging Face ClassLabel names, written as `datasets` writes it."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(n) % 3
    pngs = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "PNG")
        pngs.append({"bytes": buf.getvalue(), "path": None})
    hf = {"info": {"features": {"img": {"_type": "Image"},
                                "label": {"names": ["cat", "dog", "ship"], "_type": "ClassLabel"}}}}
    t = pa.table({"img": pngs, "label": labels}).replace_schema_metadata({"huggingface": json.dumps(hf)})
    pq.write_table(t, path, row_group_size=5)  # several row groups: the filter reads across them
    return f"parquet:{path}", images, labels


def test_class_filter_keeps_relabels_and_then_slices(tmp_path):
    from ganaug.data import iter_dataset, parse_spec
    from ganaug.describe import describe

    spec, images, labels = _hf_table(tmp_path / "train.parquet")
    parsed = parse_spec(spec + "{classes=ship,cat}[1:6]")
    assert parsed.classes == ("ship", "cat") and (parsed.start, parsed.stop) == (1, 6)
    assert str(parsed) == spec + "{classes=ship,cat}[1:6]"

    whole = load_dataset(spec + "{classes=ship,cat}")
    keep = np.flatnonzero(np.isin(labels, [2, 0]))
    assert whole.class_names == ["ship", "cat"]
    assert np.array_equal(whole.images, images[keep])
    assert np.array_equal(whole.labels, np.where(labels[keep] == 2, 0, 1))   # relabelled in the filter's order
    sliced = load_dataset(spec + "{classes=ship,cat}[1:6]")                  # the slice applies to kept rows
    assert np.array_equal(sliced.images, images[keep[1:6]])
    # Streaming in small batches gives the same rows in the same order.
    parts = list(iter_dataset(spec + "{classes=ship,cat}[1:6]", batch_rows=2))
    assert [len(p) for p in parts] == [2, 2, 1]
    assert np.array_equal(np.concatenate([p.images for p in parts]), images[keep[1:6]])
    assert describe(spec + "{classes=dog}")["classes"] == {"dog": 8}


@pytest.mark.parametrize("suffix, needle", [
    ("{classes=cat,horse}", "'horse', which the dataset does not have; its classes: cat, dog, ship"),
    ("{classes=}", "needs class names separated by commas"),
    ("{classes=cat,cat}", "names a class twice"),
])
def test_class_filter_errors_name_the_problem(tmp_path, suffix, needle):
    spec, _, _ = _hf_table(tmp_path / "train.parquet")
    with pytest.raises(DatasetError, match=needle.replace("(", r"\(")):
        load_dataset(spec + suffix)


def test_cyclegan_trains_on_two_class_subsets_of_a_colour_table(tmp_path):
    """CycleGAN on colour: domain A = one class subset, domain B = another, from one RGB table
    (the worker's data path: data.spec and data.source_spec, each with a class filter)."""
    from ganaug.sampling import Sampler
    from ganaug.training.loop import GANTrainer

    spec, images, labels = _hf_table(tmp_path / "train.parquet")
    cfg = load_config(REPO / "jobs/configs/cyclegan-digits.yaml",
                      [f"data.spec={spec}{{classes=dog}}", f"data.source_spec={spec}{{classes=cat}}",
                       "data.channels=3", "data.resolution=16", "model.width=8", "model.max_width=16",
                       "training.batch_size=4", "training.steps=4"])
    b = load_dataset(cfg.data.spec, cfg.data.resolution, cfg.data.channels)
    a = load_dataset(cfg.data.source_spec, cfg.data.resolution, cfg.data.channels)
    assert len(b) == len(a) == 8 and b.images.shape[1:] == (16, 16, 3)
    assert np.array_equal(load_dataset(cfg.data.spec).images, images[labels == 1])
    trainer = GANTrainer(cfg, b.images, b.labels, b.class_names, source_images=a.images)
    before = [p.detach().clone() for p in trainer.G.parameters()]
    trainer.fit(4)
    assert trainer.step == 4
    assert any(not torch.equal(p0, p1) for p0, p1 in zip(before, trainer.G.parameters()))
    out = Sampler(trainer.G_ema, trainer.model_meta(), device="cpu").translate(a.images[:2])
    assert out.shape == (2, 16, 16, 3) and out.dtype == np.uint8
