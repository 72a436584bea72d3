"""Bulk generation throughput: the two-stage Ray Data pipeline vs the raw Sampler + encoding.

    python benchmarks/generate_throughput.py [--rows 20000] [--rows-per-shard 1000] [--cpus N]
                                             [--width 16] [--resolution 32] [--skip-s3]

Prints one JSON object:
- baseline: `Sampler.generate` + PNG encoding of the same rows in N plain processes (N = the
  CPUs Ray gets, --cpus, default all of this machine's), one torch thread each, no Ray, no
  Parquet, no writes: the most a machine of N CPUs does with this model. Each process loads
  its Sampler and warms up before the clock starts. Measured before and after the pipeline
  runs; their mean is the reference.
- local / s3: `ganaug.generation.run_generate` into a local folder and into S3 (a moto server
  started here), with `--workers` sampling actors (default: Ray's default, one per CPU less
  the one kept for encoding and writing). Two rates: `images_per_s` over the whole pipeline
  (actor start-up included) and `steady_images_per_s`, from the first shard's result to the
  last (the actors warmed, outside the clock); `ratio` is the steady rate over the baseline.
  `stages`: the seconds each stage's tasks ran (Ray Data stats) and the busy fractions:
  sample = its task seconds / (pipeline seconds x actors), write = its task seconds /
  (pipeline seconds x CPUs left for writing).
Both sets must be byte-identical (checked). The model is a freshly initialised cgan (speed
does not depend on training). Other processes sharing the CPUs skew both sides: the load
average is reported with each run.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time

# Run from a checkout without installing.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def build_checkpoint(folder: str, width: int, resolution: int) -> str:
    import torch

    from ganaug import checkpoint
    from ganaug.config import ModelConfig
    from ganaug.models.registry import DataInfo, get_family

    fam = get_family("cgan")
    names = [str(i) for i in range(10)]
    kwargs = fam.generator_kwargs(ModelConfig(family="cgan", width=width), DataInfo(resolution, 1, 10, names))
    torch.manual_seed(0)
    G = fam.build_generator(kwargs)
    meta = {"family": "cgan", "kind": "noise", "generator_kwargs": kwargs, "resolution": resolution,
            "channels": 1, "num_classes": 10, "class_names": names}
    return checkpoint.save_checkpoint(os.path.join(folder, "ckpt"), meta=meta, generator_ema=G)


_SAMPLER = None


def _baseline_init(ckpt: str) -> None:
    global _SAMPLER
    import torch

    from ganaug.sampling import Sampler

    torch.set_num_threads(1)
    _SAMPLER = Sampler.from_checkpoint(ckpt, device="cpu")


def _baseline_chunk(bounds: tuple[int, int]) -> int:
    import numpy as np

    from ganaug import shards

    idx = np.arange(*bounds)
    images = _SAMPLER.generate(idx.tolist(), (idx % 10).tolist(), 1.0)
    shards.encode_images(images, "png")
    return len(idx)


def baseline(pool, rows: int, rows_per_shard: int) -> float:
    """images/s of Sampler + PNG encoding over `rows` rows in the (warm) process pool."""
    chunks = [(a, min(a + rows_per_shard, rows)) for a in range(0, rows, rows_per_shard)]
    t = time.perf_counter()
    done = sum(pool.map(_baseline_chunk, chunks, chunksize=1))
    return done / (time.perf_counter() - t)


def start_moto() -> tuple[object, str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # Set before Ray starts so its workers inherit them.
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": endpoint,
                       "AWS_EC2_METADATA_DISABLED": "true"})
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
    return server, endpoint


def _timed_pipeline():
    """Wrap the pipeline so each shard's arrival time is recorded (benchmark-only instrumentation)."""
    from ganaug.generation import pipeline

    arrivals: list[tuple[float, int]] = []
    real = pipeline.run_pipeline

    def timed(*args, **kwargs):
        for info in real(*args, **kwargs):
            arrivals.append((time.perf_counter(), info["rows"]))
            yield info

    pipeline.run_pipeline = timed
    return arrivals


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--rows-per-shard", type=int, default=1000)
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs for Ray and baseline processes")
    p.add_argument("--workers", type=int, default=None, help="sampling actors (default: the pipeline's default)")
    p.add_argument("--width", type=int, default=16, help="cgan width")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--baseline-rows", type=int, default=4000, help="rows timed for each baseline run")
    p.add_argument("--skip-s3", action="store_true")
    args = p.parse_args()

    os.environ.pop("RAY_ADDRESS", None)  # local only: the moto endpoint is 127.0.0.1
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    from ganaug.generation import GenerateConfig, run_generate

    tmp = tempfile.mkdtemp(prefix="ganaug-bench-")
    ckpt = build_checkpoint(tmp, args.width, args.resolution)
    server = None if args.skip_s3 else start_moto()[0]

    nb = min(args.rows, args.baseline_rows)
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.cpus, initializer=_baseline_init, initargs=(ckpt,)) as pool:
        pool.map(_baseline_chunk, [(0, 64)] * (2 * args.cpus), chunksize=1)  # warm every process
        load_before = _load()
        base_before = baseline(pool, nb, args.rows_per_shard)

        from ganaug.raycluster import ensure_ray

        ensure_ray(include_dashboard=False, log_to_driver=False, num_cpus=args.cpus)
        arrivals = _timed_pipeline()

        def pipeline(out: str) -> dict:
            arrivals.clear()
            load = _load()
            cfg = GenerateConfig(checkpoint=ckpt, out=out, num=args.rows, rows_per_shard=args.rows_per_shard,
                                 workers=args.workers)
            s = run_generate(cfg, progress=False)
            from ganaug import storage

            pool_info = storage.read_json(storage.join(out, "_manifest.json"))["run"]["pool"]
            (t_first, first_rows), (t_last, _) = arrivals[0], arrivals[-1]
            steady_s = t_last - t_first
            steady = (args.rows - first_rows) / steady_s if steady_s > 0 else 0.0
            stages = s.get("stages", {})
            write_cpus = max(args.cpus - pool_info["actors"] * pool_info["cpus"], pool_info["write_cpus"])
            busy = {}
            if "sample" in stages:
                busy["sample"] = round(stages["sample"]["task_seconds"] / (s["pipeline_seconds"] * pool_info["actors"]), 3)
            if "write" in stages:
                busy["write"] = round(stages["write"]["task_seconds"] / (s["pipeline_seconds"] * write_cpus), 3)
            return {"images_per_s": s["images_per_s"], "pipeline_seconds": s["pipeline_seconds"],
                    "steady_images_per_s": round(steady, 1), "steady_seconds": round(steady_s, 3),
                    "pool": pool_info, "stages": stages, "busy_fraction": busy, "load_average_at_start": load,
                    "out": out}

        local = pipeline(os.path.join(tmp, "set"))
        s3 = None if args.skip_s3 else pipeline("s3://bench/set")
        base_after = baseline(pool, nb, args.rows_per_shard)
    base = (base_before + base_after) / 2

    from ganaug import storage

    result = {
        "benchmark": "generate_throughput",
        "rows": args.rows, "rows_per_shard": args.rows_per_shard, "cpus": args.cpus,
        "model": {"family": "cgan", "width": args.width, "resolution": args.resolution},
        "machine_cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": _load(),
        "baseline_processes": args.cpus,
        "baseline_images_per_s": round(base, 1),
        "baseline_runs": [round(base_before, 1), round(base_after, 1)],
        "local": {**local, "ratio": round(local["steady_images_per_s"] / base, 3),
                  "ratio_end_to_end": round(local["images_per_s"] / base, 3)},
        "target_ratio": 0.8,
    }
    ref = storage.read_json(storage.join(local["out"], "_manifest.json"))["files"]
    if s3 is not None:
        got = storage.read_json(storage.join(s3["out"], "_manifest.json"))["files"]
        result["s3"] = {**s3, "ratio": round(s3["steady_images_per_s"] / base, 3),
                        "ratio_end_to_end": round(s3["images_per_s"] / base, 3),
                        "vs_local": round(s3["steady_images_per_s"] / max(local["steady_images_per_s"], 1e-9), 3),
                        "identical_to_local": [f["sha256"] for f in got] == [f["sha256"] for f in ref]}
    print(json.dumps(result))
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main()
