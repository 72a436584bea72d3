"""Cluster operation: ray-cluster.yaml, the KubeRay manifests, cluster/README.md, the security
defaults, and an end-to-end dry run on a real local Ray cluster.

The end-to-end tests (`-k e2e_cluster`, marked slow; they run in `make test`) follow the "Local dry
run" block of cluster/README.md line by line: `ray start --head` with token auth, `ray job submit`
of jobs.train and jobs.generate to S3 (the moto server of the `s3` fixture), the checkpoint URI
read from `ray job logs ID | tail -1`, `serve deploy` of serve/config.yaml and curl. Each README
line is executed, with test-only additions (free ports, tiny step counts, temp paths); a static
test keeps README and test in step.

How the local cluster stays out of everyone else's way:
- Nothing Ray runs in the pytest process: every step is a CLI subprocess, so the session's own
  `ray_session` (ray.init in this process) is neither reused nor disturbed.
- HOME is a temp dir for every subprocess: the token is generated into $HOME/.ray/auth_token and
  the user's real ~/.ray is never read or written.
- The head gets its own --temp-dir (ray.init() elsewhere only auto-connects to the cluster named
  in the default temp dir's address file) and free ports for every listener.
- `ray stop` is never run: it kills every Ray process on the machine (this session's ray_session
  and other users' clusters included). The head runs as `ray start --head --block` in a new session
  (setsid); stopping it is SIGTERM to that process (Ray's own shutdown of what it started,
  RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0), then SIGKILL to whatever is left in that session or runs
  under its temp dir (job drivers start their own sessions). Always, in a finally.
- S3 credentials are those of the head's environment, as an instance profile or a Kubernetes Secret
  gives them to real nodes, never in a runtime_env (Ray stores, shows and logs runtime envs). The
  secret key is a distinctive value that the last step greps for in every output.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_DIR = REPO / "cluster"
README = CLUSTER_DIR / "README.md"
VENV_BIN = Path(sys.executable).parent


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _one(path: Path, kind: str) -> dict:
    docs = [d for d in _docs(path) if d.get("kind") == kind]
    assert len(docs) == 1, f"{path.name}: expected one {kind}, found {len(docs)}"
    return docs[0]


def _walk(node):
    """Every dict in a parsed YAML tree."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


# =============================================================================== ray-cluster.yaml

