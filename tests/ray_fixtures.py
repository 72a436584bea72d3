"""One local Ray for the whole test session (starting Ray costs ~5 s; ARCHITECTURE.md §5)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_session(s3):
    """A local Ray with 4 logical CPUs, shared by every Ray-using test.

    It depends on `s3` so the moto endpoint's AWS variables are in the environment before
    Ray starts, and every Ray worker inherits them.
    """
    import ray

    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if ray.is_initialized():
        ray.shutdown()
    # Loopback only: left alone, Ray binds its GCS, raylet and workers to the machine's address.
    ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=4, include_dashboard=False,
             log_to_driver=False,
             runtime_env={"env_vars": {k: v for k, v in os.environ.items()
                                       if k.startswith(("AWS_", "GANAUG_", "RAY_DATA_"))}})
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()
