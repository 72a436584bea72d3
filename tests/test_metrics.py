"""ganaug.metrics, calibrated on real data with known answers.

scikit-learn's digits (1,797 images, 8x8 upsampled to 16x16 uint8) split into
train / held-out / a second real set. "Generators" with known behaviour:
real unseen images (good), uniform noise (garbage), one image repeated
(collapse), training images (memorisation). Each measure must tell them apart.
One small domain classifier is trained once per module and then loaded from
its cache by every other test.
"""

from __future__ import annotations

import json
import os
import time
import warnings

import numpy as np
import pytest
import torch

from ganaug.metrics import (
    ALL_METRICS,
    EvaluationInputError,
    FeatureMapper,
    build_extractor,
    evaluate_arrays,
    extract_features_batched,
)
from ganaug.metrics.classifier import (
    ClassifierConfig,
    per_class_accuracy,
    predict,
    train_classifier,
)
from ganaug.metrics.distribution import (
    density_coverage,
    fid,
    kid,
    per_class_fid,
    precision_recall,
)
from ganaug.metrics.diversity import (
    diversity,
    label_fidelity,
    memorisation,
    pixel_vectors,
)
from ganaug.metrics.downstream import (
    ARMS,
    augmentation_gain,
    classification_accuracy_score,
    kshot_indices,
)
from ganaug.metrics.features import (
    DomainFeatures,
    DomainSettings,
    InceptionFeatures,
    domain_fingerprint,
)
from ganaug.registry import UnknownNameError

torch.set_num_threads(1)  # the machine is shared; more threads only add contention

NAMES = [str(i) for i in range(10)]
SMALL = ClassifierConfig(width=16)  # the same architecture, narrower: fast enough for a test
DOMAIN = DomainSettings(epochs=6, classifier=SMALL)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images[:, None].astype(np.float32) / 16.0)
    x = torch.nn.functional.interpolate(x, size=16, mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    labels = d.target.astype(np.int64)
    p = np.random.default_rng(0).permutation(len(labels))
    tr, ho, ex = p[:800], p[800:1300], p[1300:]
    return {"train": (images[tr], labels[tr]), "heldout": (images[ho], labels[ho]), "extra": (images[ex], labels[ex])}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("domain-cache")


@pytest.fixture(scope="module")
def domain(digits, cache_dir):
    return DomainFeatures.from_training(*digits["train"], 10, settings=DOMAIN, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def feats(digits, domain):
    return {k: domain(v[0]) for k, v in digits.items()}


def _repeat(images, labels, n):
    """n copies of the given images, cycling through them: a collapsed generator."""
    idx = np.arange(n) % len(images)
    return images[idx], labels[idx]


def _one_per_class(images, labels, n):
    picks = np.array([np.flatnonzero(labels == c)[0] for c in range(10)])
    return _repeat(images[picks], labels[picks], n)


def _noise(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 16, 16, 1), dtype=np.uint8), np.arange(n, dtype=np.int64) % 10


# ---------------------------------------------------------------------------- classifier / features


def test_classifier_is_deterministic_and_handles_rgb_with_flips(digits):
    x, y = digits["train"][0][:200], digits["train"][1][:200]
    a = train_classifier(x, y, 10, steps=15, seed=3, augment="classic", config=SMALL)
    b = train_classifier(x, y, 10, steps=15, seed=3, augment="classic", config=SMALL)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert np.array_equal(predict(a, digits["heldout"][0]), predict(b, digits["heldout"][0]))
    pc = per_class_accuracy(a, *digits["heldout"], 10)
    assert pc.shape == (10,) and np.all((pc >= 0) & (pc <= 1))
    # 3 channels, another resolution, colour jitter and flips: the adaptive head takes it.
    rgb = np.random.default_rng(0).integers(0, 256, (8, 20, 20, 3), dtype=np.uint8)
    m = train_classifier(rgb, np.arange(8) % 2, 2, steps=2, augment="classic", hflip=True, config=SMALL)
    assert predict(m, rgb).shape == (8,)
    with pytest.raises(ValueError):
        train_classifier(x, y, 10, steps=1, augment="mixup")


def test_domain_features_are_cached_by_fingerprint(digits, domain, cache_dir):
    x, y = digits["train"]
    assert domain.cache_hit is False and (domain.path / "model.safetensors").is_file()
    meta = domain.path / "model.json"
    mtime = meta.stat().st_mtime_ns
    t0 = time.perf_counter()
    again = DomainFeatures.from_training(x, y, 10, settings=DOMAIN, cache_dir=cache_dir)
    assert again.cache_hit is True and again.fingerprint == domain.fingerprint
    assert meta.stat().st_mtime_ns == mtime  # loaded, not retrained and rewritten
    assert time.perf_counter() - t0 < 10
    batch = digits["heldout"][0][:50]
    np.testing.assert_allclose(again(batch), domain(batch), rtol=1e-5, atol=1e-5)
    assert json.loads(meta.read_text())["fingerprint"] == domain.fingerprint
    # Anything that shapes the feature space changes the fingerprint.
    changed = x.copy()
    changed[0, 0, 0, 0] ^= 1
    assert domain_fingerprint(changed, y, 10, DOMAIN) != domain.fingerprint
    assert domain_fingerprint(x, y, 10, DomainSettings(epochs=6, seed=1, classifier=SMALL)) != domain.fingerprint
    assert domain.dim == SMALL.width * 4 and domain(batch).dtype == np.float32


def test_torchscript_extractor_and_batched_extraction(tmp_path, digits):
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 6, 3)

        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1)

    torch.manual_seed(0)
    with warnings.catch_warnings():  # torch.jit is deprecated upstream but still what users hand us
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.script(Tiny().eval())
    path = tmp_path / "tiny.pt"
    module.save(str(path))
    ext = build_extractor(f"torchscript:{path}")
    images = digits["heldout"][0][:70]
    out = ext(images)
    assert out.shape == (70, 24) and out.dtype == np.float32
    with torch.no_grad():
        direct = module(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).numpy()
    np.testing.assert_allclose(out, direct, rtol=1e-5, atol=1e-6)
    # The streaming entry point (what a Ray Data map_batches calls) gives the same rows.
    streamed = extract_features_batched(ext, (images[i : i + 16] for i in range(0, 70, 16)))
    np.testing.assert_allclose(streamed, out, rtol=1e-5, atol=1e-6)
    mapped = FeatureMapper(lambda: ext)({"image": images[:5], "label": np.zeros(5)})
    np.testing.assert_allclose(mapped["features"], out[:5], rtol=1e-5, atol=1e-6)
    with pytest.raises(UnknownNameError, match="unknown feature extractor 'clip'; choose from domain"):
        build_extractor("clip")
    with pytest.raises(ValueError, match="weights path"):
        build_extractor("inception")


