"""A sampling actor killed from outside mid-run (SIGKILL, as the OOM killer or a lost node would).

Ray Data restarts the actor and retries the shard it held (actor pools default to unlimited
max_restarts / max_task_retries); the job completes, and the set is byte-identical to an
uninterrupted run. The kill comes from this test process with os.kill, at a PID read from
Ray's actor table: no fault hook inside ganaug is involved.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from ganaug import shards
from ganaug.generation import GenerateConfig, run_generate

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# 36 shards, about 18 s of sampling at 200 images/s: when shard 0's record appears, most are still to
# come. At 12 shards (6 s) CI once saw the write stage's first worker start only after every block
# was sampled, so the actor was gone before there was anything to kill it after.
N, R = 3600, 100


def _sampling_actors() -> dict[str, dict]:
    """The generation's sampling actors from the GCS actor table (ray.util.state needs the
    dashboard, which the test session's Ray runs without)."""
    from ray._private import state

    return {aid: info for aid, info in state.actors().items() if "SamplerActor" in info["ActorClassName"]}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    """A small cgan slow enough to sample (about 200 images/s on one CPU thread, encoding runs
    30x faster) that the sampling actor is still busy when the first shard's record appears:
    a tinier model can finish sampling every shard before the write stage's first worker starts."""
    import torch

    from ganaug import checkpoint
    from ganaug.config import ModelConfig
    from ganaug.models.registry import DataInfo, get_family

    fam, names = get_family("cgan"), [f"c{i}" for i in range(10)]
    kwargs = fam.generator_kwargs(ModelConfig(family="cgan", width=32, z_dim=16, max_width=128, embed_dim=8),
                                  DataInfo(32, 1, 10, names))
    torch.manual_seed(0)
    meta = {"family": "cgan", "kind": fam.kind, "generator_kwargs": kwargs, "resolution": 32, "channels": 1,
            "num_classes": 10, "class_names": names}
    return checkpoint.save_checkpoint(str(tmp_path_factory.mktemp("faults") / "cgan"), meta=meta,
                                      generator_ema=fam.build_generator(kwargs))


@pytest.mark.timeout(400)
def test_sigkilled_sampling_actor_restarts_and_the_set_is_identical(ckpt, ray_session, tmp_path):
    def config(out: Path) -> GenerateConfig:
        return GenerateConfig(checkpoint=ckpt, out=str(out), num=N, rows_per_shard=R, seed=5, workers=1)

    ref = tmp_path / "ref"
    run_generate(config(ref), progress=False)
    before = set(_sampling_actors())

    out = tmp_path / "killed"
    killed: dict = {}

    def kill_once_the_first_shard_is_written() -> None:
        # Only after a record: by then Ray Data has handed the actor work and taken its output.
        # A kill one second after the actor came up, before its first block, once left Ray
        # Data's executor blocked in its actor-location refresh until the test's timeout.
        first = out / shards.record_name(0)
        deadline = time.time() + 300
        while time.time() < deadline and not first.exists():
            time.sleep(0.005)
        actors = _sampling_actors()
        killed["seen"] = {aid: (info["State"], info["Pid"], aid in before) for aid, info in actors.items()}
        for aid, info in actors.items():
            if aid not in before and info["State"] == "ALIVE" and info["Pid"]:
                killed.update(aid=aid, pid=info["Pid"],
                              records=len(list((out / shards.RECORDS).glob("*.json"))),
                              complete=(out / shards.MANIFEST).exists())
                os.kill(info["Pid"], signal.SIGKILL)
                return

    killer = threading.Thread(target=kill_once_the_first_shard_is_written, daemon=True)
    killer.start()
    summary = run_generate(config(out), progress=False)
    killer.join(timeout=10)

    assert "pid" in killed, f"no live sampling actor was found to kill: {killed}"
    print(f"killed sampling actor: { {k: v for k, v in killed.items() if k != 'seen'} }")
    # The kill landed mid-run: the set was not complete and shards were still to be made.
    assert not killed["complete"] and killed["records"] < N // R - 1, killed
    # Ray restarted the very actor that was killed (same actor id, a new process).
    assert _sampling_actors()[killed["aid"]]["NumRestarts"] >= 1
    assert summary["rows"] == N and summary["generated_rows"] == N and summary["reused_shards"] == 0
    want = json.loads((ref / shards.MANIFEST).read_text())
    got = json.loads((out / shards.MANIFEST).read_text())
    assert [f["sha256"] for f in got["files"]] == [f["sha256"] for f in want["files"]]
    assert got["counts"] == want["counts"]
    for f in got["files"]:  # the files on disk are the ones the manifest names
        assert shards.sha256((out / f["name"]).read_bytes()) == f["sha256"]
    assert sorted(p.name for p in out.iterdir()) == [shards.MANIFEST] + [f["name"] for f in got["files"]]
