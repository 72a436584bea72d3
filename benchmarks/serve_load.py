"""Closed-loop HTTP load against a locally started ganaug service: batched vs unbatched serving.

    python benchmarks/serve_load.py [--checkpoint URI] [--duration 10] [--concurrency 1,8,32,64]

For each mode (micro-batching on: max_batch_size=B; off: max_batch_size=1) the app is deployed
on a local Ray, then for each concurrency C, C clients each send POST /samples back to back for
`duration` seconds. Every request asks for `--n` images of fresh seeds. Prints one JSON object:
requests/s, images/s, p50/p95/p99 latency (ms) and error counts per point, and the ratio of
batched to unbatched images/s at each concurrency (the DESIGN §4 speed judgement: the baseline
is measured in the same run).

Without --checkpoint a randomly initialised cgan is written to a temporary folder: throughput
does not depend on training.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `serve.app` from a checkout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_checkpoint(uri: str, width: int, resolution: int) -> str:
    import torch

    from ganaug import checkpoint
    from ganaug.config import ModelConfig
    from ganaug.models.registry import DataInfo, get_family

    fam = get_family("cgan")
    data = DataInfo(resolution, 1, 10, [str(i) for i in range(10)])
    kwargs = fam.generator_kwargs(ModelConfig(family="cgan", width=width), data)
    torch.manual_seed(0)
    checkpoint.save_checkpoint(uri, generator_ema=fam.build_generator(kwargs), meta={
        "family": "cgan", "kind": "noise", "generator_kwargs": kwargs, "resolution": resolution,
        "channels": 1, "num_classes": 10, "class_names": data.class_names})
    return uri


async def closed_loop(url: str, token: str, concurrency: int, duration: float, n: int, seed0: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(10**9))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits, headers={"Authorization": f"Bearer {token}"}) as http:
        deadline = time.perf_counter() + duration

        async def client() -> None:
            while time.perf_counter() < deadline:
                i = next(counter)
                body = {"n": n, "labels": [(i + j) % 10 for j in range(n)], "seed": seed0 + i * n}
                t = time.perf_counter()
                try:
                    r = await http.post(url, json=body)
                    code = r.status_code
                except httpx.HTTPError as e:
                    code = type(e).__name__
                if code == 200:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors[str(code)] = errors.get(str(code), 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    lat = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    ok = len(latencies)
    return {
        "concurrency": concurrency, "seconds": round(elapsed, 2), "requests": ok,
        "requests_per_s": round(ok / elapsed, 2), "images_per_s": round(ok * n / elapsed, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1), "errors": errors,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="checkpoint or run URI (default: a random cgan in a temp dir)")
    ap.add_argument("--width", type=int, default=32, help="cgan width of the default random model")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--n", type=int, default=1, help="images per request")
    ap.add_argument("--batch-size", type=int, default=32, help="max_batch_size of the batched mode")
    ap.add_argument("--batch-wait", type=float, default=0.01, help="batch_wait_timeout_s")
    ap.add_argument("--num-cpus", type=float, default=1.0, help="CPUs of the generator replica")
    a = ap.parse_args(argv)

    import httpx
    import ray
    from ray import serve

    from serve.app import ServeArgs, app_builder

    tmp = tempfile.mkdtemp(prefix="ganaug-bench-")
    ckpt = a.checkpoint or make_checkpoint(os.path.join(tmp, "cgan"), a.width, a.resolution)
    token = "bench-" + os.urandom(8).hex()
    levels = [int(c) for c in a.concurrency.split(",")]
    port = _free_port()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    results: dict = {}
    try:
        for mode, bs in (("batched", a.batch_size), ("unbatched", 1)):
            args = ServeArgs(models={"m": ckpt}, token=token, max_batch_size=bs, batch_wait_timeout_s=a.batch_wait,
                             max_ongoing_requests=max(64, bs), max_queued_requests=1024, num_cpus=a.num_cpus,
                             ingress_num_cpus=0.5, max_n=max(64, a.n), expose_stats=True)
            serve.run(app_builder(args), name=f"bench-{mode}", route_prefix=f"/{mode}")
            url = f"http://127.0.0.1:{port}/{mode}/v1/models/m/samples"
            asyncio.run(closed_loop(url, token, 4, 2.0, a.n, 10**9))  # warm-up: load the model, fill caches
            stats_url = f"http://127.0.0.1:{port}/{mode}/v1/_stats"
            results[mode] = []
            for i, c in enumerate(levels):
                httpx.delete(stats_url, headers={"Authorization": f"Bearer {token}"})
                point = asyncio.run(closed_loop(url, token, c, a.duration, a.n, 10**6 * (i + 1)))
                batches = httpx.get(stats_url, headers={"Authorization": f"Bearer {token}"}).json()["batches"]
                sizes = [b["requests"] for b in batches if b["kind"] == "sample"]
                point["mean_requests_per_forward"] = round(float(np.mean(sizes)), 2) if sizes else None
                point["max_requests_per_forward"] = max(sizes) if sizes else None
                results[mode].append(point)
            serve.delete(f"bench-{mode}")
    finally:
        serve.shutdown()
        ray.shutdown()

    ratio = {}
    for b, u in zip(results["batched"], results["unbatched"]):
        ratio[str(b["concurrency"])] = round(b["images_per_s"] / u["images_per_s"], 2) if u["images_per_s"] else None
    report = {
        "benchmark": "serve_load",
        "model": {"checkpoint": a.checkpoint or f"random cgan width={a.width} res={a.resolution}"},
        "images_per_request": a.n, "seconds_per_point": a.duration, "max_batch_size": a.batch_size,
        "batch_wait_timeout_s": a.batch_wait, "generator_num_cpus": a.num_cpus,
        "cpus": os.cpu_count(), "loadavg": os.getloadavg()[0],
        "results": results,
        "batched_over_unbatched_images_per_s": ratio,
        "target": "batched >= 4x unbatched images/s at concurrency 32",
        "target_met": (ratio.get("32") or 0) >= 4.0 if "32" in ratio else None,
    }
    print(json.dumps(report))  # one line: the last stdout line is the result
    return report


if __name__ == "__main__":
    main()
