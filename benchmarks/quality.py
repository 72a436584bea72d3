"""Quality benchmark (docs/ARCHITECTURE.md §6): train through `ganaug train`, judge on held-out data.

    .venv/bin/python benchmarks/quality.py --dataset mnist --families cgan
    .venv/bin/python benchmarks/quality.py --dataset cifar10 --families cgan --kshot 50,500
    .venv/bin/python benchmarks/quality.py --dataset mnist --quick       # smoke run, a few minutes

Protocol (the numbers come from ganaug.metrics, the code `ganaug evaluate` runs):
1. Each family trains through `ganaug train jobs/configs/<dataset>-<family>-cpu.yaml` (Ray Train,
   the preset's workers and its `training.max_minutes` budget; --minutes overrides the budget) on
   the TRAINING split. On a 2-core machine the CPU preset is exactly what a laptop user runs.
2. G_ema samples --num images, balanced as `ganaug generate --labels uniform --seed 0` does,
   taken to the data's own size (`--size native`: 28 px for MNIST, 32 px for CIFAR-10), and is
   judged there: CAS (a SmallCNN trained only on the samples, tested on the held-out split)
   against the same CNN on --cas-real real images, FID/KID/precision/recall in the domain
   feature space, per-class CAS, label fidelity, diversity and memorisation.
3. The honest low-data gain (--kshot K,...): for each k, k images per class are drawn (subset
   seed 0) from the training split WITHOUT its validation part and written to one Parquet file.
   A GAN trains through `ganaug train` on that file alone (the run's final JSON proves the row
   count). A fixed classifier then trains on real + classic augmentation against real + classic
   + generated, --seeds seeds. The mixing ratio and the fidelity filter are CHOSEN on the
   validation part (MNIST [4000:5000], CIFAR-10 train[45000:50000]) and only then measured on
   the held-out split; the choice is recorded. The GAN of step 1 (trained on everything) may
   stand beside it as `gain_full_gan`, labelled, never in its place.
4. JSON: one summary as the last stdout line (also OUT/summary.json), a report per family, and
   sample grids docs/<dataset>_<family>_grid.png beside docs/<dataset>_real_grid.png.

--split val trains on the training split minus its validation part and judges on the
validation part: the held-out split is then never opened (for tuning).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATA = (REPO / ".." / "shared" / "data").resolve()
FAMILIES = ("cgan", "stylegan2", "dcgan")
# Families whose samples never carry a requested label: the k-shot gain arms need one.
UNCONDITIONAL = ("dcgan",)
ALL_METRICS = ("fid", "kid", "prdc", "fid_per_class", "fidelity", "diversity", "memorisation", "cas")
# The levers the validation part chooses between for the k-shot gain: the share of each
# classifier batch that is real, and whether generated images must pass the fidelity filter.
RATIOS = (0.5, 0.8)
FILTERS = ("", "fidelity:0.9")


@dataclass(frozen=True)
class Protocol:
    """The splits of one dataset. `train` feeds the GAN; `val` is the tuning part, never trained on
    by the classifier arms; `heldout` is only read for the final measurement."""

    name: str
    channels: int
    native: int              # the data's own size: where it is judged
    train: str               # the GAN's training split (the preset's data.spec)
    train_minus_val: str     # the training split without its validation part
    val: str
    heldout: str
    cas_real: str            # the real set the CAS reference classifier trains on
    hflip: bool              # a mirrored photo is still its class; a mirrored digit is not
    ks: tuple[int, ...]


def protocol(dataset: str) -> Protocol:
    mnist, cifar = DATA / "mnist", DATA / "cifar10"
    if dataset == "mnist":
        return Protocol("mnist", 1, 28, f"mnist:{mnist}[0:5000]", f"mnist:{mnist}[0:4000]",
                        f"mnist:{mnist}[4000:5000]", f"mnist:{mnist}[5000:10000]", f"mnist:{mnist}[0:5000]",
                        False, (20,))
    if dataset == "cifar10":
        tr = cifar / "train.parquet"
        # The preset trains on [0:45000]: the validation part stays unseen by every model.
        return Protocol("cifar10", 3, 32, f"parquet:{tr}[0:45000]", f"parquet:{tr}[0:45000]",
                        f"parquet:{tr}[45000:50000]", f"parquet:{cifar / 'test.parquet'}",
                        f"parquet:{tr}[0:5000]", True, (50, 500))
    raise SystemExit(f"--dataset must be mnist or cifar10, got {dataset!r}")


def log(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- training


def ganaug_train(preset: Path, overrides: list[str], storage_root: Path, name: str) -> dict:
    """`ganaug train PRESET --set ... --storage ROOT --name NAME`; returns its final JSON line.

    A subprocess, exactly as a user runs it: its own local Ray, the preset's workers and threads."""
    cmd = [sys.executable, "-m", "ganaug.cli", "train", str(preset), "--storage", str(storage_root), "--name", name]
    for o in overrides:
        cmd += ["--set", o]
    log(f"train: {' '.join(cmd[2:])}")
    storage_root.mkdir(parents=True, exist_ok=True)
    log_path = storage_root / f"{name}.log"
    t0 = time.time()
    with log_path.open("w") as fh:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        tail = log_path.read_text()[-2000:]
        raise SystemExit(f"ganaug train {name} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    summary = json.loads(lines[-1])
    summary["train_wall_s"] = round(time.time() - t0, 1)
    summary["command"] = "ganaug " + " ".join(cmd[3:])
    log(f"train {name}: step {summary['step']} in {summary['seconds']:.0f}s of training "
        f"(stopped by {summary['stopped_by']}), {summary['data']['rows']} training rows")
    return summary


def preset_for(args, family: str) -> Path:
    return REPO / "jobs" / "configs" / f"{args.dataset}-{family}-cpu.yaml"


def budget_overrides(args, minutes: float | None) -> list[str]:
    out = [f"training.max_minutes={minutes}"] if minutes else []
    if args.quick:
        out += ["training.steps=20", "training.checkpoint_every=10", "training.report_every=5"]
    return out


def write_subset(images: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path) -> str:
    """The k-shot images as one Parquet file in ganaug's shard schema; returns its dataset spec."""
    from ganaug import shards, storage

    rows = np.arange(len(images))
    table = shards.build_table(shards.encode_images(images, "png"), rows, labels,
                               [class_names[int(y)] for y in labels], np.full(len(images), -1), 1.0, "real", "png")
    path.parent.mkdir(parents=True, exist_ok=True)
    storage.write_bytes(str(path), shards.table_bytes(table))
    return f"parquet:{path}"


# ----------------------------------------------------------------------------- sampling


def sample_native(ckpt: str, num: int, seed: int, truncation: float, native: int,
                  filter_spec: str = "") -> tuple[tuple[np.ndarray, np.ndarray], dict]:
    """Rows 0..num-1 of `ganaug generate --labels uniform --seed SEED [--filter F] --size native`."""
    from ganaug.metrics.selection import sample_pool

    return sample_pool(ckpt, num, seed=seed, truncation=truncation, size=(native, native), filter_spec=filter_spec)


def ema_bn_check(ckpt: str, judge: "Judge", args, native: int) -> dict:
    """The EMA generator with its own standing BatchNorm statistics (what checkpoints hold now)
    against the same weights with the live G's statistics (the old `b_ema.copy_(b)`): CAS and FID."""
    import torch

    from ganaug import checkpoint
    from ganaug.evaluation import sample_balanced
    from ganaug.sampling import Sampler, resize_images

    G, meta = checkpoint.build_generator(ckpt, "generator_ema")
    live = checkpoint.load_weights(ckpt, "generator", meta)
    out = {}
    for variant in ("standing_statistics", "live_g_statistics"):
        if variant == "live_g_statistics":
            with torch.no_grad():
                for name, buf in G.named_buffers():
                    if name.endswith(("running_mean", "running_var")):
                        buf.copy_(live[name])
        images, labels = sample_balanced(Sampler(G, meta, device="cpu"), args.num, 0, args.truncation)
        h = headline(judge.evaluate((resize_images(images, (native, native)), labels), ["cas", "fid"]))
        out[variant] = {"cas": h["cas"], "cas_std": h["cas_std"], "fid": h["fid"]}
        log(f"EMA BatchNorm, {variant}: {out[variant]}")
    return out


def write_grid(ckpt: str, path: Path, truncation: float) -> None:
    from ganaug.sampling import Sampler, png_bytes

    sampler = Sampler.from_checkpoint(ckpt, device="cpu")
    path.write_bytes(png_bytes(sampler.grid(per_class=10, seed=0, truncation=truncation), upscale=2))


def write_interleaved_grid(sets: list[np.ndarray], path: Path, per_row: int = 10, groups: int = 3) -> None:
    """Row groups of `per_row` images: set 0's next images, then the same rows of set 1, ...
    (an input above what each model made of it)."""
    from ganaug.sampling import png_bytes, tile

    rows = [images[g * per_row:(g + 1) * per_row] for g in range(groups) for images in sets]
    path.write_bytes(png_bytes(tile(np.stack(rows)), upscale=2))


def write_real_grid(images: np.ndarray, labels: np.ndarray, num_classes: int, path: Path) -> None:
    from ganaug.sampling import png_bytes

    picks = [np.flatnonzero(labels == c)[:10] for c in range(num_classes)]
    rows = [np.concatenate(list(images[p]), axis=1) for p in picks if len(p) == 10]
    path.write_bytes(png_bytes(np.concatenate(rows, axis=0), upscale=2))


# ----------------------------------------------------------------------------- judging


class Judge:
    """Real data at its own size, the domain features (cached on disk) and the CAS reference."""

    def __init__(self, args, proto: Protocol):
        from ganaug.data import load_dataset
        from ganaug.metrics import EvalOptions
        from ganaug.metrics.features import DomainSettings

        heldout = proto.val if args.split == "val" else proto.heldout
        ref = load_dataset(proto.cas_real, proto.native, proto.channels)
        ho = load_dataset(heldout, proto.native, proto.channels)
        self.proto, self.heldout_spec = proto, heldout
        self.real, self.heldout = (ref.images, ref.labels), (ho.images, ho.labels)
        self.class_names = list(ref.class_names)
        self.args = args
        self.options = EvalOptions(domain=DomainSettings(epochs=args.domain_epochs, hflip=proto.hflip),
                                   cas_epochs=args.cas_epochs, gain_steps=args.gain_steps,
                                   gan_per_class=args.gan_per_class, hflip=proto.hflip, device="cpu")
        self.cache_dir = args.cache_dir or str(Path(args.out) / "cache")
        self._cas_real = None
        self._domain = None

    def domain_classifier(self):
        """The domain CNN the feature metrics use (the same cache entry: same data, settings, folder)."""
        from ganaug.metrics.features import DomainFeatures

        if self._domain is None:
            self._domain = DomainFeatures.from_training(self.real[0], self.real[1], len(self.class_names),
                                                        settings=self.options.domain,
                                                        cache_dir=self.cache_dir).classifier
        return self._domain

    def pseudo_label(self, synthetic):
        """An unconditional generator's samples, labelled by the domain classifier."""
        from ganaug.metrics.classifier import predict

        return synthetic[0], predict(self.domain_classifier(), synthetic[0])

    def evaluate(self, synthetic, metrics: list[str]) -> dict:
        """evaluate_arrays, with the real-trained CAS reference computed once and reused (it does
        not depend on the synthetic set: same data, seeds and step budget)."""
        from ganaug.metrics import CASReport, evaluate_arrays
        from ganaug.metrics.downstream import classification_accuracy_score
        from ganaug.metrics.report import to_jsonable, verdicts

        a, o = self.args, self.options
        t = time.time()
        report = evaluate_arrays(self.real, self.heldout, synthetic, self.class_names,
                                 [m for m in metrics if m != "cas"], ks=(), seeds=a.seeds,
                                 cache_dir=self.cache_dir, options=o)
        if "cas" in metrics:
            steps = o.cas_epochs * math.ceil(max(len(synthetic[0]), len(self.real[0])) / o.classifier.batch_size)
            kw = {"seeds": list(range(a.seeds)), "steps": steps, "device": "cpu", "config": o.classifier,
                  "hflip": self.proto.hflip}
            syn = classification_accuracy_score(synthetic, self.heldout, self.class_names, **kw)
            if self._cas_real is None:
                log(f"CAS reference: SmallCNN on {len(self.real[0])} real images, {steps} steps x {a.seeds} seeds")
                self._cas_real = classification_accuracy_score(self.real, self.heldout, self.class_names, **kw)
            report["metrics"]["cas"] = to_jsonable(CASReport(syn, self._cas_real))
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
        out["cas_ratio"] = round(out["cas"] / max(out["cas_real_reference"], 1e-9), 4)
        out["cas_per_class"] = c["synthetic"]["per_class"]
    if "fid" in m:
        out["fid"], out["fid_real_reference"] = m["fid"]["value"], m["fid"]["reference"]
    if "kid" in m:
        out["kid"], out["kid_real_reference"] = m["kid"]["value"]["mean"], m["kid"]["reference"]["mean"]
    if "prdc" in m:
        v, r = m["prdc"]["value"], m["prdc"]["reference"]
        out.update(precision=v["precision"], recall=v["recall"], density=v["density"], coverage=v["coverage"],
                   precision_recall_real_reference=[r["precision"], r["recall"]])
    if "fidelity" in m:
        out["label_fidelity"] = m["fidelity"]["accuracy"]
    if "diversity" in m:
        out["diversity_min_ratio"], out["collapse"] = m["diversity"]["min_ratio"], m["diversity"]["collapse"]
    if "memorisation" in m:
        out["memorised"] = m["memorisation"]["memorised"]
    return out


def gain_row(result) -> dict:
    """One k of a GainResult: the arms (mean, std) and the paired differences."""
    g = result.ks[0]
    return {**{arm: {"mean": round(v.mean, 4), "std": round(v.std, 4)} for arm, v in g.arms.items()},
            "gan_over_classic": round(g.gan_over_classic, 4), "gan_over_classic_std": round(g.gan_over_classic_std, 4),
            "real_images": g.n_real, "generated_images": g.n_synthetic}


def gain(pool_real, test, pool, class_names, k: int, ratio: float | None, args, hflip: bool, arms=None):
    from ganaug.metrics.downstream import ARMS, augmentation_gain

    return augmentation_gain(pool_real, test, {k: pool}, class_names, ks=(k,), seeds=list(range(args.seeds)),
                             gan_per_class=args.gan_per_class, real_fraction=ratio, steps=args.gain_steps,
                             subset_seed=0, hflip=hflip, device="cpu", arms=arms or ARMS)


# ----------------------------------------------------------------------------- k-shot


def choose_on_val(args, proto: Protocol, run: dict, pool_real, val_set, names, k: int) -> list[dict]:
    """Try every kept checkpoint x filter x ratio on the validation part; the held-out split is
    not read here. Only the arm a choice changes is retrained: real+classic+gan, each seed paired
    with the one real+classic baseline on the same subset and init seed (ganaug.metrics.selection,
    the code `ganaug tune` scores its trials with)."""
    from ganaug import checkpoint
    from ganaug.metrics.selection import GainSplit

    n_pool = args.gan_per_class * len(names)
    ckpts = [uri for _, uri in checkpoint.list_checkpoints(run["run"])] or [run["checkpoint"]]
    if args.val_checkpoints:  # the newest N only: each one costs len(FILTERS) x len(RATIOS) arms
        ckpts = ckpts[-args.val_checkpoints:]
    split = GainSplit(pool_real, val_set, names, k, seeds=list(range(args.seeds)), steps=args.gain_steps,
                      gan_per_class=args.gan_per_class, subset_seed=0, hflip=proto.hflip, device="cpu")
    base = split.baseline()
    choices = []
    for ckpt in ckpts:
        for flt in FILTERS:
            pool, finfo = sample_native(ckpt, n_pool, 0, args.truncation, proto.native, flt)
            for ratio in RATIOS:
                diff = split.gain(pool, ratio, base).mean
                choices.append({"checkpoint": ckpt, "filter": flt, "real_fraction": ratio,
                                "gan_over_classic": round(diff, 4), "filter_info": finfo})
                log(f"k={k} val: {Path(ckpt).name} filter {flt or 'none'} ratio {ratio}: gan_over_classic {diff:+.4f}")
    return choices


def run_kshot(args, proto: Protocol, family: str, judge: Judge, full_ckpt: str | None, train=ganaug_train) -> dict:
    """The honest low-data gain: per k, a GAN trained only on the k x classes images.

    `train(preset, overrides, storage_root, name)` returns the final JSON of `ganaug train`
    (tests pass the same library call on their shared Ray instead of a subprocess)."""
    from ganaug.data import load_dataset
    from ganaug.metrics.downstream import kshot_indices

    real = load_dataset(proto.train_minus_val, proto.native, proto.channels)
    val = load_dataset(proto.val, proto.native, proto.channels)
    pool_real, val_set = (real.images, real.labels), (val.images, val.labels)
    names = list(real.class_names)
    out: dict = {}
    for k in args.kshot:
        idx = kshot_indices(real.labels, k, 0, len(names))  # subset seed 0: the arms use the same images
        spec = write_subset(real.images[idx], real.labels[idx], names,
                            Path(args.out) / "kshot" / f"{proto.name}-k{k}.parquet")
        s = train(preset_for(args, family), [f"data.spec={spec}", *args.kshot_set,
                                             *budget_overrides(args, args.kshot_minutes)],
                  Path(args.out) / "runs", f"{proto.name}-{family}-k{k}")
        if s["data"]["rows"] != len(idx) or s["data"]["spec"] != spec:
            raise SystemExit(f"k-shot GAN k={k} trained on {s['data']} instead of the {len(idx)} subset rows")
        choices = choose_on_val(args, proto, s, pool_real, val_set, names, k)
        best = max(choices, key=lambda c: c["gan_over_classic"])
        n_pool = args.gan_per_class * len(names)
        pool, _ = sample_native(best["checkpoint"], n_pool, 0, args.truncation, proto.native, best["filter"])
        test = gain_row(gain(pool_real, judge.heldout, pool, names, k, best["real_fraction"], args, proto.hflip))
        log(f"k={k} {judge.heldout_spec}: gan_over_classic {test['gan_over_classic']:+.4f} "
            f"({Path(best['checkpoint']).name}, filter {best['filter'] or 'none'}, ratio {best['real_fraction']})")
        entry = {"gan": {key: s.get(key) for key in ("step", "seconds", "stopped_by", "data", "command", "checkpoint")},
                 "chosen_on_val": {key: best[key] for key in ("checkpoint", "filter", "real_fraction", "filter_info")},
                 "val_choices": [{key: c[key] for key in ("checkpoint", "filter", "real_fraction", "gan_over_classic")}
                                 for c in choices],
                 "heldout": test}
        if full_ckpt:
            # Labelled apart: this GAN saw the whole training split, far more than k per class.
            fpool, _ = sample_native(full_ckpt, n_pool, 0, args.truncation, proto.native, best["filter"])
            entry["gain_full_gan"] = gain_row(gain(pool_real, judge.heldout, fpool, names, k, best["real_fraction"],
                                                   args, proto.hflip))
        out[f"k={k}"] = entry
    return out


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=("mnist", "cifar10"))
    p.add_argument("--families", default="cgan")
    p.add_argument("--minutes", type=float, default=0.0, help="override the preset's training.max_minutes")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the full-data runs")
    p.add_argument("--out", default=str(REPO / "ganaug-store" / "bench" / "quality"))
    p.add_argument("--quick", action="store_true", help="smoke run: tiny budgets everywhere")
    p.add_argument("--split", default="test", choices=("test", "val"))
    p.add_argument("--truncation", type=float, default=1.0)
    p.add_argument("--num", type=int, default=10000, help="synthetic images for the metrics (balanced)")
    p.add_argument("--metrics", default=",".join(ALL_METRICS))
    p.add_argument("--kshot", default="", help="k values for the honest low-data gain, e.g. 20 or 50,500")
    p.add_argument("--kshot-minutes", type=float, default=10.0, help="training.max_minutes of each k-shot GAN")
    p.add_argument("--kshot-set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the k-shot GANs")
    p.add_argument("--kshot-only", action="store_true", help="skip the full-data run")
    p.add_argument("--val-checkpoints", type=int, default=0,
                   help="k-shot: try only the newest N kept checkpoints on the validation part (0 = all)")
    p.add_argument("--seeds", type=int, default=3, help="classifier seeds for CAS and the gain arms")
    p.add_argument("--cas-epochs", type=int, default=15)
    p.add_argument("--gain-steps", type=int, default=500)
    p.add_argument("--gan-per-class", type=int, default=100)
    p.add_argument("--domain-epochs", type=int, default=15)
    p.add_argument("--ema-bn-check", action="store_true",
                   help="cgan: also judge G_ema with the live G's BatchNorm statistics (the old behaviour)")
    p.add_argument("--cache-dir", default="", help="domain-feature cache (default: OUT/cache)")
    p.add_argument("--no-docs", action="store_true", help="do not write the docs/ sample grids")
    a = p.parse_args(argv)
    if a.quick:
        a.num, a.seeds, a.cas_epochs, a.gain_steps, a.domain_epochs, a.gan_per_class = 200, 1, 1, 20, 1, 10
        a.no_docs = True
    a.out = str(Path(a.out).resolve())  # specs handed to `ganaug train` name absolute files
    a.kshot = [int(k) for k in str(a.kshot).split(",") if k.strip()]
    a.family_list = [f.strip() for f in a.families.split(",") if f.strip()]
    bad = [f for f in a.family_list if f not in FAMILIES]
    if bad:
        p.error(f"--families: unknown {bad}; known {FAMILIES}")
    missing = [str(preset_for(a, f).relative_to(REPO)) for f in a.family_list if not preset_for(a, f).is_file()]
    if missing:
        p.error(f"--families: no CPU preset {missing} for --dataset {a.dataset}")
    if a.kshot and set(a.family_list) & set(UNCONDITIONAL):
        p.error(f"--kshot: the gain arms need generated images of a requested class; {UNCONDITIONAL} draw none")
    a.metric_list = [m.strip() for m in a.metrics.split(",") if m.strip()]
    return a


