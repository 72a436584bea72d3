"""Ray Tune glue for `ganaug tune` (ARCHITECTURE.md §3.1, "Sweeps"); the only module that imports
`ray.tune`. The sweep file, the search space and the objective are Ray-free (ganaug/sweep.py,
ganaug/metrics/selection.py).

Driver (`run_sweep`):
  1. connect to Ray (`ensure_ray`) and size the trials: each holds `trial_cpus` (it scores its
     checkpoints); the Ray Train workers it launches ask for their own CPUs as `ganaug train`
     does, so the trials that run at once are as many as fit (and at most `max_concurrent`);
  2. `plan.record()` writes {storage}/sweeps/{name}/sweep.json (a name reused with other trial
     settings is refused);
  3. train the objective's real+classic arm once (it does not depend on any trial);
  4. a Tuner runs the function trainable `_trial` under ASHA (metric "gain", mode "max",
     time_attr "step"); Tune's bookkeeping goes to {sweep}/_tune;
  5. trials.json (every trial, every report) and best.json, through ganaug.storage.

Trial (`_trial`, inside a Tune actor): for each rung of the scheduler it calls `run_training`
with training.steps = the rung and the SAME run name ({storage}/runs/{sweep}-tNN), which resumes
from the run's newest checkpoint, scores that checkpoint on the validation split and reports
{"gain", "gain_std", "step", "run", "checkpoint", ...} to Tune, which stops it at a rung where it
falls behind. Ray Train launched from a Tune function trainable is Train v2's documented pattern.

Rerunning a sweep with the same --name (after a crash) runs the same trials (same seed) on the
same run folders: each resumes from its newest checkpoint, so only the scoring is repeated.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Callable
from typing import Any

from ganaug import storage
from ganaug.errors import UserError, find_user_error, first_line
from ganaug.raycluster import ensure_ray, require_shared_paths
from ganaug.sweep import SweepPlan, choose_best, load_split, score_checkpoint

TUNE_DIR = "_tune"
REPORT_KEYS = ("step", "gain", "gain_std", "accuracy", "baseline_accuracy", "checkpoint")


class SweepFailed(Exception):
    """No trial produced a result; one-line message."""


# ============================================================================= trial side

def trial_index(trial_id: str) -> int:
    """Tune's BasicVariantGenerator numbers trials in its ids ("a1b2c_00003" -> 3)."""
    tail = str(trial_id).rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def plain_settings(config: dict) -> dict:
    """A trial's sampled values as plain Python scalars (numpy ones become int/float/str)."""
    return {str(k): (v.item() if hasattr(v, "item") else v) for k, v in (config or {}).items()}


def _trial_dirname(trial) -> str:
    return f"t{trial_index(trial.trial_id):02d}"


def _trial(config: dict, *, plan: SweepPlan, split: Any, baseline: list[float], shared_fs: bool) -> None:
    """One trial: train to each rung (resuming the same run), score, report."""
    from ray import tune

    from ganaug.training.worker import run_training

    index = trial_index(tune.get_context().get_trial_id())
    name = plan.trial_name(index)
    settings = plain_settings(config)
    for rung in plan.rungs():
        summary = run_training(plan.run_config(settings, rung), storage_root=plan.runs_root, name=name,
                               echo=None, shared_fs=shared_fs)
        ckpt, step = summary.get("checkpoint"), int(summary.get("step") or 0)
        if not ckpt:
            raise UserError(f"trial {name}: no checkpoint in {summary.get('run')} after training to step {rung}")
        score = score_checkpoint(plan, ckpt, settings, split, baseline)
        tune.report({**score, "step": step, "run": summary["run"], "checkpoint": ckpt, "trial": name,
                     "index": index})
        if step < rung:  # its training.max_minutes budget is spent: no further rung
            return


# ============================================================================= driver side

def _storage_for_tune(uri: str) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for Tune's bookkeeping under {sweep}."""
    if storage.is_s3(uri):
        fs, path = storage.resolve(uri)
        return path, fs
    _, path = storage.resolve(uri)
    return path, None


