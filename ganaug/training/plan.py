"""Planning a training run on the driver, without Ray: every user error surfaces here.

`prepare_run` resolves workers / GPU / storage / name, checks the data spec cheaply
(`dataset_summary`), refuses to resume a run whose model or data config differs, and writes the
resolved `config.yaml`, all before a worker starts. `_nothing_to_do` stops a finished run (or a
spent budget) before Ray is touched.

model.json records `native_size` [H, W]: the most common size of the first rows of data.spec
before any resize (the readers hand images over at their own size when no resolution is
given), so `ganaug generate --size native` can write the set at the data's own size.

Global batch = training.batch_size x workers: each optimiser step averages gradients over
all workers' batches (DDP), so N workers take steps N times as large in images. The learning
rates are NOT scaled automatically; keep them when adding workers for a GAN (Adam is fairly
insensitive to batch size; GANs are sensitive to lr), or scale by hand and say so.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

from ganaug import storage
from ganaug.config import RunConfig
from ganaug.data.spec import absolute_spec
from ganaug.errors import UserError, first_line
from ganaug.training import run_files

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class TrainingFailed(Exception):
    """Training stopped for good (worker errors beyond max_failures); one-line message."""


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

    if tc.select_by != "none" or cfg.data.holdout > 0:
        from ganaug.families import FAMILIES

        if FAMILIES.get(cfg.model.family).load().kind != "noise":
            raise UserError(f"config keys 'training.select_by' and 'data.holdout' judge generated samples; "
                            f"{cfg.model.family} translates images (leave them at none and 0)")
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
