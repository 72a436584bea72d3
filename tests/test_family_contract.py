"""The contract every registered model family keeps, checked for each name in `family_names()`
(diffusers' ModelTesterMixin is the model): a newly registered family gets these tests without
anyone writing them.

For every family, from its own `{family}-64.yaml` preset taken down to tiny sizes:
- save/load: a checkpoint folder rebuilds a generator that gives the same bytes;
- determinism: the same seed gives the same weights;
- every parameter of G and D receives a gradient (is connected to the loss) in the phases
  that train it;
- the Sampler is batch-invariant at its fixed-size chunks (ARCHITECTURE.md: batch invariance);
- resume is exact: a run stopped, saved and loaded continues as the uninterrupted one.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from ganaug import checkpoint
from ganaug.config import load_config
from ganaug.models.registry import family_names, get_family
from ganaug.sampling import Sampler
from ganaug.training import GANTrainer

REPO = Path(__file__).resolve().parents[1]
FAMILIES = family_names()
CLASSES = ["a", "b", "c"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(family: str, **training):
    """The family's own preset at 16 px RGB and the smallest widths: what a user's run looks
    like, only small. Lazy regularisers run every step so one step reaches every phase."""
    overrides = ["data.resolution=16", "data.channels=3", "model.width=8", "model.max_width=16",
                 "training.batch_size=4", "training.r1_every=1", "training.ada_p=0.3",
                 "training.augment=color,translation,cutout", "training.use_gpu=false", "training.seed=0"]
    if get_family(family).kind == "noise":
        overrides += ["model.z_dim=16"]
    if family == "stylegan2":
        overrides += ["model.w_dim=16", "model.mapping_layers=1", "training.pl_every=1", "training.pl_weight=1.0"]
    overrides += [f"training.{k}={v}" for k, v in training.items()]
    return load_config(REPO / "jobs" / "configs" / f"{family}-64.yaml", overrides)


def tiny_data(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), (np.arange(n) % len(CLASSES)).astype(np.int64)


def trainer(family: str, **training) -> GANTrainer:
    images, labels = tiny_data()
    return GANTrainer(tiny_config(family, **training), images, labels, CLASSES)


def weights_of(tr: GANTrainer) -> dict[str, torch.Tensor]:
    return {f"{m}.{k}": v for m, part in tr.weights().items() for k, v in part.items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def samples(sampler: Sampler, n: int = 20) -> np.ndarray:
    """n images from the sampler: seeds 100.. for noise families, fixed inputs for translation."""
    if sampler.kind == "translation":
        return sampler.translate(tiny_data(n)[0])
    labels = [i % len(CLASSES) for i in range(n)] if sampler.num_classes else None
    return sampler.generate(list(range(100, 100 + n)), labels, 0.8)


def roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # as a resume reads train_state.pt


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_round_trip_gives_the_same_bytes(family, tmp_path):
    tr = trainer(family)
    tr.train_step()
    meta = dict(tr.model_meta(), step=tr.step)
    w = tr.weights()
    uri = str(tmp_path / "ck")
    checkpoint.save_checkpoint(uri, meta=meta, generator_ema=w["generator_ema"], generator=w["generator"],
                               discriminator=w["discriminator"], train_state=tr.state_dict(include_weights=False),
                               samples_png=b"")
    live = Sampler(tr.G_ema, tr.model_meta(), device="cpu")
    loaded = Sampler.from_checkpoint(uri, device="cpu")
    assert np.array_equal(samples(live), samples(loaded))


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_weights(family):
    a, b = trainer(family), trainer(family)
    for _ in range(2):
        a.train_step()
        b.train_step()
    assert_same(weights_of(a), weights_of(b))
    c = trainer(family, seed=1)
    c.train_step()
    assert any(not torch.equal(v, weights_of(a)[k]) for k, v in weights_of(c).items())


@pytest.mark.parametrize("family", FAMILIES)
def test_every_parameter_receives_a_gradient(family, monkeypatch):
    tr = trainer(family)
    reached: dict[str, set[str]] = {"G": set(), "D": set()}
    for which, opt in (("G", tr.opt_g), ("D", tr.opt_d)):
        module = tr.G if which == "G" else tr.D
        names = {id(p): n for n, p in module.named_parameters()}
        step = opt.step

        def recording_step(*args, _which=which, _names=names, _opt=opt, _step=step, **kw):
            for group in _opt.param_groups:
                for p in group["params"]:
                    # Reached = a gradient flowed (zero_grad sets None). Its value may be
                    # exactly 0: e.g. the hinge loss cancels D's last bias while every
                    # real and fake logit is inside the margin.
                    if p.grad is not None:
                        reached[_which].add(_names.get(id(p), "?"))
            return _step(*args, **kw)

        monkeypatch.setattr(opt, "step", recording_step)
    for _ in range(2):
        tr.train_step()
    for which, module in (("G", tr.G), ("D", tr.D)):
        missing = sorted(n for n, p in module.named_parameters() if p.requires_grad and n not in reached[which])
        assert not missing, f"{family} {which}: no gradient reached {missing}"


@pytest.mark.parametrize("family", FAMILIES)
def test_sampler_is_batch_invariant_at_its_fixed_chunks(family):
    tr = trainer(family)
    tr.train_step()
    sampler = Sampler(tr.G_ema, tr.model_meta(), device="cpu")
    together = samples(sampler, 20)   # two chunks, the second padded
    if sampler.kind == "translation":
        inputs = tiny_data(20)[0]
        apart = np.concatenate([sampler.translate(inputs[i:i + 1]) for i in range(20)])
    else:
        labels = [i % len(CLASSES) for i in range(20)] if sampler.num_classes else [None] * 20
        apart = np.concatenate([sampler.generate([100 + i], None if labels[i] is None else [labels[i]], 0.8)
                                for i in range(20)])
    assert together.dtype == np.uint8 and np.array_equal(together, apart)


@pytest.mark.parametrize("family", FAMILIES)
def test_resume_is_exact(family):
    a = trainer(family)
    for _ in range(3):
        a.train_step()
    state = roundtrip(a.state_dict())
    continued = [a.train_step() for _ in range(2)]
    b = trainer(family)
    b.load_state_dict(state)
    assert b.step == 3
    resumed = [b.train_step() for _ in range(2)]
    assert continued == resumed
    assert_same(weights_of(a), weights_of(b))
