"""`ganaug tune` (ARCHITECTURE.md §3.1, "Sweeps"): Ray Tune + ASHA over GAN and mixing settings,
scored by the augmentation gain on a validation split.

No mocks: the sweep runs real Ray Tune trials on the session's Ray, each training a tiny cgan
through real Ray Train (resumed from rung to rung) and scoring it with the real classifier.
The error cases stop before Ray starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from ray_fixtures import ray_session  # noqa: F401
from tiny import tiny_run_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = "builtin:digits[0:50]"          # the few real images the GANs train on
VALIDATION = "builtin:digits[1000:1200]"


def write_base(tmp_path: Path, spec: str = TRAIN) -> Path:
    cfg = tiny_run_config("cgan", 16, 1, num_workers=1, threads_per_worker=1, report_every=2,
                          checkpoint_every=100, steps=4)
    cfg.data.spec = spec
    path = tmp_path / "base.yaml"
    path.write_text(cfg.to_yaml())
    return path


def sweep_dict(**changes) -> dict:
    sweep = {
        "base": "base.yaml",             # relative to the sweep file
        "validation": VALIDATION,
        "space": {
            "training.lr_g": {"loguniform": [1.0e-4, 1.0e-3]},
            "model.mode_seeking": {"choice": [0.0, 1.0]},
            "mix.ratio": {"uniform": [0.2, 0.8]},
        },
        "mix": {"filter": "fidelity:0.2"},   # every trial's pool goes through the filter
        "scheduler": {"max_steps": 4, "grace_steps": 2, "reduction_factor": 2},
        "num_samples": 2,
        "max_concurrent": 2,
        "seed": 0,
        "classifier": {"steps": 30, "seeds": 2},
        "samples_per_class": 4,
    }
    sweep.update(changes)
    return sweep


def write_sweep(tmp_path: Path, sweep: dict, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def test_tune_runs_trials_and_records_the_best(ray_session, tmp_path, capsys):  # noqa: F811
    from ganaug import checkpoint
    from ganaug.cli import main
    from ganaug.sampling import Sampler

    write_base(tmp_path)
    sweep = write_sweep(tmp_path, sweep_dict())
    store = tmp_path / "store"
    main(["tune", str(sweep), "--storage", str(store), "--name", "tiny"])
    out = capsys.readouterr().out.strip().splitlines()
    best = json.loads(out[-1])  # the last stdout line is the best trial, as JSON

    sweep_dir = store / "sweeps" / "tiny"
    assert json.loads((sweep_dir / "best.json").read_text()) == best
    record = json.loads((sweep_dir / "trials.json").read_text())
    trials = record["trials"]
    assert [t["trial"] for t in trials] == ["tiny-t00", "tiny-t01"]
    assert (sweep_dir / "_tune").is_dir()  # Ray Tune's own bookkeeping
    assert record["rungs"] == [2, 4] and len(record["baseline"]["accuracies"]) == 2

    for t in trials:
        assert t["status"] in ("completed", "stopped_early"), t
        assert set(t["settings"]) == {"training.lr_g", "model.mode_seeking", "mix.ratio"}
        assert t["run"] == str(store / "runs" / t["trial"])
        # One report per rung reached, in rung order; the first at the grace rung.
        steps = [r["step"] for r in t["reports"]]
        assert steps == [2, 4][:len(steps)] and steps
        assert t["step"] == steps[-1] and t["gain"] == t["reports"][-1]["gain"]
        for r in t["reports"]:
            assert r["checkpoint"] == str(store / "runs" / t["trial"] / "checkpoints" / f"step-{r['step']:07d}")
            assert r["gain"] == pytest.approx(r["accuracy"] - r["baseline_accuracy"], abs=1e-5)
        # The run's config is the trial's: its sampled keys over the base.
        cfg = yaml.safe_load((Path(t["run"]) / "config.yaml").read_text())
        assert cfg["training"]["lr_g"] == pytest.approx(t["settings"]["training.lr_g"])
        assert cfg["model"]["mode_seeking"] == t["settings"]["model.mode_seeking"]
        assert cfg["data"]["spec"] == TRAIN and cfg["training"]["steps"] == t["step"]
    # A trial that reached the last rung trained to it by resuming its own run: both rung
    # checkpoints sit in the one run folder.
    for t in trials:
        if t["step"] == 4:
            kept = [step for step, _ in checkpoint.list_checkpoints(t["run"])]
            assert kept == [2, 4]

    # The best is the trial whose (last) reported gain is the highest.
    top = max(t["gain"] for t in trials)
    assert best["gain"] == top
    assert best["trial"] in [t["trial"] for t in trials if t["gain"] == top]
    chosen = next(t for t in trials if t["trial"] == best["trial"])
    assert best["settings"] == chosen["settings"] and best["step"] == chosen["step"]
    assert best["mix"]["real_fraction"] == pytest.approx(1 - chosen["settings"]["mix.ratio"])
    assert best["mix"]["filter"] == "fidelity:0.2"
    assert best["validation"] == VALIDATION and best["data"] == TRAIN

    # Its run folder is a normal run: a complete checkpoint that `generate` would accept.
    assert checkpoint.latest_checkpoint(best["run"]) == best["checkpoint"]
    meta = checkpoint.load_meta(best["checkpoint"])
    assert int(meta["step"]) == best["step"]
    assert (Path(best["checkpoint"]) / "model.json").is_file()
    assert Sampler.from_checkpoint(best["run"]).checkpoint_uri == best["checkpoint"]


@pytest.mark.parametrize("change, expected", [
    ({"schedular": {"max_steps": 4}}, ["unknown sweep key 'schedular'", "did you mean 'scheduler'"]),
    ({"scheduler": {"max_step": 4}}, ["'scheduler.max_step'", "did you mean 'scheduler.max_steps'"]),
    ({"space": {"training.lr_g": {"logunifrom": [1.0e-4, 1.0e-3]}}},
     ["space key 'training.lr_g'", "unknown distribution 'logunifrom'", "did you mean 'loguniform'"]),
    ({"space": {"training.lr_gg": {"loguniform": [1.0e-4, 1.0e-3]}}},
     ["space key 'training.lr_gg'", "did you mean 'training.lr_g'"]),
    ({"space": {"traning.lr_g": {"uniform": [1.0e-4, 1.0e-3]}}},
     ["space key 'traning.lr_g'", "did you mean 'training'"]),
    ({"space": {"training.lr_g": {"loguniform": [1.0e-4, 2.0]}}}, ["space key 'training.lr_g'", "got 2.0"]),
    ({"space": {"mix.filter": {"choice": ["none", "fidelty:0.5"]}}}, ["space key 'mix.filter'", "fidelty"]),
    ({"space": {"training.steps": {"randint": [10, 20]}}}, ["space key 'training.steps'", "scheduler"]),
    ({"validation": TRAIN}, ["validation", "is the training data"]),
    ({"validation": "builtin:digits[40:100]"}, ["validation", "overlaps the training data"]),
])
def test_bad_sweep_files_are_one_line_errors_naming_the_key(tmp_path, cli_error, change, expected):
    write_base(tmp_path)
    sweep = write_sweep(tmp_path, sweep_dict(**change))
    line = cli_error(["tune", str(sweep), "--storage", str(tmp_path / "store")])
    for text in expected:
        assert text in line, line
    assert not (tmp_path / "store").exists()  # refused before anything was written


def test_set_overrides_and_rungs(tmp_path, cli_error):
    from ganaug.errors import UserError
    from ganaug.sweep import SchedulerSettings, load_sweep

    assert SchedulerSettings(8, 2, 2).rungs() == [2, 4, 8]
    assert SchedulerSettings(10, 3, 3).rungs() == [3, 9, 10]
    assert SchedulerSettings(5, 5, 2).rungs() == [5]
    write_base(tmp_path)
    sweep = write_sweep(tmp_path, sweep_dict())
    # model./data./training./storage. keys fix a run key for every trial; other keys are the sweep's.
    plan = load_sweep(sweep, ["training.batch_size=4", "num_samples=3", "scheduler.max_steps=8"])
    assert plan.settings.num_samples == 3 and plan.rungs() == [2, 4, 8]
    assert plan.run_config({"training.lr_g": 3e-4}, 2).training.batch_size == 4
    # A sweep name is tied to its trial settings: reusing it for other ones is refused.
    store = str(tmp_path / "store")
    load_sweep(sweep, storage_root=store).record()
    load_sweep(sweep, ["num_samples=5"], storage_root=store).record()   # same trials, more of them: fine
    other = load_sweep(sweep, ["training.batch_size=2"], storage_root=store)
    with pytest.raises(UserError, match="exists at .* with other trial settings"):
        other.record()
    line = cli_error(["tune", str(sweep), "--set", "training.stpes=3"])
    assert "training.stpes" in line and "did you mean 'training.steps'" in line
    line = cli_error(["tune", str(sweep), "--set", "training.steps=3"])
    assert "training.steps" in line and "scheduler" in line
