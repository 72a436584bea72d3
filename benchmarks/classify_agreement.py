"""Does `ganaug classify` (Ray Train, data-parallel, streamed mix) agree with the in-process gain
arms of `ganaug evaluate` / benchmarks/quality.py at small scale?

    python benchmarks/classify_agreement.py --train parquet:KSHOT.parquet --checkpoint RUN_OR_CKPT \
        --ratio 0.2 [--heldout mnist:../shared/data/mnist[5000:10000]] [--seeds 3] [--steps 500]

Two arms, --seeds seeds each, through `run_classify` with the evaluate arms' settings (SmallCNN
width 32, AdamW 2e-3, cosine, classic augmentation, --steps optimiser steps of a global batch
of 64 = 2 workers x 32): real + classic, and real + classic + generated at synthetic fraction
--ratio (quality.py's `real_fraction` = 1 - ratio) streamed from --checkpoint. Prints one JSON
object with mean +- std per arm; compare with quality.py's `heldout` block for the same k-shot
file, checkpoint and ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", required=True, help="the k-shot real rows (a dataset spec)")
    p.add_argument("--heldout", default=f"mnist:{MNIST}[5000:10000]")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="")
    a = p.parse_args()

    import ray

    from ganaug.classify import load_classify_config
    from ganaug.classify_job import run_classify

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    root = a.out or tempfile.mkdtemp(prefix="ganaug-agreement-")
    arms = {"real+classic": [], "real+classic+gan": []}
    for seed in range(a.seeds):
        for arm in arms:
            sets = [f"data.train={a.train}", f"data.heldout={a.heldout}", "model.arch=smallcnn",
                    "model.width=32", f"training.steps={a.steps}", f"training.workers={a.workers}",
                    f"training.batch_size={64 // a.workers}", "training.lr=0.002", f"training.seed={seed}",
                    "training.augment=classic", f"storage.root={root}"]
            if arm.endswith("gan"):
                sets += [f"data.checkpoint={a.checkpoint}", f"data.ratio={a.ratio}"]
            report = run_classify(load_classify_config(None, sets), f"{arm.replace('+', '-')}-s{seed}",
                                  echo=lambda line: print(line, file=sys.stderr))
            arms[arm].append(report["accuracy"])
            print(f"{arm} seed {seed}: {report['accuracy']:.4f} ({report['steps']} steps, "
                  f"{report['seconds']} s)", file=sys.stderr)
    summary = {arm: {"mean": round(statistics.mean(v), 4), "std": round(statistics.pstdev(v), 4), "runs": v}
               for arm, v in arms.items()}
    diffs = [g - c for g, c in zip(arms["real+classic+gan"], arms["real+classic"])]
    print(json.dumps({"benchmark": "classify_agreement", "train": a.train, "heldout": a.heldout,
                      "checkpoint": a.checkpoint, "ratio": a.ratio, "steps": a.steps, "workers": a.workers,
                      "arms": summary, "gan_over_classic": round(statistics.mean(diffs), 4),
                      "gan_over_classic_std": round(statistics.pstdev(diffs), 4)}))


if __name__ == "__main__":
    main()
