"""The Ray Data wiring of a generation run: the only module here that imports Ray.

    from_items(missing shards) -> map_batches(SamplerActor | TranslateActor,  actor pool)
                               -> map_batches(write_shards,                  CPU tasks)
                               -> iter_rows() on the driver: one small result per shard

Resources, and why (ARCHITECTURE.md §5, "actors holding every CPU starve Ray Data's tasks"):
- A sampling actor asks for whole resources: one CPU, or with --use-gpu one GPU (and no CPU
  of its own: Ray Data's convention for GPU actors, so GPU actors never hold the CPUs the
  write tasks need), plus the custom --resources. Ray, and an autoscaler, place them; GPUs are
  asked for even when the cluster has none yet (they scale from zero).
- Write tasks take one CPU each. The pool *starts* with at most (cluster CPUs - 1) CPU actors,
  so at least one CPU is always free for them; it may grow to --workers actors only within Ray
  Data's budget, whose per-operator reservation keeps the write stage's CPU (and grows as an
  autoscaler adds nodes). On a cluster of under 2 CPUs nothing whole fits beside a write task:
  there, and only there, actors and write tasks take half a CPU each.
- Ray Data restarts a killed sampling actor and retries its shard (max_restarts and
  max_task_retries default to infinite for actor pools); a failed write task is retried too.
  Either way a shard is rewritten whole, to the same bytes, and the atomic write means no torn
  file is ever visible.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ganaug.generation.config import GenerationError
from ganaug.generation.plan import ShardJob
from ganaug.generation.stages import SAMPLING_STAGES, write_shards


@dataclass(frozen=True)
class PoolPlan:
    """How many sampling actors, and what each one and each write task asks Ray for."""

    actors: int                    # the pool's maximum (--workers, or the default)
    initial: int                   # started at once (and the pool's minimum)
    cpus: float                    # per sampling actor
    gpus: float                    # per sampling actor
    resources: dict[str, float] = field(default_factory=dict)   # --resources, per sampling actor
    write_cpus: float = 1.0        # per write task

    def info(self) -> dict:
        return asdict(self)


def pool_plan(workers: int | None, shards_missing: int, use_gpu: bool, resources: dict[str, float] | None = None,
              *, cpus: float | None = None, gpus: float | None = None) -> PoolPlan:
    """The pool for the connected cluster (or the given cpus / gpus totals)."""
    if cpus is None or gpus is None:
        from ganaug.raycluster import cluster_cpus, cluster_gpus

        cpus = cluster_cpus() if cpus is None else cpus
        gpus = cluster_gpus() if gpus is None else gpus
    unit = 1.0 if cpus >= 2 else 0.5           # see the module notes: whole CPUs wherever they fit
    free = max(unit, math.floor(cpus / unit) * unit - unit)   # CPUs actors may hold: one left for writes
    if use_gpu:
        # One whole GPU each, as many as asked for, all asked for at once: an autoscaler
        # starting GPU nodes from zero sees the demand; fractions would pack every actor onto one device.
        n = max(1, min(workers or max(1, int(gpus)), shards_missing))
        return PoolPlan(actors=n, initial=n, cpus=0.0, gpus=1.0, resources=dict(resources or {}), write_cpus=unit)
    fit = max(1, int(free // unit))
    n = max(1, min(workers or fit, shards_missing))
    return PoolPlan(actors=n, initial=min(n, fit), cpus=unit, gpus=0.0, resources=dict(resources or {}),
                    write_cpus=unit)


def _stage_stats(ds) -> dict[str, dict]:
    """Per stage: tasks, and the seconds they ran (wall) and spent in our function (udf), from
    Ray Data's own stats; for busy fractions in benchmarks."""
    out: dict[str, dict] = {}
    try:
        pending = [ds._get_stats_summary()]
        while pending:
            summary = pending.pop()
            pending.extend(summary.parents)
            for op in summary.operators_stats:
                name = op.operator_name
                stage = "sample" if "Actor" in name else "write" if "write_shards" in name else None
                if stage is None or op.wall_time is None:
                    continue
                udf = op.function_body_time
                out[stage] = {"tasks": int(op.wall_time.count), "task_seconds": round(float(op.wall_time.sum), 3),
                              "udf_seconds": round(float(udf.sum), 3) if udf is not None else None}
    except Exception:  # noqa: BLE001 - stats are a report, never a reason to fail the run
        return out
    return out


def run_pipeline(job: ShardJob, items: list[dict], pool: PoolPlan, stats: dict | None = None) -> Iterator[dict]:
    """Make the shards of `items` ({index, start, stop}); yields each shard's result, in shard
    order. `stats`, when given, receives per-stage timings once the run is over."""
    from ganaug.raycluster import ensure_ray, ordered_data_job

    ray = ensure_ray()
    from ray.data import ActorPoolStrategy

    sampler: dict[str, Any] = {"num_cpus": pool.cpus}
    if pool.gpus:
        sampler["num_gpus"] = pool.gpus
    if pool.resources:
        sampler["resources"] = dict(pool.resources)
    with ordered_data_job(GenerationError):  # our own single progress line instead of Ray's
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(SAMPLING_STAGES[job.task], fn_constructor_kwargs={"job": job}, batch_size=1,
                            batch_format="numpy", zero_copy_batch=True,
                            compute=ActorPoolStrategy(min_size=pool.initial, max_size=pool.actors,
                                                      initial_size=pool.initial,
                                                      # a shard is a big task: one at a time per actor
                                                      # bounds the work a killed actor loses to one
                                                      # shard, and keeps Ray Data's stage timings
                                                      # true busy times (no queued task counted)
                                                      max_tasks_in_flight_per_actor=1), **sampler)
        ds = ds.map_batches(write_shards, fn_kwargs={"job": job}, batch_size=1, batch_format="numpy",
                            zero_copy_batch=True, num_cpus=pool.write_cpus)
        for row in ds.iter_rows():
            yield {"index": int(row["index"]), "file": str(row["file"]), "rows": int(row["rows"]),
                   "size": int(row["size"]), "sha256": str(row["sha256"]),
                   "counts": {int(k): v for k, v in json.loads(str(row["counts"])).items()},
                   "fallback": int(row["fallback"]), "candidates": int(row["candidates"]),
                   **({"projection": json.loads(str(row["projection"]))} if "projection" in row else {})}
        if stats is not None:
            stats.update(_stage_stats(ds))
