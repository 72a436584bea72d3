"""The GAN training loop: pure PyTorch, one object per rank, nothing about Ray.

    trainer = GANTrainer(cfg, images, labels, class_names, device=..., rank=r, world_size=w)
    trainer.fit(cfg.training.steps, report_every=..., checkpoint_every=...,
                on_report=print, on_checkpoint=lambda step: save(trainer))

The Ray Train glue (training/worker.py) initialises torch.distributed first; when it is
initialised and world_size > 1, G and D are wrapped in DistributedDataParallel here.

One iteration (`train_step`) = the family loss's phases "D", "Dreg" (lazy R1, when due), "G"
and "Greg" (lazy G regulariser, when due), each followed by its optimiser step, then the G_ema
update and the ADA p update. Lazy regularisation scales Adam as stylegan2-ada-pytorch does: with
interval I, mb_ratio = I / (I + 1), lr *= mb_ratio and betas **= mb_ratio. Learning rates
follow `training.lr_decay` (a pure function of the step, so resume needs no scheduler state).

Before each checkpoint (`fit`), collectives that make the saved rank-0 state whole: ADA's
accumulators are all-reduced (rank 0 keeps the totals, the others restart from 0, so sums stay
exact across a resume at any step), every rank's loss state (CycleGAN's image pools,
StyleGAN2's pl_mean) is gathered, and G_ema's BatchNorm statistics are recomputed from G_ema's
own activations (BigGAN's "standing statistics"; the live G's statistics belong to other weights).

Determinism: model init is seeded by training.seed (identical on every rank; DDP broadcasts
rank 0's anyway), and at the start of every step the global torch RNG is reseeded from
(seed, rank, step). All randomness of a step (z, augmentation, GP interpolation, style
mixing...) is therefore a function of those three numbers, and a run resumed from a
state_dict taken after step k redoes step k + 1 exactly, on any number of ranks.
The data order is a permutation per epoch from a generator seeded by (seed, epoch).

What is exact where: on CPU a resumed run repeats the uninterrupted one bit for bit (the tests
check it, also for gloo DDP). On CUDA with `training.cudnn_benchmark: true` (the default, the
fastest) cuDNN autotunes its algorithms in each process, so a resumed run can pick other kernels
and drift at float-rounding level; with `false` the trainer turns on cuDNN's deterministic mode
and torch.use_deterministic_algorithms(warn_only=True), so a resumed step repeats the
uninterrupted one on the same GPU model, driver and torch version, except for ops that have no
deterministic CUDA kernel (torch warns about those). Different GPUs or versions are never bitwise equal.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ganaug.augment import AugmentPipe
from ganaug.config import RunConfig
from ganaug.errors import UserError
from ganaug.losses import LossContext, make_adversarial_loss, set_requires_grad, unwrap
from ganaug.models.layers import mbstd_group_for
from ganaug.models.registry import DataInfo, GANFamily, get_family
from ganaug.registry import Registry
from ganaug.training.pairs import source_transform

STATE_FORMAT = 1


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of ints/strings (stable across processes and versions)."""
    h = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


# ============================================================================ data


