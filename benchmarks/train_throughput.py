"""Ray Train vs a plain PyTorch loop, same model, batch, steps and thread count; prints JSON.

    python benchmarks/train_throughput.py [--config jobs/configs/digits-cgan.yaml]
        [--steps 60] [--warmup 10] [--threads N] [--set key=value ...] [--s3]

Measured in one run, so the ratios are fair even on a shared machine:
  plain      GANTrainer.train_step() in this process, torch.set_num_threads(threads)
  ray_1      `run_training` with 1 worker, threads_per_worker = threads (the whole ganaug path:
             DDP-less worker, ray.train.report every report_every steps, param hashes,
             metrics.jsonl writes)
  ray_2      2 workers, threads_per_worker = threads // 2 (global batch = 2 x batch_size)
  ray_1_ckpt ray_1 with a checkpoint at every report, into --storage (local, or S3 on a moto
             server with --s3): throughput with checkpoints inside the window, and the time
             rank 0 blocks per checkpoint (it writes the folder locally; Ray Train uploads it
             in the background)
  sync_ckpt  the same checkpoint written straight to that storage by the training process,
             as rank 0 did before checkpoints went through Ray Train: its blocking time then
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


def ray_images_per_s(cfg, workers: int, threads: int, warmup: int, steps: int, root: str, name: str,
                     checkpoint_every: int | None = None) -> dict:
    from ganaug.config import config_from_dict
    from ganaug.training import run_files
    from ganaug.training.worker import run_training

    d = cfg.to_dict()
    d["training"].update(steps=warmup + steps, report_every=warmup, checkpoint_every=checkpoint_every or warmup + steps,
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
            "ranks_in_sync": summary.get("ranks_in_sync"), "checkpoint_block_s": summary.get("checkpoint_block_s")}


def sync_checkpoint_seconds(cfg, root: str, repeats: int = 3) -> float:
    """Rank 0's old blocking path: grid, weights and train state written to the final storage."""
    from ganaug import checkpoint, storage
    from ganaug.data import load_dataset
    from ganaug.training.loop import GANTrainer
    from ganaug.training.rank import _cpu_sampler, _grid_png

    data = load_dataset(cfg.data.spec, cfg.data.resolution, cfg.data.channels)
    trainer = GANTrainer(cfg, data.images, data.labels, data.class_names, device="cpu")
    trainer.train_step()
    meta = trainer.model_meta()
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        png = _grid_png(_cpu_sampler(trainer, meta), None)
        weights = trainer.weights()
        uri = storage.join(root, "sync", "checkpoints", checkpoint.step_dir_name(i))
        checkpoint.save_checkpoint(uri, meta=meta, generator_ema=weights["generator_ema"],
                                   generator=weights["generator"], discriminator=weights["discriminator"],
                                   train_state=trainer.state_dict(include_weights=False), samples_png=png)
        storage.write_bytes(storage.join(root, "sync", "samples", f"{i}.png"), png)
        times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "jobs/configs/digits-cgan.yaml"))
    ap.add_argument("--steps", type=int, default=60, help="measured steps (after warmup)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--s3", action="store_true", help="checkpoint arms write to S3 on a local moto server")
    args = ap.parse_args()
    if args.steps % args.warmup:
        ap.error("--steps must be a multiple of --warmup (reports every warmup steps)")

    from ganaug.config import load_config

    cfg = load_config(args.config, args.overrides)
    server = None
    with tempfile.TemporaryDirectory(prefix="ganaug-bench-") as root:
        ckpt_root = root
        if args.s3:
            from generate_throughput import start_moto

            server, _ = start_moto()   # before Ray starts: its workers inherit the endpoint
            ckpt_root = "s3://bench/train-throughput"
        plain_a = plain_images_per_s(cfg, args.threads, args.warmup, args.steps)
        ray1 = ray_images_per_s(cfg, 1, args.threads, args.warmup, args.steps, root, "one")
        plain_b = plain_images_per_s(cfg, args.threads, args.warmup, args.steps)
        ray1_ckpt = ray_images_per_s(cfg, 1, args.threads, args.warmup, args.steps, ckpt_root, "ckpt",
                                     checkpoint_every=args.warmup)
        sync_s = sync_checkpoint_seconds(cfg, ckpt_root)
        ray2 = ray_images_per_s(cfg, 2, max(1, args.threads // 2), args.warmup, args.steps, root, "two")
    if server is not None:
        server.stop()
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
        "checkpoint_storage": "s3 (moto)" if args.s3 else "local",
        "ray_1worker_checkpoint_every_report": {**ray1_ckpt, "images_per_s": round(ray1_ckpt["images_per_s"], 1)},
        "ratio_ray1_checkpointing_vs_plain": round(ray1_ckpt["images_per_s"] / plain, 3),
        "target_ratio_ray1_vs_plain_issue15": 0.95,
        "rank0_block_s_per_checkpoint": {"before_sync_write": round(sync_s, 4),
                                         "after_async_upload": ray1_ckpt.get("checkpoint_block_s")},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
