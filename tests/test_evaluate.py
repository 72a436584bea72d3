"""`ganaug evaluate` end to end and the `fidelity` generation filter (tiny data, real components).

A tiny untrained 16x16 cgan checkpoint whose model.json carries a real training config
(data.spec builtin:digits[0:600]) stands in for a trained run; real data is builtin:digits.
Metric budgets are cut to the bone (1 seed, 1 epoch): these tests check the wiring, the
files and the determinism of the Ray path, not the numbers.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ganaug import checkpoint, storage
from ganaug.cli import main
from ganaug.config import DataConfig, ModelConfig, RunConfig, TrainingConfig
from ganaug.data import load_dataset
from ganaug.models.registry import DataInfo, get_family

REAL = "builtin:digits[0:1000]"
HELDOUT = "builtin:digits[1000:1400]"
TRAIN_SPEC = "builtin:digits[0:600]"
TINY = ["--ks", "5", "--seeds", "1", "--domain-epochs", "1", "--cas-epochs", "1", "--gain-steps", "10",
        "--gan-per-class", "5"]


def save_tiny_cgan(folder: Path, seed: int = 0) -> str:
    """An untrained cgan checkpoint inside a run folder, with the resolved run config and a metrics.jsonl."""
    fam = get_family("cgan")
    names = [str(i) for i in range(10)]
    mc = ModelConfig(family="cgan", width=8, z_dim=16, embed_dim=8, max_width=32)
    cfg = RunConfig(model=mc, data=DataConfig(spec=TRAIN_SPEC, resolution=16, channels=1),
                    training=TrainingConfig(steps=4, batch_size=16, augment="", ada_target=0.0)).validate()
    kwargs = fam.generator_kwargs(mc, DataInfo(16, 1, 10, names))
    torch.manual_seed(seed)
    G = fam.build_generator(kwargs)
    meta = {"family": "cgan", "kind": fam.kind, "generator_kwargs": kwargs, "resolution": 16, "channels": 1,
            "num_classes": 10, "class_names": names, "step": 3, "config": cfg.to_dict(),
            "config_digest": cfg.digest()}
    run = folder / "run"
    uri = checkpoint.save_checkpoint(str(run / "checkpoints" / checkpoint.step_dir_name(3)), meta=meta,
                                     generator_ema=G)
    rows = [{"step": s, "loss_g": 1.0 / s, "loss_d": 0.5, "d_real": 0.1, "d_fake": -0.1, "ada_p": 0.0}
            for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return uri


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny CNNs on a busy 2-core machine: one thread avoids OpenMP thrash (10x faster here)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return save_tiny_cgan(tmp_path_factory.mktemp("eval-ckpt"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("domain-cache"))


def run_cli(capsys, argv: list[str]) -> dict:
    main(argv)
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])  # the last stdout line is JSON


def _check_report(out: Path, summary: dict, expect_figures: set[str]) -> dict:
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert md.startswith("# ganaug evaluation report") and "## Verdicts" in md
    assert expect_figures <= set(report["figures"]), report["figures"]
    for name in report["figures"]:
        with Image.open(out / name) as im:
            im.load()
            assert im.size[0] > 50 and im.size[1] > 50
        assert f"]({name})" in md
    assert summary["report"].endswith("report.json") and Path(summary["report"]).is_file()
    assert summary["verdicts"] and set(summary["verdicts"].values()) <= {"pass", "warn", "fail", "info"}
    return report


# ----------------------------------------------------------------------------- end to end


def test_evaluate_checkpoint_end_to_end(ckpt, cache_dir, tmp_path, capsys):
    out = tmp_path / "report"
    summary = run_cli(capsys, ["evaluate", "--checkpoint", ckpt, "--real", REAL, "--heldout", HELDOUT,
                               "--num", "200", "--seed", "5", "--cache-dir", cache_dir, "--out", str(out), *TINY])
    report = _check_report(out, summary, {"samples_per_class.png", "cas_per_class.png", "augmentation_gain.png",
                                          "training_curves.png"})
    s = report["settings"]
    assert (s["n_train"], s["n_heldout"], s["n_synthetic"]) == (1000, 400, 200)
    assert set(report["metrics"]) == {"fid", "kid", "prdc", "fid_per_class", "fidelity", "diversity",
                                      "memorisation", "cas", "gain"}
    assert s["feature_path"] == "in-process" and summary["feature_path"] == "in-process"
    assert report["data"]["heldout"] == HELDOUT and report["data"]["synthetic"]["source"] == "sampled"
    assert report["data"]["checkpoint"]["id"] == checkpoint.checkpoint_id(ckpt)
    assert any("whole train part" in n for n in report["notes"])  # gain without --gan-kshot says so
    for key in ("fid", "fid_reference", "kid", "precision", "recall", "coverage", "label_fidelity", "cas",
                "cas_real", "gain_over_classic"):
        assert key in summary, key
    assert summary["gain_over_classic"].keys() == {"5"}
    # The sampled set equals rows of `ganaug generate --seed 5` (row i: seed 5+i, label i mod 10).
    from ganaug.sampling import Sampler

    grid_src = Sampler.from_checkpoint(ckpt).generate([5, 6, 7], [0, 1, 2])
    assert grid_src.shape == (3, 16, 16, 1)


@pytest.mark.timeout(300)  # a Ray Data pool that starves its own tasks hangs (ARCHITECTURE.md §5)
def test_evaluate_generated_set_split_and_s3_out(ckpt, cache_dir, tmp_path, capsys, ray_session, s3_prefix):
    from ganaug.generation import GenerateConfig, run_generate

    syn = str(tmp_path / "set")
    run_generate(GenerateConfig(checkpoint=ckpt, out=syn, num=300, seed=0, rows_per_shard=100, workers=1),
                 progress=False)
    out = storage.join(s3_prefix, "report")
    # A plain folder URI (no parquet: prefix), no --checkpoint and no --heldout: split --real.
    summary = run_cli(capsys, ["evaluate", "--synthetic", syn, "--real", REAL, "--metrics", "fid,prdc,fidelity,cas",
                               "--cache-dir", cache_dir, "--out", out, *TINY])
    report = json.loads(storage.read_text(storage.join(out, "report.json")))
    assert report["settings"]["n_synthetic"] == 300
    n_train, n_held = report["settings"]["n_train"], report["settings"]["n_heldout"]
    assert n_train + n_held == 1000 and abs(n_held - 200) <= 5  # the last 20% of each class, rounded per class
    assert report["data"]["split"].startswith("last 20%") and report["data"]["heldout"] is None
    assert report["data"]["synthetic"]["manifest"]["rows"] == 300
    assert any(n.startswith("held-out split") for n in report["notes"])
    assert "last 20%" in storage.read_text(storage.join(out, "report.md"))
    assert set(report["metrics"]) == {"fid", "prdc", "fidelity", "cas"}
    assert summary["out"] == out and "training_curves.png" not in report["figures"]
    with Image.open(io.BytesIO(storage.read_bytes(storage.join(out, "cas_per_class.png")))) as im:
        im.load()


def test_split_heldout_is_stratified_and_deterministic():
    from ganaug.evaluation import split_heldout

    labels = np.array([0] * 10 + [1] * 5 + [2])  # sorted by class, as an image folder would be
    tr, he = split_heldout(labels, 0.2)
    assert list(he) == [8, 9, 14]  # the last 20% of each class; a lone image stays in train
    assert sorted(np.concatenate([tr, he]).tolist()) == list(range(16))
    assert np.array_equal(split_heldout(labels, 0.2)[0], tr)


# ----------------------------------------------------------------------------- Ray Data path


@pytest.mark.timeout(300)  # a Ray Data pool that starves its own tasks hangs (ARCHITECTURE.md §5)
def test_ray_feature_path_matches_in_process(ckpt, cache_dir, tmp_path, capsys, ray_session, s3_prefix):
    from ganaug.evaluation import _DomainFactory, parquet_features_ray
    from ganaug.generation import GenerateConfig, run_generate
    from ganaug.metrics.features import DomainFeatures, DomainSettings

    syn = storage.join(s3_prefix, "set")  # read_parquet through ganaug.storage's S3 filesystem
    run_generate(GenerateConfig(checkpoint=ckpt, out=syn, num=250, seed=3, rows_per_shard=60, workers=1),
                 progress=False)
    real = load_dataset(REAL, 16, 1)
    dom = DomainFeatures.from_training(real.images, real.labels, 10, settings=DomainSettings(epochs=1),
                                       cache_dir=cache_dir)
    feats, labels = parquet_features_ray(f"parquet:{syn}", _DomainFactory.of(dom, "cpu"), resolution=16,
                                         channels=1, workers=2, batch_size=64)
    local = load_dataset(f"parquet:{syn}", 16, 1)
    assert feats.shape == (250, dom.dim)
    assert np.array_equal(labels, local.labels)  # row order is kept
    np.testing.assert_allclose(feats, dom(local.images), rtol=1e-4, atol=1e-5)

    # The same evaluation with the path forced on and off gives the same numbers.
    common = ["--synthetic", f"parquet:{syn}", "--real", REAL, "--heldout", HELDOUT, "--metrics", "fid,prdc",
              "--cache-dir", cache_dir, "--domain-epochs", "1"]
    # Large-set mode (forced here): features of every row on Ray Data, images only from a prefix.
    on = run_cli(capsys, ["evaluate", *common, "--ray", "--workers", "2", "--max-images", "120",
                          "--out", str(tmp_path / "on")])
    off = run_cli(capsys, ["evaluate", *common, "--no-ray", "--out", str(tmp_path / "off")])
    assert on["feature_path"] == "ray" and off["feature_path"] == "in-process"
    assert on["fid"] == pytest.approx(off["fid"], rel=1e-3)
    assert on["precision"] == pytest.approx(off["precision"], abs=1e-6)
    rep = json.loads((tmp_path / "on" / "report.json").read_text())
    assert rep["settings"]["n_synthetic"] == 250 and rep["settings"]["n_synthetic_images"] == 120
    assert any("first 120 rows" in n for n in rep["notes"])


# ----------------------------------------------------------------------------- k-shot GANs


def test_gan_kshot_trains_a_gan_per_k(ckpt, cache_dir, tmp_path, capsys):
    out = tmp_path / "kshot"
    run_cli(capsys, ["evaluate", "--checkpoint", ckpt, "--real", REAL, "--heldout", HELDOUT, "--num", "100",
                     "--metrics", "gain", "--gan-kshot", "--gan-kshot-steps", "2", "--ks", "2,3", "--seeds", "1",
                     "--domain-epochs", "1", "--gain-steps", "5", "--gan-per-class", "3", "--cache-dir", cache_dir,
                     "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["gan_kshot"]["steps"] == 2 and set(report["data"]["gan_kshot"]["seconds"]) == {"2", "3"}
    assert report["settings"]["subset_seed"] == 0
    assert [g["k"] for g in report["metrics"]["gain"]["ks"]] == [2, 3]
    assert any("k-shot subset" in n for n in report["notes"])


# ----------------------------------------------------------------------------- errors


def test_user_errors_are_one_line(ckpt, tmp_path, cli_error):
    out = ["--out", str(tmp_path / "o")]
    cases = [
        (["evaluate", "--checkpoint", ckpt, *out], "--real is required"),
        (["evaluate", "--real", REAL, *out], "give --checkpoint"),
        (["evaluate", "--checkpoint", ckpt, "--real", REAL, "--metrics", "fid,bogus", *out], "unknown metric(s) bogus"),
        (["evaluate", "--checkpoint", ckpt, "--real", REAL, "--ks", "a,b", *out], "--ks a,b"),
        (["evaluate", "--checkpoint", ckpt, "--real", REAL, "--feature", "clip", *out], "--feature clip"),
        (["evaluate", "--checkpoint", ckpt, "--real", REAL, "--feature", f"torchscript:{tmp_path / 'm.pt'}", *out],
         "torchscript module not found"),
        (["evaluate", "--synthetic", str(tmp_path / "nope"), "--real", REAL, *out], "--synthetic"),
        (["evaluate", "--checkpoint", str(tmp_path / "nope"), "--real", REAL, *out], "checkpoint not found"),
        (["evaluate", "--checkpoint", ckpt, "--real", "bogus:x", *out], "unknown dataset scheme"),
        (["evaluate", "--synthetic", str(tmp_path), "--real", REAL, "--gan-kshot", *out], "--gan-kshot"),
        (["evaluate", "--checkpoint", ckpt, "--real", REAL, "--run", str(tmp_path), *out], "no metrics.jsonl"),
    ]
    for argv, match in cases:
        line = cli_error(argv)
        assert match in line, (argv, line)
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- fidelity filter


def _pick_plan(conf: np.ndarray, labels: np.ndarray) -> tuple[list[int], float] | None:
    """Labels and a threshold for which every row passes within the tries and some first candidates fail.

    conf[i, j]: confidence of candidate j of row i. A margin keeps thresholds away from the scores.
    """
    for t in (0.9, 0.8, 0.7, 0.5, 0.3):
        ok = [c for c in range(10)
              if (conf[labels == c].max(1) >= t + 1e-3).all() and (np.abs(conf[labels == c] - t) > 1e-3).all()]
        if ok and any((conf[labels == c][:, 0] < t).any() for c in ok):
            return ok, t
    return None


@pytest.mark.timeout(300)  # a Ray Data pool that starves its own tasks hangs (ARCHITECTURE.md §5)
def test_fidelity_filter_delivers_exactly_num_passing_rows(ckpt, tmp_path, ray_session):
    from ganaug.generation import MAX_FILTER_TRIES, GenerateConfig, run_generate
    from ganaug.metrics.filters import FidelityFilter, warm_cache
    from ganaug.sampling import Sampler

    # The driver-side hook: the judge (default settings, default shared cache) is trained once here.
    judge = FidelityFilter(0.5, warm_cache(ckpt).classifier)
    sampler = Sampler.from_checkpoint(ckpt)
    n, seed = 40, 11
    # Choose labels/threshold from the candidate stream (candidate j of row i: seed S+i+j*N) so that the
    # untrained generator can deliver every row, yet some candidates are rejected.
    probe_labels = np.arange(n) % 10
    conf = np.stack([judge.confidence(sampler.generate(list(seed + np.arange(n) + j * n), probe_labels),
                                      probe_labels) for j in range(MAX_FILTER_TRIES)], 1)
    picked = _pick_plan(conf, probe_labels)
    assert picked is not None, np.round(np.median(conf, 1), 3)
    classes, t = picked
    plan = ",".join(map(str, classes))
    labels = np.array(classes)[np.arange(n) % len(classes)]
    conf = np.stack([judge.confidence(sampler.generate(list(seed + np.arange(n) + j * n), labels), labels)
                     for j in range(MAX_FILTER_TRIES)], 1)
    if not ((conf.max(1) >= t + 1e-3).all() and (conf[:, 0] < t).any()):
        pytest.fail(f"plan {plan} @ {t} does not fit the re-cycled labels")
    expected_j = (conf >= t).argmax(1)
    print(f"fidelity test plan: labels {plan} threshold {t}: {int(expected_j.sum())} rejections expected")

    out = tmp_path / "filtered"
    summary = run_generate(GenerateConfig(checkpoint=ckpt, out=str(out), num=n, labels=plan, seed=seed,
                                          rows_per_shard=15, workers=2, filter=f"fidelity:{t}"), progress=False)
    assert summary["rows"] == n
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    assert table.num_rows == n
    images = np.stack([np.asarray(Image.open(io.BytesIO(b)))[..., None]
                       for b in table.column("image").combine_chunks().field("bytes").to_pylist()])
    got_labels = table.column("label").to_numpy()
    assert np.array_equal(got_labels, labels)
    # Every delivered row passes the threshold when re-classified from its stored PNG.
    assert (judge.confidence(images, got_labels) >= t - 1e-4).all()
    # Row i kept its first accepted candidate j: seed S + i + j*N, exactly as predicted.
    j = (table.column("seed").to_numpy() - seed - np.arange(n)) // n
    assert np.array_equal(j, expected_j)
    rejected = int(j.sum())
    assert rejected > 0
    manifest = json.loads((out / "_manifest.json").read_text())
    f = manifest["filter"]
    assert f["spec"] == f"fidelity:{t}" and f["fallback_rows"] == 0
    assert f["rejected"] == rejected and f["candidates"] == rejected + n
    assert f["rejection_rate"] == pytest.approx(rejected / (rejected + n), abs=1e-6)


def test_fidelity_filter_argument_errors(ckpt, tmp_path):
    from ganaug.generation import parse_filter
    from ganaug.metrics.filters import FilterError

    for bad in ("fidelity:2", "fidelity:x", "fidelity:"):
        with pytest.raises(FilterError, match="threshold in"):
            parse_filter(bad)
    entry, arg = parse_filter("fidelity:0.9")
    assert entry.name == "fidelity" and arg == "0.9"
