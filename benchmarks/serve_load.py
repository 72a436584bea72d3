"""Closed-loop HTTP load against a locally started ganaug service: batched vs unbatched serving.

    python benchmarks/serve_load.py [--checkpoint URI] [--duration 10] [--concurrency 1,8,32,64]

Three baselines, all measured in the same run:
- unbatched serving (max_batch_size=1): batched must be >= 5x its images/s at concurrency 32;
- the raw Sampler + PNG/base64 encoding in this one process, in batches of max_batch_size:
  served images/s at concurrency 32 should be >= 0.8x of it (the cost of HTTP, Ray and queues);
- overload: a bounded app (max_ongoing_requests = max_batch_size, as many queued) driven at 2x
  its capacity reports the fraction answered 503 at once, and the latency of the others.

For each mode (micro-batching on: max_batch_size=B; off: max_batch_size=1) the app is deployed
on a local Ray, then for each concurrency C, C clients each send POST /samples back to back for
`duration` seconds. Every request asks for `--n` images of fresh seeds. Prints one JSON object:
requests/s, images/s, p50/p95/p99 latency (ms) and error counts per point, and the ratio of
batched to unbatched images/s at each concurrency (the ARCHITECTURE.md §6 speed judgement: the baseline
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


def raw_sampler_images_per_s(ckpt: str, batch: int, duration: float, threads: int) -> dict:
    """The ceiling: Sampler.generate + the served encoding, back to back in this process."""
    import torch

    from ganaug.sampling import Sampler
    from serve.pool import b64_pngs

    torch.set_num_threads(threads)
    sampler = Sampler.from_checkpoint(ckpt, device="cpu")
    b64_pngs(sampler.generate(range(batch), [j % 10 for j in range(batch)], 1.0))  # warm-up
    done, seed, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < duration:
        b64_pngs(sampler.generate(range(seed, seed + batch), [j % 10 for j in range(batch)], 1.0))
        done += batch
        seed += batch
    elapsed = time.perf_counter() - t0
    return {"images_per_s": round(done / elapsed, 2), "batch": batch, "seconds": round(elapsed, 2)}


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
    os.environ["GANAUG_BENCH_TOKEN"] = token  # the replicas inherit it from the Ray we start here
    levels = [int(c) for c in a.concurrency.split(",")]
    port = _free_port()
    raw = raw_sampler_images_per_s(ckpt, a.batch_size, min(a.duration, 10.0), 1)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    results: dict = {}
    over: dict = {}
    try:
        for mode, bs in (("batched", a.batch_size), ("unbatched", 1)):
            args = ServeArgs(models={"m": ckpt}, token_env="GANAUG_BENCH_TOKEN", max_batch_size=bs,
                             batch_wait_timeout_s=a.batch_wait, max_ongoing_requests=max(64, bs),
                             max_queued_requests=1024, num_cpus=a.num_cpus, ingress_num_cpus=0.5,
                             max_n=max(64, a.n), expose_stats=True)
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
        # Overload: capacity = max_ongoing_requests + max_queued_requests at the pool; drive 2x that.
        cap = 2 * a.batch_size
        args = ServeArgs(models={"m": ckpt}, token_env="GANAUG_BENCH_TOKEN", max_batch_size=a.batch_size,
                         batch_wait_timeout_s=a.batch_wait, max_ongoing_requests=a.batch_size,
                         max_queued_requests=a.batch_size, num_cpus=a.num_cpus, ingress_num_cpus=0.5,
                         max_n=max(64, a.n))
        serve.run(app_builder(args), name="bench-bounded", route_prefix="/bounded")
        url = f"http://127.0.0.1:{port}/bounded/v1/models/m/samples"
        asyncio.run(closed_loop(url, token, 4, 2.0, a.n, 10**9))
        over = asyncio.run(closed_loop(url, token, 2 * cap, a.duration, a.n, 10**8))
        answered = over["requests"] + sum(over["errors"].values())
        over["capacity_requests"] = cap
        over["rate_503"] = round(over["errors"].get("503", 0) / answered, 3) if answered else None
        over["other_errors"] = {k: v for k, v in over["errors"].items() if k != "503"}
        serve.delete("bench-bounded")
    finally:
        serve.shutdown()
        ray.shutdown()

    ratio = {}
    for b, u in zip(results["batched"], results["unbatched"]):
        ratio[str(b["concurrency"])] = round(b["images_per_s"] / u["images_per_s"], 2) if u["images_per_s"] else None
    served32 = next((p["images_per_s"] for p in results["batched"] if p["concurrency"] == 32), None)
    vs_raw = round(served32 / raw["images_per_s"], 2) if served32 and raw["images_per_s"] else None
    report = {
        "benchmark": "serve_load",
        "model": {"checkpoint": a.checkpoint or f"random cgan width={a.width} res={a.resolution}"},
        "images_per_request": a.n, "seconds_per_point": a.duration, "max_batch_size": a.batch_size,
        "batch_wait_timeout_s": a.batch_wait, "generator_num_cpus": a.num_cpus,
        "cpus": os.cpu_count(), "loadavg": os.getloadavg()[0],
        "results": results,
        "batched_over_unbatched_images_per_s": ratio,
        "raw_sampler_plus_encoding": raw,
        "served_over_raw_images_per_s_at_32": vs_raw,
        "overload_2x_capacity": over,
        "targets": {"batched >= 5x unbatched at 32": (ratio.get("32") or 0) >= 5.0 if "32" in ratio else None,
                    "served >= 0.8x raw Sampler + encoding at 32": (vs_raw or 0) >= 0.8 if vs_raw else None,
                    "overload answers only 200/503": not over["other_errors"]},
    }
    print(json.dumps(report))  # one line: the last stdout line is the result
    return report


if __name__ == "__main__":
    main()
