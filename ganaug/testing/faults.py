"""The fault-injection seam used by the tests: the one place production code may die on purpose.

Production modules call ``maybe_crash(point, ...)`` at a few named points; it does nothing
unless the point's environment variables are set (the tests set them, in the driver or in the
workers' environment), and then ends the process with ``os._exit`` (no cleanup, no exception
handlers: what a killed process or a lost node looks like).

Points:

``train.after_step`` (ganaug/training/worker.py, every rank, right after each optimiser step)
    ``GANAUG_TEST_CRASH_AT_STEP=N``   the crashing rank exits with status 1 right after step N
    ``GANAUG_TEST_CRASH_RANK=r``      which rank (default: 1, or 0 with a single worker)
    ``GANAUG_TEST_CRASH_MARKER=path`` crash only while this local file does not exist (it is
                                      created just before the crash, so it crashes once)
    ``GANAUG_TEST_PAUSE_AT_STEP=N`` and ``GANAUG_TEST_PAUSE_GATE=path``: every rank, right after
                                      step N, writes its Ray node id to ``path.rank{r}`` and waits
                                      (at most 10 minutes) until ``path`` exists: the test then
                                      knows where each rank runs and acts while they hold still

``generate.after_shard`` (ganaug/generation/run.py, the driver, after each finished shard)
    ``GANAUG_TEST_DIE_AFTER_SHARDS=k`` the driver exits with status 3 once k shards are made
"""

from __future__ import annotations

import os
import sys

CRASH_AT_STEP_ENV = "GANAUG_TEST_CRASH_AT_STEP"
CRASH_RANK_ENV = "GANAUG_TEST_CRASH_RANK"
CRASH_MARKER_ENV = "GANAUG_TEST_CRASH_MARKER"
DIE_AFTER_ENV = "GANAUG_TEST_DIE_AFTER_SHARDS"
PAUSE_AT_STEP_ENV = "GANAUG_TEST_PAUSE_AT_STEP"
PAUSE_GATE_ENV = "GANAUG_TEST_PAUSE_GATE"

# Workers do not inherit a cluster driver's environment: these travel in their runtime env.
WORKER_ENV = (CRASH_AT_STEP_ENV, CRASH_RANK_ENV, CRASH_MARKER_ENV, PAUSE_AT_STEP_ENV, PAUSE_GATE_ENV)


def armed(point: str) -> bool:
    """Whether `point` can fire at all (lets a caller skip wrapping a hot path)."""
    if point == "train.after_step":
        return bool(os.environ.get(CRASH_AT_STEP_ENV) or os.environ.get(PAUSE_AT_STEP_ENV))
    if point == "generate.after_shard":
        return bool(int(os.environ.get(DIE_AFTER_ENV, "0") or 0))
    raise ValueError(f"unknown fault point {point!r}")


def maybe_crash(point: str, *, step: int = 0, rank: int = 0, world_size: int = 1, shards: int = 0) -> None:
    """End the process here if the tests asked for it at `point` (see the module docstring).

    `step`, `rank`, `world_size`: where training is (train.after_step); `shards`: how many
    shards the driver has made so far (generate.after_shard)."""
    if point == "train.after_step":
        _train_after_step(step, rank, world_size)
    elif point == "generate.after_shard":
        _generate_after_shard(shards)
    else:
        raise ValueError(f"unknown fault point {point!r}")


def _train_after_step(step: int, rank: int, world_size: int) -> None:
    _pause_after_step(step, rank)
    at = os.environ.get(CRASH_AT_STEP_ENV)
    if not at or int(at) != step:
        return
    which = int(os.environ.get(CRASH_RANK_ENV, "1" if world_size > 1 else "0"))
    if rank != which:
        return
    marker = os.environ.get(CRASH_MARKER_ENV)
    if marker:
        if os.path.exists(marker):
            return
        with open(marker, "w") as f:
            f.write(f"crashed rank {rank} at step {step}\n")
    os._exit(1)


def _pause_after_step(step: int, rank: int) -> None:
    at, gate = os.environ.get(PAUSE_AT_STEP_ENV), os.environ.get(PAUSE_GATE_ENV)
    if not at or not gate or int(at) != step:
        return
    import time

    import ray

    with open(f"{gate}.rank{rank}", "w") as f:
        f.write(ray.get_runtime_context().get_node_id())
    deadline = time.monotonic() + 600
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.1)


def _generate_after_shard(made: int) -> None:
    die_after = int(os.environ.get(DIE_AFTER_ENV, "0") or 0)
    if die_after and made >= die_after:
        sys.stderr.flush()  # the progress lines so far reach the test
        os._exit(3)
