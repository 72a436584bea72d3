"""The low-data levers, each on its own, on the honest k-shot protocol (benchmarks/quality.py's).

    .venv/bin/python benchmarks/levers.py --dataset mnist --k 20
    .venv/bin/python benchmarks/levers.py --dataset cifar10 --k 500 --steps 1500
    .venv/bin/python benchmarks/levers.py --dataset mnist --k 20 --quick        # smoke run

What it measures (one JSON object, last stdout line and OUT/levers-DATASET-kK-ARMS.json):
- k images per class are drawn (subset seed 0) from the training split without its validation
  part and written to one Parquet file. Every GAN here trains through `ganaug train` on that
  file alone, for the same fixed number of steps (not minutes: the arms are compared at equal
  work, whatever else the machine runs), with `data.holdout` and `training.select_by: kid`,
  so each run keeps its `best` checkpoint. The GAN never sees the validation or held-out split.
- The levers, one at a time, against real + classic augmentation:
  * D augmentation: DiffAugment (color,translation,cutout) against ADA, cgan, last checkpoint;
  * checkpoint selection: the `best` checkpoint (lowest KID against the run's held-back rows)
    against the last one, for both augmentations;
  * restyled real images: a StyleGAN2 trained the same way restyles the k-shot images
    themselves through `ganaug translate --restyle` (Ray Data), an extra arm beside its own
    generated images.
- Each arm's pool (gan_per_class x classes images) mixes into the classifier's batches at a
  fixed real share (--real-fraction), no filter, so an arm differs from another only by its
  lever. Each arm is scored on the validation part AND on the held-out split; nothing is chosen
  by the held-out numbers (the validation column is what a user would choose by).

GAN runs are kept in OUT/runs (a rerun with the same OUT reuses a finished run and its summary).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import quality  # noqa: E402  (benchmarks/quality.py: the protocol, the subset file, `ganaug train`)

REPO = quality.REPO
DIFFAUGMENT = "color,translation,cutout"
ADA_TARGET = 0.6  # the paper's r_t target (ganaug's default `training.ada_target`)


def train_cached(args, family: str, name: str, overrides: list[str]) -> dict:
    """`ganaug train` once per OUT: the final JSON is kept beside the run and reused."""
    runs = Path(args.out) / "runs"
    cached = runs / f"{name}.summary.json"
    if cached.is_file():
        quality.log(f"reusing {name}: {cached}")
        return json.loads(cached.read_text())
    s = quality.ganaug_train(quality.preset_for(args, family), overrides, runs, name)
    cached.write_text(json.dumps(s))
    return s


def gan_overrides(args, spec: str, augment: str, steps: int | None = None) -> list[str]:
    steps = steps or args.steps
    every = max(1, steps // args.checkpoints)
    out = [f"data.spec={spec}", f"data.holdout={args.holdout}", "training.select_by=kid",
           f"training.select_samples={args.select_samples}", f"training.augment={augment}",
           f"training.steps={steps}", "training.max_minutes=0", f"training.checkpoint_every={every}",
           f"training.report_every={min(50, every)}", "training.keep_checkpoints=2"]
    if augment == "ada":
        # p moves 0 -> 1 in ada_kimg thousand images: the default (100) is sized for long runs.
        out += [f"training.ada_kimg={args.ada_kimg}", f"training.ada_target={args.ada_target}"]
    return out + list(args.gan_set)


def checkpoints_of(summary: dict) -> dict[str, str]:
    """{"last": the final checkpoint, "best": the one best.json names}."""
    from ganaug import checkpoint

    best = checkpoint.read_best(summary["run"])
    return {"last": summary["checkpoint"], "best": best["checkpoint"] if best else summary["checkpoint"],
            "best_step": best.get("step") if best else None, "best_kid": best.get("kid") if best else None}


def restyled_pool(args, ckpt_run: str, subset_spec: str, group: str, native: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """`ganaug translate --restyle GROUP --variants V` over the k-shot file; the set read back."""
    from ganaug.data import load_dataset

    part = f"-first{args.restyle_per_class}" if args.restyle_per_class else ""
    out = Path(args.out) / "restyled" / f"{args.dataset}-k{args.k}{part}-{group}"  # one set per input file
    cmd = [sys.executable, "-m", "ganaug.cli", "translate", "--checkpoint", ckpt_run, "--input", subset_spec,
           "--out", str(out), "--restyle", group, "--style-seed", "0", "--variants", str(args.variants),
           "--project-steps", str(args.project_steps), "--rows-per-shard", "500"]
    quality.log(f"translate: {' '.join(cmd[3:])}")
    t0 = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise SystemExit(f"ganaug translate --restyle {group} failed:\n{proc.stderr[-3000:]}")
    result = json.loads([ln for ln in proc.stdout.splitlines() if ln.strip()][-1])
    ds = load_dataset(f"parquet:{out}", native, args.channels)
    write_restyle_grid(load_dataset(subset_spec, native, args.channels), ds, args.variants,
                       Path(args.out) / f"restyle-{args.dataset}-k{args.k}{part}-{group}.png")
    info = {"command": "ganaug " + " ".join(cmd[3:]), "rows": int(len(ds.images)), "seconds": round(time.time() - t0, 1),
            "projection": result.get("projection")}
    return ds.images, ds.labels, info


def write_restyle_grid(inputs, restyled, variants: int, path: Path) -> None:
    """One row per class: its first k-shot image, then that image's restyled variants.

    Output row r is input row r // variants (the translate contract); the labels confirm it."""
    from ganaug.sampling import png_bytes

    rows = []
    for c in np.unique(inputs.labels):
        i = int(np.flatnonzero(inputs.labels == c)[0])
        own = slice(i * variants, (i + 1) * variants)
        if not (restyled.labels[own] == c).all():
            raise SystemExit(f"restyled rows {own.start}..{own.stop - 1} do not carry input row {i}'s label {c}")
        rows.append(np.concatenate([inputs.images[i], *restyled.images[own]], axis=1))
    path.write_bytes(png_bytes(np.concatenate(rows, axis=0), upscale=2))