def plan_concurrency(plan: SweepPlan, resources: dict, local: bool) -> tuple[int, str]:
    """How many trials run at once, and a phrase saying what each holds. On a local Ray a trial
    whose training workers cannot fit beside it is refused (its workers would wait forever)."""
    s, tc = plan.settings, plan.cfg.training
    cap = max(1, min(s.max_concurrent, s.num_samples))
    workers = tc.num_workers
    if tc.use_gpu:
        gpus = float(resources.get("GPU", 0.0))
        fit = math.floor(gpus / workers) if gpus >= workers else 1
        return max(1, min(cap, fit)), f"{s.trial_cpus:g} CPU + {workers} training worker(s) x 1 GPU"
    if not local:  # a cluster: 1 CPU per worker (as `ganaug train`); an autoscaler may add nodes
        return cap, f"{s.trial_cpus:g} CPU + {workers} training worker(s) x 1 CPU"
    cpus = float(resources.get("CPU", 0.0))
    per_worker = max(0.01, min(1.0, cpus / workers))  # training/worker.py's share on a local Ray
    need = s.trial_cpus + workers * per_worker
    if need > cpus + 1e-9:
        raise UserError(f"a trial needs {need:g} CPUs (trial_cpus {s.trial_cpus:g} + {workers} training "
                        f"worker(s) x {per_worker:g}) but this Ray has {cpus:g}; lower training.num_workers "
                        "(--set training.num_workers=1) or trial_cpus")
    fit = math.floor(cpus / need + 1e-9)
    return max(1, min(cap, fit)), f"{s.trial_cpus:g} CPU + {workers} training worker(s) x {per_worker:g} CPU"


def _settings_text(settings: dict) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={fmt(v)}" for k, v in sorted(settings.items()))


def _progress_callback(plan: SweepPlan, echo: Callable[[str], None] | None):
    """A Tune Callback (on the driver): one line per report, remember every report."""
    from ray import tune

    max_steps = plan.settings.scheduler.max_steps

    class _Progress(tune.Callback):
        def __init__(self):
            self.reports: dict[int, list[dict]] = {}

        def _say(self, line: str) -> None:
            if echo is not None:
                echo(line)

        def on_trial_start(self, iteration, trials, trial, **info):
            i = trial_index(trial.trial_id)
            self._say(f"{plan.trial_name(i)}: start ({_settings_text(trial.config)})")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            i = trial_index(trial.trial_id)
            rec = {k: result.get(k) for k in REPORT_KEYS}
            self.reports.setdefault(i, []).append(rec)
            self._say(f"{plan.trial_name(i)}: step {rec['step']}/{max_steps}  gain {rec['gain']:+.4f} "
                      f"+- {rec['gain_std']:.4f} (accuracy {rec['accuracy']:.4f} vs {rec['baseline_accuracy']:.4f})")

        def on_trial_complete(self, iteration, trials, trial, **info):
            i = trial_index(trial.trial_id)
            last = (self.reports.get(i) or [{}])[-1]
            step = last.get("step") or 0
            if step < max_steps:
                self._say(f"{plan.trial_name(i)}: stopped at step {step} (ASHA, or its training budget)")
            else:
                self._say(f"{plan.trial_name(i)}: done at step {step}")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._say(f"{plan.trial_name(trial_index(trial.trial_id))}: failed (see trials.json)")

    return _Progress()


