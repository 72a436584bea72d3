"""From validated arguments to a run plan: what the set is, and what every stage needs to make it.

Driver side, no Ray: the checkpoint's model.json is read and checked, the label plan parsed
(lazily: a few bytes whatever --num is), the filter and size checked, and the arguments that
decide the shard bytes (the set's fingerprint) fixed. Every input error surfaces here, before
Ray starts. `ShardJob` is what the stages get, pickled once per actor or task: it holds the
label plan, never per-row data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ganaug import storage
from ganaug.generation.config import (
    GenerateConfig,
    GenerationError,
    TranslateConfig,
    _check,
)
from ganaug.generation.filters import parse_filter
from ganaug.labels import LabelPlan, PlanContext, parse_plan


@dataclass
class ShardJob:
    """What every stage needs; pickled once per actor (sampling) and per task (writing)."""

    checkpoint_uri: str
    checkpoint_id: str
    out: str
    fmt: str
    total_rows: int
    task: str = "generate"                 # "generate" | "translate"
    device: str = "cpu"
    threads: int = 1
    class_names: list[str] = field(default_factory=list)
    # generate
    seed: int = 0
    truncation: float = 1.0
    filter: str | None = None
    size: tuple[int, int] | None = None   # resize the generated images to H x W (None = as made)
    plan: LabelPlan | None = None          # row -> label, computed per shard in the sampling actor
    # translate: absolute rows of the dataset location
    dataset_scheme: str = ""
    dataset_location: str = ""
    dataset_offset: int = 0
    dataset_classes: tuple[str, ...] | None = None   # the input spec's class filter, if any
    resolution: int = 0
    channels: int = 0
    # restyle (a translate run with --restyle): output row r is input row r // variants
    restyle: str | None = None
    style_seed: int = 0
    variants: int = 1
    project_steps: int = 200
    project_lr: float = 0.05
    feature_net: dict | None = None        # the projection's feature loss: a SmallCNN's config and weights

    @property
    def translated(self) -> bool:
        """Rows made from input images (a `source` column), not from noise alone."""
        return self.task in ("translate", "restyle")

    def class_name(self, label: int) -> str:
        """The `class_name` column: as Sampler.class_name for generated rows; a translated row
        outside the dataset's class names gets ''."""
        if 0 <= label < len(self.class_names):
            return self.class_names[label]
        return "" if label < 0 or self.translated else str(label)


@dataclass
class RunPlan:
    """One generate/translate run, ready for the output folder and the pipeline."""

    what: str                      # "generate" | "translate" (progress lines, errors)
    out: str
    total: int
    rows_per_shard: int
    arguments: dict                # decide the bytes: the set's fingerprint
    run_info: dict                 # how it ran (not in the fingerprint)
    job: ShardJob
    class_names: list[str]
    manifest_extra: dict
    workers: int | None
    use_gpu: bool
    resources: dict[str, float]
    overwrite: bool
    allow_env_change: bool
    shared_fs: bool
    t0: float
    before_pipeline: Callable[[], None] | None = None

    @property
    def translated(self) -> bool:
        return self.job.translated


def shard_ranges(total: int, rows_per_shard: int) -> list[tuple[int, int, int]]:
    return [(i, a, min(a + rows_per_shard, total)) for i, a in enumerate(range(0, total, rows_per_shard))]


def _load_checkpoint(uri: str, want: str, restyle: bool = False) -> tuple[str, dict, str, str]:
    """(checkpoint folder, model.json, id, how it was chosen: "folder", "latest" or "best by ...")."""
    from ganaug import (
        checkpoint,  # torch: driver side only (the write tasks import this module too)
    )

    resolved, how = checkpoint.resolve_with_reason(uri)
    meta = checkpoint.load_meta(resolved)
    kind = meta.get("kind")
    if kind != want:
        if want == "noise":
            hint = "--restyle needs a StyleGAN2 checkpoint" if restyle else "use `ganaug translate`"
            raise GenerationError(f"--checkpoint {uri}: {meta.get('family')} is an image-to-image (translation) "
                                  f"model, not a noise generator; {hint}")
        raise GenerationError(f"--checkpoint {uri}: {meta.get('family')} is a noise generator, not a "
                              "translation model; use `ganaug generate`, or `ganaug translate --restyle` "
                              "with a StyleGAN2")
    return resolved, meta, checkpoint.checkpoint_id(resolved, meta), how


