"""`run_training`: a GAN run on Ray Train, as numbered steps (the driver side).

  1. plan the run without Ray (`training/plan.py`): every user error surfaces before a worker;
  2. connect to Ray and size the workers: CPU or one whole GPU each, plus
     `training.resources_per_worker`; a missing resource is named ("waiting for ...");
  3. a `TorchTrainer` (gloo on CPU, NCCL with --use-gpu) runs `train_loop_per_worker`
     (`training/rank.py`) on N workers; `FailureConfig(max_failures)` restarts the group after a
     crash or a lost node, and Train's experiment folder is `{run}/checkpoints`, so the
     checkpoints it uploads land where every reader looks;
  4. progress lines and the final summary (`training/progress.py`).

This module, `rank.py` and `progress.py` are the only ones of ganaug that import `ray.train`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from ganaug import storage
from ganaug.config import RunConfig
from ganaug.raycluster import (
    FORWARDED_ENV,
    ensure_ray,
    fast_train_polling,
    require_shared_paths,
)
from ganaug.testing import faults
from ganaug.training import run_files
from ganaug.training.plan import (
    RunPlan,
    TrainingFailed,
    _first_line,
    _nothing_to_do,
    prepare_run,
)
from ganaug.training.progress import (
    _progress_classes,
    _ReportWatcher,
    _start_line,
    summarize,
)
from ganaug.training.rank import train_loop_per_worker

__all__ = ["RunPlan", "TrainingFailed", "prepare_run", "run_training", "summarize"]


# Non-secret settings the workers need to reach the same storage as the driver (the same list a
# job's tasks get, raycluster.FORWARDED_ENV), and the tests' fault switches. Credentials are
# never put here: Train exports worker_runtime_env to its state API / dashboard. A local Ray
# inherits the driver's environment; a cluster has its own credentials.
_WORKER_ENV = (*FORWARDED_ENV, *faults.WORKER_ENV)


log = logging.getLogger(__name__)


def _storage_for_ray(run_uri: str) -> tuple[str, Any]:
    """(storage_path, storage_filesystem): Train's experiment folder is {run}/checkpoints, so the
    step folders it uploads land where every reader looks for them."""
    fs, path = storage.resolve(run_uri)
    return path, (fs if storage.is_s3(run_uri) else None)


def _quiet_ray_loggers() -> None:
    for name in ("ray.train", "ray.train.v2", "ray.tune", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def _no_raylet_echo():
    """While fit() runs, don't echo the raylet's multi-line "A worker died..." notices onto
    the driver's stdout (log_to_driver=False does not cover them): the progress thread
    prints one line per worker failure instead. Ray has no public switch for this; the
    module flag below is what ray.util.rpdb uses, and if it ever goes away this is a no-op.
    """
    import ray._private.worker as ray_worker

    if not hasattr(ray_worker, "_worker_logs_enabled"):
        yield
        return
    before = ray_worker._worker_logs_enabled
    ray_worker._worker_logs_enabled = False
    try:
        yield
    finally:
        ray_worker._worker_logs_enabled = before


def run_training(cfg: RunConfig, workers: int | None = None, use_gpu: bool | None = None,
                 storage_root: str | None = None, name: str | None = None, *,
                 echo: Callable[[str], None] | None = print, plan: RunPlan | None = None,
                 shared_fs: bool = False) -> dict:
    """Train `cfg` on Ray Train and return the summary dict (the CLI's last JSON line).

    Connects to RAY_ADDRESS when set, else starts a local Ray (an initialised Ray is reused).
    Rerunning with the same storage + name resumes from the newest complete checkpoint; a
    new name starts fresh. Raises UserError for bad input, TrainingFailed when workers keep
    failing beyond training.max_failures.
    """
    t0 = time.perf_counter()
    # 1. Check the input and plan the run (no Ray); a finished run or a spent budget stops here.
    plan = plan or prepare_run(cfg, workers, use_gpu, storage_root, name)
    done = _nothing_to_do(plan)
    if done is not None:
        if echo:
            echo(done)
        return summarize(plan, None, time.perf_counter() - t0)
    # 2. Connect to Ray and size the workers.
    ray = _connect_ray(plan, shared_fs)
    per_worker = _per_worker_resources(ray.cluster_resources(), plan, echo)
    # 3. Run the workers, one progress line per report.
    sink_cls, callback_cls = _progress_classes()
    sink = _on_this_node(ray, sink_cls).remote()
    trainer = _torch_trainer(plan, per_worker, callback_cls(sink))
    if echo:
        echo(_start_line(plan))
    progress = _fit(ray, trainer, sink, plan, echo)
    # 4. The summary.
    return summarize(plan, progress, time.perf_counter() - t0)


def _connect_ray(plan: RunPlan, shared_fs: bool):

    fast_train_polling()
    ray = ensure_ray(log_to_driver=False, logging_level=logging.WARNING)
    # Rank 0 writes checkpoints wherever it runs; the driver and resume read them back.
    require_shared_paths({"--storage": plan.cfg.storage.root}, shared_fs)
    _quiet_ray_loggers()
    return ray


def _per_worker_resources(resources: dict, plan: RunPlan, echo: Callable[[str], None] | None) -> dict:
    """CPU/GPU per worker, plus training.resources_per_worker (custom resources of a node type)."""
    extra = dict(plan.cfg.training.resources_per_worker)
    for name, amount in extra.items():
        if resources.get(name, 0.0) < amount * plan.workers and echo:
            echo(f"waiting for {amount * plan.workers:g} {name}: the cluster has {resources.get(name, 0.0):g} now "
                 "(an autoscaler may add nodes)")
    return {**_cpu_gpu_per_worker(resources, plan, echo), **extra}


def _cpu_gpu_per_worker(resources: dict, plan: RunPlan, echo: Callable[[str], None] | None) -> dict:
    if plan.use_gpu:
        if resources.get("GPU", 0) < plan.workers and echo:
            echo(f"waiting for {plan.workers} GPU(s): the cluster has {int(resources.get('GPU', 0))} now "
                 "(an autoscaler may add nodes)")
        return {"CPU": 1.0, "GPU": 1.0}
    # A local Ray smaller than the worker count (a laptop running --workers 4 on 2 cores)
    # gives each worker a fair share; a cluster (RAY_ADDRESS) gets 1 CPU per worker, so
    # an autoscaler adds nodes instead of packing every worker onto the head. Torch
    # threads are set separately (threads_per_worker).
    cpus = float(resources.get("CPU", 0.0))
    if not os.environ.get("RAY_ADDRESS"):
        return {"CPU": max(0.01, min(1.0, cpus / plan.workers))}
    if cpus < plan.workers and echo:
        echo(f"waiting for {plan.workers} CPU(s): the cluster has {cpus:g} now (an autoscaler may add nodes)")
    return {"CPU": 1.0}


def _on_this_node(ray, actor_cls):
    """The actor pinned to the driver's node: it must outlive any worker node that is lost."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return actor_cls.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False))


def _torch_trainer(plan: RunPlan, per_worker: dict, callback):
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchTrainer

    from ganaug.checkpoint import CHECKPOINTS_DIR

    tc = plan.cfg.training
    storage_path, storage_fs = _storage_for_ray(plan.run_uri)
    worker_env = {k: os.environ[k] for k in _WORKER_ENV if os.environ.get(k)}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": plan.cfg.to_dict(), "run_uri": plan.run_uri, "name": plan.name,
                           "cwd": os.getcwd(),
                           "native_size": list(plan.native_size) if plan.native_size else None},
        scaling_config=ScalingConfig(num_workers=plan.workers, use_gpu=plan.use_gpu,
                                     resources_per_worker=per_worker),
        run_config=RayRunConfig(
            name=CHECKPOINTS_DIR,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            # A preempted node is not a failure: Train retries it without counting max_failures.
            failure_config=FailureConfig(max_failures=tc.max_failures),
            # With training.select_by, Train keeps the best checkpoints by quality (-KID), and
            # always the latest (resume); else the newest.
            checkpoint_config=CheckpointConfig(
                num_to_keep=tc.keep_checkpoints,
                checkpoint_score_attribute="quality" if tc.select_by != "none" else None,
                checkpoint_score_order="max"),
            callbacks=[callback],
            worker_runtime_env={"env_vars": worker_env} if worker_env else None,
        ),
    )


def _fit(ray, trainer, sink, plan: RunPlan, echo: Callable[[str], None] | None) -> _ReportWatcher:
    """trainer.fit() with the progress thread draining `sink`; TrainingFailed once workers keep failing."""
    progress = _ReportWatcher(sink, plan, echo).start()
    try:
        with _no_raylet_echo():
            trainer.fit()
        from ganaug import checkpoint

        latest = checkpoint.latest_checkpoint(plan.run_uri)
        if latest:
            progress.settle(int(checkpoint.load_meta(latest).get("step", 0)))
    except Exception as e:  # Train's TrainingFailedError and friends
        progress.stop()
        from ray.train import TrainingFailedError

        if isinstance(e, TrainingFailedError):
            errors = progress.failures[-1] if progress.failures else {}
            detail = "; ".join(f"rank {r}: {m}" for r, m in sorted(errors.items())) or _first_line(e)
            raise TrainingFailed(f"training failed after {len(progress.failures)} worker failure(s) "
                                 f"(max_failures={plan.cfg.training.max_failures}): "
                                 f"{run_files.redact(detail)}") from None
        raise
    finally:
        progress.stop()
        with contextlib.suppress(Exception):
            ray.kill(sink)  # the sink is tiny; if it is already gone, fine
    return progress