class IndexStream:
    """An endless stream of dataset indices for one rank.

    Epoch e is a permutation of range(n) drawn from a torch.Generator seeded by
    (seed, stream, e); rank r takes the strided slice perm[r::world_size], cut to
    n // world_size so every rank has the same count and the slices are disjoint. Batches
    run across epoch boundaries (a dataset smaller than a batch still works), so the state is
    just (epoch, offset).
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, stream: int = 0):
        if n // world_size < 1:
            raise ValueError(f"dataset of {n} images is too small for {world_size} workers")
        self.n, self.seed, self.rank, self.world_size, self.stream = n, seed, rank, world_size, stream
        self.per_rank = n // world_size
        self.epoch, self.offset = 0, 0
        self._order_epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def order(self, epoch: int) -> torch.Tensor:
        if epoch != self._order_epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "data", self.stream, epoch))
            perm = torch.randperm(self.n, generator=g)
            self._order = perm[self.rank::self.world_size][: self.per_rank]
            self._order_epoch = epoch
        return self._order

    def take(self, k: int) -> torch.Tensor:
        parts = []
        while k > 0:
            chunk = self.order(self.epoch)[self.offset:self.offset + k]
            parts.append(chunk)
            k -= len(chunk)
            self.offset += len(chunk)
            if self.offset >= self.per_rank:
                self.epoch, self.offset = self.epoch + 1, 0
        return torch.cat(parts)

    def state_dict(self) -> dict:
        return {"epoch": int(self.epoch), "offset": int(self.offset)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])


class ImageBank:
    """uint8 NHWC images kept as a uint8 NCHW tensor; `get(idx)` -> float [-1, 1] on device.

    Small datasets live on the device (no per-step host copy); large ones stay on the host.
    """

    DEVICE_BYTES = 2 << 30

    def __init__(self, images: np.ndarray, device: torch.device, channels_last: bool = False):
        t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        self.device, self.channels_last = device, channels_last
        self.data = t.to(device) if device.type != "cpu" and t.numel() <= self.DEVICE_BYTES else t

    def __len__(self) -> int:
        return self.data.shape[0]

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.data[idx.to(self.data.device)].to(self.device, non_blocking=True)
        x = x.to(torch.float32).div_(127.5).sub_(1.0)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


class BatchSource:
    """Makes one rank's batches. Subclasses are registered per family kind (BATCH_SOURCES)."""

    def __init__(self, *, family: type[GANFamily], cfg: RunConfig, images: np.ndarray, labels: np.ndarray,
                 rank: int, world_size: int, device: torch.device, channels_last: bool = False,
                 source_images: np.ndarray | None = None):
        self.batch_size = cfg.training.batch_size
        self.device = device

    def next(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError


BATCH_SOURCES: Registry[type[BatchSource]] = Registry("batch source kind")


def register_batch_source(kind: str) -> Callable[[type[BatchSource]], type[BatchSource]]:
    return BATCH_SOURCES.register(kind)


@register_batch_source("noise")
class NoiseBatchSource(BatchSource):
    """{"image": float [-1, 1] NCHW, "label": int64 [N]} (label -1 when unlabelled)."""

    def __init__(self, *, family, cfg, images, labels, rank, world_size, device, channels_last=False,
                 source_images=None):
        super().__init__(family=family, cfg=cfg, images=images, labels=labels, rank=rank,
                         world_size=world_size, device=device)
        self.images = ImageBank(images, device, channels_last)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64)).to(device)
        self.stream = IndexStream(len(images), cfg.training.seed, rank, world_size, stream=0)

    def next(self) -> dict[str, torch.Tensor]:
        idx = self.stream.take(self.batch_size)
        return {"image": self.images.get(idx), "label": self.labels[idx.to(self.labels.device)]}

    def state_dict(self) -> dict:
        return {"stream": self.stream.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])


