"""The driver's view of a running fit: one progress line per report, and the final summary.

Each rank's `ray.train.report` reaches `_ProgressCallback.after_report` on the Train
controller, which forwards one small record to a `_ProgressSink` actor (pinned to the driver's
node); a driver thread drains it and prints one line per report. Ray's own worker/controller
logs are not forwarded (`log_to_driver=False`), so the terminal shows only ganaug's lines.
Ray is imported inside functions: importing this module never imports Ray.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ganaug import storage
from ganaug.training import run_files
from ganaug.training.plan import RunPlan, _first_line


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
    if plan.cfg.data.holdout > 0:  # these rows were held back from the GAN (the judge's reference)
        out["data"]["holdout"] = plan.cfg.data.holdout
    if plan.cfg.training.select_by != "none":
        from ganaug import checkpoint

        out["best"] = checkpoint.read_best(plan.run_uri)  # what --checkpoint RUN now means
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


def _start_line(plan: RunPlan) -> str:
    tc = plan.cfg.training
    start = f"resuming at step {plan.resume_step}" if plan.resume_uri else "starting fresh"
    budget = (f" or {tc.max_minutes:g} min of training ({plan.seconds_spent / 60:.1f} spent)"
              if tc.max_minutes > 0 else "")
    return (f"train {plan.name}: {plan.cfg.model.family} on {plan.cfg.data.spec} "
            f"({plan.dataset.get('rows')} rows), {plan.workers} worker(s) x batch {tc.batch_size} "
            f"= global batch {plan.global_batch}, {'GPU' if plan.use_gpu else 'CPU'}, "
            f"{plan.total_steps} steps{budget}, {start}; run {run_files.redact(plan.run_uri)}")
