"""Bulk generation throughput: the Ray Data pipeline vs the bare Sampler in one process.

    python benchmarks/generate_throughput.py [--rows 20000] [--workers N] [--width 16] [--resolution 32]

Prints one JSON object:
- baseline: `Sampler.generate` + PNG encoding of the same kind of rows in this process, no
  Ray, torch using as many threads as the pipeline has actors (each actor uses one thread).
  Measured before and after the pipeline runs (on --baseline-rows rows); their mean is the
  reference. Also reported: one thread x workers ("linear scaling"), a stricter reference
  on busy machines, where a multi-threaded torch process suffers most from contention.
- local / s3: `ganaug.generation.run_generate` images/s into a local folder and into S3 (a moto
  server started here), including actor start-up, Parquet encoding and the writes, and the
  ratio to the baseline. Target: >= 0.8.
Both sets must be byte-identical (checked). The model is a freshly initialised cgan
(speed does not depend on training). Other processes sharing the CPUs skew both sides.
"""

from __future__ import annotations

import argparse
import json
import logging
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


def baseline(ckpt: str, rows: int, rows_per_shard: int, threads: int) -> float:
    """images/s of the same forward + PNG encoding in one plain process."""
    import numpy as np
    import torch

    from ganaug import shards
    from ganaug.sampling import Sampler

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        sampler = Sampler.from_checkpoint(ckpt, device="cpu")
        t = time.perf_counter()
        for start in range(0, rows, rows_per_shard):
            stop = min(start + rows_per_shard, rows)
            idx = np.arange(start, stop)
            images = sampler.generate(idx.tolist(), (idx % 10).tolist(), 1.0)
            shards.encode_images(images, "png")
        return rows / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(old)


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--rows-per-shard", type=int, default=1000)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="actors (and baseline threads)")
    p.add_argument("--width", type=int, default=16, help="cgan width")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--baseline-rows", type=int, default=2000, help="rows timed for each baseline run")
    p.add_argument("--skip-s3", action="store_true")
    args = p.parse_args()

    os.environ.pop("RAY_ADDRESS", None)  # local only: the moto endpoint is 127.0.0.1
    from ganaug.generation import GenerateConfig, run_generate

    tmp = tempfile.mkdtemp(prefix="ganaug-bench-")
    ckpt = build_checkpoint(tmp, args.width, args.resolution)
    server = None if args.skip_s3 else start_moto()[0]

    nb = min(args.rows, args.baseline_rows)
    base_before = baseline(ckpt, nb, args.rows_per_shard, args.workers)
    one_thread = baseline(ckpt, nb, args.rows_per_shard, 1)

    from ganaug.raycluster import ensure_ray

    ensure_ray(include_dashboard=False, log_to_driver=False)

    def pipeline(out: str) -> dict:
        cfg = GenerateConfig(checkpoint=ckpt, out=out, num=args.rows, rows_per_shard=args.rows_per_shard,
                             workers=args.workers)
        s = run_generate(cfg, progress=False)
        return {"images_per_s": s["images_per_s"], "pipeline_seconds": s["pipeline_seconds"], "out": out}

    local = pipeline(os.path.join(tmp, "set"))
    s3 = None if args.skip_s3 else pipeline("s3://bench/set")
    base_after = baseline(ckpt, nb, args.rows_per_shard, args.workers)
    base = (base_before + base_after) / 2

    from ganaug import storage

    result = {
        "benchmark": "generate_throughput",
        "rows": args.rows, "rows_per_shard": args.rows_per_shard, "workers": args.workers,
        "model": {"family": "cgan", "width": args.width, "resolution": args.resolution},
        "cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
        "baseline_images_per_s": round(base, 1),
        "baseline_runs": [round(base_before, 1), round(base_after, 1)],
        "baseline_1thread_images_per_s": round(one_thread, 1),
        "local": {**local, "ratio": round(local["images_per_s"] / base, 3),
                  "ratio_vs_1thread_x_workers": round(local["images_per_s"] / (one_thread * args.workers), 3)},
        "target_ratio": 0.8,
    }
    ref = storage.read_json(storage.join(local["out"], "_manifest.json"))["files"]
    if s3 is not None:
        got = storage.read_json(storage.join(s3["out"], "_manifest.json"))["files"]
        result["s3"] = {**s3, "ratio": round(s3["images_per_s"] / base, 3),
                        "ratio_vs_1thread_x_workers": round(s3["images_per_s"] / (one_thread * args.workers), 3),
                        "vs_local": round(s3["images_per_s"] / local["images_per_s"], 3),
                        "identical_to_local": [f["sha256"] for f in got] == [f["sha256"] for f in ref]}
    print(json.dumps(result))
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main()
