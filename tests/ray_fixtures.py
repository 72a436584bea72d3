"""One local Ray for the whole test session (starting Ray costs ~5 s; DESIGN §3)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """A local Ray with 4 logical CPUs, shared by every Ray-using test.

    Depends on nothing else so it can start early; tests needing S3 also request `s3`,
    whose environment variables Ray workers inherit only if set before this fixture, so
    S3-using tests should request `s3` *before* `ray_session` in their signature.
    """
    import ray

    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {k: v for k, v in os.environ.items()
                                       if k.startswith(("AWS_", "GANAUG_", "RAY_DATA_"))}})
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()