def main(argv=None) -> dict:
    import torch

    from ganaug.metrics.report import write_report

    args = parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    proto = protocol(args.dataset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    judge = Judge(args, proto)
    docs = REPO / "docs"
    if not args.no_docs:
        write_real_grid(judge.real[0], judge.real[1], len(judge.class_names), docs / f"{proto.name}_real_grid.png")
    train_spec = proto.train_minus_val if args.split == "val" else proto.train
    results: dict[str, dict] = {}
    for family in args.family_list:
        entry: dict = {}
        full_ckpt = None
        if not args.kshot_only:
            s = ganaug_train(preset_for(args, family), [f"data.spec={train_spec}", *args.overrides,
                                                        *budget_overrides(args, args.minutes)],
                             out / "runs", f"{proto.name}-{family}")
            full_ckpt = s["checkpoint"]
            synthetic, _ = sample_native(full_ckpt, args.num, 0, args.truncation, proto.native)
            metrics, notes = args.metric_list, []
            if (synthetic[1] < 0).all():
                # No requested labels (an unconditional generator): the domain classifier labels the
                # set, as `ganaug evaluate` does, and label fidelity has nothing to check.
                synthetic = judge.pseudo_label(synthetic)
                metrics = [m for m in metrics if m != "fidelity"]
                notes.append("unconditional generator: labels are the domain classifier's predictions "
                             "(CAS then asks how well a classifier learns from the set so labelled); no label fidelity")
            report = judge.evaluate(synthetic, metrics)
            report["notes"] = notes + [f"GAN: `{s['command']}`, {s['step']} steps in {s['seconds']:.0f} s "
                               f"(stopped by {s['stopped_by']}), trained on {train_spec}",
                               f"judged at {proto.native} px on {judge.heldout_spec}; synthetic: {args.num} "
                               f"images, row i = (seed i, label i mod K; unconditional: seed i), "
                               f"truncation {args.truncation}"]
            write_report(out / family / "report", report, class_names=judge.class_names, synthetic=synthetic)
            entry.update(train={key: s.get(key) for key in ("step", "seconds", "stopped_by", "data", "command",
                                                            "checkpoint", "workers", "images_per_s")},
                         **headline(report))
            if args.ema_bn_check and family in ("cgan", "dcgan"):
                entry["ema_bn_check"] = ema_bn_check(full_ckpt, judge, args, proto.native)
            if not args.no_docs:
                write_grid(full_ckpt, docs / f"{proto.name}_{family}_grid.png", args.truncation)
            log(f"{family}: CAS {entry.get('cas')} (real {entry.get('cas_real_reference')}), FID {entry.get('fid')}")
        if args.kshot:
            entry["kshot"] = run_kshot(args, proto, family, judge, full_ckpt)
        results[family] = entry
        log(f"{family}: {json.dumps({k: v for k, v in entry.items() if k != 'cas_per_class'})}")

    summary = {
        "benchmark": "quality",
        "dataset": proto.name,
        "split": args.split,
        "train": train_spec,
        "judged_on": judge.heldout_spec,
        "judged_at_px": proto.native,
        "cas_real_reference_set": proto.cas_real,
        "settings": {k: getattr(args, k) for k in ("minutes", "num", "seeds", "cas_epochs", "gain_steps",
                                                   "gan_per_class", "domain_epochs", "kshot", "kshot_minutes",
                                                   "overrides", "kshot_set", "quick", "truncation",
                                                   "val_checkpoints")},
        "families": results,
        "seconds": round(time.time() - t_start, 1),
        "load_average": os.getloadavg(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
