"""Ray Train glue, and the only module of ganaug that imports `ray.train`.

Driver side (`run_training`):
  1. `prepare_run` (no Ray): resolve workers / GPU / storage / name, check the data spec
     cheaply (`dataset_summary`), refuse to resume a run whose model or data config differs,
     write the resolved `config.yaml`. Every user error surfaces here, before a worker starts.
  2. a `TorchTrainer` (gloo on CPU, NCCL with --use-gpu) runs `train_loop_per_worker` on N
     workers; `FailureConfig(max_failures)` restarts the worker group after a crash.
  3. progress: each rank's `ray.train.report` reaches `_ProgressCallback.after_report` on the
     Train controller, which forwards one small record to a `_ProgressSink` actor; a driver
     thread drains it and prints one line per report. Ray's own worker/controller logs are not
     forwarded (`log_to_driver=False`), so the terminal shows only ganaug's lines.

Worker side (`train_loop_per_worker`):
  - every rank loads the dataset itself; the loop's IndexStream gives each rank a disjoint
    slice of every epoch, and wraps G and D in DDP (torch.distributed is set up by Train);
  - checkpoints go through Ray Train: rank 0 writes the checkpoint folder to a local temp dir
    and reports it with `checkpoint_dir_name=step-NNNNNNN`; Train uploads it in the background
    (CheckpointUploadMode.ASYNC) to `{run}/checkpoints/` (Train's experiment folder, so the
    layout stays the one readers know) and keeps `training.keep_checkpoints` of them (its
    CheckpointConfig is the only retention). Rank 0 blocks only for the local write;
  - resume: `ray.train.get_checkpoint()`, Train's record of the last checkpoint it finished
    uploading. So a crash (Train restarts the group), a killed driver (rerun with the same
    --name: Train reloads its snapshot from the run folder) and a finished run given more steps
    all continue from the same place. A run made before checkpoints went through Train has no
    such record: rank 0 then takes the newest whole step folder, and broadcasts its choice;
  - a spot preemption notice (`ray.train.get_preemption_info()`, asked at report steps, which
    are collectives anyway) makes that step a just-in-time checkpoint, once per notice;
  - only rank 0 writes files (metrics.jsonl, checkpoints, sample grids);
  - every rank calls `ray.train.report` at exactly the same steps (a checkpoint step folds
    its metrics into the checkpoint's report), as Train v2 requires;
  - training.max_minutes: at every report step rank 0 compares the run's training time
    (metrics.jsonl `seconds`, summed over resumes) with the budget and broadcasts its verdict,
    so every rank stops after the same step, which is reported and checkpointed like the last.

model.json records `native_size` [H, W]: the most common size of the first rows of data.spec
before any resize (the readers hand images over at their own size when no resolution is
given), so `ganaug generate --size native` can write the set at the data's own size.

Global batch = training.batch_size x workers: each optimiser step averages gradients over
all workers' batches (DDP), so N workers take steps N times as large in images. The learning
rates are NOT scaled automatically; keep them when adding workers for a GAN (Adam is fairly
insensitive to batch size; GANs are sensitive to lr), or scale by hand and say so.

Test-only fault injection: the point "train.after_step" of ganaug/testing/faults.py.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ganaug import environment, storage
from ganaug.config import RunConfig, config_from_dict
from ganaug.data.spec import absolute_spec
from ganaug.errors import UserError, first_line
from ganaug.raycluster import (
    FORWARDED_ENV,
    ensure_ray,
    fast_train_polling,
    require_shared_paths,
)
from ganaug.testing import faults
from ganaug.training import run_files

# Non-secret settings the workers need to reach the same storage as the driver (the same list a
# job's tasks get, raycluster.FORWARDED_ENV), and the tests' fault switches. Credentials are
# never put here: Train exports worker_runtime_env to its state API / dashboard. A local Ray
# inherits the driver's environment; a cluster has its own credentials.
_WORKER_ENV = (*FORWARDED_ENV, *faults.WORKER_ENV)


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

log = logging.getLogger(__name__)


class TrainingFailed(Exception):
    """Training stopped for good (worker errors beyond max_failures); one-line message."""


# =============================================================================== driver: plan

@dataclass
class RunPlan:
    cfg: RunConfig           # resolved: workers, use_gpu, storage root filled in
    name: str
    run_uri: str
    workers: int
    use_gpu: bool
    total_steps: int
    resume_uri: str | None   # newest complete checkpoint at start, if any
    resume_step: int
    dataset: dict            # dataset_summary of data.spec
    seconds_spent: float = 0.0  # training time of the run up to resume_step (max_minutes)
    native_size: tuple[int, int] | None = None  # [H, W] of data.spec before resizing

    @property
    def budget_spent(self) -> bool:
        budget = self.cfg.training.max_minutes
        return budget > 0 and self.seconds_spent >= 60.0 * budget

    @property
    def global_batch(self) -> int:
        return self.cfg.training.batch_size * self.workers


def _first_line(exc: BaseException) -> str:
    return first_line(exc, limit=200, with_type=True)


def _diff_sections(old: dict, new: dict, sections=("model", "data")) -> list[str]:
    """'model.width: 16 -> 32' for each key whose value changed (skip_bad does not count).

    A key the stored config lacks (written by an older ganaug) stands for its ABSENT_MEANS value."""
    from ganaug.config import ABSENT_MEANS

    out = []
    for sec in sections:
        a, b = old.get(sec) or {}, new.get(sec) or {}
        for k in sorted(set(a) | set(b)):
            if sec == "data" and k == "skip_bad":
                continue
            key = f"{sec}.{k}"
            va = a.get(k, ABSENT_MEANS.get(key))
            if va != b.get(k):
                shown = repr(va) if k in a else f"absent (= {va!r})" if key in ABSENT_MEANS else "absent"
                out.append(f"{key}: {shown} -> {b.get(k)!r}")
    return out


def _with_absolute_specs(config: dict) -> dict:
    """A stored config whose data specs may be relative (older runs): compared as absolute ones."""
    data = dict(config.get("data") or {})
    for key in ("spec", "source_spec"):
        if data.get(key):
            try:
                data[key] = absolute_spec(data[key])
            except UserError:
                pass  # an unparsable old spec differs from the new one anyway
    return {**config, "data": data}


def _check_spec(key: str, spec: str) -> dict:
    from ganaug.data import dataset_summary

    try:
        summary = dataset_summary(spec)
    except UserError as e:
        raise UserError(f"config key '{key}': {e}") from None
    if not summary.get("rows"):
        raise UserError(f"config key '{key}': {spec!r} selects no rows")
    return summary


NATIVE_SIZE_ROWS = 32


def native_size(spec: str, rows: int = NATIVE_SIZE_ROWS) -> tuple[int, int] | None:
    """The most common [H, W] of the spec's first `rows` images at their own size (a mixed-size
    folder's typical size; ties go to the first seen). None when the spec selects no rows."""
    from collections import Counter

    from ganaug.data import DatasetSpec, iter_dataset, parse_spec

    parsed = parse_spec(spec)
    start = parsed.start or 0
    stop = start + rows if parsed.stop is None else min(parsed.stop, start + rows)
    head = str(DatasetSpec(parsed.scheme, parsed.location, start, stop, parsed.classes))
    sizes = Counter(tuple(int(v) for v in part.images.shape[1:3])
                    for part in iter_dataset(head, batch_rows=1) if len(part))
    return sizes.most_common(1)[0][0] if sizes else None


