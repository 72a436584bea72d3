"""An autoscaling cluster that starts with no worker nodes: ganaug's jobs ask for a resource only
one worker type has, and Ray's autoscaler (its fake multi-node provider, which starts real Ray
nodes as processes on this machine) adds those nodes for them.

Ray's own `cluster_utils.AutoscalingCluster` runs `ray stop --force`, which kills every Ray on
the machine (this session's included), and reads an example file that the wheel lacks; so the
head is started here the way tests/test_cluster.py starts its cluster: `ray start --head --block`
in its own session, its own temp dir and free ports, token auth in a temp HOME, and stopped by
signalling that session only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from test_cluster import VENV_BIN, _free_ports, _stop

REPO = Path(__file__).resolve().parents[1]

# One worker type, none at the start: 1 CPU and the custom resource "accel" (the head has none).
NODE_TYPE = {"resources": {"CPU": 1, "accel": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2}


def _autoscaling_config(gcs_port: int) -> dict:
    return {
        "cluster_name": "ganaug-autoscaling-test", "max_workers": 2,
        "provider": {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{gcs_port}", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "available_node_types": {"ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
                                 "accel": NODE_TYPE},
        "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
        "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


@pytest.fixture(scope="module")
def autoscaling_cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("autoscaling-home")
    temp_dir = Path(tempfile.mkdtemp(prefix="ganaug-as-", dir="/tmp"))   # short: unix socket paths
    gcs, client, agent, agent_grpc, metrics, rt_agent, node_mgr, obj_mgr = _free_ports(8)
    config = temp_dir / "autoscaling.json"
    config.write_text(json.dumps(_autoscaling_config(gcs)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "GANAUG_"))}
    env.update(HOME=str(home), PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", RAY_AUTH_MODE="token",
               PYTHONUNBUFFERED="1")
    subprocess.run([str(VENV_BIN / "ray"), "get-auth-token", "--generate"], env=env, capture_output=True,
                   check=True, timeout=60)
    node_env = dict(env, AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_FAKE_CLUSTER="1",
                    RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    log = temp_dir / "head.log"
    head = None
    try:
        with open(log, "w") as out:
            head = subprocess.Popen(
                [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--autoscaling-config={config}",
                 "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--include-dashboard", "false",
                 "--disable-usage-stats", "--temp-dir", str(temp_dir), "--port", str(gcs),
                 "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
                 "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
                 "--runtime-env-agent-port", str(rt_agent), "--node-manager-port", str(node_mgr),
                 "--object-manager-port", str(obj_mgr), "--object-store-memory", str(200 * 1024 * 1024)],
                cwd=temp_dir, env=node_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.time() < deadline, log.read_text()[-4000:]
            time.sleep(0.5)
        yield {"address": f"127.0.0.1:{gcs}", "env": dict(env, RAY_ADDRESS=f"127.0.0.1:{gcs}"), "log": log,
               "temp_dir": temp_dir}
    finally:
        if head is not None:
            _stop(head, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


DRIVER = textwrap.dedent("""
    import json, sys
    import ray
    from ganaug.config import load_config
    from ganaug.generation import GenerateConfig, run_generate
    from ganaug.training.worker import run_training
    from tiny import tiny_cgan_checkpoint

    config, overrides, root = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    ray.init(log_to_driver=False)   # RAY_ADDRESS: the autoscaling head

    def accel_nodes():
        return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("accel"))

    out = {"nodes_before": sum(1 for n in ray.nodes() if n["Alive"])}
    # 1. Generation: one sampling actor that needs an accel node.
    ckpt = tiny_cgan_checkpoint(root + "/tiny", [str(i) for i in range(10)])
    out["generate"] = run_generate(GenerateConfig(checkpoint=ckpt, out=root + "/set", num=40, rows_per_shard=20,
                                                  workers=1, resources={"accel": 1}, shared_fs=True), progress=False)
    out["accel_after_generate"] = accel_nodes()
    # 2. Training: two workers, each needs an accel node.
    lines = []
    cfg = load_config(config, overrides)
    out["train"] = run_training(cfg, workers=2, storage_root=root, name="scaled", echo=lines.append, shared_fs=True)
    out["train_lines"] = lines
    out["accel_nodes"] = accel_nodes()
    print(json.dumps(out))
""")


@pytest.mark.timeout(600)
def test_autoscaler_adds_the_nodes_a_job_asks_for(autoscaling_cluster, tmp_path):
    """A generation job's one sampling actor asks for 1 `accel` (--resources): the cluster has
    none, the autoscaler starts an `accel` node and the set is made there. Then training asks
    each of its 2 workers for 1 `accel` (training.resources_per_worker): it says what it waits
    for, the autoscaler starts a second node, and the run completes on the two."""
    from test_train_ray import TINY

    overrides = [*TINY, "training.steps=8", 'training.resources_per_worker={"accel": 1}']
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(REPO / "jobs/configs/digits-cgan.yaml"), json.dumps(overrides),
         str(tmp_path / "store")],
        cwd=tmp_path, env=dict(autoscaling_cluster["env"], PYTHONPATH=str(REPO / "tests")), capture_output=True,
        text=True, timeout=540, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:] + autoscaling_cluster["log"].read_text()[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["nodes_before"] == 1, out
    made = out["generate"]
    assert made["rows"] == 40 and made["generated_rows"] == 40 and out["accel_after_generate"] == 1, out
    assert any(line.startswith("waiting for 2 accel: the cluster has 1 now") for line in out["train_lines"]), out
    train = out["train"]
    assert train["complete"] and train["step"] == 8 and train["nodes"] == 2, train
    assert out["accel_nodes"] == 2
