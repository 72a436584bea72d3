"""The quality benchmark's honest low-data protocol (benchmarks/quality.py), on tiny real data.

The k-shot GAN must see ONLY the k x classes subset: the test trains it on real Ray Train
(the library call `ganaug train` makes, on the session's Ray) and checks the training run's
data spec and row count, that the subset file holds exactly the images the classifier arms
use, and that the ratio and filter were chosen on the validation part, not the held-out one.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from ray_fixtures import ray_session  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import quality  # noqa: E402

TINY = ["model.width=8", "model.max_width=32", "model.z_dim=32", "model.embed_dim=16", "data.resolution=16",
        "data.channels=1", "training.batch_size=16",
        "training.report_every=4", "training.threads_per_worker=1"]
DIGITS = quality.Protocol("digits", 1, 16, "builtin:digits[0:1000]", "builtin:digits[0:800]",
                          "builtin:digits[800:1000]", "builtin:digits[1000:1797]", "builtin:digits[0:800]",
                          False, (5,))


def test_kshot_gan_trains_only_on_the_subset_and_chooses_on_val(ray_session, tmp_path):  # noqa: F811
    from ganaug.config import load_config
    from ganaug.data import load_dataset
    from ganaug.metrics.downstream import kshot_indices
    from ganaug.training.worker import prepare_run, run_training

    trained: list[dict] = []

    def train_on_session_ray(preset, overrides, storage_root, name):
        # The preset named by the benchmark is the CPU one; the test keeps its overrides
        # (data.spec = the subset file) and shrinks the model.
        assert preset.name == "digits-cgan-cpu.yaml"
        cfg = load_config(REPO / "jobs/configs/digits-cgan.yaml", [*TINY, *overrides])
        plan = prepare_run(cfg, 1, False, str(storage_root), name)
        summary = run_training(plan.cfg, plan=plan, echo=None)
        trained.append(summary)
        return summary

    args = quality.parse_args(["--quick", "--kshot", "5", "--out", str(tmp_path)])
    args.dataset = "digits"
    judge = quality.Judge(args, DIGITS)
    result = quality.run_kshot(args, DIGITS, "cgan", judge, None, train=train_on_session_ray)

    # The GAN's run saw the subset file and exactly 5 x 10 rows, 5 per class.
    (summary,) = trained
    subset = tmp_path / "kshot" / "digits-k5.parquet"
    assert summary["data"]["spec"] == f"parquet:{subset}"
    assert summary["data"]["rows"] == 50
    assert sorted(summary["data"]["classes"].values()) == [5] * 10
    assert summary["complete"] and summary["step"] == 20  # --quick: 20 steps

    # The file holds the very images the arms draw with subset seed 0 from the train part
    # without its validation rows.
    real = load_dataset(DIGITS.train_minus_val, 16, 1)
    idx = kshot_indices(real.labels, 5, 0, 10)
    written = load_dataset(f"parquet:{subset}", 16, 1)
    np.testing.assert_array_equal(written.images, real.images[idx])
    np.testing.assert_array_equal(written.labels, real.labels[idx])
    assert Counter(pq.read_table(subset, columns=["label"])["label"].to_pylist()) == {c: 5 for c in range(10)}

    # Every lever was tried on the validation part; the chosen one is among them.
    entry = result["k=5"]
    from ganaug import checkpoint

    kept = [uri for _, uri in checkpoint.list_checkpoints(summary["run"])]
    assert len(kept) >= 2  # a choice between checkpoints, not only the last one
    tried = {(c["checkpoint"], c["filter"], c["real_fraction"]) for c in entry["val_choices"]}
    assert tried == {(c, f, r) for c in kept for f in quality.FILTERS for r in quality.RATIOS}
    chosen = entry["chosen_on_val"]
    assert (chosen["checkpoint"], chosen["filter"], chosen["real_fraction"]) in tried
    best = max(c["gan_over_classic"] for c in entry["val_choices"])
    assert [c["gan_over_classic"] for c in entry["val_choices"]
            if (c["checkpoint"], c["filter"], c["real_fraction"]) == tuple(chosen[k] for k in
                                                                           ("checkpoint", "filter", "real_fraction"))] == [best]
    assert entry["heldout"]["real_images"] == 50 and entry["heldout"]["generated_images"] == 10 * 10
    assert set(entry["heldout"]) >= {"real+classic", "real+classic+gan", "gan_over_classic"}


# ----------------------------------------------------------------------------- the other families


def test_unconditional_samples_take_the_feature_metrics_domain_labels(tmp_path):
    """dcgan in the quality benchmark: its samples are labelled by the very domain CNN the
    feature metrics use (one cache entry), and the gain arms, which need asked-for labels, are refused."""
    import pytest
    from tiny import tiny_checkpoint

    from ganaug.metrics.classifier import predict

    args = quality.parse_args(["--quick", "--out", str(tmp_path)])
    judge = quality.Judge(args, DIGITS)
    ckpt = tiny_checkpoint(tmp_path / "dcgan", "dcgan")
    synthetic, _ = quality.sample_native(ckpt, 60, 0, 1.0, DIGITS.native)
    assert (synthetic[1] == -1).all()  # an unconditional generator asks for no class
    images, labels = judge.pseudo_label(synthetic)
    assert images is synthetic[0] and labels.shape == (60,) and labels.min() >= 0 and labels.max() < 10
    np.testing.assert_array_equal(labels, predict(judge.domain_classifier(), images))
    report = judge.evaluate((images, labels), ["fid", "kid", "diversity"])
    assert report["metrics"]["fid"]["value"] > 0
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the labels' CNN is the feature space's
    with pytest.raises(SystemExit):
        quality.parse_args(["--families", "dcgan", "--kshot", "20"])


def test_translation_judge_moves_towards_the_target(tmp_path):
    """benchmarks/cyclegan.py's measures on digits 3 -> 8: the untranslated inputs are the zero
    point, and a translator that returned real 8s would read exactly as the real 8s do."""
    import cyclegan
    from ganaug.data import load_dataset

    judge = quality.Judge(quality.parse_args(["--domain-epochs", "8", "--out", str(tmp_path)]), DIGITS)
    held = load_dataset(DIGITS.heldout, 16, 1)
    threes, eights = held.images[held.labels == 3], held.images[held.labels == 8]
    n = min(len(threes), len(eights)) // 2
    names = judge.class_names
    clf = judge.domain_classifier()
    unchanged = cyclegan.judge_translation(clf, threes[:n], threes[:n], eights[n:], names, "3", "8")
    assert unchanged["translated"] == unchanged["inputs"] and unchanged["mean_pixel_change"] == 0
    perfect = cyclegan.judge_translation(clf, threes[:n], eights[:n], eights[n:], names, "3", "8")
    assert perfect["translated"]["read_as_8"] > perfect["inputs"]["read_as_8"]
    assert perfect["translated"]["fid_to_8"] < perfect["inputs"]["fid_to_8"]
    assert perfect["mean_pixel_change"] > 0


def test_interleaved_grid_puts_each_input_above_its_outputs(tmp_path):
    from PIL import Image

    a = np.zeros((30, 4, 4, 3), np.uint8)
    b = np.full((30, 4, 4, 3), 255, np.uint8)
    path = tmp_path / "grid.png"
    quality.write_interleaved_grid([a, b], path, per_row=10, groups=3)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 * (6 * 5 + 1), 2 * (10 * 5 + 1), 3)  # 6 rows of 10 tiles, 1-px borders, upscale 2
    row_means = [grid[2 * (1 + r * 5):2 * (1 + r * 5) + 8].mean() for r in range(6)]
    assert row_means[0::2] == [0.0] * 3 and all(m > 100 for m in row_means[1::2])