def prepare_run(cfg: RunConfig, workers: int | None = None, use_gpu: bool | None = None,
                storage_root: str | None = None, name: str | None = None) -> RunPlan:
    """Everything that can fail because of the user's input, checked in the driver, no Ray."""
    from ganaug import checkpoint

    cfg = copy.deepcopy(cfg)
    tc = cfg.training
    if workers is not None:
        if workers < 1:
            raise UserError(f"--workers must be >= 1, got {workers}")
        tc.num_workers = int(workers)
    if use_gpu is not None:
        tc.use_gpu = bool(use_gpu)
    if storage_root:
        cfg.storage.root = str(storage_root)
    # Workers run in a Train-made working directory: a relative root must be made absolute
    # here (on several nodes it must also be shared storage, e.g. NFS).
    cfg.storage.root = storage.absolute(cfg.storage.root)
    cfg.validate()
    name = name or cfg.model.family
    if not _NAME_RE.match(name):
        raise UserError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (a folder and Ray run name)")

    # The data spec: parse + a cheap summary (row count, classes, first image); workers load it.
    summary = _check_spec("data.spec", cfg.data.spec)
    if cfg.data.source_spec:
        from ganaug.data.paired import is_paired_spec

        if is_paired_spec(cfg.data.spec):
            raise UserError(f"config key 'data.source_spec': {cfg.data.spec!r} is a paired dataset that "
                            "brings its own domain A; leave data.source_spec empty")
        _check_spec("data.source_spec", cfg.data.source_spec)
    try:
        native = native_size(cfg.data.spec)
    except UserError as e:
        raise UserError(f"config key 'data.spec': {e}") from None
    # Workers run in directories of their own: they get the specs with absolute paths.
    cfg.data.spec = summary["spec"] = absolute_spec(cfg.data.spec)
    if cfg.data.source_spec:
        cfg.data.source_spec = absolute_spec(cfg.data.source_spec)

    run_uri = storage.join(cfg.storage.root, name)
    resume_uri = checkpoint.latest_checkpoint(run_uri)
    resume_step = 0
    if resume_uri:
        meta = checkpoint.load_meta(resume_uri)
        resume_step = int(meta.get("step", 0))
        changed = _diff_sections(_with_absolute_specs(meta.get("config") or {}), cfg.to_dict())
        if changed:
            raise UserError(f"run {run_files.redact(run_uri)} exists with a different model/data config "
                            f"({'; '.join(changed[:3])}); use a new --name to start a fresh run")
    run_files.write_config(run_uri, cfg.to_yaml())  # also proves the storage is writable
    return RunPlan(cfg=cfg, name=name, run_uri=run_uri, workers=tc.num_workers, use_gpu=tc.use_gpu,
                   total_steps=tc.steps, resume_uri=resume_uri, resume_step=resume_step, dataset=summary,
                   seconds_spent=run_files.seconds_spent(run_uri, resume_step) if resume_uri else 0.0,
                   native_size=native)