def _error_text(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    user = find_user_error(exc)
    return first_line(user if user is not None else exc, limit=300)


def run_sweep(plan: SweepPlan, *, echo: Callable[[str], None] | None = print, shared_fs: bool = False) -> dict:
    """Run the sweep on Ray Tune; write trials.json and best.json; return the best trial's record.

    Raises UserError for bad input (before any trial) and SweepFailed when no trial reported."""
    ray = ensure_ray(log_to_driver=False, logging_level=logging.WARNING)
    require_shared_paths({"--storage": plan.storage_root}, shared_fs)
    for name in ("ray.tune", "ray.train", "ray.train.v2", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    concurrency, holds = plan_concurrency(plan, ray.cluster_resources(), local=not os.environ.get("RAY_ADDRESS"))
    plan.record()

    split = load_split(plan)
    baseline = split.baseline()
    base_mean = sum(baseline) / len(baseline)
    sched = plan.settings.scheduler
    if echo:
        echo(f"tune {plan.name}: {plan.settings.num_samples} trial(s) of {plan.cfg.model.family} on {plan.data_spec} "
             f"({plan.data_rows} rows), ASHA rungs {plan.rungs()} steps (reduction {sched.reduction_factor:g}), "
             f"{concurrency} at a time ({holds} each); scored on {plan.validation_spec} ({plan.validation_rows} rows) "
             f"at {plan.judge_size} px; real+classic baseline accuracy {base_mean:.4f} "
             f"({len(baseline)} seed(s)); sweep {plan.sweep_uri}")

    results, progress = _fit(plan, split, baseline, concurrency, echo, shared_fs)
    trials = _trial_records(plan, results, progress)
    baseline_info = {"arm": "real+classic", "accuracies": baseline, "accuracy": round(base_mean, 6),
                     "seeds": list(split.seeds), "steps": split.steps}
    storage.write_json(storage.join(plan.sweep_uri, "trials.json"),
                       {"sweep": plan.name, "metric": "gain", "mode": "max", "baseline": baseline_info,
                        "rungs": plan.rungs(), "trials": trials})
    best = choose_best(trials)
    if best is None:
        errors = "; ".join(f"{t['trial']}: {t['error']}" for t in trials if t.get("error"))[:500]
        raise SweepFailed(f"no trial of sweep {plan.name} reported a gain ({errors or 'no trial ran'}); "
                          f"see {storage.join(plan.sweep_uri, 'trials.json')}")
    record = _best_record(plan, best, baseline_info)
    storage.write_json(storage.join(plan.sweep_uri, "best.json"), record)
    if echo:
        echo(f"tune {plan.name}: best {best['trial']} gain {best['gain']:+.4f} at step {best['step']} "
             f"({_settings_text(best['settings'])})")
    return record


def _fit(plan: SweepPlan, split, baseline, concurrency: int, echo, shared_fs: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    s = plan.settings
    trainable = tune.with_resources(
        tune.with_parameters(_trial, plan=plan, split=split, baseline=baseline, shared_fs=shared_fs),
        {"cpu": s.trial_cpus})
    scheduler = ASHAScheduler(time_attr="step", max_t=s.scheduler.max_steps, grace_period=s.scheduler.grace_steps,
                              reduction_factor=s.scheduler.reduction_factor, brackets=1)
    storage_path, storage_fs = _storage_for_tune(plan.sweep_uri)
    progress = _progress_callback(plan, echo)
    tuner = tune.Tuner(
        trainable,
        param_space=plan.param_space(tune),
        tune_config=tune.TuneConfig(
            metric="gain", mode="max", scheduler=scheduler, num_samples=s.num_samples,
            search_alg=BasicVariantGenerator(random_state=s.seed, max_concurrent=concurrency),
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=storage_path, storage_filesystem=storage_fs,
                                  verbose=0, callbacks=[progress],
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    # Tune prints its own banner on stdout even at verbose=0: the last stdout line of the
    # command is ganaug's JSON, so everything Tune says goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        results = tuner.fit()
    return results, progress


def _trial_records(plan: SweepPlan, results, progress) -> list[dict]:
    max_steps = plan.settings.scheduler.max_steps
    out = []
    for result in results:
        metrics = result.metrics or {}
        # A trial that never reported has no "index": its folder is named t{NN} (_trial_dirname).
        index = int(metrics["index"]) if metrics.get("index") is not None else \
            int(str(result.path).rstrip("/").rsplit("/", 1)[-1].lstrip("t") or 0)
        reports = progress.reports.get(index, [])
        last = reports[-1] if reports else {k: metrics.get(k) for k in REPORT_KEYS}
        error = _error_text(result.error)
        step = last.get("step")
        status = "error" if error else "completed" if (step or 0) >= max_steps else "stopped_early" \
            if step is not None else "no_report"
        settings = plain_settings(result.config)
        out.append({
            "trial": plan.trial_name(index), "index": index, "status": status, "error": error,
            "settings": settings, "run": plan.run_uri(index), "checkpoint": last.get("checkpoint"),
            "gain": last.get("gain"), "gain_std": last.get("gain_std"), "accuracy": last.get("accuracy"),
            "step": step, "reports": reports,
        })
    return sorted(out, key=lambda t: t["index"])


def _best_record(plan: SweepPlan, best: dict, baseline: dict) -> dict:
    mix = plan.mix(best["settings"])
    n = plan.settings.samples_per_class * len(plan.class_names)
    flt = f" --filter {mix.filter_spec}" if mix.filter_spec else ""
    return {
        "sweep": plan.name,
        "trial": best["trial"], "index": best["index"], "status": best["status"],
        "settings": best["settings"],
        "run": best["run"], "checkpoint": best["checkpoint"], "step": best["step"],
        "gain": best["gain"], "gain_std": best["gain_std"], "accuracy": best["accuracy"],
        "baseline_accuracy": baseline["accuracy"],
        "mix": {"ratio": mix.ratio, "real_fraction": mix.real_fraction, "filter": mix.filter_spec or "none",
                "truncation": mix.truncation},
        "objective": "accuracy(real + classic + generated) - accuracy(real + classic) on the validation split, "
                     f"paired over {plan.settings.classifier.seeds} classifier seed(s)",
        "data": plan.data_spec, "validation": plan.validation_spec, "judged_at_px": plan.judge_size,
        "generate": (f"ganaug generate --checkpoint {best['checkpoint']} --num {n} --labels uniform "
                     f"--truncation {mix.truncation:g}{flt} --size {plan.judge_size}x{plan.judge_size} --out OUT"),
        "sweep_dir": plan.sweep_uri,
        "files": {name: storage.join(plan.sweep_uri, name) for name in ("sweep.json", "trials.json", "best.json")},
    }