def test_inception_extractor_loads_local_weights(tmp_path, digits):
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    t0 = time.perf_counter()
    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(tmp_path / "inception.safetensors"))
    torch.save({k: v for k, v in state.items() if not k.startswith("AuxLogits.")}, tmp_path / "inception.pth")
    ext = build_extractor(f"inception:{tmp_path / 'inception.safetensors'}")
    out = ext(digits["heldout"][0][:2])
    assert out.shape == (2, 2048) and np.isfinite(out).all()
    assert not np.allclose(out[0], out[1])
    # .pth via torch.load(weights_only=True); a checkpoint without the aux head loads too.
    pth = InceptionFeatures(tmp_path / "inception.pth")
    for k, v in pth.net.state_dict().items():
        if not k.startswith(("fc.", "AuxLogits.")):
            assert torch.equal(v, state[k]), k
    assert time.perf_counter() - t0 < 120  # a couple of images at 299 px, not a benchmark


# ---------------------------------------------------------------------------- distribution


def test_fid_kid_separate_real_from_noise_and_repeats(digits, domain, feats):
    real_a, real_b = feats["heldout"], feats["extra"]
    n = len(real_b)
    noise = domain(_noise(n)[0])
    one = domain(digits["train"][0][:1].repeat(n, 0))
    f_real, f_noise, f_one = fid(real_a, real_b), fid(real_a, noise), fid(real_a, one)
    print(f"\nFID real/real {f_real:.4f}  real/noise {f_noise:.4f}  real/one-image {f_one:.4f}")
    assert f_real * 20 < f_noise and f_real * 20 < f_one
    assert fid(real_a, real_a) < 1e-6
    k_real, k_noise = kid(real_a, real_b, subsets=20), kid(real_a, noise, subsets=20)
    print(f"KID real/real {k_real.mean:.5f}±{k_real.std:.5f}  real/noise {k_noise.mean:.4f}")
    assert abs(k_real.mean) < 0.05 * k_noise.mean
    pcf = per_class_fid(real_a, digits["heldout"][1], real_b, digits["extra"][1], NAMES)
    assert set(pcf) == set(NAMES) and all(v is not None and v >= 0 for v in pcf.values())


