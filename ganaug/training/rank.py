"""One rank of a training run (`train_loop_per_worker`), inside a Ray Train worker.

  - every rank loads the dataset itself; the loop's IndexStream gives each rank a disjoint
    slice of every epoch, and wraps G and D in DDP (torch.distributed is set up by Train);
  - checkpoints go through Ray Train: rank 0 writes the checkpoint folder to a local temp dir
    and reports it with `checkpoint_dir_name=step-NNNNNNN`; Train uploads it in the background
    (CheckpointUploadMode.ASYNC) to `{run}/checkpoints/` (Train's experiment folder, so the
    layout stays the one readers know) and keeps `training.keep_checkpoints` of them (its
    CheckpointConfig is the only retention). Rank 0 blocks only for the local write;
  - resume: `ray.train.get_checkpoint()`, Train's record of the last checkpoint it finished
    uploading. So a crash (Train restarts the group), a killed driver (rerun with the same
    --name: Train reloads its snapshot from the run folder) and a finished run given more steps
    all continue from the same place. A run made before checkpoints went through Train has no
    such record: rank 0 then takes the newest whole step folder, and broadcasts its choice;
  - a spot preemption notice (`ray.train.get_preemption_info()`, asked at report steps, which
    are collectives anyway) makes that step a just-in-time checkpoint, once per notice;
  - only rank 0 writes files (metrics.jsonl, checkpoints, sample grids);
  - every rank calls `ray.train.report` at exactly the same steps (a checkpoint step folds
    its metrics into the checkpoint's report), as Train v2 requires;
  - training.max_minutes: at every report step rank 0 compares the run's training time
    (metrics.jsonl `seconds`, summed over resumes) with the budget and broadcasts its verdict,
    so every rank stops after the same step, which is reported and checkpointed like the last.

Test-only fault injection: the point "train.after_step" of ganaug/testing/faults.py.
"""

from __future__ import annotations

import copy
import hashlib
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from ganaug import environment, storage
from ganaug.config import RunConfig, config_from_dict
from ganaug.errors import UserError
from ganaug.testing import faults
from ganaug.training import run_files