# =============================================================================== driver: progress

def _progress_classes():
    """Defined lazily so importing this module never imports Ray."""
    import ray
    from ray.train import UserCallback

    @ray.remote(num_cpus=0)
    class _ProgressSink:
        def __init__(self):
            self.items: list[dict] = []

        def push(self, item: dict) -> None:
            self.items.append(item)

        def drain(self) -> list[dict]:
            items, self.items = self.items, []
            return items

    class _ProgressCallback(UserCallback):
        """Runs on the Train controller: forward each report (all ranks) to the sink."""

        def __init__(self, sink):
            self.sink = sink

        def after_report(self, run_context, metrics, checkpoint):
            self.sink.push.remote({"event": "report", "ranks": list(metrics)})

        def after_exception(self, run_context, worker_exceptions):
            errors = {int(r): _first_line(e) for r, e in (worker_exceptions or {}).items()}
            self.sink.push.remote({"event": "failure", "errors": errors})

    return _ProgressSink, _ProgressCallback


class _ReportWatcher:
    """Driver thread: drain the sink, print one line per report, remember what it saw."""

    def __init__(self, sink, plan: RunPlan, echo: Callable[[str], None] | None):
        self.sink, self.plan, self.echo = sink, plan, echo
        self.failures: list[dict] = []
        self.last_ranks: list[dict] = []
        self.in_sync = True
        self.nodes: set[str] = set()
        self.reports = 0
        self.checkpoint_seconds: list[float] = []   # rank 0's blocking time per checkpoint
        self.last_step = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ganaug-progress", daemon=True)

    def start(self) -> _ReportWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._drain()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._drain()

    def settle(self, step: int, timeout_s: float = 20.0) -> None:
        """Wait until the report of `step` has been seen. The controller pushes reports to the
        sink fire-and-forget, so the last ones can land after fit() returns (and a drain can
        time out on a loaded machine); the summary's hashes and counts need them."""
        deadline = time.monotonic() + timeout_s
        while self.last_step < step and time.monotonic() < deadline:
            time.sleep(0.2)
            self._drain()

    def _drain(self) -> None:
        import ray

        try:
            items = ray.get(self.sink.drain.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - progress must never break training
            return
        for item in items:
            self._handle(item)

    def _say(self, line: str) -> None:
        if self.echo is not None:
            self.echo(line)

    def _handle(self, item: dict) -> None:
        if item["event"] == "failure":
            self.failures.append(item["errors"])
            n = len(self.failures)
            errs = "; ".join(f"rank {r}: {e}" for r, e in sorted(item["errors"].items()))
            limit = self.plan.cfg.training.max_failures
            what = (f"restarting from the latest checkpoint (failure {n} of {limit} allowed)"
                    if n <= limit else "giving up (max_failures reached)")
            self._say(f"worker failure: {errs}; {what}")
            return
        ranks = item["ranks"]
        self.reports += 1
        self.last_ranks = ranks
        self.last_step = max([self.last_step] + [int(r.get("step") or 0) for r in ranks])
        hashes = {r.get("g_hash") for r in ranks} | {None}
        hashes_d = {r.get("d_hash") for r in ranks} | {None}
        if len(hashes) > 2 or len(hashes_d) > 2:
            self.in_sync = False
        self.nodes.update(r["node"] for r in ranks if r.get("node"))
        if ranks and ranks[0].get("checkpoint_s") is not None:
            self.checkpoint_seconds.append(float(ranks[0]["checkpoint_s"]))
        r0 = ranks[0] if ranks else {}
        if r0.get("resumed_from") is not None:
            self._say(f"resumed from step {r0['resumed_from']} ({r0.get('resume_uri', '')})")
        if "loss_d" in r0 or "loss_g" in r0:
            line = run_files.format_progress(r0, self.plan.total_steps, global_batch=self.plan.global_batch)
            if r0.get("checkpoint"):
                line += f"  ckpt {storage.basename(r0['checkpoint'])}"
                if r0.get("preemption_checkpoint"):
                    line += " (a node is being preempted: just-in-time checkpoint)"
            self._say(line)
        elif r0.get("checkpoint"):
            self._say(f"step {r0['step']}/{self.plan.total_steps}  checkpoint {r0['checkpoint']}")


# =============================================================================== driver: run

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


def summarize(plan: RunPlan, progress: _ReportWatcher | None = None, wall_seconds: float | None = None) -> dict:
    """The final JSON: where the run and its newest checkpoint are, and what it did."""
    from ganaug import checkpoint

    latest = checkpoint.latest_checkpoint(plan.run_uri)
    meta = checkpoint.load_meta(latest) if latest else {}
    lines = run_files.read_metrics(plan.run_uri)
    last = lines[-1] if lines else {}
    step = int(meta.get("step", 0))
    budget = plan.cfg.training.max_minutes
    seconds = float(last.get("seconds") or 0.0)
    budget_spent = budget > 0 and seconds >= 60.0 * budget
    out: dict[str, Any] = {
        "run": plan.run_uri,
        "name": plan.name,
        "checkpoint": latest,
        "step": step,
        "total_steps": plan.total_steps,
        "complete": step >= plan.total_steps,
        "max_minutes": budget,
        # Why training ended: all steps done, the budget spent, or neither (interrupted).
        "stopped_by": "steps" if step >= plan.total_steps else "max_minutes" if budget_spent else None,
        "images_seen": int(meta.get("images_seen", last.get("images_seen", 0))),
        "seconds": round(seconds, 3),
        "images_per_s": last.get("images_per_s"),
        "workers": plan.workers,
        "use_gpu": plan.use_gpu,
        "global_batch": plan.global_batch,
        "resumed_from": plan.resume_step,
        # What the GAN saw: a k-shot run proves here that it trained on k x classes rows.
        "data": {key: plan.dataset.get(key) for key in ("spec", "rows", "classes")},
        "metrics": run_files.metrics_uri(plan.run_uri),
        "config": run_files.config_uri(plan.run_uri),
        "samples": run_files.samples_uri(plan.run_uri, step) if latest else None,
    }
    if wall_seconds is not None:
        out["wall_seconds"] = round(wall_seconds, 3)
    if progress is not None:
        out["restarts"] = len(progress.failures)
        out["reports"] = progress.reports
        out["ranks_in_sync"] = progress.in_sync
        out["g_hashes"] = [r.get("g_hash") for r in progress.last_ranks]
        out["nodes"] = len(progress.nodes)
        if progress.checkpoint_seconds:
            out["checkpoint_block_s"] = round(sum(progress.checkpoint_seconds) / len(progress.checkpoint_seconds), 4)
    return run_files.redact_obj(out)


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


def _nothing_to_do(plan: RunPlan) -> str | None:
    """Why the run needs no workers (already at training.steps, or its budget spent), else None."""
    if plan.resume_step >= plan.total_steps:
        return (f"run {run_files.redact(plan.run_uri)} is already at step {plan.resume_step} "
                f"(training.steps={plan.total_steps}); nothing to do")
    if plan.budget_spent:
        return (f"run {run_files.redact(plan.run_uri)} has spent its budget at step {plan.resume_step} "
                f"({plan.seconds_spent / 60:.1f} of training.max_minutes={plan.cfg.training.max_minutes:g}); "
                "nothing to do (raise training.max_minutes to go on)")
    return None


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
            checkpoint_config=CheckpointConfig(num_to_keep=tc.keep_checkpoints),
            callbacks=[callback],
            worker_runtime_env={"env_vars": worker_env} if worker_env else None,
        ),
    )