def test_precision_recall_density_coverage_known_cases(digits, domain, feats):
    real, other = feats["heldout"], feats["extra"]
    same = precision_recall(real, real, k=3)
    assert same.precision == 1.0 and same.recall == 1.0
    assert density_coverage(real, real, k=5).coverage == 1.0
    pr_real, dc_real = precision_recall(real, other, k=3), density_coverage(real, other, k=5)
    collapsed = domain(_one_per_class(*digits["train"], len(other))[0])
    pr_col, dc_col = precision_recall(real, collapsed, k=3), density_coverage(real, collapsed, k=5)
    print(f"\nreal: P {pr_real.precision:.3f} R {pr_real.recall:.3f} D {dc_real.density:.3f} C {dc_real.coverage:.3f}"
          f"\none-per-class: P {pr_col.precision:.3f} R {pr_col.recall:.3f} D {dc_col.density:.3f} C {dc_col.coverage:.3f}")
    assert pr_real.precision > 0.8 and pr_real.recall > 0.8 and dc_real.coverage > 0.85
    # Collapse keeps precision (each image is a real digit) but loses recall and coverage.
    assert pr_col.precision > 0.7 and pr_col.recall < 0.1 and dc_col.coverage < 0.3


# ---------------------------------------------------------------------------- diversity / memorisation


@pytest.mark.parametrize("kind", ["one_per_class", "one_total"])
def test_collapse_is_flagged(digits, domain, feats, kind):
    n = len(digits["extra"][0])
    if kind == "one_per_class":
        images, labels = _one_per_class(*digits["train"], n)
    else:
        images, labels = digits["train"][0][:1].repeat(n, 0), np.arange(n, dtype=np.int64) % 10
    res = diversity(feats["heldout"], digits["heldout"][1], domain(images), labels, NAMES, fake_images=images)
    print(f"\n{kind}: {res.reasons}")
    assert res.collapse and res.min_ratio < 0.1 and res.mean_coverage < 0.3 and res.distinct_fraction < 0.05
    ok = diversity(feats["heldout"], digits["heldout"][1], feats["extra"], digits["extra"][1], NAMES,
                   fake_images=digits["extra"][0])
    print(f"real: min ratio {ok.min_ratio:.3f} coverage {ok.mean_coverage:.3f}")
    assert not ok.collapse and ok.min_ratio > 0.6 and ok.mean_coverage > 0.8 and not ok.missing_classes
    fidelity = label_fidelity(domain.classifier, *digits["extra"], NAMES)
    assert fidelity.accuracy > 0.85 and fidelity.mean_confidence > 0.5
    wrong = label_fidelity(domain.classifier, digits["extra"][0], (digits["extra"][1] + 1) % 10, NAMES)
    assert wrong.accuracy < 0.15


def test_memorisation_flags_training_copies_not_unseen_images(digits, feats):
    train_px, held_px = pixel_vectors(digits["train"][0]), pixel_vectors(digits["heldout"][0])
    copies = digits["train"][0][np.random.default_rng(1).permutation(800)[:400]]
    for space, train, held, good, bad in [
        ("pixel", train_px, held_px, pixel_vectors(digits["extra"][0]), pixel_vectors(copies)),
        ("feature", feats["train"], feats["heldout"], feats["extra"], None),
    ]:
        if bad is None:
            idx = np.random.default_rng(1).permutation(800)[:400]
            bad = feats["train"][idx]
        m_good = memorisation(train, held, good, space=space)
        m_bad = memorisation(train, held, bad, space=space)
        print(f"\n{space}: unseen real near-copies {m_good.near_copy_fraction:.3f}, copies {m_bad.near_copy_fraction:.3f}"
              f" (threshold {m_good.threshold:.4f})")
        assert not m_good.memorised and m_good.near_copy_fraction < 0.08
        assert m_bad.memorised and m_bad.near_copy_fraction == 1.0 and m_bad.exact_copy_fraction == 1.0


# ---------------------------------------------------------------------------- downstream