def _params_hash(module) -> str:
    """A hash of a module's parameters (not buffers: BatchNorm stats are per rank by design)."""
    h = hashlib.blake2b(digest_size=8)
    for name, p in module.named_parameters():
        h.update(name.encode())
        h.update(p.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def _cpu_sampler(trainer, meta: dict):
    """A Sampler over a CPU copy of G_ema, made once per checkpoint for its grid and its score
    (the Sampler switches deterministic algorithms on for CUDA, which must not leak into training)."""
    from ganaug.sampling import Sampler

    return Sampler(copy.deepcopy(trainer.G_ema).to("cpu"), meta, device="cpu")


def _grid_png(sampler, inputs) -> bytes:
    """The checkpoint's fixed-seed sample grid."""
    from ganaug.sampling import png_bytes

    return png_bytes(sampler.grid(per_class=8, seed=0, inputs=inputs), upscale=2)


def _translation_inputs(cfg: RunConfig, images, source_images):
    from ganaug.training.pairs import source_transform

    if source_images is not None:
        return source_images[:8]
    return source_transform(cfg.data.source_transform, images[:8])


def _load_resume_state(uri: str) -> dict:
    from ganaug import checkpoint

    meta = checkpoint.load_meta(uri)
    state = checkpoint.load_train_state(uri, meta)
    if not all(k in state for k in ("G", "D", "G_ema")):
        state["G"] = checkpoint.load_weights(uri, "generator", meta)
        state["D"] = checkpoint.load_weights(uri, "discriminator", meta)
        state["G_ema"] = checkpoint.load_weights(uri, "generator_ema", meta)
    return state


@dataclass
class _RankRun:
    """One rank's side of a run: what the loop's callbacks share (report, checkpoint, budget).

    Ray and torch are imported inside the methods: this class lives in the driver's module too,
    and importing that must not import Ray."""

    trainer: Any
    rank: int
    run_uri: str
    total: int
    meta_base: dict               # model.json fields common to every checkpoint of this run
    grid_inputs: Any              # a translation model's fixed inputs for the sample grid
    node: str
    resume_uri: str | None
    start_step: int
    metrics_log: Any = None       # rank 0 only: {run}/metrics.jsonl
    seconds0: float = 0.0         # training time before this fit (the run's, from metrics.jsonl)
    t_fit: float = 0.0
    first_report: bool = True
    pending: dict | None = None   # a checkpoint step's metrics, reported with its checkpoint
    stopping: bool = False        # the budget made this step the last one (budget_spent)
    judge: Any = None             # rank 0 with training.select_by: the QualityJudge
    best: dict | None = None      # rank 0: best.json so far (kept across resumes)
    jit: bool = False             # a preemption notice made this step a checkpoint step
    notice: tuple = ()            # the preempted nodes of the notice already checkpointed for

    @property
    def tc(self):
        return self.trainer.cfg.training

    def is_checkpoint_step(self, step: int) -> bool:
        return step % self.tc.checkpoint_every == 0 or step == self.total or self.stopping or self.jit

    def on_report(self, report: dict) -> None:
        report = dict(report)
        report["seconds"] = self.seconds0 + float(report.get("seconds", 0.0))
        if self.metrics_log is not None:
            self.metrics_log.append(report)
        if self.is_checkpoint_step(self.trainer.step):
            self.pending = report  # reported together with the checkpoint, right after
        else:
            self.send(report, None)

    def on_checkpoint(self, step: int) -> None:
        t0 = time.perf_counter()
        metrics = self.pending or {"step": step, "images_seen": self.trainer.images_seen}
        folder = None
        if self.rank == 0:
            sampler = _cpu_sampler(self.trainer, self.meta_base)
            if self.judge is not None:  # before the checkpoint, so metrics.jsonl carries the score
                metrics = dict(metrics, **self.judge_checkpoint(step, sampler))
            folder = self.save_checkpoint(step, sampler)
        if folder is not None:  # how long rank 0 held training up to write it (Train uploads it later)
            metrics = dict(metrics, checkpoint_s=round(time.perf_counter() - t0, 4))
        if self.jit:
            metrics = dict(metrics, preemption_checkpoint=True)
        self.send(metrics, folder)
        self.pending, self.jit = None, False

    def save_checkpoint(self, step: int, sampler) -> str:
        """Rank 0: the checkpoint folder in a local temp dir (Train uploads it), and its sample
        grid under {run}/samples/. Returns the folder."""
        from ganaug import checkpoint

        trainer = self.trainer
        meta = dict(self.meta_base, step=step, images_seen=trainer.images_seen)
        if self.metrics_log is not None:
            self.metrics_log.flush()  # the reports up to this checkpoint, before it is published
        png = _grid_png(sampler, self.grid_inputs)
        weights = trainer.weights()
        folder = tempfile.mkdtemp(prefix=f"ganaug-{checkpoint.step_dir_name(step)}-")
        checkpoint.save_checkpoint(
            folder, meta=meta, generator_ema=weights["generator_ema"], generator=weights["generator"],
            discriminator=weights["discriminator"], train_state=trainer.state_dict(include_weights=False),
            samples_png=png)
        storage.write_bytes(run_files.samples_uri(self.run_uri, step), png)
        return folder

    def judge_checkpoint(self, step: int, sampler) -> dict:
        """Rank 0: KID of this checkpoint's G_ema; best.json moves when it is the lowest so far.
        `quality` (-KID) is what Ray Train's retention keeps the best checkpoints by."""
        from ganaug import checkpoint
        from ganaug.training.quality import best_record, better

        kid = self.judge.kid(sampler)
        if self.metrics_log is not None and self.metrics_log.last and self.metrics_log.last["step"] == step:
            self.metrics_log.last["kid"] = kid
        if better(kid, self.best):
            uri = storage.join(checkpoint.checkpoints_root(self.run_uri), checkpoint.step_dir_name(step))
            self.best = best_record(step, uri, kid)
            storage.write_json(storage.join(self.run_uri, checkpoint.BEST), self.best)
        return {"kid": kid, "quality": -kid, "best_step": self.best["step"]}

    def after_step(self, step: int) -> bool:
        """fit's should_stop: at report steps, heed a preemption notice, then the time budget."""
        if step % self.tc.report_every != 0:
            return False
        self.jit = self.preemption_notice()
        return self.budget_spent(step)

    def preemption_notice(self) -> bool:
        """True once per notice that a node of this run is about to be reclaimed (every rank asks:
        Train broadcasts rank 0's view, so all ranks agree)."""
        import ray.train

        info = ray.train.get_preemption_info()
        if info is None or tuple(info.preempted_node_ids) == self.notice:
            return False
        self.notice = tuple(info.preempted_node_ids)
        return True

    def send(self, metrics: dict, folder: str | None) -> None:
        """ray.train.report for this rank: every rank at the same steps (Train v2); rank 0 with the metrics."""
        import ray.train

        from ganaug.losses import unwrap

        trainer = self.trainer
        own = {"step": trainer.step, "rank": self.rank, "node": self.node}
        if self.is_checkpoint_step(trainer.step):
            # The DDP sync check copies every parameter to the CPU: only at checkpoints (and
            # the last step), not at every report.
            own.update(g_hash=_params_hash(unwrap(trainer.G)), d_hash=_params_hash(unwrap(trainer.D)))
        if self.rank != 0:
            ray.train.report(own)
            return
        out = dict(metrics)
        out.update(own)
        if self.first_report and self.resume_uri:
            out.update(resumed_from=self.start_step, resume_uri=self.resume_uri)
        self.first_report = False
        if folder is None:
            ray.train.report(out)
            return
        from ray.train import Checkpoint, CheckpointUploadMode

        from ganaug import checkpoint

        name = checkpoint.step_dir_name(trainer.step)
        out["checkpoint"] = storage.join(checkpoint.checkpoints_root(self.run_uri), name)
        # Train uploads the folder to {run}/checkpoints/{name} while training goes on, records it
        # once whole (get_checkpoint() then returns it) and drops the oldest beyond num_to_keep.
        ray.train.report(out, checkpoint=Checkpoint.from_directory(folder), checkpoint_dir_name=name,
                         checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
                         delete_local_checkpoint_after_upload=True)

    def budget_spent(self, step: int) -> bool:
        """Rank 0's clock decides (its seconds0 is the run's), broadcast so all ranks agree.
        Asked at report steps only: those are collectives already, so the ranks are there."""
        budget_s = 60.0 * self.tc.max_minutes
        if budget_s <= 0 or step % self.tc.report_every != 0:
            return False
        spent = self.rank == 0 and self.seconds0 + (time.perf_counter() - self.t_fit) >= budget_s
        if self.trainer.distributed:
            import torch
            import torch.distributed as dist

            flag = torch.tensor([1.0 if spent else 0.0], device=self.trainer.device)
            dist.broadcast(flag, src=0)
            spent = bool(flag.item() > 0.5)
        self.stopping = spent
        return spent


def train_loop_per_worker(config: dict) -> None:
    """One rank of a run. `config`: {"config": resolved RunConfig dict, "run_uri", "name"}."""
    import ray.train

    from ganaug.training.loop import GANTrainer

    # 1. Set up this rank: the driver's working directory, torch threads, the device.
    _enter_driver_cwd(config.get("cwd"))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = config_from_dict(config["config"])
    device = _worker_device(cfg, rank, ctx.get_local_world_size())
    # 2. Load the data (every rank its own copy), hold back data.holdout of it, build the trainer.
    data, source = _load_worker_data(cfg)
    data, held_back = _hold_back(cfg, data)
    trainer = GANTrainer(cfg, data.images, data.labels, data.class_names, device=device, rank=rank,
                         world_size=world, source_images=source)
    # 3. Resume from the newest complete checkpoint, the same one on every rank.
    resume_uri = _resume(trainer, config["run_uri"], rank)
    # 4. Train: the callbacks report, checkpoint and watch the time budget.
    run = _rank_run(config, trainer, rank, resume_uri, data.images, source)
    if rank == 0 and cfg.training.select_by != "none":  # the other ranks wait at the first collective
        from ganaug import checkpoint

        run.judge, run.best = _quality_judge(cfg, trainer, data, held_back), checkpoint.read_best(run.run_uri)
    if faults.armed("train.after_step"):
        _inject_step_faults(trainer, rank, world)
    run.t_fit = time.perf_counter()
    if run.start_step >= run.total:
        return  # nothing left (the driver normally catches this before starting workers)
    tc = cfg.training
    trainer.fit(run.total, report_every=tc.report_every, checkpoint_every=tc.checkpoint_every,
                on_report=run.on_report, on_checkpoint=run.on_checkpoint, should_stop=run.after_step,
                checkpoint_now=lambda step: run.jit)


def _enter_driver_cwd(cwd: str | None) -> None:
    """Train starts each worker in its own trial directory; relative data paths in the config
    (mnist:../shared/data/mnist) mean the driver's directory, as they do for the driver's own
    checks. Under `ray job submit --working-dir` that is the job's unpacked copy."""
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)


