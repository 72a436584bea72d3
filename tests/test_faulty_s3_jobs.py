"""Whole jobs on a failing S3: generation and training through the fault-injecting proxy.

The job drivers run as `python -m jobs.X` subprocesses that join the session's Ray, with
AWS_ENDPOINT_URL_S3 pointing at the proxy. `ensure_ray` forwards that endpoint in the job's
runtime_env, so the Ray Data actors and the Ray Train workers write through the proxy too, as
they would on a cluster whose object store misbehaves. The test process itself reads the results
over the direct endpoint, so what it sees is what a clean reader sees.

Only the runs that meet faults are subprocess jobs (each costs a Python start and fresh Ray workers
for its runtime_env). The clean runs they are compared with, or resume from, run the same
entrypoint in-process (`ganaug.cli.main(..., command=...)`, which is all `python -m jobs.X` does) on
the session's Ray, over the direct endpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from faultproxy import FaultProxy
from ganaug import checkpoint, storage
from test_train_ray import TINY

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
# test_train_ray's tiny run, with no restarts: a store that is down must end the run.
TINY_TRAIN = [*TINY, "training.max_failures=0"]


@pytest.fixture
def proxy(s3):
    p = FaultProxy(int(s3.endpoint.rsplit(":", 1)[1]))
    yield p
    p.close()


def _job(module: str, argv: list[str], proxy: FaultProxy, ray_session) -> subprocess.CompletedProcess:
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": proxy.endpoint, "GANAUG_S3_TIMEOUT_S": "3",
           "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    return subprocess.run([PY, "-m", module, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def _clean_in_process(command: str, argv: list[str], capsys) -> str:
    """`python -m jobs.COMMAND ARGV`, in this process on the session's Ray, no proxy: its stdout."""
    from ganaug.cli import main

    capsys.readouterr()
    try:
        main(argv, command=command)
    except SystemExit as e:       # a user-facing error: its one stderr line says why
        pytest.fail(f"jobs.{command} exited {e.code}: {capsys.readouterr().err[-3000:]}")
    return capsys.readouterr().out


def _complete_checkpoints_only(run: str) -> list[int]:
    """The steps of the run's whole checkpoints; any other step folder (a torn upload: Ray Train
    uploads a folder's files in no set order) is one that no reader picks."""
    whole = [s for s, _ in checkpoint.list_checkpoints(run)]
    latest = checkpoint.latest_checkpoint(run)
    assert (latest is None and not whole) or latest.endswith(checkpoint.step_dir_name(whole[-1]))
    if latest:
        checkpoint.load_train_state(latest)  # whole means loadable: every sha256 matches
    return whole


def test_generation_on_faulty_s3_stops_resumes_and_matches_a_clean_run(proxy, s3, ray_session, tmp_path, capsys):
    from test_generate import _save_tiny

    ckpt = _save_tiny(tmp_path, "cgan", 10)
    args = ["--checkpoint", ckpt, "--num", "400", "--rows-per-shard", "100", "--seed", "7", "--workers", "1"]
    # The clean reference: the same command, in-process, to a local folder.
    clean = tmp_path / "clean"
    _clean_in_process("generate", [*args, "--out", str(clean)], capsys)
    ref = json.loads((clean / "_manifest.json").read_text())

    out = s3.new_prefix("faulty-set")
    # A store that keeps failing: the job stops with one line naming the URI; nothing complete is visible.
    proxy.arm("slowdown", count=None)
    failed = _job("jobs.generate", [*args, "--out", out], proxy, ray_session)
    assert failed.returncode == 2, failed.stderr[-2000:]
    last = failed.stderr.strip().splitlines()[-1]
    assert out.split("://")[1].split("/")[0] in last and "Traceback" not in failed.stderr, failed.stderr[-2000:]
    assert not storage.exists(storage.join(out, "_manifest.json"))

    # Transient faults of every kind: retried, the job completes, the set equals the clean one.
    seen = proxy.seen
    for fault in ("reset", "slowdown", "cut_upload"):
        proxy.arm(fault, count=2)
        run = _job("jobs.generate", [*args, "--out", out], proxy, ray_session)
        if run.returncode == 0:
            break
    assert run.returncode == 0, run.stderr[-2000:]
    assert proxy.seen > seen
    man = json.loads(storage.read_bytes(storage.join(out, "_manifest.json")))
    assert [f["sha256"] for f in man["files"]] == [f["sha256"] for f in ref["files"]]
    for f in ref["files"]:
        assert storage.read_bytes(storage.join(out, f["name"])) == (clean / f["name"]).read_bytes()
    hidden = [n for n in storage.listdir(out) if n.startswith(".")]
    assert not hidden, hidden


def test_training_on_faulty_s3_fails_cleanly_and_resumes(proxy, s3, ray_session, capsys):
    root = s3.new_prefix("faulty-runs")
    run = storage.join(root, "flaky")

    def argv(steps: int) -> list[str]:
        sets = [a for kv in [*TINY_TRAIN, f"training.steps={steps}"] for a in ("--set", kv)]
        return [str(REPO / "jobs/configs/digits-cgan.yaml"), *sets, "--workers", "1", "--storage", root, "--name", "flaky"]

    def train(steps: int) -> subprocess.CompletedProcess:
        return _job("jobs.train", argv(steps), proxy, ray_session)

    # A healthy store: the run reaches step 16, with its checkpoint complete.
    first = _clean_in_process("train", argv(16), capsys)
    assert json.loads(first.strip().splitlines()[-1])["step"] == 16
    assert _complete_checkpoints_only(run)[-1] == 16

    # The store goes down for good: the run fails cleanly, no checkpoint is half-visible.
    proxy.arm("slowdown", count=None)
    down = train(32)
    assert down.returncode != 0
    assert "Traceback" not in down.stderr.strip().splitlines()[-1], down.stderr[-3000:]
    proxy.clear()
    assert _complete_checkpoints_only(run)[-1] == 16

    # The store is back, but flaky: transient faults while resuming, training and checkpointing are
    # retried, and the same command resumes from the newest complete checkpoint and finishes.
    seen = proxy.seen
    proxy.arm("reset", count=3)
    again = train(32)
    assert again.returncode == 0, again.stderr[-3000:]
    assert proxy.seen - seen == 3  # every armed fault was met, and retried
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["step"] == 32 and summary["resumed_from"] == 16
    assert _complete_checkpoints_only(run)[-1] == 32
