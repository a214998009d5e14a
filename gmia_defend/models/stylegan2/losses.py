"""StyleGAN2 losses: non-saturating logistic loss, R1 penalty, path-length regularisation.

All discriminator terms are per sample (a row per real/fake pair) so a differentially private step can
clip them one by one; means are taken by the caller.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F


def d_logistic_loss_per_sample(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(D(x)) - log(1 - sigmoid(D(G(z)))) per sample: softplus(-real) + softplus(fake)."""
    return F.softplus(-real_logits) + F.softplus(fake_logits)


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss -log sigmoid(D(G(z))), averaged over the batch."""
    return F.softplus(-fake_logits).mean()


def r1_penalty_per_sample(discriminator: Callable[[torch.Tensor], torch.Tensor],
                          real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """R1 (Mescheder et al. 2018): squared gradient norm of D's logit w.r.t. each real image.

    Returns ``(penalty[N], real_logits[N])``; the graph is kept so the penalty can be backpropagated.
    When D has no cross-sample operations, row i depends on sample i only.
    """
    real = real.detach().requires_grad_(True)
    logits = discriminator(real)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return grad.float().square().sum(dim=(1, 2, 3)), logits


def path_length_penalty(images: torch.Tensor, ws: torch.Tensor, pl_mean: torch.Tensor, decay: float = 0.01,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Path-length regularisation (StyleGAN2 sec. 3.2): keep |J_w^T y| close to its running mean.

    ``ws`` must be the tensor the images were synthesised from (requires grad). Returns
    ``(penalty scalar, new pl_mean)``; the caller stores the new mean.
    """
    h, w = images.shape[2], images.shape[3]
    noise = torch.randn(images.shape, device=images.device, dtype=images.dtype, generator=generator) / math.sqrt(h * w)
    (grad,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
    lengths = grad.float().square().sum(dim=2).mean(dim=1).sqrt()
    new_mean = pl_mean.lerp(lengths.mean().detach().to(pl_mean.dtype), decay)
    penalty = (lengths - new_mean).square().mean()
    return penalty, new_mean
