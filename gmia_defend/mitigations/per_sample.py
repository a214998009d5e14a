"""Per-unit clipped gradient sums for a discriminator, with torch.func (no Opacus hooks).

Opacus's hooks cannot differentiate the R1 penalty (a double backward); ``torch.func`` can: the loss
of one privacy unit is a function of D's parameters (``functional_call``), ``grad`` differentiates
it, ``vmap`` runs it over units. A unit is one real image (image-level DP) or all images of one
identity in the batch (identity-level DP), each real image paired with one generated image:

    loss(unit) = sum over its images j of  softplus(-D(real_j)) + softplus(D(fake_j))
                                           [+ r1_weight * |d D(real_j) / d real_j|^2]

Its gradient is the sum of its images' per-sample gradients, clipped as a whole to ``max_grad_norm``;
so adding or removing one unit changes the clipped sum by at most ``max_grad_norm`` (the
sensitivity the Gaussian noise is calibrated to), whatever the unit's size.
D must have no cross-sample operations (minibatch std, BatchNorm); ``dp.py`` refuses those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vmap

from gmia_defend.models.stylegan2.losses import d_logistic_loss_per_sample

#: Units per vmap call on the CPU when no chunk size is given (measured best of 4/8/16/all at batch 32).
CPU_CHUNK = 16

#: loss_fn(D, real[k], fake[k]) -> Tensor[k]; D is a callable image batch -> logits.
LossFn = Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class UnitLayout:
    """Which images form each unit: ``index[u, j]`` is image j of unit u; ``mask`` marks real entries."""

    index: torch.Tensor  # [U, m] long
    mask: torch.Tensor  # [U, m] bool

    @property
    def num_units(self) -> int:
        return int(self.index.shape[0])


def unit_layout(num_images: int, labels: torch.Tensor | None = None, device: torch.device | None = None) -> UnitLayout:
    """Image units (``labels=None``: one image each) or identity units (images grouped by label)."""
    if labels is None:
        index = torch.arange(num_images, device=device).unsqueeze(1)
        return UnitLayout(index, torch.ones_like(index, dtype=torch.bool))
    labels = labels.to(device=device).long().flatten()
    if labels.numel() != num_images:
        raise ValueError(f"{labels.numel()} labels for {num_images} images")
    if num_images == 0:
        empty = torch.zeros(0, 1, dtype=torch.long, device=device)
        return UnitLayout(empty, empty.bool())
    order = torch.argsort(labels, stable=True)
    _, inverse, counts = torch.unique(labels[order], return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(num_images, device=labels.device) - starts[inverse]
    index = torch.zeros(len(counts), int(counts.max()), dtype=torch.long, device=labels.device)
    mask = torch.zeros_like(index, dtype=torch.bool)
    index[inverse, slot] = order
    mask[inverse, slot] = True
    return UnitLayout(index, mask)


def logistic_loss(D: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """StyleGAN2's non-saturating logistic D loss per sample: softplus(-D(real)) + softplus(D(fake))."""
    logits = D(torch.cat([real, fake]))
    return d_logistic_loss_per_sample(logits[: len(real)], logits[len(real):])


@dataclass
class ClippedSum:
    """Sum over units of clipped unit gradients (before noise), and statistics of the real data."""

    grads: dict[str, torch.Tensor]
    num_units: int
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class PerUnitGradients:
    """Computes per-unit gradients of D's loss with torch.func, and their clipped sum.

    ``param_names``: the parameters to differentiate (the others and buffers are held fixed).
    ``chunk_size``: units per vmap call (bounds memory: chunk_size x parameters floats). None: all
    at once on GPUs; ``CPU_CHUNK`` on the CPU, where smaller per-sample tensors are reused from the
    heap instead of freshly mapped (page faults made whole-batch vmap ~20-40 % slower).
    """

    def __init__(self, D: nn.Module, param_names: list[str] | None = None, loss_fn: LossFn | None = None,
                 chunk_size: int | None = None) -> None:
        self.D = D
        names = [n for n, _ in D.named_parameters()]
        self.param_names = list(names if param_names is None else param_names)
        self.loss_fn = loss_fn
        self.chunk_size = chunk_size

    # -- the loss of one unit ------------------------------------------------------------------

    def _unit_loss(self, params: Mapping[str, torch.Tensor], fixed: Mapping[str, torch.Tensor],
                   real: torch.Tensor, fake: torch.Tensor, mask: torch.Tensor, r1_weight: float) -> torch.Tensor:
        def D(x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.D, ({**params, **fixed}), (x,)).reshape(x.shape[0])

        w = mask.to(real.dtype)
        if r1_weight > 0 and self.loss_fn is None:
            # One pass gives R1's input gradient and the real logits (still differentiable in params).
            (g, (_, real_logits)) = grad_and_value(lambda x: (lambda o: (o.sum(), o))(D(x)), has_aux=True)(real)
            loss = d_logistic_loss_per_sample(real_logits, D(fake)) + r1_weight * g.square().flatten(1).sum(1)
        else:
            loss = (self.loss_fn or logistic_loss)(D, real, fake)
            if r1_weight > 0:
                g = grad(lambda x: D(x).sum())(real)
                loss = loss + r1_weight * g.square().flatten(1).sum(1)
        return (loss * w).sum()

    def _split_params(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        wanted = set(self.param_names)
        params, fixed = {}, {}
        for name, p in self.D.named_parameters():
            (params if name in wanted else fixed)[name] = p.detach()
        fixed.update({name: b for name, b in self.D.named_buffers()})
        return params, fixed

    def per_unit(self, real: torch.Tensor, fake: torch.Tensor, layout: UnitLayout,
                 r1_weight: float = 0.0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Unclipped per-unit gradients ``{name: [U, *shape]}`` and per-unit losses ``[U]``."""
        params, fixed = self._split_params()
        fn = vmap(grad_and_value(self._unit_loss), in_dims=(None, None, 0, 0, 0, None), randomness="different")
        return fn(params, fixed, real[layout.index], fake[layout.index], layout.mask, float(r1_weight))

    def clipped_sum(self, real: torch.Tensor, fake: torch.Tensor, layout: UnitLayout, max_grad_norm: float,
                    r1_weight: float = 0.0) -> ClippedSum:
        """Sum over units of ``g_u * min(1, C / |g_u|)``; ``fake[i]`` is paired with ``real[i]``."""
        params, _ = self._split_params()
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        U = layout.num_units
        chunk = self.chunk_size or (CPU_CHUNK if real.device.type == "cpu" else max(U, 1))
        norms, losses = [], []
        for start in range(0, U, chunk):
            part = UnitLayout(layout.index[start:start + chunk], layout.mask[start:start + chunk])
            grads, loss = self.per_unit(real, fake, part, r1_weight)
            # vector_norm reads each per-unit gradient once (square().sum() allocates a copy: 20x slower)
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1, dtype=torch.float32)
                             for g in grads.values()], 1), dim=1)
            factor = (max_grad_norm / (norm + 1e-6)).clamp(max=1.0)
            for name, g in grads.items():
                total[name] += torch.tensordot(factor.to(g.dtype), g, dims=1)
            norms.append(norm.detach())
            losses.append(loss.detach())
        stats: dict[str, torch.Tensor] = {}  # tensors: no device sync unless someone logs them
        if U:
            norm = torch.cat(norms)
            stats = {"unit_grad_norm": norm.mean(), "clip_fraction": (norm > max_grad_norm).float().mean(),
                     "loss": torch.cat(losses).sum() / layout.mask.sum()}
        return ClippedSum(total, U, stats)