def _start_line(plan: RunPlan) -> str:
    tc = plan.cfg.training
    start = f"resuming at step {plan.resume_step}" if plan.resume_uri else "starting fresh"
    budget = (f" or {tc.max_minutes:g} min of training ({plan.seconds_spent / 60:.1f} spent)"
              if tc.max_minutes > 0 else "")
    return (f"train {plan.name}: {plan.cfg.model.family} on {plan.cfg.data.spec} "
            f"({plan.dataset.get('rows')} rows), {plan.workers} worker(s) x batch {tc.batch_size} "
            f"= global batch {plan.global_batch}, {'GPU' if plan.use_gpu else 'CPU'}, "
            f"{plan.total_steps} steps{budget}, {start}; run {run_files.redact(plan.run_uri)}")


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


# =============================================================================== worker

def _params_hash(module) -> str:
    """A hash of a module's parameters (not buffers: BatchNorm stats are per rank by design)."""
    h = hashlib.blake2b(digest_size=8)
    for name, p in module.named_parameters():
        h.update(name.encode())
        h.update(p.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def _grid_png(trainer, meta: dict, inputs) -> bytes:
    """The checkpoint's fixed-seed sample grid, from a CPU copy of G_ema (the Sampler switches
    deterministic algorithms on for CUDA, which must not leak into training)."""
    from ganaug.sampling import Sampler, png_bytes

    G = copy.deepcopy(trainer.G_ema).to("cpu")
    sampler = Sampler(G, meta, device="cpu")
    grid = sampler.grid(per_class=8, seed=0, inputs=inputs)
    return png_bytes(grid, upscale=2)


def _translation_inputs(cfg: RunConfig, images, source_images):
    from ganaug.training.pairs import source_transform

    if source_images is not None:
        return source_images[:8]
    return source_transform(cfg.data.source_transform, images[:8])


def _load_resume_state(uri: str) -> dict:
    from ganaug import checkpoint

    meta = checkpoint.load_meta(uri)
    state = checkpoint.load_train_state(uri, meta)
    if not all(k in state for k in ("G", "D", "G_ema")):
        state["G"] = checkpoint.load_weights(uri, "generator", meta)
        state["D"] = checkpoint.load_weights(uri, "discriminator", meta)
        state["G_ema"] = checkpoint.load_weights(uri, "generator_ema", meta)
    return state


@dataclass
class _RankRun:
    """One rank's side of a run: what the loop's callbacks share (report, checkpoint, budget).

    Ray and torch are imported inside the methods: this class lives in the driver's module too,
    and importing that must not import Ray."""

    trainer: Any
    rank: int
    run_uri: str
    total: int
    meta_base: dict               # model.json fields common to every checkpoint of this run
    grid_inputs: Any              # a translation model's fixed inputs for the sample grid
    node: str
    resume_uri: str | None
    start_step: int
    metrics_log: Any = None       # rank 0 only: {run}/metrics.jsonl
    seconds0: float = 0.0         # training time before this fit (the run's, from metrics.jsonl)
    t_fit: float = 0.0
    first_report: bool = True
    pending: dict | None = None   # a checkpoint step's metrics, reported with its checkpoint
    stopping: bool = False        # the budget made this step the last one (budget_spent)
    jit: bool = False             # a preemption notice made this step a checkpoint step
    notice: tuple = ()            # the preempted nodes of the notice already checkpointed for

    @property
    def tc(self):
        return self.trainer.cfg.training

    def is_checkpoint_step(self, step: int) -> bool:
        return step % self.tc.checkpoint_every == 0 or step == self.total or self.stopping or self.jit

    def on_report(self, report: dict) -> None:
        report = dict(report)
        report["seconds"] = self.seconds0 + float(report.get("seconds", 0.0))
        if self.metrics_log is not None:
            self.metrics_log.append({k: v for k, v in report.items() if k != "d_real_sign"})
        if self.is_checkpoint_step(self.trainer.step):
            self.pending = report  # reported together with the checkpoint, right after
        else:
            self.send(report, None)

    def on_checkpoint(self, step: int) -> None:
        t0 = time.perf_counter()
        folder = self.save_checkpoint(step) if self.rank == 0 else None
        metrics = self.pending or {"step": step, "images_seen": self.trainer.images_seen}
        if folder is not None:  # how long rank 0 held training up to write it (Train uploads it later)
            metrics = dict(metrics, checkpoint_s=round(time.perf_counter() - t0, 4))
        if self.jit:
            metrics = dict(metrics, preemption_checkpoint=True)
        self.send(metrics, folder)
        self.pending, self.jit = None, False

    def save_checkpoint(self, step: int) -> str:
        """Rank 0: the checkpoint folder in a local temp dir (Train uploads it), and its sample
        grid under {run}/samples/. Returns the folder."""
        from ganaug import checkpoint

        trainer = self.trainer
        meta = dict(self.meta_base, step=step, images_seen=trainer.images_seen)
        if self.metrics_log is not None:
            self.metrics_log.flush()  # the reports up to this checkpoint, before it is published
        png = _grid_png(trainer, meta, self.grid_inputs)
        weights = trainer.weights()
        folder = tempfile.mkdtemp(prefix=f"ganaug-{checkpoint.step_dir_name(step)}-")
        checkpoint.save_checkpoint(
            folder, meta=meta, generator_ema=weights["generator_ema"], generator=weights["generator"],
            discriminator=weights["discriminator"], train_state=trainer.state_dict(include_weights=False),
            samples_png=png)
        storage.write_bytes(run_files.samples_uri(self.run_uri, step), png)
        return folder

    def after_step(self, step: int) -> bool:
        """fit's should_stop: at report steps, heed a preemption notice, then the time budget."""
        if step % self.tc.report_every != 0:
            return False
        self.jit = self.preemption_notice()
        return self.budget_spent(step)

    def preemption_notice(self) -> bool:
        """True once per notice that a node of this run is about to be reclaimed (every rank asks:
        Train broadcasts rank 0's view, so all ranks agree)."""
        import ray.train

        info = ray.train.get_preemption_info()
        if info is None or tuple(info.preempted_node_ids) == self.notice:
            return False
        self.notice = tuple(info.preempted_node_ids)
        return True

    def send(self, metrics: dict, folder: str | None) -> None:
        """ray.train.report for this rank: every rank at the same steps (Train v2); rank 0 with the metrics."""
        import ray.train

        from ganaug.losses import unwrap

        trainer = self.trainer
        own = {"step": trainer.step, "rank": self.rank, "node": self.node}
        if self.is_checkpoint_step(trainer.step):
            # The DDP sync check copies every parameter to the CPU: only at checkpoints (and
            # the last step), not at every report.
            own.update(g_hash=_params_hash(unwrap(trainer.G)), d_hash=_params_hash(unwrap(trainer.D)))
        if self.rank != 0:
            ray.train.report(own)
            return
        out = dict(metrics)
        out.update(own)
        if self.first_report and self.resume_uri:
            out.update(resumed_from=self.start_step, resume_uri=self.resume_uri)
        self.first_report = False
        if folder is None:
            ray.train.report(out)
            return
        from ray.train import Checkpoint, CheckpointUploadMode

        from ganaug import checkpoint

        name = checkpoint.step_dir_name(trainer.step)
        out["checkpoint"] = storage.join(checkpoint.checkpoints_root(self.run_uri), name)
        # Train uploads the folder to {run}/checkpoints/{name} while training goes on, records it
        # once whole (get_checkpoint() then returns it) and drops the oldest beyond num_to_keep.
        ray.train.report(out, checkpoint=Checkpoint.from_directory(folder), checkpoint_dir_name=name,
                         checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
                         delete_local_checkpoint_after_upload=True)

    def budget_spent(self, step: int) -> bool:
        """Rank 0's clock decides (its seconds0 is the run's), broadcast so all ranks agree.
        Asked at report steps only: those are collectives already, so the ranks are there."""
        budget_s = 60.0 * self.tc.max_minutes
        if budget_s <= 0 or step % self.tc.report_every != 0:
            return False
        spent = self.rank == 0 and self.seconds0 + (time.perf_counter() - self.t_fit) >= budget_s
        if self.trainer.distributed:
            import torch
            import torch.distributed as dist

            flag = torch.tensor([1.0 if spent else 0.0], device=self.trainer.device)
            dist.broadcast(flag, src=0)
            spent = bool(flag.item() > 0.5)
        self.stopping = spent
        return spent


def train_loop_per_worker(config: dict) -> None:
    """One rank of a run. `config`: {"config": resolved RunConfig dict, "run_uri", "name"}."""
    import ray.train

    from ganaug.training.loop import GANTrainer

    # 1. Set up this rank: the driver's working directory, torch threads, the device.
    _enter_driver_cwd(config.get("cwd"))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = config_from_dict(config["config"])
    device = _worker_device(cfg, rank, ctx.get_local_world_size())
    # 2. Load the data (every rank its own copy) and build the trainer.
    data, source = _load_worker_data(cfg)
    trainer = GANTrainer(cfg, data.images, data.labels, data.class_names, device=device, rank=rank,
                         world_size=world, source_images=source)
    # 3. Resume from the newest complete checkpoint, the same one on every rank.
    resume_uri = _resume(trainer, config["run_uri"], rank)
    # 4. Train: the callbacks report, checkpoint and watch the time budget.
    run = _rank_run(config, trainer, rank, resume_uri, data.images, source)
    if faults.armed("train.after_step"):
        _inject_step_faults(trainer, rank, world)
    run.t_fit = time.perf_counter()
    if run.start_step >= run.total:
        return  # nothing left (the driver normally catches this before starting workers)
    tc = cfg.training
    trainer.fit(run.total, report_every=tc.report_every, checkpoint_every=tc.checkpoint_every,
                on_report=run.on_report, on_checkpoint=run.on_checkpoint, should_stop=run.after_step,
                checkpoint_now=lambda step: run.jit)


def _enter_driver_cwd(cwd: str | None) -> None:
    """Train starts each worker in its own trial directory; relative data paths in the config
    (mnist:../shared/data/mnist) mean the driver's directory, as they do for the driver's own
    checks. Under `ray job submit --working-dir` that is the job's unpacked copy."""
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)


