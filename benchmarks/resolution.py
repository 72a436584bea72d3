"""Training cost against resolution: sec/step and peak memory per family at 16, 32, 64, 128 px RGB.

    python benchmarks/resolution.py [--steps 3] [--families dcgan,cgan,stylegan2,pix2pix,cyclegan]
                                    [--resolutions 16,32,64,128] [--width 16] [--batch 8] [--device cpu]

Prints one JSON object: for each family and resolution, seconds per training step (GANTrainer
.train_step, every phase including lazy regularisers at interval 2 so they are in the mean;
one warm-up step first) and peak memory: on CUDA torch's max_memory_allocated, on CPU the
peak RSS growth of a fresh process over its RSS once the model is built (each configuration
runs in its own subprocess, so peaks never mix). Also `x_vs_16`: sec/step relative to 16 px
of the same family, measured in the same run. Models use the family defaults with the given
width (the presets' width 32-64 scales cost further); random data, since cost does not depend on it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(family: str, res: int, steps: int, width: int, batch: int, device: str, threads: int) -> dict:
    import numpy as np
    import torch

    from ganaug.config import load_config
    from ganaug.training import GANTrainer

    torch.set_num_threads(threads)
    cfg = load_config(None, [
        f"model.family={family}", f"model.width={width}", "model.max_width=128",
        *(["model.res_blocks=3"] if family == "cyclegan" else []),  # a key of another family is an error
        f"data.resolution={res}", "data.channels=3", f"training.batch_size={batch}", f"training.steps={steps + 1}",
        "training.r1_every=2", "training.pl_every=2", "training.r1_gamma=0.1",
        f"training.use_gpu={'true' if device == 'cuda' else 'false'}",
    ])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4 * batch, res, res, 3), dtype=np.uint8)
    tr = GANTrainer(cfg, images, np.arange(len(images)) % 10, [str(i) for i in range(10)], device=device)
    base = _rss_mib()
    tr.train_step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.train_step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base  # ru_maxrss: KiB
    return {"family": family, "resolution": res, "sec_per_step": (time.perf_counter() - t0) / steps,
            "peak_mib": round(max(peak, 0.0), 1),
            "params_g": sum(p.numel() for p in tr.G_ema.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--families", default="dcgan,cgan,stylegan2,pix2pix,cyclegan")
    ap.add_argument("--resolutions", default="16,32,64,128")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", nargs=2, metavar=("FAMILY", "RES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.steps, args.width, args.batch,
                                 args.device, args.threads)))
        return
    rows = []
    for family in args.families.split(","):
        for res in (int(r) for r in args.resolutions.split(",")):
            cmd = [sys.executable, os.path.abspath(__file__), "--one", family, str(res), "--steps", str(args.steps),
                   "--width", str(args.width), "--batch", str(args.batch), "--device", args.device,
                   "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
            if out.returncode != 0:
                rows.append({"family": family, "resolution": res, "error": out.stderr.strip().splitlines()[-1]})
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for r in rows:
        first = next((x for x in rows if x["family"] == r["family"] and "sec_per_step" in x), None)
        if "sec_per_step" in r and first:
            r["x_vs_16"] = round(r["sec_per_step"] / first["sec_per_step"], 2)
            r["sec_per_step"] = round(r["sec_per_step"], 4)
    print(json.dumps({"benchmark": "resolution", "device": args.device, "width": args.width, "batch": args.batch,
                      "steps": args.steps, "threads": args.threads, "results": rows}))


if __name__ == "__main__":
    main()
