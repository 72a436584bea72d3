"""`mixed_dataset`: real rows and synthetic rows as one Ray Dataset for Ray Train (ARCHITECTURE.md §3.8).

Two stages, so a GPU never waits on image decoding:
1. `_BlockReader` actors (CPU) read and decode each block's real rows (and a set's rows), shuffle
   the block, and leave placeholders for the rows a generator must make;
2. `_SyntheticFiller` actors (CPU or one GPU each) hold the generator and fill the placeholders
   through the one Sampler, resized to the stream's image size as `generate --size` does.
The plan (`mixplan.py`) makes the stream a pure function of its inputs, `seed` and the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ganaug import mixplan
from ganaug.data.loader import read_span
from ganaug.errors import require
from ganaug.mixplan import MixError, MixPlan

# Columns of every row: image uint8 H x W x C, label int64 (the real data's label space),
# class_name, synthetic (bool), seed (the sample seed of a generated row, else -1).
COLUMNS = ("image", "label", "class_name", "synthetic", "seed")
STREAM_ACTOR_CPUS = 0.5   # logical CPUs each reader or filler actor asks for (at most)


@dataclass(frozen=True)
class MixRequest:
    real: str
    synthetic: str | None = None
    checkpoint: str | None = None
    ratio: float = 0.5
    seed: int = 0
    epoch: int = 0
    epochs: int = 1
    balance: bool = False
    resolution: int | None = None
    channels: int | None = None
    truncation: float = 1.0
    block_rows: int = 1024
    workers: int | None = None
    use_gpu: bool = False
    allow_incomplete: bool = False

    def check(self) -> None:
        require(self.synthetic is None or self.checkpoint is None,
                "give synthetic= (a generated set) or checkpoint= (fresh samples), not both", MixError)
        require(self.ratio == 0 or (self.synthetic or self.checkpoint),
                f"ratio={self.ratio} needs synthetic rows: give synthetic=SET_URI or checkpoint=RUN_URI", MixError)
        require(not (self.balance and self.synthetic),
                "balance=True draws the synthetic labels, so it needs checkpoint=; a set's labels are fixed "
                "(generate it with --labels balance:REAL instead)", MixError)
        for name in ("seed", "epoch"):
            require(isinstance(getattr(self, name), int) and getattr(self, name) >= 0,
                    f"{name} must be an integer >= 0, got {getattr(self, name)!r}", MixError)
        for name in ("epochs", "block_rows"):
            require(isinstance(getattr(self, name), int) and getattr(self, name) >= 1,
                    f"{name} must be an integer >= 1, got {getattr(self, name)!r}", MixError)


@dataclass(frozen=True)
class _Shape:
    height: int
    width: int
    channels: int


def _real_side(req: MixRequest) -> tuple[np.ndarray, list[str], _Shape]:
    """The real data's per-class histogram, class names and the stream's image shape (one label scan)."""
    from ganaug.data import dataset_summary

    summary = dataset_summary(req.real, req.allow_incomplete)
    classes = summary["classes"]
    require(bool(classes) and "unlabelled" not in classes, f"real dataset {req.real!r} is unlabelled: a mixed "
            "dataset matches labels by class name, so both sides need them", MixError)
    require(summary["rows"] > 0, f"real dataset {req.real!r} has no rows", MixError)
    h, w, c = summary["shape"]
    if req.resolution:
        h = w = req.resolution
    return np.asarray(list(classes.values()), np.int64), list(classes), _Shape(h, w, req.channels or c)


def plan_mix(req: MixRequest) -> tuple[MixPlan, dict]:
    """The plan and what the actors need to know (class maps, the stream's shape)."""
    req.check()
    histogram, names, shape = _real_side(req)
    n = int(histogram.sum())
    s = mixplan.synthetic_count(n, req.ratio)
    plan = MixPlan(real_rows=n, synthetic_rows=s, class_names=names, real_histogram=histogram,
                   source="none", seed=req.seed, first_epoch=req.epoch, epochs=req.epochs,
                   block_rows=req.block_rows, balance=req.balance,
                   image_shape=(shape.height, shape.width, shape.channels))
    context: dict[str, Any] = {"shape": shape, "to_real": None, "to_model": None}
    if req.checkpoint and s:
        from ganaug import checkpoint

        uri = checkpoint.resolve_checkpoint(req.checkpoint)
        meta = checkpoint.load_meta(uri)
        require(meta.get("kind", "noise") == "noise" and int(meta.get("num_classes", 0)) > 0,
                f"checkpoint {uri}: a mixed dataset needs a class-conditional generator "
                f"(this one is {meta.get('family')}, {int(meta.get('num_classes', 0))} classes)", MixError)
        context["to_model"] = mixplan.align_classes(names, list(meta.get("class_names", [])), f"checkpoint {uri}")
        context["checkpoint"] = uri
        plan.source = "checkpoint"
        plan.synthetic_counts = mixplan.plan_synthetic_counts(histogram, s, req.balance)
    elif req.synthetic and s:
        from ganaug.data import label_histogram

        set_spec = _set_spec(req.synthetic)
        set_hist, set_names = label_histogram(set_spec, req.allow_incomplete)
        present = [set_names[k] if 0 <= k < len(set_names) else "unlabelled" for k, v in set_hist.items() if v]
        extra = [p for p in present if p not in names]
        if extra:
            raise MixError(f"classes do not match: set {req.synthetic} has class {extra[0]!r}, which the real "
                           f"data {req.real!r} lacks (labels are matched by class name)")
        to_real = np.asarray([names.index(n) if n in names else -1 for n in set_names] or [-1], np.int64)
        context.update(to_real=to_real, set_spec=set_spec)
        plan.source = "set"
        plan.set_rows = int(sum(set_hist.values()))
        require(plan.set_rows > 0, f"set {req.synthetic} has no rows", MixError)
    return plan, context


def _set_spec(uri: str) -> str:
    return uri if uri.startswith("parquet:") else f"parquet:{uri}"


def _to_stream_shape(images: np.ndarray, shape: _Shape) -> np.ndarray:
    """Generated images -> the stream's H x W x C, resized as `generate --size` resizes."""
    from ganaug.data.images import conform_batch
    from ganaug.sampling import resize_images

    return conform_batch(resize_images(images, (shape.height, shape.width)), None, shape.channels)


class _BlockReader:
    """Stage 1: a block's real rows (and set rows), decoded, shuffled, with generator placeholders."""

    def __init__(self, req: MixRequest, plan: MixPlan, context: dict):
        from ganaug.data import open_reader

        self.req, self.plan, self.shape = req, plan, context["shape"]
        self.real = open_reader(req.real, req.allow_incomplete)
        self.set = open_reader(context["set_spec"], req.allow_incomplete) if plan.source == "set" else None
        self.to_real, self.set_spec = context["to_real"], context.get("set_spec")

    def _read_real(self, start: int, stop: int):
        spec, res = self.req.real, self.req.resolution
        part = read_span(spec, *self.real, start, stop, resolution=res, channels=self.shape.channels)
        want = (self.shape.height, self.shape.width, self.shape.channels)
        require(part.images.shape[1:] == want or len(part) == 0,
                f"dataset {spec!r}: rows {start}..{stop} are {part.images.shape[1]}x{part.images.shape[2]}, "
                f"the stream is {want[0]}x{want[1]}; pass resolution= to resize every image", MixError)
        return part

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        item = {k: v[0] for k, v in batch.items()}
        epoch, block = int(item["epoch"]), int(item["block"])
        images, labels, seeds = [], [], []
        for lo, hi in mixplan.decode_spans(item):
            part = self._read_real(int(lo), int(hi))
            images.append(part.images)
            labels.append(part.labels)
            seeds.append(np.full(len(part), -1, np.int64))
        n_real = sum(len(x) for x in labels)
        lo, hi = int(item["syn_lo"]), int(item["syn_hi"])
        if self.plan.source == "set":
            for a, b in mixplan.set_spans(epoch, lo, hi, self.plan.synthetic_rows, self.plan.set_rows):
                part = read_span(self.set_spec, *self.set, a, b)
                images.append(_to_stream_shape(part.images, self.shape))
                labels.append(self.to_real[part.labels])
                seeds.append(np.full(len(part), -1, np.int64))
        elif self.plan.source == "checkpoint" and hi > lo:
            images.append(np.zeros((hi - lo, self.shape.height, self.shape.width, self.shape.channels), np.uint8))
            labels.append(mixplan.decode_labels(item))
            seeds.append(mixplan.synthetic_seeds(self.plan.seed, epoch, lo, hi))
        empty = np.zeros((0, self.shape.height, self.shape.width, self.shape.channels), np.uint8)
        image = np.concatenate([empty, *images])
        label = np.concatenate([np.zeros(0, np.int64), *labels])
        seed = np.concatenate([np.zeros(0, np.int64), *seeds])
        order = mixplan.block_order(self.plan.seed, epoch, block, len(label))
        names = np.asarray(self.plan.class_names, dtype=object)
        return {"image": image[order], "label": label[order], "class_name": names[label[order]],
                "synthetic": (np.arange(len(label)) >= n_real)[order], "seed": seed[order]}


class _SyntheticFiller:
    """Stage 2: the generator fills the placeholders (rows with synthetic and a seed >= 0)."""

    def __init__(self, checkpoint_uri: str, to_model: np.ndarray, shape: _Shape, truncation: float, use_gpu: bool):
        import torch

        from ganaug.sampling import Sampler

        torch.set_num_threads(1)
        device = "cuda" if use_gpu else "cpu"
        if use_gpu and not torch.cuda.is_available():
            raise MixError("use_gpu=True but this actor's torch sees no CUDA device")
        self.sampler = Sampler.from_checkpoint(checkpoint_uri, device=device)
        self.to_model, self.shape, self.truncation = to_model, shape, truncation

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        todo = np.flatnonzero(batch["synthetic"] & (batch["seed"] >= 0))
        if todo.size:
            made = self.sampler.generate(batch["seed"][todo].tolist(), self.to_model[batch["label"][todo]],
                                         self.truncation)
            made = _to_stream_shape(made, self.shape)
            image = np.array(batch["image"], copy=True)
            image[todo] = made
            batch["image"] = image
        return batch


def build_mixed(req: MixRequest, planned: tuple[MixPlan, dict] | None = None):
    """(ray.data.Dataset, MixPlan) for a request; see `mixed_dataset`. `planned`: what
    `plan_mix(req)` returned, when the caller already has it."""
    from ganaug.raycluster import actor_cpu_share, cluster_cpus, ensure_ray

    plan, context = planned or plan_mix(req)
    ray = ensure_ray()
    from ray.data import ActorPoolStrategy

    items = plan.all_blocks()
    readers = max(1, min(req.workers or 1, len(items)))
    fillers = max(1, req.workers or 1) if plan.source == "checkpoint" else 0
    # Small CPU shares: the stream runs beside its consumer (Train workers) and Ray Data's own
    # tasks, and a pool holding every CPU hangs the job (ARCHITECTURE.md §5).
    cpu = min(STREAM_ACTOR_CPUS, actor_cpu_share(cluster_cpus(), readers + fillers))
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(_BlockReader, fn_constructor_kwargs={"req": req, "plan": plan, "context": context},
                        batch_size=1, batch_format="numpy", num_cpus=cpu,
                        compute=ActorPoolStrategy(min_size=1, max_size=readers))
    if fillers:
        remote: dict[str, Any] = {"num_cpus": cpu}
        if req.use_gpu:
            remote["num_gpus"] = 1.0  # whole GPUs: an autoscaler provisions them (ARCHITECTURE.md §3.1)
        ds = ds.map_batches(_SyntheticFiller, batch_size=None, batch_format="numpy",
                            fn_constructor_kwargs={"checkpoint_uri": context["checkpoint"],
                                                   "to_model": context["to_model"], "shape": context["shape"],
                                                   "truncation": req.truncation, "use_gpu": req.use_gpu},
                            compute=ActorPoolStrategy(min_size=1, max_size=fillers), **remote)
    ds.context.execution_options.preserve_order = True  # the stream order is part of its determinism
    return ds, plan


def mixed_dataset(real: str, synthetic: str | None = None, checkpoint: str | None = None, ratio: float = 0.5,
                  seed: int = 0, *, epoch: int = 0, epochs: int = 1, balance: bool = False,
                  resolution: int | None = None, channels: int | None = None, truncation: float = 1.0,
                  block_rows: int = 1024, workers: int | None = None, use_gpu: bool = False,
                  allow_incomplete: bool = False):
    """Real rows mixed with synthetic rows as one `ray.data.Dataset` (columns: image uint8 HxWxC,
    label, class_name, synthetic, seed), ready for `ray.train.get_dataset_shard` in any TorchTrainer.

    real: any dataset spec. synthetic: a generated set's URI; or checkpoint: a run or checkpoint
    URI whose generator samples fresh rows on the fly (no set is written). ratio: the synthetic
    fraction of the rows (0.5: one synthetic row per real row, N / (1 - ratio) rows per epoch).
    Labels are matched by class name. balance=True gives the generator's rows to the rarest
    classes first. epochs > 1 streams epochs epoch..epoch+epochs-1 back to back, each with its
    own order and fresh samples; every row is a function of (inputs, seed, epoch, index).
    Images come at the real data's size (or resolution x resolution) with its channels.
    """
    ds, _plan = build_mixed(MixRequest(real=real, synthetic=synthetic, checkpoint=checkpoint, ratio=ratio,
                                       seed=seed, epoch=epoch, epochs=epochs, balance=balance,
                                       resolution=resolution, channels=channels, truncation=truncation,
                                       block_rows=block_rows, workers=workers, use_gpu=use_gpu,
                                       allow_incomplete=allow_incomplete))
    return ds


__all__ = ["COLUMNS", "MixError", "MixRequest", "build_mixed", "mixed_dataset", "plan_mix"]
