"""Connect to Ray once: the cluster at RAY_ADDRESS when set, else a local Ray.

Shared by the jobs (generate, translate, train). An already-initialised Ray (a test
fixture, a `ray job submit` entrypoint that called ray.init itself) is reused as is.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable

from ganaug.errors import UserError, find_user_error

# Environment that Ray workers need to reach the same storage as the driver. A local Ray
# inherits the driver's environment anyway; a remote cluster (RAY_ADDRESS) does not, so the
# non-secret endpoint settings travel in the runtime_env. Credentials are NOT shipped:
# a cluster gets them from its own instance roles / secrets.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
                 "AWS_EC2_METADATA_DISABLED", "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS")


def _job_env_vars() -> dict:
    """env_vars of the runtime_env a `ray job submit` entrypoint runs under ({} otherwise)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    try:
        return dict((json.loads(raw).get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError, TypeError):
        return {}


def ensure_ray(**init_kwargs):
    """Return the `ray` module, initialised.

    - `ray.is_initialized()`: reuse it (init_kwargs are ignored).
    - `RAY_ADDRESS` set: connect to that cluster (`RAY_ADDRESS=auto`: the one running on
      this machine, e.g. after `ray start --head`).
    - otherwise: start a new local Ray sized to this machine. (Plain `ray.init()` would
      silently join any cluster someone else started here.)
    """
    import ray

    if ray.is_initialized():
        return ray
    # Parquet reads start 32 footer-reader actors by default; on small machines they
    # starve everything else (ARCHITECTURE.md §5).
    if (os.cpu_count() or 1) <= 8:
        os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
    # Under `ray job submit` the job's own runtime_env already applies to every worker, and
    # Ray refuses a ray.init runtime_env that sets any of the same keys: forward only the rest.
    job_env = _job_env_vars()
    env_vars = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k) and k not in job_env}
    kwargs = dict(init_kwargs)
    if env_vars and "runtime_env" not in kwargs:
        kwargs["runtime_env"] = {"env_vars": env_vars}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
    else:
        kwargs.setdefault("address", "local")
        ray.init(**kwargs)
    return ray


def cluster_cpus() -> float:
    """Logical CPUs of the connected cluster (ensure_ray() first)."""
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def require_shared_paths(paths: dict[str, str], shared_fs: bool) -> None:
    """Refuse plain paths on a cluster of several nodes: each node has its own disk, so files
    written by a worker on one are missing on the others and on the driver
    (ARCHITECTURE.md §5). `paths`: {flag: URI}; --shared-fs vouches for a mounted shared filesystem."""
    from ganaug import storage

    local = [(flag, uri) for flag, uri in paths.items() if uri and not storage.is_s3(uri)]
    if shared_fs or not local:
        return
    nodes = alive_nodes()
    if nodes > 1:
        flag, uri = local[0]
        raise UserError(f"{flag} {uri} is a path on this machine, but the Ray cluster has {nodes} nodes, each "
                        "with its own disk; use s3://bucket/prefix, or pass --shared-fs if it is a shared "
                        "filesystem mounted at the same path on every node")


def probe_environment(use_gpu: bool, echo: Callable[[str], None] | None = None,
                      every_s: float = 15.0, timeout_s: float | None = None,
                      resources: dict[str, float] | None = None) -> dict:
    """The environment fingerprint (ganaug.environment) where the job's actors will run: a task
    with one actor's device (and its custom `resources`, e.g. {"gen_node": 1}: the node type the
    actors target), so on a cluster that scales from zero it also waits for that device or node,
    saying so every `every_s` seconds with the resources it waits for. No timeout by default:
    an autoscaler may take minutes to start a GPU node."""
    import ray

    from ganaug import environment

    options: dict = {"num_cpus": 0.01, "num_gpus": 1 if use_gpu else 0}
    if resources:
        options["resources"] = dict(resources)
    # max_calls=1: the probe imports torch; its worker then exits instead of joining the pool
    # that runs the job's light tasks (e.g. generation's write tasks) with torch still loaded.
    probe = ray.remote(max_calls=1)(environment.current).options(**options)
    ref = probe.remote("cuda" if use_gpu else "cpu")
    t0 = time.time()
    while True:
        ready, _ = ray.wait([ref], timeout=every_s)
        if ready:
            return ray.get(ref)
        waited = time.time() - t0
        if timeout_s is not None and waited >= timeout_s:
            ray.cancel(ref)  # a pending GPU task would otherwise still claim a GPU that turns up later
            custom = "".join(f" with {k} {v:g}" for k, v in sorted((resources or {}).items()))
            raise UserError(f"no {'GPU' if use_gpu else 'CPU'}{custom} became available within {timeout_s:g} s")
        if echo is not None:
            need = "1 GPU" if use_gpu else "a CPU"
            total = ray.cluster_resources()
            have = total.get("GPU" if use_gpu else "CPU", 0)
            custom = "".join(f"; {k} {v:g} per actor, in the cluster now: {total.get(k, 0):g}"
                             for k, v in sorted((resources or {}).items()))
            echo(f"waiting for {need} ({'GPUs' if use_gpu else 'CPUs'} in the cluster now: {have:g}{custom}; "
                 f"{waited:.0f} s so far); an autoscaling cluster adds a node, "
                 "a fixed cluster without one never will")


@contextlib.contextmanager
def ordered_data_job(error_cls: type[UserError]):
    """Run one Ray Data job in the block: no Ray progress bars, rows in input order.

    A UserError raised inside a task or actor comes out as `error_cls` with that error's first
    line (not Ray's wrapper and traceback). The DataContext settings are restored on exit.
    """
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.execution_options.preserve_order)
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True
    try:
        yield
    except Exception as e:
        ue = find_user_error(e)
        if ue is not None:
            raise error_cls(str(ue).strip().splitlines()[0]) from None
        raise
    finally:
        ctx.enable_progress_bars, ctx.execution_options.preserve_order = saved


# How often the Train controller polls workers for reports. Ray's default is 2 s, and a
# worker blocks in ray.train.report until its previous report was collected, so this bounds
# the report rate; a report not yet collected when a worker dies is lost with it (its
# checkpoint too). 0.5 s keeps short runs fast and costs the controller little.
TRAIN_POLL_INTERVAL_S = "0.5"


def fast_train_polling() -> None:
    """Before a TrainController starts: poll workers every TRAIN_POLL_INTERVAL_S (a user's own
    RAY_TRAIN_HEALTH_CHECK_INTERVAL_S wins)."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_POLL_INTERVAL_S)


def actor_cpu_share(cpus: float, actors: int, floor: float = 0.01) -> float:
    """CPUs each actor of a pool asks for, so that the pool never holds every CPU: Ray Data's
    own read/write tasks must always find one (ARCHITECTURE.md §5: a pool holding every CPU
    starves them and the job hangs). At most 1 CPU each; torch runs one thread per actor
    whatever this logical share is."""
    budget = max(cpus - 1.0, cpus / 2)
    return round(max(floor, min(1.0, budget / max(1, actors))), 3)