def _worker_device(cfg: RunConfig, rank: int, local_world: int):
    import ray.train.torch
    import torch

    tc = cfg.training
    threads = tc.threads_per_worker or max(1, (os.cpu_count() or 1) // max(1, local_world))
    torch.set_num_threads(threads)
    if tc.use_gpu and not torch.cuda.is_available():
        # Ray gave this worker a GPU, but torch cannot use it (a CPU-only wheel, a driver
        # mismatch): training on the CPU instead would be silent and many times slower.
        raise UserError(f"--use-gpu: rank {rank} on {socket.gethostname()} has no usable CUDA device (torch "
                        f"{torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); install a CUDA "
                        "build of torch on the GPU nodes, or train without --use-gpu")
    # (cuDNN autotuning is the loop's to set: training.cudnn_benchmark.)
    return ray.train.torch.get_device() if tc.use_gpu else torch.device("cpu")


def _load_worker_data(cfg: RunConfig) -> tuple[Any, Any]:
    """(the dataset, the translation source images or None)."""
    from ganaug.data import load_dataset
    from ganaug.data.paired import is_paired_spec, load_pairs

    d = cfg.data
    source = None
    if is_paired_spec(d.spec):  # real pairs: A is the spec's own other side, row-aligned
        a_side, data = load_pairs(d.spec, d.resolution, d.channels, d.skip_bad)
        source = a_side.images
    else:
        data = load_dataset(d.spec, d.resolution, d.channels, d.skip_bad)
    if d.source_spec:
        source = load_dataset(d.source_spec, d.resolution, d.channels, d.skip_bad).images
    return data, source


def _resume(trainer, run_uri: str, rank: int) -> str | None:
    """Train's last checkpoint (or, for a run made before checkpoints went through Train, the
    newest whole step folder); rank 0 decides, so every rank loads the same one. Returns its URI."""
    import ray.train
    from ray.train.collective import broadcast_from_rank_zero

    from ganaug import checkpoint

    resume_uri = None
    if rank == 0:
        recorded = ray.train.get_checkpoint()
        resume_uri = _uri_of(recorded) if recorded is not None else checkpoint.latest_checkpoint(run_uri)
    resume_uri = broadcast_from_rank_zero(resume_uri)
    if resume_uri:
        trainer.load_state_dict(_load_resume_state(resume_uri))
    return resume_uri


def _uri_of(ray_checkpoint) -> str:
    """A ray.train.Checkpoint's location as a ganaug storage URI."""
    import pyarrow.fs as pafs

    if isinstance(ray_checkpoint.filesystem, pafs.S3FileSystem):
        return "s3://" + ray_checkpoint.path.lstrip("/")
    return ray_checkpoint.path


def _rank_run(config: dict, trainer, rank: int, resume_uri: str | None, images, source) -> _RankRun:
    """The callbacks' state: metrics.jsonl cut back to the resumed step (rank 0), the model.json base."""
    import ray

    cfg = trainer.cfg
    run = _RankRun(trainer=trainer, rank=rank, run_uri=config["run_uri"], total=cfg.training.steps,
                   meta_base=_meta_base(config, trainer), grid_inputs=None, resume_uri=resume_uri,
                   start_step=trainer.step,
                   node=f"{socket.gethostname()}:{ray.get_runtime_context().get_node_id()}")
    if run.meta_base["kind"] == "translation":
        run.grid_inputs = _translation_inputs(cfg, images, source)
    if rank == 0:
        run.metrics_log = run_files.MetricsLog(run.run_uri)
        run.metrics_log.resume(run.start_step)  # drop lines after the checkpoint we resume from
        if run.metrics_log.last:
            run.seconds0 = float(run.metrics_log.last.get("seconds") or 0.0)
    return run


def _meta_base(config: dict, trainer) -> dict:
    cfg = trainer.cfg
    meta = trainer.model_meta()
    meta.update(config=cfg.to_dict(), config_digest=cfg.digest(), run=config.get("name"),
                environment=environment.current(trainer.device.type))  # where these weights were trained
    if config.get("native_size"):
        meta["native_size"] = [int(v) for v in config["native_size"]]
    return meta


def _inject_step_faults(trainer, rank: int, world: int) -> None:
    """Tests only: wrap train_step with the fault seam's "train.after_step" point."""
    plain_step = trainer.train_step

    def step_with_fault():
        out = plain_step()
        faults.maybe_crash("train.after_step", step=trainer.step, rank=rank, world_size=world)
        return out

    trainer.train_step = step_with_fault