@register_batch_source("translation")
class TranslationBatchSource(BatchSource):
    """{"a": domain A, "b": domain B, "label": B's labels}, float [-1, 1] NCHW.

    How a translation family plugs in: set the class attribute `paired` on the family.
      paired = True  (default; pix2pix): A = source_transform(B) of the SAME rows (aligned pairs).
      paired = False (cyclegan): A and B come from two independent index streams (their own
                     permutations), so the model never sees aligned pairs.
    B is the dataset; A is `pairs.source_transform(data.source_transform, images)`, or the
    separate dataset `source_images` (data.source_spec, loaded by the caller), which is
    always unpaired.
    """

    def __init__(self, *, family, cfg, images, labels, rank, world_size, device, channels_last=False,
                 source_images=None):
        super().__init__(family=family, cfg=cfg, images=images, labels=labels, rank=rank,
                         world_size=world_size, device=device)
        seed = cfg.training.seed
        # source_images without data.source_spec are a paired dataset's A side (row-aligned).
        self.paired = bool(getattr(family, "paired", True)) and (source_images is None or not cfg.data.source_spec)
        a = source_images if source_images is not None else source_transform(cfg.data.source_transform, images)
        self.b = ImageBank(images, device, channels_last)
        self.a = ImageBank(a, device, channels_last)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64)).to(device)
        self.stream_b = IndexStream(len(images), seed, rank, world_size, stream=0)
        self.stream_a = None if self.paired else IndexStream(len(a), seed, rank, world_size, stream=1)

    def next(self) -> dict[str, torch.Tensor]:
        ib = self.stream_b.take(self.batch_size)
        ia = ib if self.stream_a is None else self.stream_a.take(self.batch_size)
        return {"a": self.a.get(ia), "b": self.b.get(ib), "label": self.labels[ib.to(self.labels.device)]}

    def state_dict(self) -> dict:
        s = {"stream_b": self.stream_b.state_dict()}
        if self.stream_a is not None:
            s["stream_a"] = self.stream_a.state_dict()
        return s

    def load_state_dict(self, state: dict) -> None:
        self.stream_b.load_state_dict(state["stream_b"])
        if self.stream_a is not None:
            self.stream_a.load_state_dict(state["stream_a"])


def make_batch_source(family: type[GANFamily], cfg: RunConfig, images: np.ndarray, labels: np.ndarray, *,
                      rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                      channels_last: bool = False, source_images: np.ndarray | None = None) -> BatchSource:
    """The batch source registered for the family's kind ("noise" | "translation" | ...)."""
    cls = BATCH_SOURCES.get(family.kind)
    return cls(family=family, cfg=cfg, images=images, labels=labels, rank=rank, world_size=world_size,
               device=torch.device(device), channels_last=channels_last, source_images=source_images)


# ============================================================================ trainer


def set_cudnn_mode(benchmark: bool) -> None:
    """training.cudnn_benchmark: autotuned (fast) or deterministic cuDNN; see the module doc."""
    torch.backends.cudnn.benchmark = bool(benchmark)
    torch.backends.cudnn.deterministic = not benchmark
    if not benchmark:
        torch.use_deterministic_algorithms(True, warn_only=True)