def _run_info(cfg: GenerateConfig | TranslateConfig) -> dict:
    # --resources is here and not in `arguments`: where a set is made never changes its bytes
    return {"checkpoint": cfg.checkpoint, "workers": cfg.workers, "use_gpu": cfg.use_gpu,
            "resources": dict(cfg.resources)}


def plan_generate(cfg: GenerateConfig) -> RunPlan:
    t0 = time.time()
    cfg.validate()
    ckpt_uri, meta, ckpt_id, how = _load_checkpoint(cfg.checkpoint, "noise")
    class_names = list(meta.get("class_names", []))
    num_classes = int(meta.get("num_classes", 0))
    plan = parse_plan(cfg.labels, PlanContext(cfg.num, num_classes, class_names))
    parse_filter(cfg.filter)
    from ganaug.sampling import parse_size

    size = parse_size(cfg.size, meta)
    arguments = {
        "task": "generate", "checkpoint_id": ckpt_id, "num": plan.total, "labels": plan.spec,
        "label_counts": {str(k): v for k, v in plan.counts().items()}, "truncation": cfg.truncation,
        "seed": cfg.seed, "rows_per_shard": cfg.rows_per_shard, "format": cfg.format, "filter": cfg.filter,
    }
    if size is not None:  # only when asked: sets made before --size keep their fingerprint
        arguments["size"] = list(size)
    # Absolute: the actors run in working directories of their own.
    job = ShardJob(checkpoint_uri=storage.absolute(ckpt_uri), checkpoint_id=ckpt_id, out=storage.absolute(cfg.out),
                   fmt=cfg.format, total_rows=plan.total, device="cuda" if cfg.use_gpu else "cpu",
                   class_names=class_names, seed=cfg.seed, truncation=cfg.truncation, filter=cfg.filter, size=size,
                   plan=plan)
    extra = {"label_plan": plan.info} if plan.info else {}
    resolution = int(meta["resolution"])
    extra["image_size"] = list(size or (resolution, resolution))  # [H, W] of the written images
    extra["checkpoint_selected"] = how  # a run folder: its latest checkpoint, or the one best.json names
    return RunPlan(what="generate", out=cfg.out, total=plan.total, rows_per_shard=cfg.rows_per_shard,
                   arguments=arguments, run_info=_run_info(cfg), job=job, class_names=class_names,
                   manifest_extra=extra, workers=cfg.workers, use_gpu=cfg.use_gpu, resources=cfg.resources,
                   overwrite=cfg.overwrite, allow_env_change=cfg.allow_env_change, shared_fs=cfg.shared_fs, t0=t0,
                   before_pipeline=lambda: parse_filter(cfg.filter, meta, ckpt_uri))


def plan_translate(cfg: TranslateConfig) -> RunPlan:
    from ganaug.data import open_reader, parse_spec
    from ganaug.data.spec import absolute_spec

    t0 = time.time()
    cfg.validate()
    ckpt_uri, meta, ckpt_id, how = _load_checkpoint(cfg.checkpoint, "noise" if cfg.restyle else "translation",
                                                 restyle=bool(cfg.restyle))
    parsed, reader = open_reader(cfg.input)
    parsed = parse_spec(absolute_spec(cfg.input))  # the actors read it from their own directories
    try:
        start, stop = parsed.bounds(reader.num_rows())
        class_names = list(reader.class_names())
    except storage.StorageError as e:
        raise GenerationError(f"--input {cfg.input}: {e}") from None
    total = stop - start
    _check(total > 0, f"--input {cfg.input}: the dataset has no rows")
    arguments = {"task": "translate", "checkpoint_id": ckpt_id, "input": cfg.input, "num": total,
                 "rows_per_shard": cfg.rows_per_shard, "format": cfg.format}
    job = ShardJob(checkpoint_uri=storage.absolute(ckpt_uri), checkpoint_id=ckpt_id, out=storage.absolute(cfg.out),
                   fmt=cfg.format, total_rows=total, task="translate", device="cuda" if cfg.use_gpu else "cpu",
                   class_names=class_names, dataset_scheme=parsed.scheme, dataset_location=parsed.location,
                   dataset_offset=start, dataset_classes=parsed.classes, resolution=int(meta["resolution"]),
                   channels=int(meta["channels"]))
    extra = {"checkpoint_selected": how}
    if cfg.restyle:
        _plan_restyle(cfg, meta, job, arguments, extra)
    return RunPlan(what="translate", out=cfg.out, total=job.total_rows, rows_per_shard=cfg.rows_per_shard,
                   arguments=arguments, run_info=_run_info(cfg), job=job,
                   class_names=class_names, manifest_extra=extra, workers=cfg.workers,
                   use_gpu=cfg.use_gpu,
                   resources=cfg.resources, overwrite=cfg.overwrite, allow_env_change=cfg.allow_env_change,
                   shared_fs=cfg.shared_fs, t0=t0)


