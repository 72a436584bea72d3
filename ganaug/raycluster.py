"""Connect to Ray once: the cluster at RAY_ADDRESS when set, else a local Ray.

Shared by the jobs (generate, translate, train). An already-initialised Ray (a test
fixture, a `ray job submit` entrypoint that called ray.init itself) is reused as is.
"""

from __future__ import annotations

import contextlib
import json
import os

from ganaug.errors import UserError, find_user_error

# Environment that Ray workers need to reach the same storage as the driver. A local Ray
# inherits the driver's environment anyway; a remote cluster (RAY_ADDRESS) does not, so the
# non-secret endpoint settings travel in the runtime_env. Credentials are NOT shipped:
# a cluster gets them from its own instance roles / secrets.
_FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
                  "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS")


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
    env_vars = {k: os.environ[k] for k in _FORWARDED_ENV if os.environ.get(k) and k not in job_env}
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
