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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

PHASES = ("D", "Dreg", "G")


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


ADVERSARIAL_LOSSES: dict[str, Callable[[], AdversarialLoss]] = {
    "ns": NonSaturating,
    "hinge": Hinge,
    "lsgan": LeastSquares,
    "wgan-gp": Wasserstein,
}


def make_adversarial_loss(name: str) -> AdversarialLoss:
    try:
        return ADVERSARIAL_LOSSES[name]()
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(ADVERSARIAL_LOSSES)}") from None


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): squared gradient norm of D at real images, per sample mean.

    `real_images` must have requires_grad=True and be the tensor D saw.
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.square().flatten(1).sum(1).mean()


def gradient_penalty(d_logits_interp: torch.Tensor, interp: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): (||grad D(x_hat)|| - 1)^2 on interpolates."""
    (grad,) = torch.autograd.grad(d_logits_interp.sum(), interp, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


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


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") else module


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


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
        return True
