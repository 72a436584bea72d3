"""`ganaug train` on real Ray Train: 2 CPU workers, checkpoints/metrics/grids on local disk
and S3, fault injection, resume by rerun, a killed driver, two simulated nodes, fail-fast.

Tiny cgan (width 8, 16 px, batch 16) so that Ray's startup dominates; each fit() costs
~15-30 s on a busy 2-core machine, so the tests fold several checks into few runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from ray_fixtures import ray_session  # noqa: F401  (until conftest wires it)

from ganaug import checkpoint, storage
from ganaug.config import load_config
from ganaug.errors import UserError
from ganaug.training import run_files

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TINY = [
    "model.family=cgan", "model.width=8", "model.max_width=32", "model.z_dim=32", "model.embed_dim=16",
    "data.spec=builtin:digits", "data.resolution=16", "data.channels=1",
    "training.batch_size=16", "training.report_every=4", "training.checkpoint_every=8",
    "training.keep_checkpoints=2", "training.max_failures=2", "training.threads_per_worker=1",
]


def tiny_cfg(steps: int, *extra: str):
    return load_config(REPO / "jobs/configs/digits-cgan.yaml", [*TINY, f"training.steps={steps}", *extra])


def steps_of(run_uri: str) -> list[int]:
    return [r["step"] for r in run_files.read_metrics(run_uri)]


def check_complete_run(summary: dict, steps: int, workers: int) -> None:
    run = summary["run"]
    assert summary["complete"] and summary["step"] == steps
    assert summary["images_seen"] == steps * 16 * workers
    assert summary["checkpoint"] == storage.join(run, "checkpoints", checkpoint.step_dir_name(steps))
    # Every rank reported the same G params hash at every report (DDP kept them identical).
    assert summary["ranks_in_sync"] is True
    assert len(summary["g_hashes"]) == workers and len(set(summary["g_hashes"])) == 1
    # Checkpoints: the newest keep_checkpoints (2), complete, with the run's meta.
    kept = [s for s, _ in checkpoint.list_checkpoints(run)]
    assert kept == [steps - 8, steps]
    meta = checkpoint.load_meta(summary["checkpoint"])
    assert meta["step"] == steps and meta["images_seen"] == summary["images_seen"]
    assert meta["config"]["training"]["num_workers"] == workers and len(meta["config_digest"]) == 16
    import torch

    assert meta["environment"]["torch"] == torch.__version__ and meta["environment"]["device_type"] == "cpu"
    state = checkpoint.load_train_state(summary["checkpoint"], meta)
    assert state["step"] == steps
    # metrics.jsonl: one line per report, steps strictly increasing up to the end.
    lines = run_files.read_metrics(run)
    assert [r["step"] for r in lines] == list(range(4, steps + 1, 4))
    for r in lines:
        assert {"images_seen", "loss_g", "loss_d", "d_real", "d_fake", "ada_p", "images_per_s", "seconds"} <= set(r)
    seconds = [r["seconds"] for r in lines]
    assert seconds == sorted(seconds)
    # Sample grids: in every kept checkpoint and one per checkpoint under samples/.
    png = storage.read_bytes(storage.join(summary["checkpoint"], "samples.png"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert storage.listdir(storage.join(run, "samples")) == [
        f"{checkpoint.step_dir_name(s)}.png" for s in range(8, steps + 1, 8)]
    cfg_text = storage.read_text(storage.join(run, "config.yaml"))
    assert f"num_workers: {workers}" in cfg_text


# ------------------------------------------------------------------------------ no Ray

def test_metrics_log_resume_keeps_steps_monotonic(tmp_path):
    run = str(tmp_path / "run")
    log = run_files.MetricsLog(run)
    log.resume(0)
    for s in (4, 8, 12):
        log.append({"step": s, "loss_g": 1.0, "seconds": float(s), "bad": float("nan")})
    assert steps_of(run) == []                 # reports are written at checkpoints, not one by one
    log.flush()
    assert steps_of(run) == [4, 8, 12]
    assert run_files.read_metrics(run)[0]["bad"] is None  # NaN -> null, still valid JSON
    again = run_files.MetricsLog(run)
    assert [r["step"] for r in again.resume(8)] == [4, 8]  # a crash after step 8's checkpoint
    assert steps_of(run) == [4, 8]
    again.append({"step": 12, "loss_g": 0.5, "seconds": 12.0})
    again.flush()
    assert steps_of(run) == [4, 8, 12]


def test_progress_line_and_redaction():
    line = run_files.format_progress(
        {"step": 40, "images_per_s": 320.0, "loss_g": 0.8766, "loss_d": 1.2, "d_real": 0.4, "d_fake": -0.3,
         "ada_rt": 0.65, "ada_p": 0.0, "seconds": 12.0, "g_hash": "abc", "images_seen": 1280}, 200, global_batch=32)
    assert line.startswith("step  40/200   20%  320.0 img/s  loss_g 0.877  loss_d 1.200")
    assert "d_fake -0.300  ada_p 0.000  ada_rt 0.650" in line  # p and its signal last, together
    assert "ETA 0:16" in line and "g_hash" not in line
    assert run_files.redact("s3://AKIA:s3cr3t@bucket/x") == "s3://***@bucket/x"


def test_prepare_run_rejects_bad_name_spec_and_changed_model(tmp_path):
    from ganaug.training.worker import prepare_run

    with pytest.raises(UserError, match="--name"):
        prepare_run(tiny_cfg(8), storage_root=str(tmp_path), name="../escape")
    with pytest.raises(UserError, match="nope"):
        prepare_run(tiny_cfg(8, "data.spec=mnist:/nope/mnist"), storage_root=str(tmp_path), name="x")
    assert not (tmp_path / "x").exists()  # nothing written before the spec is known good


# ------------------------------------------------------------------------------ CLI fail-fast

@pytest.mark.parametrize("args, expect", [
    (["--set", "model.widht=8"], "model.widht"),
    (["--set", "data.spec=mnist:/no/such/dir"], "config key 'data.spec': dataset 'mnist:/no/such/dir'"),
])
def test_cli_fails_fast_before_any_worker(tmp_path, args, expect):
    t0 = time.time()
    proc = subprocess.run(
        [PY, "-m", "jobs.train", str(REPO / "jobs/configs/digits-cgan.yaml"), *args,
         "--storage", str(tmp_path), "--name", "bad"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"})  # any Ray contact would fail loudly
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "bad").exists()
    assert time.time() - t0 < 60


# ------------------------------------------------------------------------------ Ray runs

def test_two_workers_on_s3_survive_a_worker_crash(s3, ray_session, tmp_path, monkeypatch, capsys):  # noqa: F811
    """Rank 1 os._exit(1)s after step 13: Train restarts the group, which resumes from
    step-0000008 (the newest complete checkpoint) and finishes the planned 24 steps."""
    from ganaug.sampling import Sampler
    from ganaug.training.worker import run_training

    marker = tmp_path / "crashed"
    monkeypatch.setenv("GANAUG_TEST_CRASH_AT_STEP", "13")
    monkeypatch.setenv("GANAUG_TEST_CRASH_RANK", "1")
    monkeypatch.setenv("GANAUG_TEST_CRASH_MARKER", str(marker))
    root = s3.new_prefix("train")
    lines: list[str] = []
    summary = run_training(tiny_cfg(24), workers=2, storage_root=root, name="crashy", echo=lines.append)

    assert marker.exists(), "the fault was not injected"
    assert summary["run"] == f"{root}/crashy" and summary["restarts"] == 1
    check_complete_run(summary, 24, workers=2)
    assert any(line.startswith("worker failure: rank ") for line in lines), lines
    assert any(line.startswith("resumed from step 8") for line in lines), lines
    assert "A worker died" not in capsys.readouterr().out  # Ray's raylet notice is not echoed
    # The steps after the crash continue from the checkpoint, not from zero: metrics were
    # cut back to step 8 on resume and the images count continues (checked above).
    assert summary["seconds"] > 0
    # Nothing secret in the run's files.
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    for rel in ("config.yaml", "metrics.jsonl", "checkpoints/step-0000024/model.json"):
        text = storage.read_text(storage.join(summary["run"], rel))
        assert secret not in text and "AWS_SECRET" not in text
    # The checkpoint on S3 is usable as is.
    sampler = Sampler.from_checkpoint(summary["run"], device="cpu")
    assert sampler.checkpoint_uri == summary["checkpoint"]
    assert sampler.generate([1, 2], [3, 4]).shape == (2, 16, 16, 1)


def test_failures_beyond_max_failures_end_with_one_line(ray_session, tmp_path, monkeypatch):  # noqa: F811
    """No marker: the worker crashes at step 2 every time; max_failures=0 gives up at once."""
    from ganaug.training.worker import TrainingFailed, run_training

    monkeypatch.setenv("GANAUG_TEST_CRASH_AT_STEP", "2")
    monkeypatch.delenv("GANAUG_TEST_CRASH_MARKER", raising=False)
    lines: list[str] = []
    with pytest.raises(TrainingFailed) as info:
        run_training(tiny_cfg(8, "training.max_failures=0"), workers=1, storage_root=str(tmp_path), name="doomed",
                     echo=lines.append)
    msg = str(info.value)
    assert msg.startswith("training failed after 1 worker failure(s) (max_failures=0): rank 0: ")
    assert "\n" not in msg and len(msg) < 400
    assert any("giving up" in line for line in lines), lines


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_driver_resumes_on_rerun(ray_session, tmp_path):  # noqa: F811
    """SIGKILL the `python -m jobs.train` driver mid-run; rerunning the same name resumes from
    the newest complete checkpoint and finishes; a new name in the same storage starts fresh."""
    import ray

    from ganaug.training.worker import prepare_run, run_training

    root = str(tmp_path / "store")
    run = f"{root}/killed"
    args = [PY, "-m", "jobs.train", str(REPO / "jobs/configs/digits-cgan.yaml"),
            *[a for kv in TINY for a in ("--set", kv)], "--set", "training.steps=400",
            "--workers", "2", "--storage", root, "--name", "killed"]
    # The driver joins the session's Ray (as under `ray job submit`), saving a Ray start.
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    with open(tmp_path / "driver.out", "w+") as out:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            _wait_for(lambda: proc.poll() is not None or (
                checkpoint.latest_checkpoint(run) is not None
                and "step   8/400" in (tmp_path / "driver.out").read_text()), 300, "the first checkpoint")
            assert proc.poll() is None, (tmp_path / "driver.out").read_text()
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    printed = (tmp_path / "driver.out").read_text()
    # The driver's terminal: a header, then one progress line per report, no Ray chatter.
    assert any(line.startswith("train killed: cgan on builtin:digits") for line in printed.splitlines()), printed
    assert any(line.startswith("step   4/400 ") for line in printed.splitlines()), printed
    assert any(line.startswith("step   8/400 ") and line.endswith("ckpt step-0000008")
               for line in printed.splitlines()), printed
    for noise in ("RayTrainWorker", "TrainController", "Reporting training result", "INFO"):
        assert noise not in printed, printed
    # Ray notices the dead driver and kills its Train controller and workers.
    total = ray.cluster_resources()["CPU"]
    _wait_for(lambda: ray.available_resources().get("CPU", 0) >= total, 120, "the workers to go away")
    done = checkpoint.list_checkpoints(run)[-1][0]
    assert done >= 8

    # A new name in the same storage would start from zero (the same lookup the workers do).
    assert prepare_run(tiny_cfg(8), storage_root=root, name="other").resume_uri is None

    summary = run_training(tiny_cfg(done + 8), workers=2, storage_root=root, name="killed", echo=None)
    assert summary["resumed_from"] == done and summary["restarts"] == 0
    check_complete_run(summary, done + 8, workers=2)  # metrics 4, 8, ... continue past the kill

    # Same name, same steps: nothing to do (no Ray run); a different model is refused.
    lines: list[str] = []
    same = run_training(tiny_cfg(done + 8), workers=2, storage_root=root, name="killed", echo=lines.append)
    assert same["step"] == done + 8 and "nothing to do" in lines[0]
    with pytest.raises(UserError, match="model.width"):
        run_training(tiny_cfg(done + 16, "model.width=16"), workers=2, storage_root=root, name="killed", echo=None)


MULTINODE = textwrap.dedent("""
    import json, sys
    import ray
    from ray.cluster_utils import Cluster
    from ganaug import storage
    from ganaug.config import load_config
    from ganaug.errors import UserError
    from ganaug.generation import GenerateConfig, run_generate
    from ganaug.training.worker import run_training

    def refusal(fn):
        try:
            fn()
        except UserError as e:
            return str(e)
        return None

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        cfg = load_config(sys.argv[1], json.loads(sys.argv[2]))
        out = {"train_refused": refusal(lambda: run_training(cfg, workers=2, storage_root=sys.argv[3], name="multi",
                                                             echo=None))}
        cfg = load_config(sys.argv[1], json.loads(sys.argv[2]))
        summary = run_training(cfg, workers=2, storage_root=sys.argv[3], name="multi", echo=None, shared_fs=True)
        out["summary"] = summary
        gen = dict(checkpoint=summary["checkpoint"], num=40, rows_per_shard=20, workers=2)
        out["generate_refused"] = refusal(lambda: run_generate(GenerateConfig(out="set", **gen), progress=False))
        out["generate_shared_fs"] = run_generate(GenerateConfig(out="set", shared_fs=True, **gen), progress=False)
        s3 = sys.argv[4]
        storage.copy_tree(summary["checkpoint"], s3 + "/ckpt")
        gen["checkpoint"] = s3 + "/ckpt"
        out["generate_s3"] = run_generate(GenerateConfig(out=s3 + "/set", **gen), progress=False)
        print(json.dumps(out))
    finally:
        ray.shutdown()
        cluster.shutdown()
