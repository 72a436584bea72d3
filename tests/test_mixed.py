"""ganaug.data.mixed_dataset: real + synthetic rows as one Ray Dataset (ARCHITECTURE.md §3.8).

Real Ray Data over the built-in digits and a tiny (untrained) cgan whose class names are the
digits' names in reverse order, so that matching by name, not by index, is what is tested.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

if not hasattr(sys.modules.get("conftest"), "ray_session"):
    from ray_fixtures import ray_session  # noqa: F401

from tiny import tiny_cgan_checkpoint

from ganaug import mixplan
from ganaug.mixplan import MixError

REAL = "builtin:digits[0:300]"
NAMES = [str(i) for i in range(10)]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return tiny_cgan_checkpoint(tmp_path_factory.mktemp("mixed") / "reversed", list(reversed(NAMES)))


def _rows(ds) -> dict[str, np.ndarray]:
    batches = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


# ----------------------------------------------------------------------------- the plan (no Ray)

def test_plan_counts_spans_and_blocks():
    assert mixplan.synthetic_count(300, 0.5) == 300
    assert mixplan.synthetic_count(300, 0.25) == 100
    assert mixplan.synthetic_count(300, 0.0) == 0
    with pytest.raises(MixError, match="ratio must be in"):
        mixplan.synthetic_count(300, 1.0)
    assert mixplan.proportional_counts(np.array([10, 30, 0]), 8) == {0: 2, 1: 6, 2: 0}
    # balance fills the rare classes first
    assert mixplan.plan_synthetic_counts(np.array([10, 30, 0]), 40, balance=True) == {0: 15, 1: 0, 2: 25}
    # set rows wrap around: epoch 1 of 5 per epoch over a 7-row set starts at row 5
    assert mixplan.set_spans(1, 0, 5, 5, 7) == [(5, 7), (0, 3)]
    plan = mixplan.MixPlan(real_rows=1000, synthetic_rows=500, class_names=NAMES,
                           real_histogram=np.full(10, 100), source="checkpoint", seed=4, block_rows=256,
                           synthetic_counts=mixplan.proportional_counts(np.full(10, 100), 500))
    for epoch in (0, 1):
        items = plan.blocks(epoch)
        real = np.concatenate([np.arange(a, b) for it in items for a, b in mixplan.decode_spans(it)])
        assert sorted(real.tolist()) == list(range(1000))          # every real row once per epoch
        assert sum(it["syn_hi"] - it["syn_lo"] for it in items) == 500
        labels = np.concatenate([mixplan.decode_labels(it) for it in items])
        assert np.bincount(labels, minlength=10).tolist() == [50] * 10
    first = [mixplan.decode_spans(it).tolist() for it in plan.blocks(0)]
    assert first != [mixplan.decode_spans(it).tolist() for it in plan.blocks(1)]   # a new order per epoch
    assert first == [mixplan.decode_spans(it).tolist() for it in plan.blocks(0)]   # ... and a fixed one


def test_class_alignment_is_by_name():
    assert mixplan.align_classes(["cat", "dog"], ["dog", "bird", "cat"], "the generator").tolist() == [2, 0]
    with pytest.raises(MixError, match=r"classes do not match: the generator has no class 'dog'"):
        mixplan.align_classes(["cat", "dog"], ["cat", "bird"], "the generator")


# ----------------------------------------------------------------------------- the stream (Ray Data)

def test_checkpoint_stream_ratio_labels_and_determinism(ray_session, ckpt):
    from ganaug.data import label_histogram, load_dataset, mixed_dataset
    from ganaug.sampling import Sampler, resize_images

    ds = mixed_dataset(REAL, checkpoint=ckpt, ratio=0.4, seed=7, epochs=2, block_rows=128)
    rows = _rows(ds)
    per_epoch = 300 + 200
    assert len(rows["label"]) == 2 * per_epoch
    assert rows["synthetic"].sum() == 2 * 200                     # ratio 0.4 exactly: 200 / 500
    assert rows["image"].shape[1:] == (8, 8, 1)                   # the real data's own size
    assert set(rows["class_name"].tolist()) <= set(NAMES)
    assert all(rows["class_name"][i] == NAMES[rows["label"][i]] for i in range(len(rows["label"])))
    # The synthetic rows follow the real class proportions.
    hist, _ = label_histogram(REAL)
    syn_labels = rows["label"][rows["synthetic"]]
    expected = mixplan.proportional_counts(np.array([hist[k] for k in range(10)]), 200)
    assert np.bincount(syn_labels, minlength=10).tolist() == [2 * expected[k] for k in range(10)]
    # Every real row appears once per epoch.
    real = load_dataset(REAL)
    assert (~rows["synthetic"]).sum() == 2 * len(real.labels)
    # A synthetic row is the generator's sample for ITS seed and the model label of its class
    # NAME (the model's labels are reversed), resized to the stream's size as generate --size is.
    sampler = Sampler.from_checkpoint(ckpt, device="cpu")
    idx = np.flatnonzero(rows["synthetic"])[:12]
    model_labels = [sampler.class_names.index(rows["class_name"][i]) for i in idx]
    made = resize_images(sampler.generate(rows["seed"][idx].tolist(), model_labels), (8, 8))
    assert np.array_equal(made, rows["image"][idx])
    # Seeds: epoch e uses seed + e * 2**32 + j.
    seeds = np.sort(rows["seed"][rows["synthetic"]])
    assert seeds[:200].tolist() == list(range(7, 207))
    assert seeds[200:].tolist() == list(range(7 + 2**32, 207 + 2**32))
    # Deterministic by (seed, epoch): the same call gives the same stream; epoch 1 alone is the
    # second half of the two-epoch stream.
    again = _rows(mixed_dataset(REAL, checkpoint=ckpt, ratio=0.4, seed=7, epochs=2, block_rows=128))
    assert all(np.array_equal(rows[k], again[k]) for k in ("image", "label", "seed", "synthetic"))
    second = _rows(mixed_dataset(REAL, checkpoint=ckpt, ratio=0.4, seed=7, epoch=1, block_rows=128))
    assert np.array_equal(second["seed"], rows["seed"][per_epoch:])
    assert np.array_equal(second["image"], rows["image"][per_epoch:])


def test_balance_fills_the_rare_classes(ray_session, ckpt):
    from ganaug.data import mixed_dataset

    skewed = "builtin:digits{classes=0,1,2}[0:60]"   # rows of three classes only
    ds = mixed_dataset(skewed, checkpoint=ckpt, ratio=0.5, balance=True, block_rows=64)
    rows = _rows(ds)
    counts = np.bincount(rows["label"], minlength=3)
    assert counts.max() - counts.min() <= 1                      # totals end up even
    assert rows["synthetic"].sum() == 60


def test_set_source_and_refusals(ray_session, ckpt, tmp_path):
    from ganaug.data import mixed_dataset
    from ganaug.generation import GenerateConfig, run_generate

    out = str(tmp_path / "set")
    run_generate(GenerateConfig(checkpoint=ckpt, num=50, out=out, rows_per_shard=20, seed=3), progress=False)
    rows = _rows(mixed_dataset(REAL, synthetic=out, ratio=0.25, seed=1, epochs=3, block_rows=64))
    syn = rows["synthetic"]
    assert syn.sum() == 3 * 100 and len(rows["label"]) == 3 * 400
    # The set's rows keep their class NAMES (its label indices are the reversed model's).
    manifest = json.loads((Path(out) / "_manifest.json").read_text())
    assert manifest["rows"] == 50
    from ganaug.data import load_dataset
    from ganaug.sampling import resize_images

    generated = load_dataset(f"parquet:{out}")
    small = resize_images(generated.images, (8, 8))        # the stream's size: the real data's
    by_bytes = {small[i].tobytes(): generated.class_names[generated.labels[i]] for i in range(50)}
    for i in np.flatnonzero(syn)[:40]:
        assert by_bytes[rows["image"][i].tobytes()] == rows["class_name"][i]
    # Refusals, one line each, before any work.
    missing = tiny_cgan_checkpoint(tmp_path / "five", NAMES[:5])
    with pytest.raises(MixError, match=r"has no class '5'.*matched by class name"):
        mixed_dataset(REAL, checkpoint=missing, ratio=0.5)
    with pytest.raises(MixError, match=r"set .* has class '\d', which the real data .* lacks"):
        mixed_dataset("builtin:digits{classes=0,1}", synthetic=out, ratio=0.5)
    with pytest.raises(MixError, match="needs synthetic rows"):
        mixed_dataset(REAL, ratio=0.5)
    with pytest.raises(MixError, match="not both"):
        mixed_dataset(REAL, synthetic=out, checkpoint=ckpt)
    with pytest.raises(MixError, match="balance=True draws the synthetic labels"):
        mixed_dataset(REAL, synthetic=out, balance=True)


# Consumption by a 2-worker TorchTrainer on CPU: tests/test_classify.py (its job trains on this
# stream, streamed from a checkpoint, split equally over two Ray Train workers).
