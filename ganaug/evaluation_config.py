"""The arguments of `ganaug evaluate`, declared once: `ganaug.cli` builds the click options
from these fields (their help and flag live in each field's metadata), and
`ganaug.evaluation.run_evaluate` takes the dataclass.

Kept apart from ganaug.evaluation so that the CLI can read the fields without importing
numpy and pyarrow on every `ganaug` command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ganaug.errors import UserError, require

DEFAULT_RAY_THRESHOLD = 20_000
DEFAULT_MAX_IMAGES = 20_000


class EvaluateError(UserError):
    pass


def check(cond: bool, msg: str) -> None:
    require(cond, msg, EvaluateError)


def option(default: Any, help: str | None = None, flag: str | None = None) -> Any:
    """A config field that is also a CLI option: `help` is its --help text; `flag` overrides
    the flag (default: --field-name)."""
    meta = {"help": help} if flag is None else {"help": help, "flag": flag}
    return field(default=default, metadata=meta)


@dataclass
class EvaluateConfig:
    """The arguments of `ganaug evaluate` (flags map 1:1)."""

    out: str = option("", "Report folder: a path or s3://bucket/prefix.  [required]")
    real: str = option("", "Real dataset spec, its train part (e.g. mnist:DIR[0:5000]).  [required]")
    heldout: str | None = option(
        None, "Real held-out dataset spec [default: the last --heldout-fraction of each class of --real].")
    heldout_fraction: float = option(0.2, "Share of each class of --real held out when --heldout is omitted.")
    checkpoint: str | None = option(
        None, "Checkpoint or run folder: samples the synthetic set when --synthetic is omitted.")
    synthetic: str | None = option(
        None, "Generated set: parquet:URI, a folder URI with _manifest.json, or any dataset spec.")
    metrics: str | None = option(  # None / "all" = every registered metric
        None, "Comma list [default: all]: fid,kid,prdc,fid_per_class,fidelity,diversity,memorisation,cas,gain.")
    ks: str = option("10,20", "Real images per class in the augmentation-gain arms.")
    seeds: int = option(3, "Classifier seeds for CAS and the gain arms.")
    feature: str = option("domain", "Feature space: domain | inception:PATH | torchscript:PATH.")
    cache_dir: str | None = option(None, "Domain-classifier cache [default: $GANAUG_CACHE or ~/.cache/ganaug].")
    num: int | None = option(
        None, "Images to sample from --checkpoint, balanced [default: as many as the real train part].")
    per_class: int | None = option(None, "... or images per class.")
    seed: int = option(0, "Sampled row i uses seed SEED+i.")
    truncation: float = option(1.0, "Truncation psi for sampling.")
    run: str | None = option(
        None, "Training run (or its metrics.jsonl) for the curves figure [default: the checkpoint's run].")
    ray: bool | None = option(  # None = automatic (rows > ray_threshold)
        None, "Force (or forbid) the Ray Data feature path [default: when the set has > --ray-threshold rows].",
        flag="--ray/--no-ray")
    ray_threshold: int = option(DEFAULT_RAY_THRESHOLD)
    max_images: int = option(DEFAULT_MAX_IMAGES,
                             "Synthetic rows loaded as images for image-level metrics on the Ray path.")
    workers: int | None = option(None, "Feature actors on the Ray path [default: cluster CPUs - 1].")
    use_gpu: bool = option(False, "Classifiers, sampling and feature actors on GPU.")
    gan_kshot: bool = option(False, "Train a GAN per k on the k-shot subset for the gain arms.")
    gan_kshot_steps: int | None = option(None, "Steps per k-shot GAN [default: the checkpoint's].")
    domain_epochs: int = option(15, "Domain classifier epochs.")
    cas_epochs: int = option(15, "CAS classifier epochs.")
    gain_steps: int = option(500, "Optimiser steps per gain arm.")
    gan_per_class: int = option(100, "Synthetic images per class added to each gain arm.")
    skip_bad: bool = option(False, "Skip (and count) unreadable images instead of failing.")
    threads: int | None = option(
        None, "torch threads on the driver [default: torch's]; 1 is fastest on small, busy machines.")

    def validate(self) -> EvaluateConfig:
        check(bool(self.out and self.out.strip()), "--out is required: a folder path or s3://bucket/prefix")
        check(bool(self.real and self.real.strip()), "--real is required: the real dataset spec (its train part), "
                                                     "e.g. mnist:DIR[0:5000]")
        check(bool(self.checkpoint or self.synthetic), "give --checkpoint (to sample a synthetic set) "
                                                       "and/or --synthetic (a generated set)")
        check(0.0 < self.heldout_fraction < 1.0, f"--heldout-fraction must be in (0, 1), got {self.heldout_fraction}")
        check(self.seeds >= 1, f"--seeds must be >= 1, got {self.seeds}")
        check(self.num is None or self.num >= 1, f"--num must be >= 1, got {self.num}")
        check(self.per_class is None or self.per_class >= 1, f"--per-class must be >= 1, got {self.per_class}")
        check(self.num is None or self.per_class is None, "give --num or --per-class, not both")
        check(self.seed >= 0, f"--seed must be >= 0, got {self.seed}")
        check(0.0 <= self.truncation <= 2.0, f"--truncation must be in [0, 2], got {self.truncation}")
        check(self.ray_threshold >= 1, f"--ray-threshold must be >= 1, got {self.ray_threshold}")
        check(self.max_images >= 1, f"--max-images must be >= 1, got {self.max_images}")
        check(self.workers is None or self.workers >= 1, f"--workers must be >= 1, got {self.workers}")
        check(self.threads is None or self.threads >= 1, f"--threads must be >= 1, got {self.threads}")
        check(self.gan_kshot_steps is None or self.gan_kshot_steps >= 1,
              f"--gan-kshot-steps must be >= 1, got {self.gan_kshot_steps}")
        for name in ("domain_epochs", "cas_epochs", "gain_steps", "gan_per_class"):
            v = getattr(self, name)
            check(v >= 1, f"--{name.replace('_', '-')} must be >= 1, got {v}")
        check(not (self.gan_kshot and not self.checkpoint),
              "--gan-kshot trains k-shot GANs with the checkpoint's config: give --checkpoint")
        self.metric_list()
        self.k_list()
        self.feature_spec()
        return self

    def metric_list(self) -> list[str]:
        from ganaug.metrics import METRICS  # heavy (torch): only once a command runs, not for --help

        if self.metrics is None or self.metrics.strip().lower() in ("", "all"):
            return list(METRICS)
        names = [m.strip() for m in self.metrics.split(",") if m.strip()]
        bad = [m for m in names if m not in METRICS]
        check(not bad, f"--metrics: unknown metric(s) {', '.join(bad)}; known: {', '.join(METRICS)}")
        check(bool(names), "--metrics: empty list")
        return list(dict.fromkeys(names))

    def k_list(self) -> list[int]:
        try:
            ks = [int(k) for k in str(self.ks).split(",") if k.strip()]
        except ValueError:
            raise EvaluateError(f"--ks {self.ks}: expected a comma list of integers, e.g. 10,20") from None
        check(bool(ks) and all(k >= 1 for k in ks), f"--ks {self.ks}: expected integers >= 1, e.g. 10,20")
        return sorted(set(ks))

    def feature_spec(self) -> str:
        from ganaug.metrics.features import FEATURES  # heavy (torch), as above

        name, _, arg = self.feature.partition(":")
        check(name in FEATURES, f"--feature {self.feature}: unknown feature space; use domain, "
                                "inception:PATH or torchscript:PATH")
        check(name == "domain" or bool(arg), f"--feature {self.feature}: needs a local file, e.g. {name}:/path")
        return self.feature
