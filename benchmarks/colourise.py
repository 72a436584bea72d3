"""pix2pix colourisation on CIFAR-10's real files, judged on held-out images (colour issue).

    .venv/bin/python benchmarks/colourise.py                    # the 30-minute CPU preset
    .venv/bin/python benchmarks/colourise.py --minutes 10       # a shorter budget

1. Train `jobs/configs/cifar10-pix2pix-colourise-cpu.yaml` through `ganaug train` (Ray Train,
   2 workers x 1 thread) on train.parquet[0:45000]: A = BT.601 luma of B (the `grayscale`
   source transform), B = the colour photo.
2. Take --heldout images of test.parquet (never trained or tuned on), make their luma, and
   colourise it with the final checkpoint's G_ema (the same Sampler `ganaug translate` uses).
3. Compare with the trivial baseline, the luma copied to the three channels: mean absolute
   error (L1, in uint8 steps) and PSNR over all pixels and channels, and the same on the
   chroma alone (the part the luma cannot give). Print one JSON line.
4. docs/cifar10_pix2pix_grid.png: held-out images in threes of rows: the luma (pix2pix's
   input), pix2pix's colouring, the real photo.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from quality import DATA, REPO, ganaug_train, log, write_interleaved_grid  # benchmarks/ is sys.path[0]

PRESET = REPO / "jobs" / "configs" / "cifar10-pix2pix-colourise-cpu.yaml"


def l1_psnr(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    d = pred.astype(np.float64) - target.astype(np.float64)
    mse = float((d ** 2).mean())
    return float(np.abs(d).mean()), float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def chroma(images: np.ndarray) -> np.ndarray:
    """BT.601 Cb and Cr (offset 128) of uint8 RGB: what colourisation must add to the luma."""
    x = images.astype(np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.stack([cb, cr], -1)


def judge(pred: np.ndarray, target: np.ndarray) -> dict:
    l1, psnr = l1_psnr(pred, target)
    c_l1, c_psnr = l1_psnr(chroma(pred), chroma(target))
    return {"l1": round(l1, 3), "psnr_db": round(psnr, 3), "chroma_l1": round(c_l1, 3),
            "chroma_psnr_db": round(c_psnr, 3)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=0.0, help="override the preset's training.max_minutes")
    p.add_argument("--heldout", type=int, default=2000, help="test.parquet images to judge on")
    p.add_argument("--out", default=str(REPO / "ganaug-store" / "bench" / "colourise"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-docs", action="store_true", help="do not write docs/cifar10_pix2pix_grid.png")
    args = p.parse_args(argv)

    from ganaug.data import load_dataset
    from ganaug.sampling import Sampler
    from ganaug.training.pairs import grayscale

    t0 = time.time()
    overrides = [f"data.spec=parquet:{DATA / 'cifar10' / 'train.parquet'}[0:45000]", *args.overrides]
    if args.minutes:
        overrides.append(f"training.max_minutes={args.minutes}")
    run = ganaug_train(PRESET, overrides, Path(args.out).resolve() / "runs", "cifar10-pix2pix-colourise")

    heldout_spec = f"parquet:{DATA / 'cifar10' / 'test.parquet'}[0:{args.heldout}]"
    target = load_dataset(heldout_spec, 32, 3).images
    grey = grayscale(target)
    colourised = Sampler.from_checkpoint(run["checkpoint"], device="cpu").translate(grey)
    result = {"benchmark": "colourise", "dataset": "cifar10", "judged_on": heldout_spec,
              "train": {key: run.get(key) for key in ("step", "seconds", "stopped_by", "data", "command",
                                                      "checkpoint")},
              "luma_baseline": judge(grey, target), "pix2pix": judge(colourised, target),
              "wall_s": round(time.time() - t0, 1)}
    result["beats_baseline"] = (result["pix2pix"]["l1"] < result["luma_baseline"]["l1"]
                                and result["pix2pix"]["psnr_db"] > result["luma_baseline"]["psnr_db"])
    if not args.no_docs:
        write_interleaved_grid([grey, colourised, target], REPO / "docs" / "cifar10_pix2pix_grid.png")
    log(json.dumps(result))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