def test_cas_high_on_real_images_chance_on_noise(digits):
    kw = {"seeds": (0,), "steps": 120, "config": SMALL}
    real = classification_accuracy_score(digits["extra"], digits["heldout"], NAMES, **kw)
    noise = classification_accuracy_score(_noise(len(digits["extra"][0])), digits["heldout"], NAMES, **kw)
    print(f"\nCAS real-as-synthetic {real.accuracy:.3f}, noise {noise.accuracy:.3f}")
    assert real.accuracy > 0.85 and all(v is not None for v in real.per_class.values())
    assert noise.accuracy < 0.25
    assert real.n_train == len(digits["extra"][0]) and real.n_test == len(digits["heldout"][0])


def test_kshot_subsets_are_seeded_and_balanced(digits):
    y = digits["train"][1]
    a, b, c = kshot_indices(y, 5, 0, 10), kshot_indices(y, 5, 0, 10), kshot_indices(y, 5, 1, 10)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.bincount(y[a], minlength=10).tolist() == [5] * 10
    with pytest.raises(ValueError, match="subset_seed"):
        augmentation_gain(digits["train"], digits["heldout"], {5: digits["extra"]}, NAMES, ks=(5,))


def test_evaluate_end_to_end_writes_report(tmp_path, digits, domain, cache_dir):
    from PIL import Image

    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("".join(json.dumps({"step": s, "loss_g": 1 + 1 / (s + 1), "loss_d": 1.2, "d_real": 0.6,
                                         "d_fake": 0.4, "ada_p": s / 100}) + "\n" for s in range(0, 50, 10))
                     + '{"step": 60, "loss_')  # a run still writing: the partial line is skipped
    out = tmp_path / "report"
    # A "perfect generator": unseen real images. Everything should pass except, by chance, the gain.
    report = evaluate_arrays(
        digits["train"], digits["heldout"], digits["extra"], NAMES, ks=(5,), seeds=2, cache_dir=cache_dir,
        out_dir=out, metrics_jsonl=jsonl, classifier=SMALL, domain=DOMAIN, cas_epochs=4, gain_steps=30,
        gan_per_class=10, kid_subsets=10,
    )
    assert set(report["metrics"]) == set(ALL_METRICS)
    assert report["settings"]["domain"]["cache_hit"] is True
    print("\n" + json.dumps({k: v for k, v in report["timing_s"].items()}))
    for v in report["verdicts"]:
        print(f"{v['metric']:<36} {v['value']!s:<22} {v['verdict']}")
    bad = [v for v in report["verdicts"] if v["verdict"] == "fail" and not v["metric"].startswith("gain")]
    assert not bad, bad
    assert report["metrics"]["cas"]["synthetic"]["accuracy"] > 0.85
    g = report["metrics"]["gain"]["ks"][0]
    assert g["k"] == 5 and g["n_real"] == 50 and g["n_synthetic"] == 100 and set(g["arms"]) == set(ARMS)
    for arm in g["arms"].values():
        assert len(arm["accuracies"]) == 2 and 0 <= arm["mean"] <= 1 and arm["std"] >= 0

    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["metrics"]["fid"] == report["metrics"]["fid"] and on_disk["verdicts"]
    md = (out / "report.md").read_text()
    assert "| metric | value | reference / threshold | verdict |" in md and "**pass**" in md
    pngs = ["samples_per_class.png", "cas_per_class.png", "augmentation_gain.png", "training_curves.png"]
    assert sorted(on_disk["figures"]) == sorted(pngs)
    for name in pngs:
        with Image.open(out / name) as im:
            im.load()
            assert im.size[0] > 100 and im.size[1] > 100
        assert f"]({name})" in md
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no temp files left behind


def test_evaluate_rejects_bad_input(digits):
    x, y = digits["train"]
    with pytest.raises(UnknownNameError, match="unknown metric 'isc'; choose from fid, kid"):
        evaluate_arrays(digits["train"], digits["heldout"], digits["extra"], NAMES, ["fid", "isc"])
    with pytest.raises(EvaluationInputError, match="uint8"):
        evaluate_arrays(digits["train"], digits["heldout"], (x.astype(np.float32), y), NAMES, ["fid"])
    with pytest.raises(EvaluationInputError, match="labels must lie"):
        evaluate_arrays(digits["train"], digits["heldout"], (x, y + 5), NAMES, ["fid"])
    with pytest.raises(EvaluationInputError, match="unknown option"):
        evaluate_arrays(digits["train"], digits["heldout"], digits["extra"], NAMES, ["fid"], gain_step=3)
