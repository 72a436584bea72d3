"""Quality benchmark on MNIST (docs/ARCHITECTURE.md §6): train, sample, judge on held-out real digits.

    .venv/bin/python benchmarks/quality_mnist.py --minutes 20 --families cgan,stylegan2
    .venv/bin/python benchmarks/quality_mnist.py --quick          # smoke run, a few minutes

Protocol (the numbers are those `ganaug evaluate` reports: the same ganaug.metrics code):
1. Each family trains with GANTrainer in a plain process (torch.set_num_threads(--threads), no
   Ray) on the TRAINING split mnist[0:5000] from its preset jobs/configs/mnist-<family>.yaml,
   until `training.steps` or the wall-clock budget --minutes, whichever comes first. The
   families train in parallel processes (--parallel, default) and are judged one after another.
2. G_ema samples --num images, balanced, exactly as `ganaug generate --labels uniform --seed 0`
   (row i: seed i, label i mod 10), at --truncation.
3. CAS: the shared SmallCNN trained ONLY on those samples, tested on the held-out rows
   [5000:10000]; reference: the same CNN and step budget on the 5,000 real training images.
4. FID/KID/precision/recall/density/coverage in the domain feature space (the SmallCNN trained
   on the training split), label fidelity, diversity, memorisation, and the augmentation gain
   at k = --ks per class (four arms, --seeds seeds, mean +- std). The GAN arms draw from the GAN
   trained on the WHOLE training split (more real data than the k-shot arms see); with
   --kshot, a GAN per k is also trained on exactly the k-shot subset (the honest low-data
   setting) and its gain is reported next to it.
5. Sample grids (docs/mnist_<family>_grid.png), checkpoints and report.json/report.md per
   family under --out/<family>/, and one JSON summary as the last stdout line.

Held-out rows [5000:] are read only for the final measurement. For tuning use --split val:
train on [0:4000] and judge on [4000:5000]; [5000:] is then never opened.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MNIST_DIR = (REPO / ".." / "shared" / "data" / "mnist").resolve()
FAMILIES = ("cgan", "stylegan2")
# Overrides on top of the presets for a starved CPU (2 shared cores): 16 px, narrow nets, small
# batches (more steps per second). The cgan preset's mode-seeking term and ACGAN head stay on:
# without the first, G ignores z within a class (val CAS 0.56-0.60, diversity ratio ~0.2); with it
# 0.91, and with both 0.94 at 4,000 steps (--split val tuning, 1 thread). The presets themselves
# stay sized for a GPU run. Recorded in the summary as the config actually used.
PROFILES = {
    "preset": {"resolution": 0, "cgan": [], "stylegan2": []},
    "cpu-small": {
        "resolution": 16,
        "cgan": ["model.width=16", "model.max_width=64", "training.batch_size=32"],
        "stylegan2": ["model.width=16", "model.max_width=64", "training.batch_size=32", "training.r1_gamma=0.1",
                      "training.augment="],
    },
}
ALL_METRICS = ("fid", "kid", "prdc", "fid_per_class", "fidelity", "diversity", "memorisation", "cas", "gain")


def log(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def splits(split: str) -> tuple[str, str]:
    """(train spec, held-out spec). 'test': the protocol; 'val': tuning inside [0:5000] only."""
    if split == "test":
        return f"mnist:{MNIST_DIR}[0:5000]", f"mnist:{MNIST_DIR}[5000:10000]"
    if split == "val":
        return f"mnist:{MNIST_DIR}[0:4000]", f"mnist:{MNIST_DIR}[4000:5000]"
    raise SystemExit(f"--split must be test or val, got {split!r}")


def family_config(family: str, args, train_spec: str):
    from ganaug.config import load_config

    prof = PROFILES[args.profile]
    overrides = list(prof[family]) + list(getattr(args, f"{family}_set") or [])
    resolution = args.resolution or prof["resolution"]
    if resolution:
        overrides.append(f"data.resolution={resolution}")
    cfg = load_config(REPO / "jobs" / "configs" / f"mnist-{family}.yaml", overrides)
    cfg.data.spec = train_spec  # the preset's path is relative to the repo root; pin it
    if args.max_steps:
        cfg.training.steps = int(args.max_steps)
    return cfg


# ----------------------------------------------------------------------------- training


def train_family(family: str, args, train_spec: str, *, images=None, labels=None, tag: str = "",
                 minutes: float | None = None) -> dict:
    """Train one GAN within the wall-clock budget; save the checkpoint; return a summary.

    Runs in its own process (spawned), so it sets its own thread count.
    """
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from ganaug import checkpoint
    from ganaug.data import load_dataset
    from ganaug.sampling import Sampler, png_bytes
    from ganaug.training.loop import GANTrainer

    cfg = family_config(family, args, train_spec)
    res, ch = cfg.data.resolution, cfg.data.channels
    if images is None:
        ds = load_dataset(train_spec, res, ch)
        images, labels, class_names = ds.images, ds.labels, list(ds.class_names)
    else:
        class_names = [str(i) for i in range(10)]
    name = family + tag
    run_dir = Path(args.out) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    budget_s = 60.0 * (args.minutes if minutes is None else minutes)
    trainer = GANTrainer(cfg, images, labels, class_names, device="cpu")
    tc = cfg.training
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.write_text("")
    log(f"{name}: training on {len(images)} images ({res}x{res}), up to {tc.steps} steps or {budget_s / 60:.1f} min, "
        f"G {sum(p.numel() for p in trainer.G.parameters()):,} / D {sum(p.numel() for p in trainer.D.parameters()):,} params")
    t0 = time.perf_counter()
    c0 = time.process_time()
    sums: dict[str, float] = {}
    n_win = 0
    t_win = t0
    report_every = max(1, int(args.report_every))
    stopped = "steps"
    with metrics_path.open("a") as mf:
        while trainer.step < tc.steps:
            if time.perf_counter() - t0 >= budget_s:
                stopped = "budget"
                break
            stats = trainer.train_step()
            n_win += 1
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if trainer.step % report_every == 0:
                now = time.perf_counter()
                row = {k: v / n_win for k, v in sums.items()}
                row.update(step=trainer.step, images_seen=trainer.images_seen, seconds=round(now - t0, 1),
                           images_per_s=n_win * tc.batch_size / max(now - t_win, 1e-9))
                mf.write(json.dumps(row) + "\n")
                mf.flush()
                log(f"{name}: step {trainer.step} {now - t0:.0f}s loss_g {row.get('loss_g', float('nan')):.3f} "
                    f"loss_d {row.get('loss_d', float('nan')):.3f} ada_p {row.get('ada_p', 0):.2f}")
                sums, n_win, t_win = {}, 0, now
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    meta = trainer.model_meta()
    meta.update(config=cfg.to_dict(), config_digest=cfg.digest(), run=f"bench-quality-{name}",
                step=trainer.step, images_seen=trainer.images_seen)
    sampler = Sampler(trainer.G_ema, meta, device="cpu")
    grid = sampler.grid(per_class=10, seed=0, truncation=args.truncation)
    png = png_bytes(grid, upscale=2)
    ckpt = run_dir / "checkpoints" / f"step-{trainer.step:08d}"
    w = trainer.weights()
    checkpoint.save_checkpoint(str(ckpt), meta=meta, generator_ema=w["generator_ema"], generator=w["generator"],
                               discriminator=w["discriminator"], train_state=trainer.state_dict(include_weights=False),
                               samples_png=png)
    if not tag and not args.no_docs:
        docs = REPO / "docs"
        docs.mkdir(exist_ok=True)
        (docs / f"mnist_{family}_grid.png").write_bytes(png)
    log(f"{name}: stopped by {stopped} at step {trainer.step} after {wall:.0f}s wall / {cpu:.0f}s CPU")
    return {"family": family, "name": name, "checkpoint": str(ckpt), "steps": trainer.step,
            "images_seen": trainer.images_seen, "stopped_by": stopped, "train_wall_s": round(wall, 1),
            "train_cpu_s": round(cpu, 1), "budget_s": budget_s, "threads": args.threads,
            "config": cfg.to_dict(), "metrics_jsonl": str(metrics_path),
            "ada_p": float(trainer.augment.p)}


# ----------------------------------------------------------------------------- evaluation


def sample(ckpt: str, num: int, truncation: float):
    from ganaug.evaluation import sample_balanced
    from ganaug.sampling import Sampler

    sampler = Sampler.from_checkpoint(ckpt, device="cpu")
    return sample_balanced(sampler, num, 0, truncation)


def sample_filtered(ckpt: str, num: int, truncation: float, spec: str):
    """Rows 0..num-1 of `ganaug generate --labels uniform --seed 0 --filter SPEC`, and the
    filter's counts (candidates drawn, rejection rate, rows that kept a rejected candidate).

    The fidelity judge is the filter's own: a domain CNN trained on the checkpoint's training
    data (the training split), never on the held-out rows."""
    import numpy as np

    from ganaug.evaluation import uniform_labels
    from ganaug.generation import candidates_drawn, generate_rows, parse_filter
    from ganaug.sampling import Sampler

    sampler = Sampler.from_checkpoint(ckpt, device="cpu")
    entry, arg = parse_filter(spec, sampler)
    image_filter = entry.build(arg, sampler)
    labels = uniform_labels(sampler, num)
    images = np.empty((num, sampler.resolution, sampler.resolution, sampler.channels), np.uint8)
    candidates = fallback = 0
    for a in range(0, num, 1024):
        rows = np.arange(a, min(a + 1024, num))
        images[rows], seeds, fb = generate_rows(sampler, rows, labels[rows], 0, truncation, num, image_filter)
        candidates += candidates_drawn(seeds, a, 0, num)
        fallback += fb
    info = {"spec": spec, "candidates": candidates, "rejection_rate": round(1 - num / max(candidates, 1), 4),
            "fallback_rows": fallback}
    return (images, labels), info


class Judge:
    """Shared real data, domain features (cached on disk) and the real-trained CAS reference."""

    def __init__(self, args, train_spec: str, heldout_spec: str, resolution: int):
        from ganaug.data import load_dataset
        from ganaug.metrics import EvalOptions
        from ganaug.metrics.features import DomainSettings

        tr = load_dataset(train_spec, resolution, 1)
        ho = load_dataset(heldout_spec, resolution, 1)
        self.train, self.heldout = (tr.images, tr.labels), (ho.images, ho.labels)
        self.class_names = list(tr.class_names)
        self.args = args
        self.options = EvalOptions(domain=DomainSettings(epochs=args.domain_epochs), cas_epochs=args.cas_epochs,
                                   gain_steps=args.gain_steps, gan_per_class=args.gan_per_class, device="cpu")
        self.cache_dir = args.cache_dir or str(Path(args.out) / "cache")
        self._cas_real = None

    def cas_kwargs(self, n_syn: int) -> dict:
        o = self.options
        steps = o.cas_epochs * math.ceil(max(n_syn, len(self.train[0])) / o.classifier.batch_size)
        return {"seeds": list(range(self.args.seeds)), "steps": steps, "device": "cpu", "config": o.classifier}

    def evaluate(self, synthetic, metrics: list[str], gain_pools=None, subset_seed=None) -> dict:
        """evaluate_arrays, except that the real-trained CAS reference is computed once and reused
        (it does not depend on the synthetic set: same data, seeds and step budget)."""
        from ganaug.metrics import CASReport, evaluate_arrays
        from ganaug.metrics.downstream import classification_accuracy_score
        from ganaug.metrics.report import to_jsonable, verdicts

        a = self.args
        others = [m for m in metrics if m != "cas"]
        extra = {"subset_seed": subset_seed} if subset_seed is not None else {}
        t = time.time()
        report = evaluate_arrays(self.train, self.heldout, synthetic, self.class_names, others, ks=a.ks,
                                 seeds=a.seeds, cache_dir=self.cache_dir, options=self.options,
                                 gain_pools=gain_pools, **extra)
        if "cas" in metrics:
            t_cas = time.time()
            kw = self.cas_kwargs(len(synthetic[0]))
            syn = classification_accuracy_score(synthetic, self.heldout, self.class_names, **kw)
            if self._cas_real is None:
                log(f"CAS reference: SmallCNN on {len(self.train[0])} real images, {kw['steps']} steps x {a.seeds} seeds")
                self._cas_real = classification_accuracy_score(self.train, self.heldout, self.class_names, **kw)
            report["metrics"]["cas"] = to_jsonable(CASReport(syn, self._cas_real))
            report["timing_s"]["cas"] = round(time.time() - t_cas, 3)
            report["settings"]["metrics"] = list(metrics)
            report["verdicts"] = to_jsonable(verdicts(report["metrics"]))
        log(f"metrics {','.join(metrics)} in {time.time() - t:.0f}s")
        return report


def headline(report: dict) -> dict:
    m = report["metrics"]
    out: dict = {}
    if "cas" in m:
        c = m["cas"]
        out["cas"] = c["synthetic"]["accuracy"]
        out["cas_std"] = c["synthetic"]["accuracy_std"]
        out["cas_real_reference"] = c["real"]["accuracy"]
        out["cas_per_class"] = c["synthetic"]["per_class"]
    if "fid" in m:
        out["fid"] = m["fid"]["value"]
        out["fid_real_reference"] = m["fid"]["reference"]
    if "kid" in m:
        out["kid"] = m["kid"]["value"]["mean"]
        out["kid_real_reference"] = m["kid"]["reference"]["mean"]
    if "prdc" in m:
        out["precision"], out["recall"] = m["prdc"]["value"]["precision"], m["prdc"]["value"]["recall"]
        out["density"], out["coverage"] = m["prdc"]["value"]["density"], m["prdc"]["value"]["coverage"]
        out["precision_recall_real_reference"] = [m["prdc"]["reference"]["precision"],
                                                  m["prdc"]["reference"]["recall"]]
    if "fidelity" in m:
        out["label_fidelity"] = m["fidelity"]["accuracy"]
    if "diversity" in m:
        out["diversity_min_ratio"] = m["diversity"]["min_ratio"]
        out["collapse"] = m["diversity"]["collapse"]
    if "memorisation" in m:
        out["memorised"] = m["memorisation"]["memorised"]
    if "gain" in m:
        out["gain"] = gain_table(m["gain"])
    return out


def gain_table(g: dict) -> dict:
    table = {}
    for row in g["ks"]:
        table[f"k={row['k']}"] = {
            **{arm: {"mean": v["mean"], "std": v["std"]} for arm, v in row["arms"].items()},
            "gan_over_classic": row["gan_over_classic"], "gan_over_classic_std": row["gan_over_classic_std"],
            "gan_over_real": row["gan_gain"], "gan_over_real_std": row["gan_gain_std"],
        }
    return table


def run_kshot(family: str, args, judge: Judge, train_spec: str) -> tuple[dict, dict]:
    """A GAN per k trained on exactly the k-shot subset (subset seed 0) the gain arms use."""
    from ganaug.evaluation import sample_balanced
    from ganaug.metrics.downstream import kshot_indices
    from ganaug.sampling import Sampler

    pools, info = {}, {}
    for k in args.ks:
        idx = kshot_indices(judge.train[1], k, 0, len(judge.class_names))
        s = train_family(family, args, train_spec, images=judge.train[0][idx], labels=judge.train[1][idx],
                         tag=f"-kshot{k}", minutes=args.kshot_minutes)
        sampler = Sampler.from_checkpoint(s["checkpoint"], device="cpu")
        pools[k] = sample_balanced(sampler, args.gan_per_class * len(judge.class_names), 0, args.truncation)
        info[k] = {key: s[key] for key in ("steps", "train_wall_s", "train_cpu_s", "stopped_by", "checkpoint")}
    return pools, info


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=20.0, help="wall-clock training budget per model")
    p.add_argument("--families", default="cgan,stylegan2")
    p.add_argument("--out", default=str(REPO / "ganaug-store" / "bench" / "quality"))
    p.add_argument("--quick", action="store_true", help="smoke run: tiny budgets everywhere")
    p.add_argument("--split", default="test", choices=("test", "val"),
                   help="test: train [0:5000], judge [5000:]; val: train [0:4000], judge [4000:5000] (tuning)")
    p.add_argument("--truncation", type=float, default=1.0)
    p.add_argument("--filter", default="", metavar="SPEC",
                   help="also judge the set `ganaug generate --filter SPEC` makes, e.g. fidelity:0.9 "
                        "(reported next to the unfiltered headline, never instead of it)")
    p.add_argument("--num", type=int, default=10000, help="synthetic images for the metrics (balanced)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parallel", action=argparse.BooleanOptionalAction, default=True,
                   help="train the families in parallel processes")
    p.add_argument("--profile", default="preset", choices=sorted(PROFILES),
                   help="preset: jobs/configs as they are; cpu-small: the overrides in PROFILES (starved CPU)")
    p.add_argument("--resolution", type=int, default=0, help="override data.resolution of the presets")
    p.add_argument("--max-steps", type=int, default=0, help="override training.steps")
    p.add_argument("--report-every", type=int, default=50)
    p.add_argument("--cgan-set", action="append", default=[], metavar="KEY=VALUE", help="config override for cgan")
    p.add_argument("--stylegan2-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--metrics", default=",".join(ALL_METRICS))
    p.add_argument("--ks", default="20")
    p.add_argument("--seeds", type=int, default=3, help="classifier seeds for CAS and the gain arms")
    p.add_argument("--cas-epochs", type=int, default=15)
    p.add_argument("--gain-steps", type=int, default=500)
    p.add_argument("--gan-per-class", type=int, default=100)
    p.add_argument("--domain-epochs", type=int, default=15)
    p.add_argument("--kshot", action="store_true", help="also train a GAN on each k-shot subset (honest low-data gain)")
    p.add_argument("--kshot-minutes", type=float, default=5.0)
    p.add_argument("--cache-dir", default="", help="domain-feature cache (default: OUT/cache)")
    p.add_argument("--no-docs", action="store_true", help="do not write docs/mnist_<family>_grid.png")
    p.add_argument("--eval-only", action="store_true", help="reuse the newest checkpoints under --out")
    a = p.parse_args(argv)
    if a.quick:
        a.minutes = min(a.minutes, 0.5)
        a.max_steps = a.max_steps or 20
        a.num, a.seeds, a.cas_epochs, a.gain_steps, a.domain_epochs = 500, 1, 1, 20, 1
        a.gan_per_class, a.report_every, a.kshot_minutes = 20, 5, min(a.kshot_minutes, 0.2)
        a.no_docs = True
        if a.out == str(REPO / "ganaug-store" / "bench" / "quality"):
            a.out = str(REPO / "ganaug-store" / "bench" / "quality-quick")
    a.ks = [int(k) for k in str(a.ks).split(",") if k.strip()]
    a.family_list = [f.strip() for f in a.families.split(",") if f.strip()]
    bad = [f for f in a.family_list if f not in FAMILIES]
    if bad:
        p.error(f"--families: unknown {bad}; known {FAMILIES}")
    a.metric_list = [m.strip() for m in a.metrics.split(",") if m.strip()]
    return a


def latest_checkpoint(run_dir: Path) -> str:
    ck = sorted((run_dir / "checkpoints").glob("step-*"))
    if not ck:
        raise SystemExit(f"--eval-only: no checkpoint under {run_dir}")
    return str(ck[-1])


def main(argv=None) -> dict:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    train_spec, heldout_spec = splits(args.split)
    t_start = time.time()

    # ---- 1. train (parallel processes; each owns its threads)
    trained: dict[str, dict] = {}
    if args.eval_only:
        for f in args.family_list:
            prev = Path(args.out) / f / "train_summary.json"
            trained[f] = json.loads(prev.read_text()) if prev.exists() else {"family": f, "name": f}
            trained[f]["checkpoint"] = latest_checkpoint(Path(args.out) / f)
    elif args.parallel and len(args.family_list) > 1:
        with ProcessPoolExecutor(len(args.family_list), mp_context=get_context("spawn")) as ex:
            futs = {f: ex.submit(train_family, f, args, train_spec) for f in args.family_list}
            trained = {f: fut.result() for f, fut in futs.items()}
    else:
        trained = {f: train_family(f, args, train_spec) for f in args.family_list}
    for f, s in trained.items():
        if not args.eval_only:
            (Path(args.out) / f / "train_summary.json").write_text(json.dumps(s, indent=2))

    # ---- 2-4. sample and judge, family by family (domain features and CAS reference shared)
    from ganaug.metrics.report import write_report

    res = int(json.loads((Path(trained[args.family_list[0]]["checkpoint"]) / "model.json").read_text())["resolution"])
    judge = Judge(args, train_spec, heldout_spec, res)
    results: dict[str, dict] = {}
    for f in args.family_list:
        s = trained[f]
        t = time.time()
        synthetic = sample(s["checkpoint"], args.num, args.truncation)
        log(f"{f}: sampled {len(synthetic[0])} images in {time.time() - t:.0f}s (truncation {args.truncation})")
        report = judge.evaluate(synthetic, args.metric_list)
        notes = [
            f"held-out split: {heldout_spec.split('[')[-1].rstrip(']')} of the MNIST test set "
            f"(trained on {train_spec.split('[')[-1].rstrip(']')})",
            f"{f}: GANTrainer in a plain process, {s.get('threads')} torch threads, {s.get('steps')} steps in "
            f"{s.get('train_wall_s')} s wall / {s.get('train_cpu_s')} s CPU (stopped by {s.get('stopped_by')})",
            f"synthetic: {args.num} images, row i = (seed i, label i mod 10), truncation {args.truncation}",
        ]
        if "gain" in args.metric_list:
            notes.append("augmentation gain: the GAN arms use the GAN trained on the whole training split "
                         "(more real data than the k-shot arms see)")
        report["notes"] = notes
        report["data"] = {"real": train_spec, "heldout": heldout_spec,
                          "synthetic": {"source": "sampled", "rows": args.num, "seed": 0,
                                        "truncation": args.truncation},
                          "checkpoint": {"uri": s["checkpoint"], "family": f, "step": s.get("steps")}}
        entry = {"train": {k: s.get(k) for k in ("steps", "images_seen", "stopped_by", "train_wall_s", "train_cpu_s",
                                                 "budget_s", "ada_p", "checkpoint")},
                 "config": {k: s.get("config", {}).get(k) for k in ("model", "training")},
                 **headline(report)}
        if args.filter:
            t = time.time()
            filtered, finfo = sample_filtered(s["checkpoint"], args.num, args.truncation, args.filter)
            log(f"{f}: sampled {args.num} images with --filter {args.filter} in {time.time() - t:.0f}s "
                f"(rejection rate {finfo['rejection_rate']})")
            freport = judge.evaluate(filtered, [m for m in ("cas", "fid", "diversity") if m in args.metric_list])
            report["metrics"]["filtered"] = {"filter": finfo, **freport["metrics"]}
            entry["filtered"] = {"filter": finfo, **headline(freport)}
            entry["filtered"].pop("cas_per_class", None)
            report["notes"].append(f"filtered: the same rows drawn through --filter {args.filter} "
                                   "(the judge CNN trained on the training split only)")
        if args.kshot and "gain" in args.metric_list:
            pools, info = run_kshot(f, args, judge, train_spec)
            kreport = judge.evaluate(synthetic, ["gain"], gain_pools=pools, subset_seed=0)
            report["metrics"]["gain_kshot"] = kreport["metrics"]["gain"]
            report["gain_kshot"] = {"gans": {str(k): v for k, v in info.items()}}
            entry["gain_kshot"] = gain_table(kreport["metrics"]["gain"])
            entry["gain_kshot_gans"] = {str(k): v for k, v in info.items()}
            report["notes"].append("gain_kshot: a GAN per k trained on exactly the k-shot subset (subset seed 0)")
        log(f"{f}: headline {json.dumps(headline(report))}")  # survives a failed report write
        mj = s.get("metrics_jsonl")
        files = write_report(Path(args.out) / f / "report", report, class_names=judge.class_names,
                             synthetic=synthetic, metrics_jsonl=mj if mj and Path(mj).exists() else None)
        entry["report"] = files.get("report.json")
        results[f] = entry
        log(f"{f}: CAS {entry.get('cas')} (real {entry.get('cas_real_reference')}), FID {entry.get('fid')}")

    summary = {
        "benchmark": "quality_mnist",
        "split": args.split,
        "train": train_spec,
        "heldout": heldout_spec,
        "resolution": res,
        "truncation": args.truncation,
        "settings": {k: getattr(args, k) for k in ("profile", "minutes", "threads", "num", "seeds", "cas_epochs", "gain_steps",
                                                   "gan_per_class", "domain_epochs", "ks", "quick", "kshot",
                                                   "filter", "max_steps")},
        "families": results,
        "targets": {"cas": 0.97, "gain_k20_gan_over_classic": 0.015},
        "seconds": round(time.time() - t_start, 1),
        "load_average": os.getloadavg(),
    }
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