def _worker_device(cfg: RunConfig, rank: int, local_world: int):
    import ray.train.torch
    import torch

    tc = cfg.training
    threads = tc.threads_per_worker or max(1, (os.cpu_count() or 1) // max(1, local_world))
    torch.set_num_threads(threads)
    if tc.use_gpu and not torch.cuda.is_available():
        # Ray gave this worker a GPU, but torch cannot use it (a CPU-only wheel, a driver
        # mismatch): training on the CPU instead would be silent and many times slower.
        raise UserError(f"--use-gpu: rank {rank} on {socket.gethostname()} has no usable CUDA device (torch "
                        f"{torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); install a CUDA "
                        "build of torch on the GPU nodes, or train without --use-gpu")
    # (cuDNN autotuning is the loop's to set: training.cudnn_benchmark.)
    return ray.train.torch.get_device() if tc.use_gpu else torch.device("cpu")


def _load_worker_data(cfg: RunConfig) -> tuple[Any, Any]:
    """(the dataset, the translation source images or None)."""
    from ganaug.data import load_dataset
    from ganaug.data.paired import is_paired_spec, load_pairs

    d = cfg.data
    source = None
    if is_paired_spec(d.spec):  # real pairs: A is the spec's own other side, row-aligned
        a_side, data = load_pairs(d.spec, d.resolution, d.channels, d.skip_bad)
        source = a_side.images
    else:
        data = load_dataset(d.spec, d.resolution, d.channels, d.skip_bad)
    if d.source_spec:
        source = load_dataset(d.source_spec, d.resolution, d.channels, d.skip_bad).images
    return data, source


def _hold_back(cfg: RunConfig, data):
    """(the rows the GAN trains on, the held-back images): data.holdout of each class, seeded by
    training.seed, the same cut on every rank and on every resume."""
    if cfg.data.holdout <= 0:
        return data, None
    import dataclasses

    from ganaug.training.quality import holdout_split

    keep, held = holdout_split(data.labels, cfg.data.holdout, seed=cfg.training.seed)
    kept = dataclasses.replace(data, images=data.images[keep], labels=data.labels[keep],
                               sources=[data.sources[i] for i in keep])
    return kept, data.images[held]


def _quality_judge(cfg: RunConfig, trainer, data, held_back):
    from ganaug.training.quality import QualityJudge

    return QualityJudge.build(data.images, data.labels, held_back, num_classes=len(data.class_names),
                              conditional=int(trainer.model_meta().get("num_classes", 0)) > 0,
                              samples=cfg.training.select_samples)


def _resume(trainer, run_uri: str, rank: int) -> str | None:
    """Train's last checkpoint (or, for a run made before checkpoints went through Train, the
    newest whole step folder); rank 0 decides, so every rank loads the same one. Returns its URI."""
    import ray.train
    from ray.train.collective import broadcast_from_rank_zero

    from ganaug import checkpoint

    resume_uri = None
    if rank == 0:
        recorded = ray.train.get_checkpoint()
        resume_uri = _uri_of(recorded) if recorded is not None else checkpoint.latest_checkpoint(run_uri)
    resume_uri = broadcast_from_rank_zero(resume_uri)
    if resume_uri:
        trainer.load_state_dict(_load_resume_state(resume_uri))
    return resume_uri


def _uri_of(ray_checkpoint) -> str:
    """A ray.train.Checkpoint's location as a ganaug storage URI."""
    import pyarrow.fs as pafs

    if isinstance(ray_checkpoint.filesystem, pafs.S3FileSystem):
        return "s3://" + ray_checkpoint.path.lstrip("/")
    return ray_checkpoint.path


def _rank_run(config: dict, trainer, rank: int, resume_uri: str | None, images, source) -> _RankRun:
    """The callbacks' state: metrics.jsonl cut back to the resumed step (rank 0), the model.json base."""
    import ray

    cfg = trainer.cfg
    run = _RankRun(trainer=trainer, rank=rank, run_uri=config["run_uri"], total=cfg.training.steps,
                   meta_base=_meta_base(config, trainer), grid_inputs=None, resume_uri=resume_uri,
                   start_step=trainer.step,
                   node=f"{socket.gethostname()}:{ray.get_runtime_context().get_node_id()}")
    if run.meta_base["kind"] == "translation":
        run.grid_inputs = _translation_inputs(cfg, images, source)
    if rank == 0:
        run.metrics_log = run_files.MetricsLog(run.run_uri)
        run.metrics_log.resume(run.start_step)  # drop lines after the checkpoint we resume from
        if run.metrics_log.last:
            run.seconds0 = float(run.metrics_log.last.get("seconds") or 0.0)
    return run


def _meta_base(config: dict, trainer) -> dict:
    cfg = trainer.cfg
    meta = trainer.model_meta()
    meta.update(config=cfg.to_dict(), config_digest=cfg.digest(), run=config.get("name"),
                environment=environment.current(trainer.device.type))  # where these weights were trained
    if config.get("native_size"):
        meta["native_size"] = [int(v) for v in config["native_size"]]
    return meta


def _inject_step_faults(trainer, rank: int, world: int) -> None:
    """Tests only: wrap train_step with the fault seam's "train.after_step" point."""
    plain_step = trainer.train_step

    def step_with_fault():
        out = plain_step()
        faults.maybe_crash("train.after_step", step=trainer.step, rank=rank, world_size=world)
        return out

    trainer.train_step = step_with_fault