""")


def test_two_simulated_nodes_one_worker_each(tmp_path, s3):
    """ray.cluster_utils.Cluster with two 1-CPU nodes: one worker lands on each. Runs in a
    subprocess, because it needs its own Ray (the session's Ray stays up). Storage and data
    paths are relative to the driver's directory, which is not the workers' one.

    Plain paths are refused on two nodes (each has its own disk) for training's --storage and
    generation's --out, with one line; --shared-fs (the simulated nodes do share this disk) and
    s3:// work, and the two sets agree byte for byte."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("dots", "stripes"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    overrides = [*TINY, "training.steps=8", "data.spec=imagefolder:imgs"]
    proc = subprocess.run(
        [PY, "-c", MULTINODE, str(REPO / "jobs/configs/digits-cgan.yaml"), json.dumps(overrides), "store",
         s3.new_prefix("multinode")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    store = tmp_path / "store"
    assert out["train_refused"] == (
        f"--storage {store} is a path on this machine, but the Ray cluster has 2 nodes, each with its own disk; "
        "use s3://bucket/prefix, or pass --shared-fs if it is a shared filesystem mounted at the same path on "
        "every node")
    assert out["generate_refused"].startswith("--out set is a path on this machine, but the Ray cluster has 2 nodes")
    assert "\n" not in out["generate_refused"]
    local, remote = out["generate_shared_fs"], out["generate_s3"]
    assert local["rows"] == remote["rows"] == 40 and local["generated_rows"] == 40
    assert json.loads((tmp_path / "set" / "_manifest.json").read_text())["files"] == \
        storage.read_json(remote["manifest"])["files"]
    summary = out["summary"]
    assert summary["nodes"] == 2 and summary["workers"] == 2
    assert summary["step"] == 8 and summary["ranks_in_sync"] is True
    assert summary["run"] == str(tmp_path / "store" / "multi")
    assert (tmp_path / "store" / "multi" / "checkpoints" / "step-0000008" / "model.json").is_file()


def test_checkpoint_selection_by_kid_follows_the_metric_and_survives_resume(ray_session, tmp_path):  # noqa: F811
    """training.select_by: kid scores each checkpoint against the held-back rows; best.json names
    the lowest KID, `--checkpoint RUN` resolves to it, Ray Train's retention keeps it (and the
    latest), and a resumed run keeps judging against the same best."""
    from ganaug.training.worker import run_training

    root = str(tmp_path / "store")
    select = ["data.holdout=0.2", "training.select_by=kid", "training.select_samples=64",
              "training.keep_checkpoints=1", "training.checkpoint_every=4"]
    first = run_training(tiny_cfg(12, *select), workers=1, storage_root=root, name="judged", echo=None)
    run = first["run"]
    assert first["data"]["holdout"] == 0.2

    def judged() -> dict[int, float]:
        return {r["step"]: r["kid"] for r in run_files.read_metrics(run) if "kid" in r}

    kids = judged()
    assert sorted(kids) == [4, 8, 12] and all(v == v for v in kids.values())  # one score per checkpoint
    best_step = min(kids, key=kids.get)
    best = checkpoint.read_best(run)
    assert first["best"] == best and best["step"] == best_step and best["kid"] == kids[best_step]
    assert checkpoint.resolve_checkpoint(run) == best["checkpoint"]
    assert checkpoint.resolve_with_reason(run)[1].startswith("best by kid (")
    # Retention keeps the best by quality plus the latest, whatever keep_checkpoints says.
    kept = [s for s, _ in checkpoint.list_checkpoints(run)]
    assert best_step in kept and 12 in kept and len(kept) <= 2

    # Resume: the judge starts from the run's best.json, so the pointer still names the run's minimum.
    second = run_training(tiny_cfg(20, *select), workers=1, storage_root=root, name="judged", echo=None)
    assert second["resumed_from"] == 12 and second["step"] == 20
    kids = judged()
    assert sorted(kids) == [4, 8, 12, 16, 20]
    best_step = min(kids, key=kids.get)
    assert checkpoint.read_best(run)["step"] == best_step
    assert checkpoint.resolve_checkpoint(run).endswith(checkpoint.step_dir_name(best_step))
    # A set made from the run folder records which checkpoint it took, and why.
    from ganaug.generation import GenerateConfig, run_generate

    made = run_generate(GenerateConfig(checkpoint=run, out=str(tmp_path / "set"), num=20, rows_per_shard=20,
                                       workers=1), progress=False)
    manifest = storage.read_json(made["manifest"])
    assert manifest["checkpoint_selected"].startswith("best by kid (") and manifest["checkpoint_selected"].endswith(
        f"at step {best_step}")
    assert manifest["checkpoint"]["uri"].endswith(checkpoint.step_dir_name(best_step))

    # benchmarks/d_overfit.py scores the run's own split back: every digit once, the held-back
    # 20 % of each class apart, as many fakes as held-back rows, and a finite r_v.
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "d_overfit.py"), "--checkpoint", run],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.splitlines()[-1])
    assert res["step"] == best_step and res["holdout"] == 0.2
    assert res["train"]["rows"] + res["held_back"]["rows"] == 1797 and 355 <= res["held_back"]["rows"] <= 365
    assert res["fake"]["rows"] == res["held_back"]["rows"] and res["r_v"] == res["r_v"]  # a number, not NaN


