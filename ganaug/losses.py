"""GAN objectives and regularisers as small objects, plus the phased-loss interface.

Every family trains through one interface, modelled on stylegan2-ada-pytorch's
`training/loss.py`: the loop calls `loss.accumulate_gradients(phase, batch, step)` for each
phase, then steps that phase's optimiser. A phase does exactly ONE forward through each
(possibly DDP-wrapped) module whose parameters it trains, then one backward, because DDP
reduces gradients once per forward/backward pair.

Phases:
  "G"    : generator update (adversarial + family extras such as L1 or cycle losses)
  "D"    : discriminator update (adversarial, plus WGAN-GP when that loss is chosen)
  "Dreg" : lazy R1 on real images, every `r1_every` steps, scaled by the interval
  "Greg" : lazy generator regularisation (StyleGAN2's path length), every `pl_every` steps

Precision: the main phases may autocast to bf16 (CUDA), but every gradient penalty (R1,
WGAN-GP, path length) takes a double backward, whose bf16 error is large (R1's parameter
gradient measured 40 % relative L2 error on CPU autocast): their forwards run in fp32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ganaug.choices import LOSSES

PHASES = ("D", "Dreg", "G", "Greg")


class AdversarialLoss:
    """Maps discriminator logits to generator and discriminator losses."""

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class NonSaturating(AdversarialLoss):
    def d_loss(self, real_logits, fake_logits):
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()

    def g_loss(self, fake_logits):
        return F.softplus(-fake_logits).mean()


class Hinge(AdversarialLoss):
    def d_loss(self, real_logits, fake_logits):
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()

    def g_loss(self, fake_logits):
        return -fake_logits.mean()


class LeastSquares(AdversarialLoss):
    def d_loss(self, real_logits, fake_logits):
        return 0.5 * ((real_logits - 1.0) ** 2).mean() + 0.5 * (fake_logits ** 2).mean()

    def g_loss(self, fake_logits):
        return 0.5 * ((fake_logits - 1.0) ** 2).mean()


class Wasserstein(AdversarialLoss):
    """WGAN critic loss; pair with `gradient_penalty` (WGAN-GP)."""

    def d_loss(self, real_logits, fake_logits):
        return fake_logits.mean() - real_logits.mean()

    def g_loss(self, fake_logits):
        return -fake_logits.mean()


# The names live in ganaug/choices.py (torch-free, so config.py can check them).
ADVERSARIAL_LOSSES = LOSSES


def make_adversarial_loss(name: str) -> AdversarialLoss:
    return LOSSES.get(name)()


def _per_sample(logits: torch.Tensor) -> torch.Tensor:
    """One logit per sample: the mean over a PatchGAN's patch grid, as the losses take it, so a
    penalty's weight means the same whatever the patch count (the sum would scale it by h*w squared)."""
    return logits.reshape(logits.shape[0], -1).mean(dim=1)


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): squared gradient norm of D at real images, per sample mean.

    `real_images` must have requires_grad=True and be the tensor D saw. Patch logits [N, 1, h, w]
    count as their per-sample mean.
    """
    (grad,) = torch.autograd.grad(_per_sample(real_logits).sum(), real_images, create_graph=True)
    return grad.square().flatten(1).sum(1).mean()


def gradient_penalty(d_logits_interp: torch.Tensor, interp: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): (||grad D(x_hat)|| - 1)^2 on interpolates (patch logits:
    their per-sample mean)."""
    (grad,) = torch.autograd.grad(_per_sample(d_logits_interp).sum(), interp, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


def mode_seeking_ratio(fake: torch.Tensor, z: torch.Tensor, half: int) -> torch.Tensor:
    """MSGAN's ratio (Mao et al. 2019): mean |G(z1) - G(z2)| / mean |z1 - z2| over the pairs
    (row i, row i + half), which share a condition. G maximises it (the loss adds w / ratio),
    so nearby latents may not all map to one image: a cure for mode collapse within a class."""
    a, b = fake[:half].float(), fake[half:2 * half].float()
    return (a - b).abs().flatten(1).mean(1).mean() / (z[:half] - z[half:2 * half]).abs().mean(1).mean()


def mode_seeking_loss(weight: float, fake: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor | float, dict]:
    """The G-phase MSGAN term weight / ratio (rows paired by `paired_labels`) and its logged ratio;
    (0.0, {}) when off or when the batch has no pair."""
    if weight <= 0 or fake.shape[0] < 2:
        return 0.0, {}
    ms = mode_seeking_ratio(fake, z, fake.shape[0] // 2)
    return weight / (ms + 1e-5), {"mode_seeking": ms.item()}


def paired_labels(labels: torch.Tensor | None) -> torch.Tensor | None:
    """Labels where rows i and i + n//2 share one (the first half's), for `mode_seeking_ratio`."""
    if labels is None or labels.shape[0] < 2:
        return labels
    half = labels.shape[0] // 2
    return torch.cat([labels[:half], labels[:half], labels[2 * half:]])


@dataclass
class LossContext:
    """What every family loss needs besides its modules.

    G and D may be DDP wrappers; `unwrap(G)` gives the raw module (use it for forwards whose
    gradients must NOT be synchronised, e.g. G under no_grad in the D phase, or D with frozen
    parameters in the G phase).
    augment: callable applied to every image D sees (real and fake alike), never to samples.
    """

    adversarial: AdversarialLoss
    augment: Callable[[torch.Tensor], torch.Tensor]
    r1_gamma: float = 0.0
    r1_every: int = 16
    gp_weight: float = 10.0
    use_gp: bool = False
    autocast: Callable[[], object] | None = None  # context manager factory (bf16 on CUDA)
    pl_weight: float = 0.0     # StyleGAN2 path-length regularisation (0 = off)
    pl_every: int = 4


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") else module


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Run with the module's parameters frozen; gradients still flow to its inputs.

    Each parameter's requires_grad flag is restored on exit, whatever it was before.
    """
    flags = [p.requires_grad for p in module.parameters()]
    set_requires_grad(module, False)
    try:
        yield module
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


def autocast(ctx: LossContext, enabled: bool = True):
    """The loss context's autocast (bf16 on CUDA) as a context manager; a no-op when it has none
    or when not `enabled` (the fp32 regularisation forwards)."""
    return ctx.autocast() if (enabled and ctx.autocast is not None) else contextlib.nullcontext()


def d_stats(loss: torch.Tensor, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> dict[str, float]:
    """The D phase's logged scalars: loss_d, mean D(real), mean D(fake) and mean sign(D(real))
    (the ADA r_t heuristic input)."""
    return {"loss_d": loss.item(), "d_real": real_logits.mean().item(), "d_fake": fake_logits.mean().item(),
            "d_real_sign": real_logits.sign().mean().item()}


class GANLoss:
    """Base class of a family's phased loss.

    Subclasses implement `accumulate_gradients(phase, batch, step) -> dict[str, float]`,
    which runs forward + backward for the phase and returns scalar stats for logging, e.g.
    {"loss_g": ..., "loss_d": ..., "d_real": mean D(real), "d_fake": mean D(fake),
     "d_real_sign": mean sign(D(real)) (the ADA r_t heuristic input, D phase only)}.
    A phase that has nothing to do for this step returns {} and does no backward.
    """

    def __init__(self, G: nn.Module, D: nn.Module, ctx: LossContext):
        self.G, self.D, self.ctx = G, D, ctx

    def accumulate_gradients(self, phase: str, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        raise NotImplementedError

    def wants_phase(self, phase: str, step: int) -> bool:
        """Whether the loop should run (and step the optimiser of) this phase now."""
        if phase == "Dreg":
            return self.ctx.r1_gamma > 0 and step % self.ctx.r1_every == 0
        if phase == "Greg":
            return False  # only families with a generator regulariser (stylegan2) override this
        return True

    def state_dict(self) -> dict:
        """Training state the loss keeps between steps (e.g. an image pool), plain tensors/types."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# ----------------------------------------------------------------------------- noise families


class NoiseGANLoss(GANLoss):
    """The phased loss of a kind == "noise" family: G(z, labels) -> x, D(x, labels) -> logits [N].

    Shared by dcgan and cgan (a family with extra terms subclasses it and overrides the
    `_d_forward` / `_extra_*` hooks). Fakes are conditioned on the real batch's labels, so the
    class mix D sees is the data's. Every phase is one forward through each trained
    (possibly DDP-wrapped) module, then one backward:
      "D"   : D(cat[aug(real), aug(fake.detach())] (+ interpolates for WGAN-GP))
      "Dreg": R1 at aug(real), gradient taken wrt the un-augmented real images
      "G"   : G(z, labels) through the wrapper; the raw D with frozen parameters.
    All randomness (z, eps, augmentation) comes from the global torch RNG on the batch's
    device, which the training loop seeds per step.
    """

    def __init__(self, G: nn.Module, D: nn.Module, ctx: LossContext, mode_seeking: float = 0.0, **kwargs):
        super().__init__(G, D, ctx)
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments {sorted(kwargs)}")
        self.mode_seeking = float(mode_seeking)
        g = unwrap(G)
        self.z_dim = int(g.z_dim)
        self.conditional = int(getattr(g, "num_classes", 0)) > 0

    # -- hooks ---------------------------------------------------------------------------
    def _labels(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return batch["label"] if self.conditional else None

    def _d_forward(self, D: nn.Module, x: torch.Tensor, labels: torch.Tensor | None, chunk: int,
                   fp32: bool = False):
        """-> (logits [N] fp32, extra outputs or None). `x` is `len(x) // chunk` stacked batches
        (reals, fakes, ...) of `chunk` rows each: D's minibatch statistics never mix them.
        fp32=True skips autocast (forwards that a gradient penalty differentiates twice)."""
        with autocast(self.ctx, not fp32):
            return D(x, labels, mbstd_chunk=chunk).float(), None

    def _extra_d(self, extra, labels, n_real: int) -> tuple[torch.Tensor | None, dict[str, float]]:
        """Additional D-phase loss from `extra` (real rows come first); None = nothing."""
        return None, {}

    def _extra_g(self, extra, labels) -> tuple[torch.Tensor | None, dict[str, float]]:
        return None, {}

    @staticmethod
    def _touch(extra) -> torch.Tensor | float:
        """0 * sum of extra outputs: keeps every D parameter in the graph (DDP needs that)."""
        if extra is None:
            return 0.0
        return 0.0 * extra.float().sum()

    # -- phases ----------------------------------------------------------------------------
    def accumulate_gradients(self, phase: str, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        real = batch["image"]
        labels = self._labels(batch)
        n = real.shape[0]
        if phase == "D":
            z = torch.randn(n, self.z_dim, device=real.device)
            with torch.no_grad(), autocast(self.ctx):
                fake = unwrap(self.G)(z, labels).to(real.dtype)
            x = self.ctx.augment(torch.cat([real, fake]))
            interp = None
            if self.ctx.use_gp:
                # Interpolates between the augmented pairs ride in the same D forward.
                eps = torch.rand(n, 1, 1, 1, device=real.device, dtype=x.dtype)
                xr, xf = x.detach().split(n)
                interp = torch.lerp(xf, xr, eps).requires_grad_(True)
                x = torch.cat([x, interp])
            all_labels = None if labels is None else labels.repeat(x.shape[0] // n)
            logits, extra = self._d_forward(self.D, x, all_labels, n, fp32=self.ctx.use_gp)
            chunks = logits.split(n)
            real_l, fake_l = chunks[0], chunks[1]
            loss = self.ctx.adversarial.d_loss(real_l, fake_l)
            stats: dict[str, float] = {}
            if interp is not None:
                gp = gradient_penalty(chunks[2], interp)
                loss = loss + self.ctx.gp_weight * gp
                stats["gp"] = gp.item()
            extra_loss, extra_stats = self._extra_d(extra, all_labels, n)
            if extra_loss is not None:
                loss = loss + extra_loss
            loss.backward()
            stats.update(extra_stats)
            stats.update(d_stats(loss, real_l, fake_l))
            return stats
        if phase == "Dreg":
            if self.ctx.r1_gamma <= 0:
                return {}
            real_req = real.detach().requires_grad_(True)
            logits, extra = self._d_forward(self.D, self.ctx.augment(real_req), labels, n, fp32=True)
            r1 = r1_penalty(logits, real_req)
            # The zero terms keep biases (no second-order path) in the graph for DDP.
            loss = r1 * (self.ctx.r1_gamma / 2) * self.ctx.r1_every + 0.0 * logits.sum() + self._touch(extra)
            loss.backward()
            return {"r1": r1.item()}
        if phase == "G":
            z = torch.randn(n, self.z_dim, device=real.device)
            if self.mode_seeking > 0:
                labels = paired_labels(labels)
            with autocast(self.ctx):
                fake = self.G(z, labels).to(real.dtype)
            with frozen(unwrap(self.D)) as D_raw:
                logits, extra = self._d_forward(D_raw, self.ctx.augment(fake), labels, n)
            ms_loss, stats = mode_seeking_loss(self.mode_seeking, fake, z)
            loss = self.ctx.adversarial.g_loss(logits) + ms_loss
            extra_loss, extra_stats = self._extra_g(extra, labels)
            if extra_loss is not None:
                loss = loss + extra_loss
            loss.backward()
            return {"loss_g": loss.item(), "d_fake_g": logits.mean().item(), **stats, **extra_stats}
        raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