def test_ray_cluster_yaml_validates_with_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((REPO / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(cfg))   # raises on any schema error

    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    gpu_groups = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert gpu_groups and all(t["min_workers"] == 0 and t["resources"]["GPU"] >= 1 for t in gpu_groups), \
        "a GPU worker group scaling from 0"
    for t in types.values():
        assert t["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), \
            "S3 access through an instance profile"
    setup = "\n".join(cfg["setup_commands"])
    assert "pip install" in setup and "ganaug" in setup and "ray[" in setup and "==2.60.0" in setup, \
        "setup installs ganaug and pinned Ray"
    for cmd in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        if " ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd, cmd
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start, "dashboard only through ray dashboard/attach port-forwards"
    assert cfg["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token", "every node gets the token"


def test_ray_cluster_yaml_every_key_is_commented():
    """Each key has a comment on its line or directly above it."""
    lines = (REPO / "ray-cluster.yaml").read_text().splitlines()
    key = re.compile(r"""^\s*(?:-\s+)?(?:"[^"]+"|[A-Za-z_~][\w.~/-]*)\s*:(?:\s|$)""")
    missing = []
    for i, line in enumerate(lines):
        if line.lstrip().startswith("#") or not key.match(line):
            continue
        prev = next((p for p in reversed(lines[:i]) if p.strip()), "")
        if "#" not in line and not prev.lstrip().startswith("#"):
            missing.append(f"{i + 1}: {line.strip()}")
    assert not missing, "keys without a comment:\n" + "\n".join(missing)


# ================================================================================ KubeRay manifests

def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _check_ray_cluster_spec(spec: dict, where: str) -> None:
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token auth on"
    assert spec["authOptions"].get("secretName"), f"{where}: token from a Secret"
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: head not exposed outside Kubernetes"
    for c in _containers(head["template"]):
        assert "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}), f"{where}: CPU head"
    groups = spec["workerGroupSpecs"]
    assert groups, f"{where}: a worker group"
    containers = [c for g in groups for c in _containers(g["template"])]
    for g in groups:
        assert g["minReplicas"] == 0, f"{where}: GPU workers scale from 0"
    for c in containers:
        limits = c["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1, f"{where}: GPU limits on workers"
    for c in _containers(head["template"]) + containers:
        env = _env(c)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "secretKeyRef" in env[name]["valueFrom"], f"{where}: {name} from a Secret"


def test_raycluster_manifest():
    rc = _one(CLUSTER_DIR / "raycluster.yaml", "RayCluster")
    assert rc["apiVersion"] == "ray.io/v1" and rc["metadata"]["name"] == "ganaug"
    _check_ray_cluster_spec(rc["spec"], "raycluster.yaml")
    assert rc["spec"]["enableInTreeAutoscaling"] is True


@pytest.mark.parametrize("name, module", [("rayjob-train.yaml", "jobs.train"),
                                          ("rayjob-generate.yaml", "jobs.generate")])
def test_rayjob_manifests(name, module):
    rj = _one(CLUSTER_DIR / name, "RayJob")
    assert rj["apiVersion"] == "ray.io/v1" and rj["metadata"]["name"]
    spec = rj["spec"]
    assert spec["entrypoint"].split()[:3] == ["python", "-m", module]
    rc = _one(CLUSTER_DIR / "raycluster.yaml", "RayCluster")
    assert spec["clusterSelector"] == {"ray.io/cluster": rc["metadata"]["name"]}
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"]
    assert not any(k.startswith("AWS_") for k in runtime_env.get("env_vars", {})), "no credentials in runtime_env"
    env = _env(_containers(spec["submitterPodTemplate"])[0])
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == rc["spec"]["authOptions"]["secretName"]
    # The S3 URIs and flags are the ones the CLI accepts.
    argv = shlex.split(spec["entrypoint"])
    assert all(not a.startswith("--") or a in _flags(module) for a in argv), argv


def _flags(module: str) -> set[str]:
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return set(re.findall(r"(--[a-z][a-z-]*)", out.stdout))


def test_rayservice_embeds_serve_config_exactly():
    rs = _one(CLUSTER_DIR / "rayservice.yaml", "RayService")
    assert rs["apiVersion"] == "ray.io/v1" and rs["metadata"]["name"]
    embedded = rs["spec"]["serveConfigV2"]
    assert isinstance(embedded, str), "serveConfigV2 is a YAML string"
    assert yaml.safe_load(embedded) == yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    _check_ray_cluster_spec(rs["spec"]["rayClusterConfig"], "rayservice.yaml")
    head = _containers(rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"])[0]
    assert "secretKeyRef" in _env(head)["GANAUG_API_TOKEN"]["valueFrom"], "API token from a Secret"


# ------------------------------------------------------------ GCS fault tolerance (external Redis)

def _redis_conf(text: str) -> dict[str, str]:
    """redis.conf directives (the last one wins, as in Redis), comments dropped."""
    conf = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            conf[key.lower()] = value.strip()
    return conf


NO_AGENT = "No available agent to submit job"  # Ray's transient refusal (dashboard job module)


@dataclass
class _Redis:
    deployment: dict
    service: dict
    pvc: dict
    conf: dict[str, str]

    @property
    def pod(self) -> dict:
        return self.deployment["spec"]["template"]

    @property
    def container(self) -> dict:
        (c,) = _containers(self.pod)
        return c


def _redis() -> _Redis:
    path = CLUSTER_DIR / "redis.yaml"
    cm = _one(path, "ConfigMap")
    return _Redis(_one(path, "Deployment"), _one(path, "Service"), _one(path, "PersistentVolumeClaim"),
                  _redis_conf(cm["data"]["redis.conf"]))


def _example_secrets() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in _docs(CLUSTER_DIR / "secret-s3.example.yaml") if d["kind"] == "Secret"}


def _check_gcs_ft(rc_spec: dict, annotations: dict, where: str) -> None:
    """KubeRay >= 1.3 GCS FT on the Redis of redis.yaml, the password from the Secret Redis requires."""
    ft = rc_spec.get("gcsFaultToleranceOptions")
    assert ft, f"{where}: GCS fault tolerance on (gcsFaultToleranceOptions)"
    # The password: a secretKeyRef only (no literal `value`), to the key the example Secret holds.
    pw = ft["redisPassword"]
    assert set(pw) == {"valueFrom"} and set(pw["valueFrom"]) == {"secretKeyRef"}, f"{where}: {pw}"
    ref = pw["valueFrom"]["secretKeyRef"]
    assert ref["key"] in _example_secrets()[ref["name"]]["stringData"], f"{where}: {ref} not in the example Secrets"
    # The address: the Redis Service, on a port it exposes, which reaches the port Redis listens on.
    redis = _redis()
    host, port = ft["redisAddress"].removeprefix("redis://").rsplit(":", 1)
    assert host == redis.service["metadata"]["name"], f"{where}: {host} is not the Service in redis.yaml"
    (svc_port,) = [p for p in redis.service["spec"]["ports"] if p["port"] == int(port)]
    target = svc_port.get("targetPort", svc_port["port"])
    (c_port,) = [p for p in redis.container["ports"] if target in (p["containerPort"], p.get("name"))]
    assert redis.conf["port"] == str(c_port["containerPort"])
    assert redis.service["spec"]["selector"].items() <= redis.pod["metadata"]["labels"].items()
    # Redis requires exactly that Secret key.
    assert _env(redis.container)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == ref
    # Not mixed with the pre-1.3 configuration (KubeRay rejects the mix); the storage namespace stays
    # KubeRay's per-cluster default, so a RayService upgrade never reads the old cluster's state.
    assert not {"ray.io/ft-enabled", "ray.io/external-storage-namespace"} & set(annotations), where
    assert "externalStorageNamespace" not in ft, where
    head = rc_spec["headGroupSpec"]
    assert not {"redis-password", "redis-username"} & set(head["rayStartParams"]), where
    pods = [head["template"]] + [g["template"] for g in rc_spec["workerGroupSpecs"]]
    for c in (c for t in pods for c in _containers(t)):
        assert not {"RAY_REDIS_ADDRESS", "REDIS_PASSWORD", "REDIS_USERNAME"} & set(_env(c)), f"{where}: {c['name']}"


def test_rayservice_has_gcs_fault_tolerance():
    rs = _one(CLUSTER_DIR / "rayservice.yaml", "RayService")
    spec = rs["spec"]["rayClusterConfig"]
    _check_gcs_ft(spec, rs["metadata"].get("annotations", {}), "rayservice.yaml")
    # No replica on the head: what runs there stops while it restarts; the workers' replicas keep serving.
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_redis_password_is_referenced_never_inlined():
    redis = _redis()
    args = " ".join(redis.container.get("command", []) + redis.container.get("args", []))
    # requirepass is generated at start-up from the Secret's env var, into an in-memory volume that
    # redis.conf includes; neither the ConfigMap nor the command line holds the password.
    assert "requirepass" not in redis.conf
    include = redis.conf["include"]
    assert f"> {include}" in args and '"$REDIS_PASSWORD"' in args and "redis-server" in args
    mounts = {m["mountPath"]: m["name"] for m in redis.container["volumeMounts"]}
    volumes = {v["name"]: v for v in redis.pod["spec"]["volumes"]}
    assert volumes[mounts[str(Path(include).parent)]]["emptyDir"]["medium"] == "Memory"
    probe = " ".join(redis.container["readinessProbe"]["exec"]["command"])
    assert "REDISCLI_AUTH=" in probe and "$REDIS_PASSWORD" in probe and "-a " not in probe


def test_redis_persists_its_data_across_restarts():
    redis = _redis()
    # Append-only file plus snapshots, never evicting a GCS key.
    assert redis.conf["appendonly"] == "yes" and redis.conf.get("appendfsync", "everysec") in ("everysec", "always")
    assert redis.conf.get("maxmemory-policy", "noeviction") == "noeviction"
    # ... in `dir`, which is the mount of the PVC defined next to it.
    mounts = {m["mountPath"]: m["name"] for m in redis.container["volumeMounts"]}
    volumes = {v["name"]: v for v in redis.pod["spec"]["volumes"]}
    data = volumes[mounts[redis.conf["dir"]]]
    assert data["persistentVolumeClaim"]["claimName"] == redis.pvc["metadata"]["name"]
    assert redis.pvc["spec"]["accessModes"] == ["ReadWriteOnce"] and redis.pvc["spec"]["resources"]["requests"]["storage"]
    # One server on that volume: the old pod stops before the new one starts.
    assert redis.deployment["spec"]["replicas"] == 1
    assert redis.deployment["spec"]["strategy"]["type"] == "Recreate"
    assert redis.deployment["spec"]["selector"]["matchLabels"].items() <= redis.pod["metadata"]["labels"].items()
    sc = redis.pod["spec"]["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["fsGroup"] == sc["runAsUser"], "the volume is writable by Redis"


def test_readme_documents_gcs_fault_tolerance():
    text = README.read_text()
    m = re.search(r"^### GCS fault tolerance.*?(?=^##)", text, re.DOTALL | re.MULTILINE)
    assert m, "cluster/README.md needs a '### GCS fault tolerance' section"
    section = m.group(0)
    for needle in ["kubectl create secret generic ganaug-redis", "kubectl apply -f cluster/redis.yaml",
                   "kubectl apply -f cluster/networkpolicy.yaml", "kubectl apply -f cluster/rayservice.yaml",
                   "gcsFaultToleranceOptions", "ganaug-serve-serve-svc", "Serve keeps serving",
                   "driver does not survive", "resumes from the latest", "writes only", "PersistentVolumeClaim"]:
        assert needle in section, f"the GCS fault tolerance section lacks {needle!r}"
    # Redis before the RayService that needs it.
    assert section.index("kubectl apply -f cluster/redis.yaml") < section.index("kubectl apply -f cluster/rayservice.yaml")


def test_manifests_hold_no_literal_secrets():
    secret_names = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN",
                    "GANAUG_API_TOKEN", "REDIS_PASSWORD"}
    for path in sorted(CLUSTER_DIR.glob("*.yaml")):
        for doc in _docs(path):
            if doc.get("kind") == "Secret":
                assert path.name.endswith(".example.yaml"), f"{path.name}: Secrets only in *.example.yaml"
                assert all(v == "" or "REPLACE_ME" in v for v in doc["stringData"].values()), path.name
                continue
            for d in _walk(doc):
                if d.get("name") in secret_names:
                    assert "value" not in d and "secretKeyRef" in d.get("valueFrom", {}), \
                        f"{path.name}: {d['name']} must come from a Secret"
                for key in ("redisPassword", "redisUsername"):   # KubeRay's GCS FT credentials
                    if key in d:
                        assert "value" not in d[key] and "secretKeyRef" in d[key]["valueFrom"], \
                            f"{path.name}: {key} must come from a Secret"
                if d.get("kind") == "ConfigMap":
                    for text in d.get("data", {}).values():
                        assert not re.search(r"^\s*(requirepass|masterauth)\s", text, re.MULTILINE), \
                            f"{path.name}: a password in a ConfigMap"
    runtime_env = yaml.safe_load((CLUSTER_DIR / "runtime_env.yaml").read_text())
    assert not any(k in secret_names for k in runtime_env.get("env_vars", {}))


# Ways to turn Ray's token auth off: a shell assignment or env prefix, a Python environ/dict/kwarg
# assignment, a YAML env_vars entry, a Kubernetes env entry, KubeRay's authOptions. Mentioning the
# value in a refusal ("RAY_AUTH_MODE=disabled: ... unset it") or a comparison is fine.
_OFF = "dis" + "abled"      # spelled apart so that this file never matches its own patterns
_DISABLE_AUTH = [re.compile(p.replace("OFF", _OFF), re.IGNORECASE | re.MULTILINE) for p in (
    r"""(?:^|[\s;&|(`'"])(?:export\s+)?RAY_AUTH_MODE=["']?OFF["']?(?=\s+[\w./$-]|\s*$|\s*[;&|)`])""",
    r"""RAY_AUTH_MODE["']\s*\]\s*=\s*["']OFF""",
    r"""["']RAY_AUTH_MODE["']\s*[:,]\s*["']OFF""",
    r"""\bRAY_AUTH_MODE\s*=\s*["']OFF""",
    r"""^\s*RAY_AUTH_MODE\s*:\s*["']?OFF""",
    r"""name:[ \t]*["']?RAY_AUTH_MODE["']?[ \t]*\n[ \t]*value:[ \t]*["']?OFF""",
    r"""name:[ \t]*["']?RAY_AUTH_MODE["']?[ \t]*,[ \t]*value:[ \t]*["']?OFF""",
    r"""authOptions:[ \t]*\n(?:[ \t]+\S[^\n]*\n){0,8}?[ \t]+mode:[ \t]*["']?OFF""",
)]


def _disables_auth(text: str) -> bool:
    return any(p.search(text) for p in _DISABLE_AUTH)


def test_disable_auth_patterns():
    v = "RAY_AUTH_MODE"
    for bad in [f"{v}={_OFF} ray start --head", f"export {v}={_OFF}\n", f'os.environ["{v}"] = "{_OFF}"',
                f'os.environ.setdefault("{v}", "{_OFF}")', f'env = {{"{v}": "{_OFF}"}}', f'dict({v}="{_OFF}")',
                f"env_vars:\n  {v}: {_OFF}\n", f"- name: {v}\n  value: {_OFF}\n", f"- {{name: {v}, value: {_OFF}}}",
                f"spec:\n  authOptions:\n    mode: {_OFF}\n"]:
        assert _disables_auth(bad), bad
    for fine in [f'raise UserError("{v}={_OFF}: the demo keeps Ray\'s token auth on; unset it")',
                 f'if os.environ.get("{v}", "").lower() == "{_OFF}":', f"export {v}=token",
                 "Never set `RAY_AUTH_MODE` to anything but `token`."]:
        assert not _disables_auth(fine), fine


def test_no_file_disables_ray_auth():
    """Token auth stays on everywhere: nothing in the repo sets RAY_AUTH_MODE to off."""
    skip_dirs = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "ganaug-store", "node_modules"}
    offenders = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in skip_dirs and not d.endswith(".egg-info")]
        for f in files:
            path = Path(root, f)
            if path == Path(__file__).resolve():   # holds the patterns and their self-test
                continue
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError):
                continue                          # binary files
            if _disables_auth(text):
                offenders.append(str(path.relative_to(REPO)))
    assert not offenders, f"files that turn Ray token auth off: {offenders}"


def test_local_defaults_bind_loopback():
    """Serve and any dashboard ganaug starts itself listen on 127.0.0.1 unless the user says otherwise."""
    serve_cfg = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    assert serve_cfg["http_options"]["host"] == "127.0.0.1"
    from ganaug.cli import cli

    host = next(p for p in cli.commands["serve"].params if p.name == "host")
    assert host.default == "127.0.0.1"
    for folder in ("ganaug", "jobs", "serve"):
        for path in (REPO / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                assert "0.0.0.0" not in code, f"{path.relative_to(REPO)}:{n} binds all interfaces: {line.strip()}"
                m = re.search(r"dashboard_host\s*=\s*([^,)]+)", code)
                assert not m or m.group(1).strip() in {'"127.0.0.1"', "'127.0.0.1'"}, f"{path}:{n}: {line.strip()}"


# ================================================================================ cluster/README.md

# The "Local dry run" block of cluster/README.md, line by line (continuations joined): each
# line must match its pattern, in this order, and the end-to-end test below runs each of them.
LOCAL_STEPS: list[tuple[str, str]] = [
    ("auth_mode", r"export RAY_AUTH_MODE=token"),
    ("token", r"ray get-auth-token --generate"),
    ("creds", (r"export AWS_ACCESS_KEY_ID=\S+ AWS_SECRET_ACCESS_KEY=\S+ AWS_ENDPOINT_URL_S3=\S+ "
               r"AWS_DEFAULT_REGION=\S+ GANAUG_API_TOKEN=\S+")),
    ("start", r"ray start --head --num-cpus 4 --dashboard-host 127\.0\.0\.1 --dashboard-port 8265 .*"),
    ("address", r"export RAY_ADDRESS=http://127\.0\.0\.1:8265"),
    ("store", r"export STORE=\S+"),
    ("train", (r"ray job submit --working-dir \. --runtime-env cluster/runtime_env\.yaml --submission-id \S+ "
               r"-- python -m jobs\.train jobs/configs/digits-cgan\.yaml .*--storage \$STORE/runs --name \S+")),
    ("train_logs", r"ray job logs \S+ \| tail -1"),
    ("ckpt", r"CKPT=\$\(ray job logs \S+ \| tail -1 \| python -c .+\)"),
    ("generate", (r"ray job submit --working-dir \. --runtime-env cluster/runtime_env\.yaml --submission-id \S+ "
                  r"-- python -m jobs\.generate --checkpoint \"\$CKPT\" .*--out \$STORE/sets/\S+")),
    ("generate_logs", r"ray job logs \S+ \| tail -1"),
    ("evaluate", (r"ray job submit --working-dir \. --runtime-env cluster/runtime_env\.yaml --submission-id \S+ "
                  r"-- python -m jobs\.evaluate --real \S+ --synthetic \$STORE/sets/\S+ .*--out \$STORE/reports/\S+")),
    ("evaluate_logs", r"ray job logs \S+ \| tail -1"),
    ("serve_config", r"sed \S+ serve/config\.yaml > \S+"),
    ("serve_deploy", r"serve deploy \S+ --address \$RAY_ADDRESS"),
    ("serve_status", r"serve status --address \$RAY_ADDRESS"),
    ("healthz", r"curl -s http://127\.0\.0\.1:8000/healthz"),
    ("samples", r"curl -s -H \"Authorization: Bearer \$GANAUG_API_TOKEN\" .*http://127\.0\.0\.1:8000/v1/models/\S+/samples"),
    ("stop", r"ray stop"),
]


def readme_local_lines() -> list[str]:
    text = README.read_text()
    m = re.search(r"^## Local dry run.*?^```bash\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    assert m, "cluster/README.md needs a '## Local dry run' section with a ```bash block"
    joined, lines = "", []
    for raw in m.group(1).splitlines():
        if joined:
            raw = joined + " " + raw.strip()
            joined = ""
        if raw.rstrip().endswith("\\"):
            joined = raw.rstrip()[:-1].rstrip()
            continue
        line = re.sub(r"\s{2,}#\s.*$", "", raw).strip()   # trailing "  # comment"
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def readme_local_steps() -> dict[str, str]:
    lines = readme_local_lines()
    assert len(lines) == len(LOCAL_STEPS), (
        "the Local dry run block of cluster/README.md and LOCAL_STEPS in tests/test_cluster.py differ:\n"
        + "\n".join(lines))
    steps = {}
    for line, (name, pattern) in zip(lines, LOCAL_STEPS):
        assert re.fullmatch(pattern, line), f"README step {name!r}: {line!r} does not match {pattern!r}"
        steps[name] = line
    return steps


def test_readme_local_dry_run_is_the_tested_sequence():
    steps = readme_local_steps()
    assert "--set training.steps=" in steps["train"]


def test_readme_names_every_step_a_user_needs():
    text = README.read_text()
    for needle in ["ray up ray-cluster.yaml", "ray dashboard ray-cluster.yaml", "ray attach ray-cluster.yaml",
                   "ray job submit --working-dir . ", "-- python -m jobs.train", "-- python -m jobs.generate",
                   "-- python -m jobs.evaluate", "ray job logs", "| tail -1", "serve deploy",
                   "kubectl apply -f cluster/raycluster.yaml", "kubectl apply -f cluster/rayjob-train.yaml",
                   "kubectl apply -f cluster/rayjob-generate.yaml", "kubectl apply -f cluster/rayservice.yaml",
                   "kubectl apply -f cluster/redis.yaml",
                   "kubectl port-forward", "ray get-auth-token --generate", "RAY_AUTH_MODE=token",
                   "~/.ray/auth_token", "instance profile", "Secret", "ray down ray-cluster.yaml",
                   "docker build -f cluster/Dockerfile"]:
        assert needle in text, f"cluster/README.md lacks {needle!r}"
    # Every file it points to exists.
    for ref in set(re.findall(r"\b((?:cluster|jobs/configs|serve)/[\w.-]+\.(?:yaml|md|py)|cluster/Dockerfile)\b", text)):
        assert (REPO / ref).exists(), f"cluster/README.md names {ref}, which does not exist"


# ================================================================================ end to end

def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[3])   # field 6: session id (after the name: state, ppid, pgrp)


def _cwd_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


@dataclass
class LocalCluster:
    home: Path
    temp_dir: Path
    dashboard: str                 # http://127.0.0.1:PORT (Jobs API, serve deploy)
    serve_port: int
    env: dict                      # the user's shell: RAY_AUTH_MODE=token, RAY_ADDRESS, STORE, HOME
    node_env: dict                 # the head's environment (what an instance profile / Secret provides)
    secret: str                    # the distinctive AWS_SECRET_ACCESS_KEY
    api_token: str
    store: str
    head: subprocess.Popen | None
    head_log: Path
    steps: dict[str, str]
    token: str = ""                # the Ray auth token of this cluster
    outputs: list[str] = field(default_factory=list)   # every stdout/stderr seen, for the leak check
    files: dict[str, str] = field(default_factory=dict)

    def sh(self, line: str, timeout: float = 300, check: bool = True, env: dict | None = None,
           record: bool = True, **extra_env) -> subprocess.CompletedProcess:
        """Run one shell line the way a user's terminal would (cwd = repo root).

        Its stdout/stderr join `outputs`, which the leak check greps, unless record=False.
        """
        run_env = dict(env if env is not None else self.env)
        run_env.update(extra_env)
        deadline = time.time() + 90
        while True:
            try:
                out = subprocess.run(["bash", "-c", line], cwd=REPO, env=run_env, capture_output=True,
                                     text=True, timeout=timeout, check=False)
            except subprocess.TimeoutExpired as e:
                raise AssertionError(f"timed out after {timeout}s: {line}\n{e.stdout}\n{e.stderr}") from None
            # A loaded head's job agent can come up after `ray start` returns; Ray refuses the
            # submission before creating the job and says to try again, as a user would.
            if record:  # every attempt's output, for the leak check
                self.outputs += [out.stdout, out.stderr]
            if out.returncode == 0 or NO_AGENT not in out.stderr or time.time() > deadline:
                break
            time.sleep(3)
        if check:
            hint = ""
            if "Failed to merge the Job's runtime env" in out.stdout + out.stderr:
                hint = ("\nHINT: the job's driver called ray.init(runtime_env={'env_vars': ...}) with keys that the "
                        "job's own runtime_env (cluster/runtime_env.yaml) already sets; Ray refuses that. "
                        "ganaug.raycluster.ensure_ray must not forward env vars the job already has.")
            assert out.returncode == 0, f"exit {out.returncode}: {line}{hint}\n--- stdout\n{out.stdout[-6000:]}" \
                                        f"\n--- stderr\n{out.stderr[-6000:]}"
        return out

    def sh_background(self, line: str, **extra_env) -> tuple[str, subprocess.Popen]:
        """Start a shell line that runs while the test does other checks; finish it with wait()."""
        proc = subprocess.Popen(["bash", "-c", line], cwd=REPO, env=dict(self.env, **extra_env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return line, proc

    def wait(self, job: tuple[str, subprocess.Popen], timeout: float = 300) -> str:
        line, proc = job
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            raise AssertionError(f"timed out after {timeout}s: {line}\n{stdout[-4000:]}\n{stderr[-4000:]}") from None
        self.outputs += [stdout, stderr]
        assert proc.returncode == 0, f"exit {proc.returncode}: {line}\n--- stdout\n{stdout[-6000:]}" \
                                     f"\n--- stderr\n{stderr[-6000:]}"
        return stdout + stderr

    def head_tail(self) -> str:
        try:
            return self.head_log.read_text()[-4000:]
        except OSError:
            return ""


def _stop(head: subprocess.Popen, temp_dir: Path) -> None:
    """Stop this cluster only (never `ray stop`, which kills every Ray on the machine)."""
    sid = head.pid
    if head.poll() is None:
        try:
            head.send_signal(signal.SIGTERM)
            head.wait(timeout=30)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
    deadline = time.time() + 10
    while True:
        me = os.getpid()
        left = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me
                and (_session_of(int(p)) == sid or _cwd_of(int(p)).startswith(str(temp_dir) + "/"))]
        if not left:
            break
        if time.time() > deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            break
        time.sleep(0.5)
    if head.poll() is None:
        head.kill()
    head.wait(timeout=10)


def _wait_dashboard(cluster: LocalCluster, token: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    req = urllib.request.Request(f"{cluster.dashboard}/api/version", headers={"Authorization": f"Bearer {token}"})
    while time.time() < deadline:
        if cluster.head.poll() is not None:
            raise AssertionError(f"ray start exited with {cluster.head.returncode}:\n{cluster.head_tail()}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise AssertionError(f"dashboard not up after {timeout}s:\n{cluster.head_tail()}")


def _unquote_export(line: str) -> list[str]:
    return [kv.split("=", 1)[0] for kv in shlex.split(line)[1:]]


@pytest.fixture(scope="module")
def local_cluster(s3, tmp_path_factory):
    """`ray start --head` as in cluster/README.md's Local dry run, isolated (see the module doc)."""
    steps = readme_local_steps()
    home = tmp_path_factory.mktemp("cluster-home")
    temp_dir = Path(tempfile.mkdtemp(prefix="ganaug-ray-", dir="/tmp"))   # short: unix socket paths
    (gcs, dash, client, agent, agent_grpc, metrics, rt_agent, node_mgr, obj_mgr, serve_port) = _free_ports(10)

    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "GANAUG_"))}
    base.update(HOME=str(home), PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONUNBUFFERED="1")
    store = s3.new_prefix("cluster-e2e")
    secret = f"ganaug-secret-{uuid.uuid4().hex}"
    api_token = f"ganaug-api-{uuid.uuid4().hex}"

    # The user's shell, following the README: auth mode, then (later) the address and the store.
    assert _unquote_export(steps["auth_mode"]) == ["RAY_AUTH_MODE"]
    env = dict(base, RAY_AUTH_MODE="token")
    # The head's environment: the README's credential exports, here pointing at the moto server.
    assert _unquote_export(steps["creds"]) == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                               "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "GANAUG_API_TOKEN"]
    node_env = dict(env, AWS_ACCESS_KEY_ID="ganaug-test-key", AWS_SECRET_ACCESS_KEY=secret,
                    AWS_ENDPOINT_URL_S3=s3.endpoint, AWS_DEFAULT_REGION="us-east-1",
                    AWS_EC2_METADATA_DISABLED="true", GANAUG_API_TOKEN=api_token,
                    RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0", RAY_DATA_PARQUET_FOOTER_NUM_ACTORS="1")

    head_log = temp_dir / "head.log"
    cluster = LocalCluster(home=home, temp_dir=temp_dir, dashboard=f"http://127.0.0.1:{dash}",
                           serve_port=serve_port, env=env, node_env=node_env, secret=secret,
                           api_token=api_token, store=store, head=None, head_log=head_log, steps=steps)
    try:
        # 1. The token, into $HOME/.ray/auth_token (a temp HOME). The command prints the token by
        #    design, so its output is not part of the leak check.
        cluster.sh(steps["token"], record=False)
        token_file = home / ".ray" / "auth_token"
        assert token_file.is_file(), "ray get-auth-token --generate writes ~/.ray/auth_token"
        cluster.token = token_file.read_text().strip()

        # 2. The README's `ray start --head ...`, plus test-only flags (click takes the last value of
        #    a repeated option, so --dashboard-port here overrides the README's 8265).
        start = shlex.split(steps["start"]) + [
            "--block", "--temp-dir", str(temp_dir), "--port", str(gcs), "--dashboard-port", str(dash),
            "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
            "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
            "--runtime-env-agent-port", str(rt_agent), "--node-manager-port", str(node_mgr),
            "--object-manager-port", str(obj_mgr), "--object-store-memory", str(300 * 1024 * 1024)]
        assert start[0] == "ray"
        with open(head_log, "w") as log:
            cluster.head = subprocess.Popen([str(VENV_BIN / "ray"), *start[1:]], cwd=REPO, env=node_env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_dashboard(cluster, cluster.token)

        # 3. The README's exports of the Jobs API address and the store.
        assert _unquote_export(steps["address"]) == ["RAY_ADDRESS"]
        assert _unquote_export(steps["store"]) == ["STORE"]
        env.update(RAY_ADDRESS=cluster.dashboard, STORE=store, GANAUG_API_TOKEN=api_token)
        yield cluster
    finally:
        if cluster.head is not None:
            _stop(cluster.head, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _job_id(line: str) -> str:
    return shlex.split(line)[shlex.split(line).index("--submission-id") + 1]


def _with_job_id(line: str, old: str, new: str) -> str:
    assert line.count(old) == 1, line
    return line.replace(old, new)


def _last_json(text: str) -> dict:
    last = text.rstrip("\n").splitlines()[-1]
    try:
        return json.loads(last)
    except json.JSONDecodeError:
        raise AssertionError(f"the last line is not JSON: {last!r}\n{text[-3000:]}") from None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_e2e_cluster_auth_is_on_and_dashboard_is_local(local_cluster):
    c = local_cluster
    # Without a token: refused by the cluster (401), not by the client.
    no_token = {k: v for k, v in c.env.items() if k != "RAY_AUTH_MODE"}
    empty_home = c.temp_dir / "empty-home"
    empty_home.mkdir(exist_ok=True)
    out = c.sh("ray job submit --no-wait -- python -c 'print(1)'", check=False, env=no_token,
               HOME=str(empty_home), timeout=120)
    assert out.returncode != 0 and "Missing authentication token" in out.stdout + out.stderr, out.stderr[-2000:]
    # A wrong token: 403.
    out = c.sh("ray job submit --no-wait -- python -c 'print(1)'", check=False, RAY_AUTH_TOKEN="not-the-token",
               timeout=120)
    assert out.returncode != 0 and "Invalid authentication token" in out.stdout + out.stderr, out.stderr[-2000:]
    # Raw HTTP, no header: 401.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{c.dashboard}/api/jobs/", timeout=10)
    assert e.value.code == 401
    # Nothing was submitted by the refused calls.
    listed = c.sh("ray job list", timeout=120)
    assert "python -c 'print(1)'" not in listed.stdout and "print(1)" not in listed.stdout

    # The dashboard (Jobs API) listens on loopback only.
    m = re.search(r"Local node IP: (?:\x1b\[[0-9;]*m)*([0-9.]+)", c.head_log.read_text())
    port = int(c.dashboard.rsplit(":", 1)[1])
    if m and m.group(1) != "127.0.0.1":
        with pytest.raises(OSError):
            socket.create_connection((m.group(1), port), timeout=5).close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_e2e_cluster_train_generate_serve(local_cluster, s3, tmp_path):
    c, steps = local_cluster, local_cluster.steps
    t0 = time.time()
    timings = {}
    run_tag = uuid.uuid4().hex[:8]

    # ---- train: the README line, tiny (test-only overrides appended; the last --set wins).
    readme_train_id = _job_id(steps["train"])
    train_id = f"{readme_train_id}-{run_tag}"
    train_line = _with_job_id(steps["train"], f"--submission-id {readme_train_id} ", f"--submission-id {train_id} ")
    train_line += (" --set training.steps=4 --set training.checkpoint_every=4 --set training.report_every=2"
                   " --set training.batch_size=16")
    submit = c.sh(train_line, timeout=420)
    timings["train_job"] = round(time.time() - t0, 1)
    upload = re.search(r"Uploading package (gcs://\S+?\.zip)", submit.stdout + submit.stderr)
    assert "succeeded" in submit.stdout + submit.stderr

    # The working dir upload is the repo without .venv/.git/ignored files: small.
    pkgs = list(c.temp_dir.glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*"))
    assert pkgs, f"no unpacked working dir under {c.temp_dir} ({upload})"
    size = sum(f.stat().st_size for p in pkgs[:1] for f in p.rglob("*") if f.is_file())
    assert size < 30 * 1024 * 1024, f"working dir upload is {size / 2**20:.1f} MiB"
    assert not (pkgs[0] / ".venv").exists() and not (pkgs[0] / ".git").exists()

    # ---- the final JSON line: `ray job logs ID | tail -1`, exactly as the README says.
    logs = c.sh(_with_job_id(steps["train_logs"], readme_train_id, train_id), timeout=120)
    train_summary = _last_json(logs.stdout)
    assert train_summary["step"] == 4 and train_summary["checkpoint"].startswith(c.store + "/runs/")
    ckpt = c.sh(_with_job_id(steps["ckpt"], readme_train_id, train_id) + '\necho "$CKPT"', timeout=120)
    ckpt_uri = ckpt.stdout.strip().splitlines()[-1]
    assert ckpt_uri == train_summary["checkpoint"]
    full_train_logs = c.sh(f"ray job logs {train_id}", timeout=120).stdout
    assert "step 4/4" in full_train_logs, "a progress line per report in the job logs"

    # ---- serve deploy (starts now, overlaps with the generate job).
    serve_cfg = tmp_path / "serve-dry.yaml"
    sed_line = steps["serve_config"]
    readme_out = sed_line.rsplit(">", 1)[1].strip()
    c.sh(sed_line.rsplit(">", 1)[0] + f"> {shlex.quote(str(serve_cfg))}")
    cfg = yaml.safe_load(serve_cfg.read_text())
    run_uri = train_summary["run"]
    assert list(cfg["applications"][0]["args"]["models"].values()) == [run_uri], \
        "the README's sed points the model map at the dry run's run folder"
    assert cfg["http_options"]["host"] == "127.0.0.1"
    cfg["http_options"]["port"] = c.serve_port      # test-only: a free port instead of 8000
    serve_cfg.write_text(yaml.safe_dump(cfg, sort_keys=False))
    deploy_line = steps["serve_deploy"].replace(f" {readme_out} ", f" {shlex.quote(str(serve_cfg))} ", 1)
    c.sh(deploy_line, timeout=180)

    # ---- generate: the README line with the CKPT from the train job's last line.
    readme_gen_id = _job_id(steps["generate"])
    gen_id = f"{readme_gen_id}-{run_tag}"
    gen_line = _with_job_id(steps["generate"], f"--submission-id {readme_gen_id} ", f"--submission-id {gen_id} ")
    t1 = time.time()
    submit_gen = c.sh(gen_line, timeout=420, CKPT=ckpt_uri)
    timings["generate_job"] = round(time.time() - t1, 1)
    assert "succeeded" in submit_gen.stdout + submit_gen.stderr
    gen_logs = c.sh(_with_job_id(steps["generate_logs"], readme_gen_id, gen_id), timeout=120)
    gen_summary = _last_json(gen_logs.stdout)
    out_uri = gen_summary["out"]
    assert out_uri.startswith(c.store + "/sets/")
    n_rows = gen_summary["rows"]
    assert n_rows == int(re.search(r"--num (\d+)", gen_line).group(1))

    # ---- evaluate the generated set (a job too); runs while the set and Serve are checked.
    readme_eval_id = _job_id(steps["evaluate"])
    eval_id = f"{readme_eval_id}-{run_tag}"
    eval_line = _with_job_id(steps["evaluate"], f"--submission-id {readme_eval_id} ", f"--submission-id {eval_id} ")
    eval_line += " --domain-epochs 1 --cas-epochs 1 --seeds 1 --threads 1"   # test-only: tiny
    t2 = time.time()
    eval_job = c.sh_background(eval_line)

    # ---- the generated set on S3, checked with boto3.
    client = s3.client()
    bucket, prefix = out_uri[len("s3://"):].split("/", 1)
    manifest = json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/_manifest.json")["Body"].read())
    assert manifest["rows"] == n_rows == sum(f["rows"] for f in manifest["files"])
    assert manifest["checkpoint"]["uri"] == ckpt_uri
    assert sum(manifest["counts"].values()) == n_rows and len(manifest["counts"]) == 10
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]}
    import hashlib

    import pyarrow.parquet as pq

    first_rows = None
    for f in manifest["files"]:
        key = f"{prefix}/{f['name']}"
        assert key in keys
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert hashlib.sha256(data).hexdigest() == f["sha256"]
        table = pq.read_table(io.BytesIO(data))
        assert table.num_rows == f["rows"]
        if first_rows is None:
            first_rows = table.slice(0, 3).to_pylist()

    # ---- Serve: the deployed app answers, with its bearer token, the same bytes as the set.
    deadline = time.time() + 240
    status = ""
    while time.time() < deadline:
        status = c.sh(steps["serve_status"], timeout=120, check=False).stdout
        if re.search(r"status: RUNNING", status) and "DEPLOY_FAILED" not in status:
            break
        assert "DEPLOY_FAILED" not in status, status
        time.sleep(3)
    else:
        raise AssertionError(f"serve app not RUNNING:\n{status}")
    timings["serve_running"] = round(time.time() - t0, 1)
    port_sub = ("127.0.0.1:8000", f"127.0.0.1:{c.serve_port}")
    health = c.sh(steps["healthz"].replace(*port_sub), timeout=60)
    assert json.loads(health.stdout) == {"status": "ok"}
    model_id = next(iter(cfg["applications"][0]["args"]["models"]))
    unauth = c.sh(f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{c.serve_port}/v1/models", timeout=60)
    assert unauth.stdout.strip() == "401", "the API needs the bearer token from GANAUG_API_TOKEN"
    samples_line = steps["samples"].replace(*port_sub)
    body = {"n": 3, "seed": first_rows[0]["seed"], "labels": [r["label"] for r in first_rows], "truncation": 1.0}
    samples_line = re.sub(r"-d\s+'[^']*'", "-d " + shlex.quote(json.dumps(body)), samples_line)
    answer = json.loads(c.sh(samples_line, timeout=120).stdout)
    assert answer["model"] == model_id and len(answer["images"]) == 3
    assert [r["seed"] for r in first_rows] == [body["seed"] + j for j in range(3)]
    for row, img in zip(first_rows, answer["images"]):
        assert base64.b64decode(img["data"]) == row["image"]["bytes"], \
            "a served image equals the same (seed, label) row of ganaug generate"
    # Serve binds loopback only.
    m = re.search(r"Local node IP: (?:\x1b\[[0-9;]*m)*([0-9.]+)", c.head_log.read_text())
    if m and m.group(1) != "127.0.0.1":
        with pytest.raises(OSError):
            socket.create_connection((m.group(1), c.serve_port), timeout=5).close()

    # ---- the evaluation's report.
    assert "succeeded" in c.wait(eval_job, timeout=420)
    timings["evaluate_job"] = round(time.time() - t2, 1)
    eval_summary = _last_json(c.sh(_with_job_id(steps["evaluate_logs"], readme_eval_id, eval_id), timeout=120).stdout)
    report_uri = eval_summary["report"]
    assert report_uri.startswith(c.store + "/reports/") and eval_summary["n_synthetic"] == n_rows
    report_bucket, report_key = report_uri[len("s3://"):].split("/", 1)
    report = json.loads(client.get_object(Bucket=report_bucket, Key=report_key)["Body"].read())
    assert "fid" in json.dumps(report) and "cas" in json.dumps(report)

    # ---- credentials never leak: S3 objects of the run, the set and the report, job logs, every
    #      CLI output, and every log file of the cluster.
    secret = c.secret.encode()
    # Positive control: the head (and so every Ray process) really holds the secret it must not leak.
    assert secret in Path(f"/proc/{c.head.pid}/environ").read_bytes()
    leaks = []
    run_bucket, run_prefix = run_uri[len("s3://"):].split("/", 1)
    for b, p in [(run_bucket, run_prefix), (bucket, prefix), (report_bucket, report_key.rsplit("/", 1)[0])]:
        for o in client.list_objects_v2(Bucket=b, Prefix=p + "/")["Contents"]:
            data = client.get_object(Bucket=b, Key=o["Key"])["Body"].read()
            if secret in data or c.api_token.encode() in data or c.token.encode() in data:
                leaks.append(f"s3://{b}/{o['Key']}")
    run_keys = [o["Key"] for o in client.list_objects_v2(Bucket=run_bucket, Prefix=run_prefix + "/")["Contents"]]
    assert any(k.endswith("/model.json") for k in run_keys) and any(k.endswith("/metrics.jsonl") for k in run_keys)
    job_logs = [full_train_logs] + [c.sh(f"ray job logs {job}", timeout=120).stdout for job in (gen_id, eval_id)]
    for text in c.outputs + job_logs + [json.dumps(manifest)]:
        for value in (c.secret, c.token, c.api_token):
            if value in text:
                leaks.append(f"CLI output / job logs contain {value[:14]}...")
    for f in c.temp_dir.rglob("*"):
        if f.is_file() and "sockets" not in f.parts and f.suffix not in {".zip"}:
            try:
                if secret in f.read_bytes():
                    leaks.append(str(f))
            except OSError:
                pass
    assert not leaks, f"credentials found in: {sorted(set(leaks))}"
    print(f"\ncluster e2e timings (s): {timings}, total {time.time() - t0:.0f}")