# The projection's feature network trains on at most this many input rows (per class, evenly):
# enough for a feature space, bounded for a driver facing millions of rows.
FEATURE_ROWS = 2000


def _plan_restyle(cfg: TranslateConfig, meta: dict, job: ShardJob, arguments: dict, extra: dict) -> None:
    """`translate --restyle`: a StyleGAN2 checkpoint, the input's classes the model's, and the
    feature network every actor's projection uses (trained here once, shipped in the job)."""
    family = meta.get("family")
    _check(family == "stylegan2", f"--restyle needs a StyleGAN2 checkpoint (its W+ layers); --checkpoint "
                                  f"{cfg.checkpoint} is {family}")
    model_names = [str(n) for n in meta.get("class_names", [])]
    conditional = int(meta.get("num_classes", 0)) > 0
    if conditional and job.class_names and model_names and list(job.class_names) != model_names:
        raise GenerationError(f"--input {cfg.input}: its classes {job.class_names} are not the model's "
                              f"{model_names}; a conditional model restyles images of its own classes")
    job.task, job.restyle, job.style_seed, job.variants = "restyle", cfg.restyle, cfg.style_seed, cfg.variants
    job.project_steps, job.total_rows = cfg.project_steps, job.total_rows * cfg.variants
    job.feature_net, feature_info = _feature_net(cfg, job)
    restyle = {"group": cfg.restyle, "style_seed": cfg.style_seed, "variants": cfg.variants,
               "project_steps": cfg.project_steps, "project_lr": job.project_lr, "features": feature_info}
    arguments.update(task="restyle", num=job.total_rows, restyle=restyle)
    extra["restyle"] = restyle


def _feature_net(cfg: TranslateConfig, job: ShardJob) -> tuple[dict | None, dict]:
    """A SmallCNN trained on (a class-balanced part of) the labelled input: the domain feature
    space of the projection's feature loss, since no LPIPS weights can be downloaded. An
    unlabelled input projects by the pixel loss alone."""
    import numpy as np

    from ganaug.data import iter_dataset
    from ganaug.metrics.features import DomainFeatures

    per_class = max(1, FEATURE_ROWS // max(1, len(job.class_names)))
    kept: dict[int, list[np.ndarray]] = {}   # label -> image batches, at most per_class rows in all
    counts: dict[int, int] = {}
    for part in iter_dataset(cfg.input, batch_rows=1024, resolution=job.resolution, channels=job.channels):
        for label in (int(c) for c in np.unique(part.labels) if c >= 0):
            take = part.images[part.labels == label][:per_class - counts.get(label, 0)]
            if len(take):
                kept.setdefault(label, []).append(take)
                counts[label] = counts.get(label, 0) + len(take)
        if len(counts) == len(job.class_names) and min(counts.values()) >= per_class:
            break  # every class is full: the rest of the input is not read
    if len(kept) < 2:
        return None, {"loss": "pixel", "why": "the input has fewer than 2 labelled classes"}
    images = np.concatenate([a for label in kept for a in kept[label]])
    labels = np.concatenate([np.full(counts[label], label) for label in kept])
    num_classes = max(len(job.class_names), int(labels.max()) + 1)
    domain = DomainFeatures.from_training(images, labels, num_classes)  # cached by its data's fingerprint
    net = domain.classifier
    state = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
    config = {"in_channels": net.in_channels, "num_classes": net.num_classes, "width": net.width}
    info = {"loss": "pixel+domain", "feature_rows": int(len(images)), "fingerprint": domain.fingerprint}
    return {"config": config, "state": state}, info