def test_selection_needs_held_back_rows_and_a_noise_model(tmp_path):
    from ganaug.config import ConfigError
    from ganaug.training.worker import prepare_run

    with pytest.raises(ConfigError, match="data.holdout"):
        tiny_cfg(8, "training.select_by=kid")
    cfg = load_config(REPO / "jobs/configs/pix2pix-digits.yaml", ["data.holdout=0.1"])
    with pytest.raises(UserError, match="translates images"):
        prepare_run(cfg, storage_root=str(tmp_path), name="p2p")


def test_holdout_split_is_stratified_seeded_and_disjoint():
    import numpy as np

    from ganaug.training.quality import holdout_split

    labels = np.array([0] * 50 + [1] * 30 + [2] * 1 + [3] * 2)
    keep, held = holdout_split(labels, 0.2, seed=3)
    assert set(keep).isdisjoint(held) and len(keep) + len(held) == len(labels)
    counts = {c: int((labels[held] == c).sum()) for c in range(4)}
    assert counts == {0: 10, 1: 6, 2: 0, 3: 1}   # a one-row class keeps its row; at least one of two
    again = holdout_split(labels, 0.2, seed=3)
    assert (again[0] == keep).all() and (again[1] == held).all()
    assert not (holdout_split(labels, 0.2, seed=4)[1] == held).all()
