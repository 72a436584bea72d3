"""CycleGAN on CIFAR-10's colour photos: unpaired cat -> dog, judged on held-out cats (colour issue).

    .venv/bin/python benchmarks/cyclegan.py                   # the 30-minute CPU preset
    .venv/bin/python benchmarks/cyclegan.py --minutes 10      # a shorter budget

1. Train `jobs/configs/cifar10-cyclegan-cpu.yaml` through `ganaug train` (Ray Train, 2 workers x
   1 thread): A = cats, B = dogs of train.parquet, drawn independently (no aligned pairs).
2. Translate every cat of test.parquet (never trained or tuned on) with the final checkpoint's
   G_ema, A -> B (the Sampler `ganaug translate` uses).
3. Judge with the quality benchmark's domain classifier and feature space (the SmallCNN trained on
   train[0:5000], all 10 classes; the same cache entry `quality.py --dataset cifar10` uses):
   the share of the cats it reads as dog and as cat, before and after; domain FID and KID of the
   cats against test.parquet's dogs, before and after; and how much of each input survives
   (mean absolute pixel change, uint8 steps). Print one JSON line.
4. docs/cifar10_cyclegan_grid.png: held-out cats, each row of ten above its translation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import quality  # benchmarks/ is sys.path[0]

PRESET = quality.REPO / "jobs" / "configs" / "cifar10-cyclegan-cpu.yaml"
SOURCE, TARGET = "cat", "dog"


def judge_translation(classifier, sources: np.ndarray, translated: np.ndarray, targets: np.ndarray,
                      class_names: list[str], source: str, target: str) -> dict:
    """How far `translated` moved from `sources` towards `targets`, in the classifier's eyes and
    in its feature space (FID/KID), next to the same measures of the untranslated sources."""
    from ganaug.metrics.classifier import predict
    from ganaug.metrics.distribution import fid, kid
    from ganaug.metrics.features import DomainFeatures

    features = DomainFeatures(classifier)
    target_features = features(targets)
    s, t = class_names.index(source), class_names.index(target)

    def reading(images: np.ndarray, distances: bool = True) -> dict:
        pred = predict(classifier, images)
        out = {f"read_as_{target}": round(float((pred == t).mean()), 4),
               f"read_as_{source}": round(float((pred == s).mean()), 4)}
        if distances:  # (the targets' distance to themselves is 0: their row has shares only)
            f = features(images)
            out.update({f"fid_to_{target}": round(fid(target_features, f), 3),
                        f"kid_to_{target}": round(kid(target_features, f).mean, 4)})
        return out

    change = np.abs(translated.astype(np.int16) - sources.astype(np.int16)).mean()
    return {"inputs": reading(sources), "translated": reading(translated),
            "real_targets": reading(targets, distances=False), "mean_pixel_change": round(float(change), 2)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=0.0, help="override the preset's training.max_minutes")
    p.add_argument("--out", default=str(quality.REPO / "ganaug-store" / "bench" / "cyclegan"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--cache-dir", default="", help="the domain classifier's cache (default: quality.py's, OUT/cache)")
    p.add_argument("--no-docs", action="store_true", help="do not write docs/cifar10_cyclegan_grid.png")
    args = p.parse_args(argv)

    from ganaug.data import load_dataset
    from ganaug.sampling import Sampler

    t0 = time.time()
    cifar = quality.DATA / "cifar10"
    overrides = list(args.overrides) + ([f"training.max_minutes={args.minutes}"] if args.minutes else [])
    name = f"cifar10-cyclegan-{SOURCE}2{TARGET}"
    run = quality.ganaug_train(PRESET, overrides, Path(args.out).resolve() / "runs", name)

    # The quality benchmark's judge: its domain classifier, from its cache when that run came first.
    cache = ["--cache-dir", args.cache_dir] if args.cache_dir else []
    judge = quality.Judge(quality.parse_args(["--dataset", "cifar10", *cache]), quality.protocol("cifar10"))
    test = f"parquet:{cifar / 'test.parquet'}"
    sources = load_dataset(f"{test}{{classes={SOURCE}}}", 32, 3).images
    targets = load_dataset(f"{test}{{classes={TARGET}}}", 32, 3).images
    translated = Sampler.from_checkpoint(run["checkpoint"], device="cpu").translate(sources)
    result = {"benchmark": "cyclegan", "dataset": "cifar10", "task": f"{SOURCE} -> {TARGET}",
              "judged_on": f"{test}{{classes={SOURCE}}} ({len(sources)} images) against {{classes={TARGET}}}",
              "train": {key: run.get(key) for key in ("step", "seconds", "stopped_by", "data", "command",
                                                      "checkpoint")},
              **judge_translation(judge.domain_classifier(), sources, translated, targets, judge.class_names,
                                  SOURCE, TARGET),
              "wall_s": round(time.time() - t0, 1)}
    if not args.no_docs:
        quality.write_interleaved_grid([sources, translated], quality.REPO / "docs" / "cifar10_cyclegan_grid.png")
    quality.log(json.dumps(result))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
