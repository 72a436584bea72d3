"""The orchestrator: plan -> output folder -> pipeline for the missing shards -> manifest.

The driver holds O(shards) state (one small result per shard), never per-row data: the
label plan is lazy, the images travel from the sampling actors to the write tasks through
Ray's object store, and shards go from the write tasks straight to storage.
"""

from __future__ import annotations

import math
import sys
import time

from ganaug.generation import outdir
from ganaug.generation.config import GenerateConfig, TranslateConfig
from ganaug.generation.plan import RunPlan, plan_generate, plan_translate, shard_ranges
from ganaug.testing import faults


class _RowProgressLine:
    """One progress line on stderr (rewritten in place on a terminal), throttled to 1/s."""

    def __init__(self, what: str, total_rows: int, done_rows: int, enabled: bool):
        self.what, self.total, self.done, self.enabled = what, total_rows, done_rows, enabled
        self.start = time.time()
        self.new = 0
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def update(self, rows: int, force: bool = False) -> None:
        self.done += rows
        self.new += rows
        now = time.time()
        if not self.enabled or (now - self.last < 1.0 and not force):
            return
        self.last = now
        rate = self.new / max(now - self.start, 1e-9)
        line = f"{self.what}: {self.done}/{self.total} rows ({100 * self.done / max(self.total, 1):.0f}%), " \
               f"{rate:.0f} images/s"
        sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self.update(0, force=True)
            if self.tty:
                sys.stderr.write("\n")


def _summary(out: str, manifest: dict, *, generated: int, reused: int, t0: float, pipeline_s: float) -> dict:
    seconds = time.time() - t0
    return {
        "out": out,
        "manifest": outdir.storage.join(out, outdir.shards.MANIFEST),
        "rows": manifest["rows"],
        "shards": len(manifest["files"]),
        "counts": manifest["counts"],
        "generated_rows": generated,
        "reused_shards": reused,
        "generator": manifest["checkpoint"]["id"],
        "seconds": round(seconds, 3),
        "pipeline_seconds": round(pipeline_s, 3),
        "images_per_s": round(generated / pipeline_s, 1) if pipeline_s > 0 else 0.0,
    }


def _projection_error(records) -> dict | None:
    """--restyle: the projection's reconstruction error over the shards' records that carry it
    (pixel MSE on the [-1, 1] scale; the mean latent's is the reference it improves on)."""
    parts = [r["projection"] for r in records if r.get("projection")]
    if not parts:
        return None
    n = sum(p["images"] for p in parts)

    def mean(key: str) -> float:
        return sum(p[key] * p["images"] for p in parts) / max(n, 1)

    mse = mean("mse_projected")
    return {"images": n, "mse_mean_latent": round(mean("mse_mean_latent"), 6), "mse_projected": round(mse, 6),
            "psnr_db": round(10 * math.log10(4.0 / max(mse, 1e-12)), 2)}


def run_plan(plan: RunPlan, progress: bool = True) -> dict:
    what, out = plan.what, plan.out
    outdir.probe_writable(out)
    done = outdir.prepare(out, plan.arguments, plan.overwrite)
    if done is not None:
        return _summary(out, done, generated=0, reused=len(done["files"]), t0=plan.t0, pipeline_s=0.0)
    recorded = outdir.recorded_environment(out)
    ranges = shard_ranges(plan.total, plan.rows_per_shard)
    job = plan.job
    results = outdir.verify_existing(out, ranges, job.seed, job.total_rows, bool(job.filter))
    missing = [(i, a, b) for i, a, b in ranges if i not in results]
    reused = len(results)
    by_record = sum(1 for r in results.values() if r.get("verified_by") == "record")
    env = recorded or {}
    pool = None
    if missing:
        from ganaug.generation.pipeline import pool_plan
        from ganaug.raycluster import (
            ensure_ray,
            probe_environment,
            require_shared_paths,
        )

        if plan.before_pipeline is not None:
            plan.before_pipeline()
        ensure_ray()  # before the clock starts: images/s measures the pipeline, not Ray's startup
        # Actors on any node write the shards and read the checkpoint; the driver lists them.
        require_shared_paths({"--out": out, "--checkpoint": job.checkpoint_uri}, plan.shared_fs)
        env = probe_environment(plan.use_gpu, resources=plan.resources,
                                echo=(lambda line: sys.stderr.write(f"{what}: {line}\n")) if progress else None)
        outdir.check_environment(out, recorded if reused else None, env, plan.allow_env_change, reused, len(ranges))
        pool = pool_plan(plan.workers, len(missing), plan.use_gpu, plan.resources)
    outdir.write_intent(out, plan.arguments, env)
    bar = _RowProgressLine(what, plan.total, sum(r["rows"] for r in results.values()), progress)
    stats: dict = {}
    t1 = time.time()
    if missing:
        from ganaug.generation.pipeline import run_pipeline

        if reused and progress:
            sys.stderr.write(f"{what}: resuming, {reused} of {len(ranges)} shards already complete "
                             f"({by_record} checked by their records, {reused - by_record} downloaded)\n")
        items = [{"index": i, "start": a, "stop": b} for i, a, b in missing]
        for made, info in enumerate(run_pipeline(job, items, pool, stats), start=1):
            results[info["index"]] = info
            bar.update(info["rows"])
            faults.maybe_crash("generate.after_shard", shards=made)  # tests: a driver killed mid-run
    bar.close()
    pipeline_s = time.time() - t1
    if pool is not None:
        plan.run_info = {**plan.run_info, "pool": pool.info()}
    manifest = outdir.finish(plan, results, ranges, env, recorded, reused)
    summary = _summary(out, manifest, generated=sum(b - a for i, a, b in missing), reused=reused, t0=plan.t0,
                       pipeline_s=pipeline_s)
    projection = _projection_error(results.values())
    if projection:
        summary["projection"] = projection
    if reused:  # how the reused shards were checked: by their records (footer + size) or downloaded
        summary["reused_checked_by_record"] = by_record
    if stats:  # seconds each stage's tasks ran (Ray Data stats): busy fractions for benchmarks
        summary["stages"] = stats
    return summary


def run_generate(cfg: GenerateConfig, progress: bool = True) -> dict:
    """Generate a set; every input error is raised before Ray starts. Returns the summary."""
    return run_plan(plan_generate(cfg), progress)


def run_translate(cfg: TranslateConfig, progress: bool = True) -> dict:
    """Translate a dataset with a pix2pix/cyclegan checkpoint into a generated set."""
    return run_plan(plan_translate(cfg), progress)
