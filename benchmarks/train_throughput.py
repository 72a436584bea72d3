"""Ray Train vs a plain PyTorch loop, same model, batch, steps and thread count; prints JSON.

    python benchmarks/train_throughput.py [--config jobs/configs/digits-cgan.yaml]
        [--steps 60] [--warmup 10] [--threads N] [--set key=value ...]

Measured in one run, so the ratios are fair even on a shared machine:
  plain      GANTrainer.train_step() in this process, torch.set_num_threads(threads)
  ray_1      `run_training` with 1 worker, threads_per_worker = threads (the whole ganaug path:
             DDP-less worker, ray.train.report every report_every steps, param hashes,
             metrics.jsonl writes)
  ray_2      2 workers, threads_per_worker = threads // 2 (global batch = 2 x batch_size)
The plain loop runs before and after ray_1 and its mean is the baseline (load drifts).
Ray's throughput is taken from metrics.jsonl: images between the first report after warmup
and the last report, over the wall time between them (report overhead included; Ray and
worker startup excluded: they are fixed costs, not throughput).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def plain_images_per_s(cfg, threads: int, warmup: int, steps: int) -> float:
    import torch

    from ganaug.data import load_dataset
    from ganaug.training.loop import GANTrainer

    torch.set_num_threads(threads)
    data = load_dataset(cfg.data.spec, cfg.data.resolution, cfg.data.channels)
    trainer = GANTrainer(cfg, data.images, data.labels, data.class_names, device="cpu")
    for _ in range(warmup):
        trainer.train_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return steps * cfg.training.batch_size / (time.perf_counter() - t0)


def ray_images_per_s(cfg, workers: int, threads: int, warmup: int, steps: int, root: str, name: str) -> dict:
    from ganaug.config import config_from_dict
    from ganaug.training import run_files
    from ganaug.training.worker import run_training

    d = cfg.to_dict()
    d["training"].update(steps=warmup + steps, report_every=warmup, checkpoint_every=warmup + steps,
                         threads_per_worker=threads, num_workers=workers)
    run_cfg = config_from_dict(d)
    t0 = time.perf_counter()
    summary = run_training(run_cfg, workers=workers, storage_root=root, name=name, echo=None)
    wall = time.perf_counter() - t0
    lines = run_files.read_metrics(summary["run"])
    first, last = lines[0], lines[-1]  # first = end of the warmup window
    rate = (last["images_seen"] - first["images_seen"]) / (last["seconds"] - first["seconds"])
    return {"images_per_s": rate, "threads_per_worker": threads, "workers": workers,
            "global_batch": summary["global_batch"], "wall_seconds_incl_startup": round(wall, 1),
            "ranks_in_sync": summary.get("ranks_in_sync")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "jobs/configs/digits-cgan.yaml"))
    ap.add_argument("--steps", type=int, default=60, help="measured steps (after warmup)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    if args.steps % args.warmup:
        ap.error("--steps must be a multiple of --warmup (reports every warmup steps)")

    from ganaug.config import load_config

    cfg = load_config(args.config, args.overrides)
    with tempfile.TemporaryDirectory(prefix="ganaug-bench-") as root:
        plain_a = plain_images_per_s(cfg, args.threads, args.warmup, args.steps)
        ray1 = ray_images_per_s(cfg, 1, args.threads, args.warmup, args.steps, root, "one")
        plain_b = plain_images_per_s(cfg, args.threads, args.warmup, args.steps)
        ray2 = ray_images_per_s(cfg, 2, max(1, args.threads // 2), args.warmup, args.steps, root, "two")
    plain = (plain_a + plain_b) / 2
    out = {
        "benchmark": "train_throughput",
        "model": cfg.model.family, "width": cfg.model.width, "resolution": cfg.data.resolution,
        "batch_size_per_worker": cfg.training.batch_size, "steps_measured": args.steps, "warmup": args.warmup,
        "cpu_count": os.cpu_count(), "threads": args.threads,
        "plain_images_per_s": round(plain, 1), "plain_runs": [round(plain_a, 1), round(plain_b, 1)],
        "ray_1worker": {**ray1, "images_per_s": round(ray1["images_per_s"], 1)},
        "ray_2workers": {**ray2, "images_per_s": round(ray2["images_per_s"], 1)},
        "ratio_ray1_vs_plain": round(ray1["images_per_s"] / plain, 3),
        "target_ratio_ray1_vs_plain": 0.9,
        "ratio_ray2_vs_ray1": round(ray2["images_per_s"] / ray1["images_per_s"], 3),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