def main(argv=None) -> dict:
    import torch

    from ganaug.data import load_dataset
    from ganaug.metrics.downstream import kshot_indices
    from ganaug.metrics.selection import GainSplit

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=("mnist", "cifar10"))
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--steps", type=int, default=1500, help="training steps of every GAN (equal work per arm)")
    p.add_argument("--stylegan2-steps", type=int, default=0, help="steps of the restyle arm's StyleGAN2 "
                   "(default --steps; it only restyles, so it is not one of the equal-work cgan arms)")
    p.add_argument("--splits", default="val,heldout", help="where each arm is scored: val, heldout or both")
    p.add_argument("--checkpoints", type=int, default=6, help="checkpoints (KID judgements) per run")
    p.add_argument("--holdout", type=float, default=0.1, help="data.holdout: the share KID judges against")
    p.add_argument("--select-samples", type=int, default=500)
    p.add_argument("--ada-kimg", type=float, default=20.0)
    p.add_argument("--ada-target", type=float, default=ADA_TARGET,
                   help="the r_t target of ADA's controller (0.6 is the paper's, for its logistic loss); "
                        "another value names the cgan-ada run and arm apart, so both can share OUT")
    p.add_argument("--arms", default="diffaugment,ada,restyle")
    p.add_argument("--restyle-groups", default="fine")
    p.add_argument("--variants", type=int, default=5, help="restyled rows per k-shot image")
    p.add_argument("--restyle-per-class", type=int, default=0,
                   help="restyle only the first N k-shot images of each class (0: all); projection "
                        "costs the same per image, so this bounds the arm's time at large k")
    p.add_argument("--project-steps", type=int, default=200)
    p.add_argument("--real-fraction", type=float, default=0.8)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--gain-steps", type=int, default=500)
    p.add_argument("--gan-per-class", type=int, default=100)
    p.add_argument("--gan-set", action="append", default=[], metavar="KEY=VALUE", help="override for every GAN")
    p.add_argument("--out", default=str(REPO / "ganaug-store" / "bench" / "levers"))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--train-only", action="store_true", help="train (or reuse) the GANs, then stop")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.checkpoints, args.seeds, args.gain_steps, args.gan_per_class = 40, 2, 1, 20, 10
        args.project_steps, args.variants, args.select_samples = 5, 1, 50
    args.out = str(Path(args.out).resolve())
    # a non-default ADA target names its run, arm and result file apart, so both can share OUT
    ada_tag = "" if args.ada_target == ADA_TARGET else f"-target{args.ada_target:g}"
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    torch.set_num_threads(os.cpu_count() or 1)
    t_start = time.time()

    proto = quality.protocol(args.dataset)
    args.channels = proto.channels
    real = load_dataset(proto.train_minus_val, proto.native, proto.channels)
    val = load_dataset(proto.val, proto.native, proto.channels)
    held = load_dataset(proto.heldout, proto.native, proto.channels)
    names = list(real.class_names)
    idx = kshot_indices(real.labels, args.k, 0, len(names))
    subset = quality.write_subset(real.images[idx], real.labels[idx], names,
                                  Path(args.out) / "kshot" / f"{proto.name}-k{args.k}.parquet")
    pool_real = (real.images, real.labels)
    splits = {name: GainSplit(pool_real, (ds.images, ds.labels), names, args.k, seeds=list(range(args.seeds)),
                              steps=args.gain_steps, gan_per_class=args.gan_per_class, subset_seed=0,
                              hflip=proto.hflip, device="cpu")
              for name, ds in (("val", val), ("heldout", held)) if name in args.splits.split(",")}
    n_pool = args.gan_per_class * len(names)

    # 1. The GANs: same k-shot file, same steps, one lever apart.
    runs: dict[str, dict] = {}
    if "diffaugment" in arms:
        runs["cgan-diffaugment"] = train_cached(args, "cgan", f"{proto.name}-k{args.k}-cgan-diffaugment",
                                                gan_overrides(args, subset, DIFFAUGMENT))
    if "ada" in arms:
        runs[f"cgan-ada{ada_tag}"] = train_cached(args, "cgan", f"{proto.name}-k{args.k}-cgan-ada{ada_tag}",
                                                  gan_overrides(args, subset, "ada"))
    if "restyle" in arms:
        runs["stylegan2-ada"] = train_cached(args, "stylegan2", f"{proto.name}-k{args.k}-stylegan2-ada",
                                             gan_overrides(args, subset, "ada", args.stylegan2_steps))
    for name, s in runs.items():
        if s["data"]["spec"] != subset:
            raise SystemExit(f"{name} trained on {s['data']['spec']}, not the k-shot file {subset}")

    if args.train_only:
        print(json.dumps({"benchmark": "levers", "trained": {n: s.get("checkpoint") for n, s in runs.items()}}))
        return {}

    # 2. The pools: (images, labels) at the data's own size, one per arm.
    pools: dict[str, tuple] = {}
    arm_info: dict[str, dict] = {}
    same_as: dict[str, str] = {}  # an arm whose pool is another's (best is the last checkpoint)
    for name, s in runs.items():
        cks = checkpoints_of(s)
        for which in ("last", "best"):
            arm = f"{name} {which}"
            arm_info[arm] = {"checkpoint": cks[which], "best_step": cks["best_step"], "best_kid": cks["best_kid"]}
            if which == "best" and cks["best"] == cks["last"]:
                same_as[arm] = f"{name} last"
                continue
            pools[arm], _ = quality.sample_native(cks[which], n_pool, 0, 1.0, proto.native)
    if "restyle" in arms:
        run_dir = runs["stylegan2-ada"]["run"]
        restyle_input = subset
        if args.restyle_per_class:
            first = np.concatenate([np.flatnonzero(real.labels[idx] == c)[:args.restyle_per_class]
                                    for c in range(len(names))])
            restyle_input = quality.write_subset(
                real.images[idx][first], real.labels[idx][first], names,
                Path(args.out) / "kshot" / f"{proto.name}-k{args.k}-first{args.restyle_per_class}.parquet")
        for group in [g.strip() for g in args.restyle_groups.split(",") if g.strip()]:
            images, labels, info = restyled_pool(args, run_dir, restyle_input, group, proto.native)
            pools[f"restyle {group}"] = (images, labels)
            arm_info[f"restyle {group}"] = info

    # 3. Every arm against the one real+classic baseline per split, paired by classifier seed.
    table: dict[str, dict] = {}
    for split_name, split in splits.items():
        base = split.baseline()
        quality.log(f"{split_name}: real+classic {np.mean(base):.4f}")
        for arm, pool in pools.items():
            g = split.gain(pool, args.real_fraction, base)
            row = table.setdefault(arm, {**arm_info.get(arm, {})})
            row[split_name] = {"accuracy": round(g.accuracy, 4), "baseline": round(g.baseline_accuracy, 4),
                               "gain": round(g.mean, 4), "gain_std": round(g.std, 4)}
            quality.log(f"{split_name} {arm}: gain {g.mean:+.4f} ± {g.std:.4f}")
    for arm, other in same_as.items():
        table[arm] = {**arm_info[arm], **{k: v for k, v in table[other].items() if k in splits},
                      "same_pool_as": other}

    summary = {
        "benchmark": "levers", "dataset": proto.name, "k": args.k, "kshot_file": subset,
        "judged_on": {"val": proto.val, "heldout": proto.heldout}, "judged_at_px": proto.native,
        "gans": {name: {key: s.get(key) for key in ("step", "seconds", "stopped_by", "data", "command", "run")}
                 for name, s in runs.items()},
        "arms": table,
        "settings": {key: getattr(args, key) for key in ("steps", "checkpoints", "holdout", "select_samples",
                                                         "ada_kimg", "ada_target", "real_fraction", "seeds",
                                                         "gain_steps", "gan_per_class", "variants", "project_steps",
                                                         "quick", "stylegan2_steps", "restyle_per_class", "splits")},
        "seconds": round(time.time() - t_start, 1), "load_average": os.getloadavg(),
    }
    # one file per k-shot file and arm list: separate invocations (same OUT, same runs) stay apart
    name = f"levers-{proto.name}-k{args.k}-{'-'.join(arms)}" + (ada_tag if "ada" in arms else "")
    (Path(args.out) / f"{name}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
