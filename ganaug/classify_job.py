"""`ganaug classify` / `python -m jobs.classify`: a standard classifier trained data-parallel on
Ray Train over a real-only or mixed real + synthetic stream, judged on held-out rows
(ARCHITECTURE.md §3.9). Ray glue; the network, step and tally live in `classify.py`.

Driver: plan the two streams (`mixed.build_mixed`), size the steps, run a TorchTrainer, write
`{storage}/classify/{name}/report.json`. Workers: build the model (seeded), resume from
`ray.train.get_checkpoint()`, train a fixed number of steps over their shard of the stream,
report a checkpoint through Ray Train (uploaded asynchronously), then tally their shard of
the held-out rows and all-reduce it. A lost worker restarts the group from the last checkpoint
(`training.max_failures`); rerunning with the same name resumes.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ganaug import storage
from ganaug.classify import ClassifyConfig
from ganaug.config import build_dataclass
from ganaug.errors import UserError, first_line, require
from ganaug.mixed import MixRequest, build_mixed
from ganaug.raycluster import (
    FORWARDED_ENV,
    ensure_ray,
    fast_train_polling,
    require_shared_paths,
)
from ganaug.testing import faults

STATE_FILE = "state.pt"          # optimiser + schedule + step (torch.load(weights_only=True))
WEIGHTS_FILE = "model.safetensors"


class ClassifyFailed(UserError):
    pass


@dataclass
class ClassifyPlan:
    cfg: ClassifyConfig
    name: str
    out: str                      # {storage}/classify/{name}
    class_names: list[str]
    shape: tuple[int, int, int]   # H, W, C of the stream
    steps: int
    steps_per_epoch: int
    epochs: int
    mix: dict


def plan_classify(cfg: ClassifyConfig, name: str, storage_root: str | None) -> tuple[ClassifyPlan, object, object]:
    """(plan, training stream, held-out stream): every input checked before a worker starts."""
    import dataclasses

    from ganaug.mixed import plan_mix

    d, t = cfg.data, cfg.training
    request = MixRequest(real=d.train, synthetic=d.synthetic or None, checkpoint=d.checkpoint or None,
                         ratio=d.ratio, seed=t.seed, balance=d.balance, resolution=d.resolution or None,
                         channels=d.channels or None, truncation=d.truncation,
                         block_rows=max(256, t.batch_size * t.workers * 4), use_gpu=t.use_gpu)
    planned, context = plan_mix(request)  # one epoch's plan sizes the run; its epochs are set below
    global_batch = t.batch_size * t.workers
    steps_per_epoch = planned.rows_per_epoch // global_batch
    require(steps_per_epoch >= 1, f"data.train {d.train!r}: {planned.rows_per_epoch} rows per epoch make no "
            f"batch of {t.batch_size} x {t.workers} workers; lower training.batch_size", ClassifyFailed)
    epochs = -(-t.steps // steps_per_epoch) if t.steps else t.epochs
    steps = t.steps or epochs * steps_per_epoch
    planned.epochs = epochs
    train_ds, mix = build_mixed(dataclasses.replace(request, epochs=epochs), (planned, context))
    h, w, c = mix.image_shape
    heldout_ds, held = build_mixed(MixRequest(real=d.heldout, ratio=0.0, resolution=h if d.resolution else None,
                                              channels=c, block_rows=1024))
    require(held.class_names == mix.class_names, f"data.heldout {d.heldout!r} has classes {held.class_names[:10]}, "
            f"data.train has {mix.class_names[:10]}: they must be the same, in the same order", ClassifyFailed)
    require(tuple(held.image_shape) == (h, w, c), f"data.heldout {d.heldout!r} images are "
            f"{held.image_shape[0]}x{held.image_shape[1]}, the training stream's {h}x{w}; set data.resolution",
            ClassifyFailed)
    root = storage_root or cfg.storage.root
    plan = ClassifyPlan(cfg, name, storage.join(root, "classify", name), mix.class_names, (h, w, c), steps,
                        steps_per_epoch, epochs, mix.summary())
    return plan, train_ds, heldout_ds


def run_classify(cfg: ClassifyConfig, name: str, storage_root: str | None = None, *,
                 echo: Callable[[str], None] | None = print, shared_fs: bool = False) -> dict:
    """Train and judge; returns the report (also written, last, as {out}/report.json)."""
    t0 = time.perf_counter()
    # 1. Connect, check the paths and plan both streams.
    fast_train_polling()
    ensure_ray()
    require_shared_paths({"storage.root": storage_root or cfg.storage.root}, shared_fs)
    plan, train_ds, heldout_ds = plan_classify(cfg, name, storage_root)
    if echo:
        mix = plan.mix
        echo(f"classify {name}: {cfg.model.arch} on {mix['real_rows']} real + {mix['synthetic_rows']} synthetic "
             f"rows per epoch ({mix['source']}), {plan.steps} steps of {cfg.training.batch_size} x "
             f"{cfg.training.workers} worker(s), {plan.epochs} epoch(s); out {plan.out}")
    # 2. Train on Ray Train.
    from ray.train import TrainingFailedError

    try:
        result = _trainer(plan, train_ds, heldout_ds).fit()
    except TrainingFailedError as e:
        raise ClassifyFailed(f"classify {name} failed beyond training.max_failures="
                             f"{cfg.training.max_failures}: {first_line(e)}") from None
    # 3. The report, written last.
    report = _report(plan, result.metrics, time.perf_counter() - t0)
    storage.write_bytes(storage.join(plan.out, "report.json"), json.dumps(report, indent=2).encode())
    return report


def _report(plan: ClassifyPlan, metrics: dict, seconds: float) -> dict:
    from ganaug.classify import accuracy_report

    correct, seen = np.asarray(metrics["correct"]), np.asarray(metrics["seen"])
    return {"name": plan.name, "out": plan.out, "arch": plan.cfg.model.arch, "steps": int(metrics["step"]),
            "epochs": plan.epochs, "workers": plan.cfg.training.workers, "data": plan.mix,
            "train": plan.cfg.data.train, "heldout": plan.cfg.data.heldout, "seconds": round(seconds, 1),
            "resumed_from": metrics.get("resumed_from", 0), **accuracy_report(correct, seen, plan.class_names),
            "config": plan.cfg.to_dict()}


def _trainer(plan: ClassifyPlan, train_ds, heldout_ds):
    from ray.train import (
        CheckpointConfig,
        DataConfig,
        FailureConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer

    t = plan.cfg.training
    fs, path = storage.resolve(storage.join(plan.out, "_ray_train"))
    env = {k: os.environ[k] for k in (*FORWARDED_ENV, *faults.WORKER_ENV) if os.environ.get(k)}
    return TorchTrainer(
        _train_loop,
        train_loop_config={"config": plan.cfg.to_dict(), "shape": list(plan.shape),
                           "classes": len(plan.class_names), "steps": plan.steps,
                           "checkpoint_every": t.checkpoint_every or plan.steps_per_epoch},
        datasets={"train": train_ds, "heldout": heldout_ds},
        # Only the training stream is split (equally, so every rank takes the same number of
        # steps); rank 0 tallies the whole held-out set, since an equal split would drop rows.
        dataset_config=DataConfig(datasets_to_split=["train"]),
        scaling_config=ScalingConfig(num_workers=t.workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": 1.0, "GPU": 1.0} if t.use_gpu else
                                     {"CPU": _cpu_share(t.workers)}),
        run_config=RunConfig(name="run", storage_path=path, storage_filesystem=fs if storage.is_s3(plan.out) else None,
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             worker_runtime_env={"env_vars": env} if env else None),
    )


def _cpu_share(workers: int) -> float:
    """Each worker's CPUs: a fair share on a local Ray (the stream's actors need some too),
    one whole CPU on a cluster so an autoscaler adds nodes instead of packing the head."""
    from ganaug.raycluster import cluster_cpus

    if os.environ.get("RAY_ADDRESS"):
        return 1.0
    return max(0.01, min(1.0, (cluster_cpus() - 1.0) / workers))


# =============================================================================== worker

def _train_loop(config: dict) -> None:
    import ray.train
    import torch
    from ray.train.torch import get_device, prepare_model

    from ganaug.classify import build_classifier
    from ganaug.metrics.classifier import classic_augmentation

    cfg = build_dataclass(ClassifyConfig, config["config"]).validate()
    t = cfg.training
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    h, _, c = config["shape"]
    torch.set_num_threads(1)
    torch.manual_seed(t.seed)  # the same init on every rank (DDP also broadcasts rank 0's)
    model = prepare_model(build_classifier(cfg, c, config["classes"], h))
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(config["steps"], 1))
    start = _restore(model, opt, sched)
    torch.manual_seed(t.seed * 1000 + rank + start)  # augmentation and dropout draws after a resume
    augment = classic_augmentation(c, hflip=t.hflip) if t.augment == "classic" else None
    device = get_device()
    step = start
    if start < config["steps"]:
        step = _train_steps(model, opt, sched, augment, device, start, config, rank, world)
    correct, seen = _heldout_tally(model, device, config["classes"], rank)
    _report_checkpoint(model, opt, sched, step, {"correct": correct, "seen": seen, "final": True,
                                                 "resumed_from": start}, rank)


def _train_steps(model, opt, sched, augment, device, start: int, config: dict, rank: int, world: int) -> int:
    import ray.train

    from ganaug.classify import batch_tensors, train_step

    t_cfg = config["config"]["training"]
    total, every = config["steps"], config["checkpoint_every"]
    shard = ray.train.get_dataset_shard("train")
    step = 0
    model.train()
    for batch in shard.iter_batches(batch_size=t_cfg["batch_size"], batch_format="numpy", drop_last=True,
                                    local_shuffle_buffer_size=4 * t_cfg["batch_size"],
                                    local_shuffle_seed=t_cfg["seed"] + rank):
        if step >= total:
            break
        step += 1
        if step <= start:
            continue  # a resumed stream replays from its start: the checkpoint saw these batches
        x, y = batch_tensors(batch, device, augment)
        loss = train_step(model, opt, sched, x, y)
        faults.maybe_crash("train.after_step", step=step, rank=rank, world_size=world)
        if step % every == 0 and step < total:
            _report_checkpoint(model, opt, sched, step, {"loss": loss, "epoch": step // max(1, every)}, rank)
    return max(step, start)


def _heldout_tally(model, device, classes: int, rank: int) -> tuple[list[int], list[int]]:
    import ray.train
    import torch
    import torch.distributed as dist

    from ganaug.classify import batch_tensors, tally

    # The bare module: DDP's forward syncs buffers across ranks, and only rank 0 runs these.
    model = _unwrap(model).eval()
    correct = torch.zeros(classes, dtype=torch.long, device=device)
    seen = torch.zeros(classes, dtype=torch.long, device=device)
    batches = ray.train.get_dataset_shard("heldout").iter_batches(batch_size=256, batch_format="numpy")
    for batch in batches if rank == 0 else ():
        x, y = batch_tensors(batch, device)
        c, s = tally(model, x, y, classes)
        correct += c
        seen += s
    if dist.is_available() and dist.is_initialized():  # every rank ends with rank 0's counts
        dist.all_reduce(correct)
        dist.all_reduce(seen)
    return correct.cpu().tolist(), seen.cpu().tolist()


def _unwrap(model):
    return getattr(model, "module", model)


def _report_checkpoint(model, opt, sched, step: int, metrics: dict, rank: int) -> None:
    """Every rank reports (Train v2 needs the same count); rank 0 attaches the checkpoint folder,
    which Ray Train uploads in the background while training goes on."""
    import ray.train
    import torch
    from ray.train import Checkpoint, CheckpointUploadMode
    from safetensors.torch import save_file

    metrics = dict(metrics, step=step)
    if rank != 0:
        ray.train.report(metrics)
        return
    folder = tempfile.mkdtemp(prefix="ganaug-classify-")
    state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
    save_file(state, os.path.join(folder, WEIGHTS_FILE))
    torch.save({"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict()},
               os.path.join(folder, STATE_FILE))
    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder),
                     checkpoint_dir_name=f"step-{step:07d}", checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
                     delete_local_checkpoint_after_upload=True)


def _restore(model, opt, sched) -> int:
    """The step of Ray Train's latest checkpoint, with its weights and optimiser loaded (0 if none)."""
    import ray.train
    import torch
    from safetensors.torch import load_file

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0
    with ckpt.as_directory() as folder:
        _unwrap(model).load_state_dict(load_file(os.path.join(folder, WEIGHTS_FILE)))
        state = torch.load(os.path.join(folder, STATE_FILE), weights_only=True)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return int(state["step"])