def _to_cpu(obj: Any) -> Any:
    """Deep copy with every tensor detached, cloned and on the CPU (a snapshot, safe to save)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class GANTrainer:
    """Builds the family's G, D, G_ema, optimisers, loss, augment pipe and data for one rank."""

    def __init__(self, cfg: RunConfig, images: np.ndarray, labels: np.ndarray | None = None,
                 class_names: list[str] | None = None, *, device: torch.device | str | None = None,
                 rank: int = 0, world_size: int = 1, source_images: np.ndarray | None = None):
        tc = cfg.training
        self.cfg, self.rank, self.world_size = cfg, int(rank), int(world_size)
        if device is None:
            device = "cuda" if (tc.use_gpu and torch.cuda.is_available()) else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            set_cudnn_mode(tc.cudnn_benchmark)
        self.family = get_family(cfg.model.family)

        images = np.asarray(images)
        res, ch = cfg.data.resolution, cfg.data.channels
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (res, res, ch):
            raise ValueError(f"expected uint8 images of shape (N, {res}, {res}, {ch}), "
                             f"got {images.dtype} {images.shape}")
        labels = np.full(len(images), -1, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
        class_names = [str(c) for c in (class_names or [])]
        if class_names:
            num_classes = len(class_names)
        else:
            num_classes = int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0
            class_names = [str(i) for i in range(num_classes)]
        self.data_info = DataInfo(resolution=res, channels=ch, num_classes=num_classes, class_names=class_names)
        self.generator_kwargs = self.family.generator_kwargs(cfg.model, self.data_info)
        self.discriminator_kwargs = self.family.discriminator_kwargs(cfg.model, self.data_info)

        # Same init on every rank (DDP would broadcast rank 0's weights anyway).
        torch.manual_seed(derive_seed(tc.seed, "init"))
        G = self.family.build_generator(self.generator_kwargs).to(self.device)
        D = self.family.build_discriminator(self.discriminator_kwargs).to(self.device)
        if self.cuda:
            G = G.to(memory_format=torch.channels_last)
            D = D.to(memory_format=torch.channels_last)
        group = int(getattr(D, "mbstd_group", 0) or 0)
        if group > 0:
            try:
                mbstd_group_for(group, tc.batch_size)
            except ValueError as e:
                raise UserError(f"config key 'training.batch_size': {e}") from None
        self.G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        self.G, self.D = self._wrap(G), self._wrap(D)

        # Lazy regularisation's Adam scaling (stylegan2-ada-pytorch): a regulariser that runs
        # every I steps takes one extra step per I, so lr and betas are scaled by I / (I + 1).
        self.mb_ratio_d = tc.r1_every / (tc.r1_every + 1) if tc.r1_gamma > 0 else 1.0
        self.mb_ratio_g = tc.pl_every / (tc.pl_every + 1) if tc.pl_weight > 0 else 1.0
        self.opt_g = torch.optim.Adam(G.parameters(), lr=tc.lr_g, betas=(tc.beta1, tc.beta2))
        self.opt_d = torch.optim.Adam(D.parameters(), lr=tc.lr_d, betas=(tc.beta1, tc.beta2))
        self._set_hyperparameters(0)
        self.augment = AugmentPipe(tc.augment, tc.ada_p, target=tc.ada_target, interval=tc.ada_interval,
                                   kimg=tc.ada_kimg)
        autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if self.cuda else None
        ctx = LossContext(adversarial=make_adversarial_loss(tc.loss), augment=self.augment,
                          r1_gamma=tc.r1_gamma, r1_every=tc.r1_every, gp_weight=tc.gp_weight,
                          use_gp=tc.loss == "wgan-gp", autocast=autocast, pl_weight=tc.pl_weight,
                          pl_every=tc.pl_every)
        loss_kwargs = self.family.loss_kwargs(cfg.model, self.data_info)
        self.loss = self.family.loss_cls(self.G, self.D, ctx, **loss_kwargs)
        self.batches = make_batch_source(self.family, cfg, images, labels, rank=self.rank,
                                         world_size=self.world_size, device=self.device,
                                         channels_last=self.cuda, source_images=source_images)
        self.step = 0
        self.images_seen = 0
        self._gathered_loss_states: tuple[int, list] | None = None

    # ------------------------------------------------------------------------ setup
    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def _wrap(self, module: nn.Module) -> nn.Module:
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        # broadcast_buffers=False: BatchNorm running stats stay per rank (a buffer broadcast
        # between G's and D's forwards would break autograd for GANs).
        return DDP(module, device_ids=[self.device.index] if self.cuda else None, broadcast_buffers=False,
                   find_unused_parameters=bool(getattr(self.family, "find_unused_parameters", False)))

    # ------------------------------------------------------------------------ one step
    def lr_factor(self, step: int) -> float:
        """training.lr_decay at a step: 1, or for "linear" 1 until lr_decay_start of the steps,
        then falling linearly to 0 at the last step (junyanz's n_epochs + n_epochs_decay)."""
        tc = self.cfg.training
        if tc.lr_decay != "linear":
            return 1.0
        start = int(tc.steps * tc.lr_decay_start)
        return 1.0 - max(0, step - start) / max(1, tc.steps - start)

    def _set_hyperparameters(self, step: int) -> None:
        # Set every step from the config (not kept in the optimiser state), so resuming,
        # even from a checkpoint written before lazy scaling existed, follows the same schedule.
        tc, factor = self.cfg.training, self.lr_factor(step)
        for opt, lr, mb in ((self.opt_g, tc.lr_g, self.mb_ratio_g), (self.opt_d, tc.lr_d, self.mb_ratio_d)):
            for group in opt.param_groups:
                group["lr"] = lr * mb * factor
                group["betas"] = (tc.beta1 ** mb, tc.beta2 ** mb)

    def train_step(self) -> dict[str, float]:
        tc = self.cfg.training
        torch.manual_seed(derive_seed(tc.seed, "step", self.rank, self.step))
        self._set_hyperparameters(self.step)
        batch = self.batches.next()
        G_raw, D_raw = unwrap(self.G), unwrap(self.D)
        G_raw.train()
        D_raw.train()
        stats: dict[str, float] = {}
        for phase, opt in (("D", self.opt_d), ("Dreg", self.opt_d), ("G", self.opt_g), ("Greg", self.opt_g)):
            if not self.loss.wants_phase(phase, self.step):
                continue
            trains_g = phase in ("G", "Greg")
            set_requires_grad(G_raw, trains_g)
            set_requires_grad(D_raw, not trains_g)
            opt.zero_grad(set_to_none=True)
            s = self.loss.accumulate_gradients(phase, batch, self.step)
            if s:  # {} means the phase had nothing to do (no backward)
                opt.step()
            stats.update(s)
        set_requires_grad(G_raw, True)
        set_requires_grad(D_raw, True)
        self.step += 1
        self.images_seen += tc.batch_size * self.world_size
        self._update_ema()
        self._update_ada(stats)
        stats["ada_p"] = float(self.augment.p)
        return stats

    def ema_beta(self) -> float:
        """stylegan2-ada's EMA: a half-life in images that ramps up with images seen.

        ema_beta is the per-step decay once ramped up (half-life = batch * ln .5 / ln beta
        images); with ema_rampup > 0 the half-life is capped at images_seen * ema_rampup, so
        early (bad) weights are forgotten quickly and short runs still get a useful average.
        """
        tc = self.cfg.training
        if tc.ema_beta <= 0.0:
            return 0.0
        if tc.ema_beta >= 1.0:
            return 1.0
        batch = tc.batch_size * self.world_size
        half_life = batch * math.log(0.5) / math.log(tc.ema_beta)
        if tc.ema_rampup > 0:
            half_life = min(half_life, self.images_seen * tc.ema_rampup)
        return 0.5 ** (batch / max(half_life, 1e-8))

    @torch.no_grad()
    def _update_ema(self) -> None:
        beta = self.ema_beta()
        G_raw = unwrap(self.G)
        for p_ema, p in zip(self.G_ema.parameters(), G_raw.parameters()):
            p_ema.lerp_(p.detach(), 1.0 - beta)
        for b_ema, b in zip(self.G_ema.buffers(), G_raw.buffers()):
            # Copied, not averaged (StyleGAN2's w_avg as the reference); BatchNorm statistics
            # are replaced by G_ema's own before each checkpoint (`recompute_ema_batchnorm`).
            b_ema.copy_(b)

    STANDING_BATCHES = 16

    @torch.no_grad()
    def recompute_ema_batchnorm(self) -> bool:
        """BigGAN's standing statistics: reset G_ema's BatchNorm running statistics and re-estimate
        them (a cumulative average) over STANDING_BATCHES train-mode forwards of G_ema itself, on
        latents and uniform labels from a generator seeded by (seed, step): the live G's statistics
        belong to the live weights, not the averaged ones. Uses no global RNG. False: no BatchNorm."""
        bns = [m for m in self.G_ema.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns:
            return False
        tc = self.cfg.training
        gen = torch.Generator(device=self.device).manual_seed(derive_seed(tc.seed, "standing", self.step))
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the batches below
        k = int(getattr(self.G_ema, "num_classes", 0) or 0)
        self.G_ema.train()
        try:
            for _ in range(self.STANDING_BATCHES):
                z = torch.randn(tc.batch_size, self.G_ema.z_dim, generator=gen, device=self.device)
                labels = torch.randint(k, (tc.batch_size,), generator=gen, device=self.device) if k else None
                self.G_ema(z, labels)
        finally:
            for m, mom in zip(bns, momenta):
                m.momentum = mom
            self.G_ema.eval()
        return True

    def prepare_checkpoint(self) -> None:
        """Collectives before a checkpoint (every rank calls it at the same step): see the module doc."""
        pipe = self.augment
        if self.distributed and pipe.adaptive:
            t = torch.tensor([pipe.acc_sum, float(pipe.acc_n)], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            total_sum, total_n = (float(t[0]), int(round(float(t[1])))) if self.rank == 0 else (0.0, 0)
            pipe.acc_sum, pipe.acc_n = total_sum, total_n
        if self.distributed:
            states: list = [None] * self.world_size
            dist.all_gather_object(states, _to_cpu(self.loss.state_dict()))
            self._gathered_loss_states = (self.step, states)
        self.recompute_ema_batchnorm()

    def _update_ada(self, stats: dict[str, float]) -> None:
        pipe, tc = self.augment, self.cfg.training
        if not pipe.adaptive:
            return
        if "d_real_sign" in stats:
            pipe.accumulate(stats["d_real_sign"])
        if self.step % tc.ada_interval == 0:
            if self.distributed:  # every rank moves p identically
                t = torch.tensor([pipe.acc_sum, float(pipe.acc_n)], dtype=torch.float64, device=self.device)
                dist.all_reduce(t)
                pipe.acc_sum, pipe.acc_n = float(t[0]), int(round(float(t[1])))
            pipe.adjust(tc.batch_size * self.world_size * tc.ada_interval)

    # ------------------------------------------------------------------------ many steps
    def fit(self, total_steps: int, *, report_every: int | None = None, checkpoint_every: int | None = None,
            on_report: Callable[[dict], None] | None = None,
            on_checkpoint: Callable[[int], None] | None = None,
            should_stop: Callable[[int], bool] | None = None,
            checkpoint_now: Callable[[int], bool] | None = None) -> None:
        """Train until `self.step == total_steps` (continuing from the current step).

        on_report(dict) every `report_every` steps and at the last step: step, images_seen,
        loss_g, loss_d, d_real, d_fake, ada_p, ada_rt (mean sign(D(real)), ADA's r_t),
        images_per_s, seconds (since fit started) and any other loss stats (r1, gp, aux_*),
        averaged over the window and, when distributed, over ranks (a collective: every rank
        reports at the same steps).
        on_checkpoint(step) every `checkpoint_every` steps and at the last step; the caller saves.
        should_stop(step), after every step: True makes this step the last one (reported and
        checkpointed, then fit returns). Under DDP every rank must answer the same.
        checkpoint_now(step), after should_stop: True adds a checkpoint at this step (a
        preemption notice); every rank must answer the same.
        """
        tc = self.cfg.training
        report_every = int(report_every or tc.report_every)
        checkpoint_every = int(checkpoint_every or tc.checkpoint_every)
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        t0 = t_win = time.perf_counter()
        images_win = 0
        while self.step < total_steps:
            stats = self.train_step()
            images_win += tc.batch_size * self.world_size
            for k, v in stats.items():
                sums[k] += float(v)
                counts[k] += 1
            last = self.step == total_steps or (should_stop is not None and should_stop(self.step))
            if on_report is not None and (self.step % report_every == 0 or last):
                if self.cuda:
                    torch.cuda.synchronize(self.device)
                now = time.perf_counter()
                report = self._reduce({k: sums[k] / counts[k] for k in sums})
                if "d_real_sign" in report:  # ADA's overfitting signal r_t over the window, for every run
                    report["ada_rt"] = report.pop("d_real_sign")
                report.update(step=self.step, images_seen=self.images_seen, ada_p=float(self.augment.p),
                              images_per_s=images_win / max(now - t_win, 1e-9), seconds=now - t0)
                for k in ("loss_g", "loss_d", "d_real", "d_fake"):
                    report.setdefault(k, float("nan"))
                on_report(report)
                sums.clear()
                counts.clear()
                t_win, images_win = now, 0
            if self.step % checkpoint_every == 0 or last or (checkpoint_now is not None and checkpoint_now(self.step)):
                self.prepare_checkpoint()
                if on_checkpoint is not None:
                    on_checkpoint(self.step)
            if last:
                break

    def _reduce(self, values: dict[str, float]) -> dict[str, float]:
        if not self.distributed or not values:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        t /= self.world_size
        return {k: float(v) for k, v in zip(keys, t.tolist())}

    # ------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, z: torch.Tensor, labels: torch.Tensor | None = None, truncation: float = 1.0,
               ema: bool = True) -> torch.Tensor:
        """G_ema (or the live G) in eval mode -> float images in [-1, 1] on the CPU.

        Never augmented: the augment pipe only wraps D's inputs inside the loss.
        """
        G = self.G_ema if ema else unwrap(self.G)
        was_training = G.training
        G.eval()
        try:
            z = z.to(self.device)
            labels = labels.to(self.device) if labels is not None else None
            return G(z, labels, truncation=truncation).float().cpu()
        finally:
            G.train(was_training)

    # ------------------------------------------------------------------------ state
    def weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """CPU snapshots of the weights, keyed like the checkpoint files."""
        return {"generator_ema": _to_cpu(self.G_ema.state_dict()),
                "generator": _to_cpu(unwrap(self.G).state_dict()),
                "discriminator": _to_cpu(unwrap(self.D).state_dict())}

    def state_dict(self, include_weights: bool = True) -> dict:
        """Everything needed to resume exactly, as a CPU snapshot of plain data and tensors
        (torch.load(weights_only=True)-safe). With include_weights=False the G/D/G_ema
        weights are left out (the checkpoint stores them as safetensors); put them back under
        "G", "D", "G_ema" before load_state_dict.
        """
        state: dict[str, Any] = {
            "format": STATE_FORMAT,
            "family": self.family.name,
            "step": int(self.step),
            "images_seen": int(self.images_seen),
            "world_size": int(self.world_size),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "augment": self.augment.state_dict(),
            "batches": self.batches.state_dict(),
            # Per rank (gathered by prepare_checkpoint under DDP); rank r resumes from entry r.
            "loss": {"ranks": self._loss_states()},
            # Informational: train_step reseeds from (seed, rank, step), see the module doc.
            "rng": {"torch": torch.get_rng_state()},
        }
        if self.cuda:
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        if include_weights:
            w = self.weights()
            state.update(G=w["generator"], D=w["discriminator"], G_ema=w["generator_ema"])
        return _to_cpu(state)

    def load_state_dict(self, state: dict) -> None:
        if state.get("family", self.family.name) != self.family.name:
            raise ValueError(f"train state is for family {state.get('family')!r}, not {self.family.name!r}")
        missing = [k for k in ("G", "D", "G_ema") if k not in state]
        if missing:
            raise ValueError(f"train state lacks weights {missing}; add them from the checkpoint's safetensors")
        unwrap(self.G).load_state_dict(state["G"])
        unwrap(self.D).load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.augment.load_state_dict(state["augment"])
        if self.distributed and self.rank != 0:
            # The saved accumulators are rank 0's totals (see prepare_checkpoint): count them once.
            self.augment.acc_sum, self.augment.acc_n = 0.0, 0
        ranks = (state.get("loss") or {}).get("ranks") or [{}]
        self.loss.load_state_dict(ranks[self.rank] if self.rank < len(ranks) else ranks[0])
        self.batches.load_state_dict(state["batches"])
        self.step = int(state["step"])
        self.images_seen = int(state["images_seen"])
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if self.cuda and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    def _loss_states(self) -> list:
        if self._gathered_loss_states is not None and self._gathered_loss_states[0] == self.step:
            return self._gathered_loss_states[1]
        return [self.loss.state_dict()]

    def model_meta(self) -> dict:
        """What checkpoint.save_checkpoint's meta needs (model.json), all JSON-able."""
        return {
            "family": self.family.name,
            "kind": self.family.kind,
            "generator_kwargs": dict(self.generator_kwargs),
            "discriminator_kwargs": dict(self.discriminator_kwargs),
            "resolution": int(self.data_info.resolution),
            "channels": int(self.data_info.channels),
            "num_classes": int(self.data_info.num_classes),
            "class_names": list(self.data_info.class_names),
        }
