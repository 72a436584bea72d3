"""`ganaug classify` / `python -m jobs.classify` (ARCHITECTURE.md §3.9): a classifier trained
data-parallel on Ray Train over a mixed real + synthetic stream, judged on held-out rows.

Real Ray Train (2 CPU workers, gloo), the real mixed stream from a tiny cgan checkpoint, real
digits; a worker is killed mid-run through the fault seam and the job resumes from Ray Train's
checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

if not hasattr(sys.modules.get("conftest"), "ray_session"):
    from ray_fixtures import ray_session  # noqa: F401
from tiny import tiny_cgan_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN, HELDOUT = "builtin:digits[0:1000]", "builtin:digits[1000:1797]"
NAMES = [str(i) for i in range(10)]


def _config(tmp_path: Path, **data) -> Path:
    cfg = {"model": {"arch": "smallcnn", "width": 16},
           "data": {"train": TRAIN, "heldout": HELDOUT, **data},
           "training": {"epochs": 3, "batch_size": 32, "workers": 2, "lr": 0.005, "checkpoint_every": 10,
                        "max_failures": 2},
           "storage": {"root": str(tmp_path / "store")}}
    path = tmp_path / "classify.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_the_example_config_loads():
    from ganaug.classify import load_classify_config

    repo = Path(__file__).resolve().parents[1]
    cfg = load_classify_config(repo / "jobs" / "classify" / "mnist-k20.yaml", ["data.ratio=0.2", "data.checkpoint=x"])
    assert cfg.model.arch == "smallcnn" and cfg.training.steps == 500 and cfg.data.ratio == 0.2


def test_config_errors_name_the_key(tmp_path, cli_error):
    path = _config(tmp_path)
    assert "unknown config key 'training.epoch'" in cli_error(["classify", str(path), "--set", "training.epoch=3"])
    assert "did you mean 'resnet18'" in cli_error(["classify", str(path), "--set", "model.arch=resnet17"])
    assert "held-out rows must never be trained on" in cli_error(
        ["classify", str(path), "--set", f"data.heldout={TRAIN}"])
    assert "'data.ratio' > 0 needs 'data.synthetic'" in cli_error(["classify", str(path), "--set", "data.ratio=0.5"])
    assert "'data.ratio' must be in [0, 1)" in cli_error(["classify", str(path), "--set", "data.ratio=1.5"])


def test_classify_learns_on_a_mixed_stream_and_survives_a_worker_kill(ray_session, tmp_path, monkeypatch, capsys):
    from ganaug.cli import main

    ckpt = tiny_cgan_checkpoint(tmp_path / "cgan", list(reversed(NAMES)))
    path = _config(tmp_path, checkpoint=ckpt, ratio=0.2)
    marker = tmp_path / "crashed"
    # Rank 1 dies right after step 25, once (checkpoints every 10 steps).
    monkeypatch.setenv("GANAUG_TEST_CRASH_AT_STEP", "25")
    monkeypatch.setenv("GANAUG_TEST_CRASH_RANK", "1")
    monkeypatch.setenv("GANAUG_TEST_CRASH_MARKER", str(marker))
    main(["classify", str(path), "--name", "mixed"], command=None)
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert marker.exists()                                   # the kill happened
    # ... and the group resumed from Ray Train's newest checkpoint: step 20, or step 10 when the
    # controller had not yet collected step 20's report (checkpoints upload asynchronously).
    assert report["resumed_from"] in (10, 20)
    # 1000 real + 250 synthetic rows per epoch; 1250 // 64 = 19 steps per epoch, 3 epochs.
    assert report["data"]["real_rows"] == 1000 and report["data"]["synthetic_rows"] == 250
    assert report["steps"] == 3 * 19
    assert report["heldout_rows"] == 797
    assert report["accuracy"] > 0.5                          # chance is 0.1
    assert set(report["per_class"]) == set(NAMES)
    on_disk = json.loads((tmp_path / "store" / "classify" / "mixed" / "report.json").read_text())
    assert on_disk["accuracy"] == report["accuracy"]
    # The same name again: Ray Train's latest checkpoint is the final step, so nothing is retrained.
    monkeypatch.delenv("GANAUG_TEST_CRASH_AT_STEP")
    main(["classify", str(path), "--name", "mixed"], command=None)
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["resumed_from"] == again["steps"] == report["steps"]
    assert again["accuracy"] == report["accuracy"]


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_resnets_take_any_channels_and_resolution(arch):
    import torch

    from ganaug.classify import ClassifyConfig, build_classifier

    cfg = ClassifyConfig()
    cfg.model.arch = arch
    for channels, size in ((1, 28), (3, 32), (3, 96)):
        net = build_classifier(cfg, channels, 7, size).eval()
        with torch.no_grad():
            assert net(torch.rand(2, channels, size, size)).shape == (2, 7)
    # Small images keep their detail: a 3x3 stride-1 stem and no max-pool at <= 64 px.
    small = build_classifier(cfg, 1, 7, 32).net
    assert small.conv1.stride == (1, 1) and isinstance(small.maxpool, torch.nn.Identity)
