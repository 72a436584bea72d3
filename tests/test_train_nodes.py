"""Training on a simulated multi-node cluster (ray.cluster_utils) that loses a node.

A spot instance is reclaimed in two acts: the cloud sends a preemption notice (Ray drains the
node with a deadline; Train's PreemptionWatcher sees the drain), then the node disappears.
ganaug answers the notice with a just-in-time checkpoint at the next report step, and when the
node goes, Train restarts the worker group on the remaining capacity from that checkpoint.

Runs in a subprocess with its own Ray (the session's Ray stays up). The three nodes are
processes of this machine, so the run folder is a shared filesystem for them (--shared-fs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ganaug import checkpoint
from ganaug.training import run_files

REPO = Path(__file__).resolve().parents[1]

PREEMPTED = textwrap.dedent("""
    import json, os, sys, threading, time
    import ray
    from ray.cluster_utils import Cluster
    from ray.core.generated import autoscaler_pb2
    from ganaug.config import load_config
    from ganaug.training.worker import run_training

    config, overrides, root, gate = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    events = {}

    def preempt():
        # Both ranks hold still after the pause step and say which node they run on.
        while not all(os.path.exists(f"{gate}.rank{r}") for r in (0, 1)):
            time.sleep(0.1)
        where = {r: open(f"{gate}.rank{r}").read().strip() for r in (0, 1)}
        # A worker node that hosts a rank (at most one rank can be on the 1-CPU head).
        rank, victim = next((r, n) for r in (1, 0) for n in workers if n.node_id == where[r])
        gcs = ray._raylet.GcsClient(address=cluster.gcs_address)
        accepted, why = gcs.drain_node(victim.node_id,
                                       autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
                                       "spot instance reclaimed (test)", int(time.time() * 1000) + 120_000)
        events.update(drained_rank=rank, drain_accepted=accepted, drain_rejection=why)
        time.sleep(2.0)  # Train's watcher polls the drains every 0.5 s here
        open(gate, "w").close()
        # The node goes once Train has recorded the just-in-time checkpoint (its snapshot).
        snapshot = os.path.join(root, "preempted", "checkpoints", "checkpoint_manager_snapshot.json")
        deadline = time.time() + 240
        while time.time() < deadline:
            if os.path.exists(snapshot) and "step-0000010" in open(snapshot).read():
                break
            time.sleep(0.1)
        events["recorded_before_loss"] = time.time() < deadline
        cluster.remove_node(victim)
        events["removed"] = True

    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        threading.Thread(target=preempt, daemon=True).start()
        lines = []
        cfg = load_config(config, overrides)
        summary = run_training(cfg, workers=2, storage_root=root, name="preempted", echo=lines.append,
                               shared_fs=True)
        print(json.dumps({"summary": summary, "events": events, "lines": lines}))
    finally:
        ray.shutdown()
        cluster.shutdown()
""")


@pytest.mark.timeout(420)
def test_preemption_notice_then_node_loss(tmp_path):
    """Drain (preempt) the node of one rank while both hold still at step 10: the run writes a
    just-in-time checkpoint at step 10 (checkpoint_every is 1000, so nothing else would), the
    node is then removed, and Train resumes both ranks on the head and the other node from step
    10 and finishes at the planned step 30."""
    from test_train_ray import TINY

    gate = tmp_path / "gate"
    overrides = [*TINY, "training.steps=30", "training.report_every=5", "training.checkpoint_every=1000",
                 "training.max_failures=1"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # The cluster's processes inherit these: Train's watcher polls drains often, the ranks pause.
    env.update(RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S="0.5", GANAUG_TEST_PAUSE_AT_STEP="10",
               GANAUG_TEST_PAUSE_GATE=str(gate))
    proc = subprocess.run(
        [sys.executable, "-c", PREEMPTED, str(REPO / "jobs/configs/digits-cgan.yaml"), json.dumps(overrides),
         str(tmp_path / "store"), str(gate)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=360, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    events, summary, lines = out["events"], out["summary"], out["lines"]
    assert events["drain_accepted"], events
    assert events["recorded_before_loss"] and events["removed"], events
    # The notice made step 10 a checkpoint, and the progress line says why.
    assert any("ckpt step-0000010" in line and "preempted" in line for line in lines), lines
    # The node loss restarted the group, which resumed from that checkpoint and finished.
    assert "resumed from step 10 " in "\n".join(lines) and summary["restarts"] >= 1, (summary, events, lines)
    assert summary["complete"] and summary["step"] == 30 and summary["ranks_in_sync"] is True
    run = str(tmp_path / "store" / "preempted")
    assert [s for s, _ in checkpoint.list_checkpoints(run)] == [10, 30]
    assert [r["step"] for r in run_files.read_metrics(run)] == [5, 10, 15, 20, 25, 30]
