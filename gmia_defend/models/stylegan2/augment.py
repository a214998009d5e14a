"""Differentiable augmentation for small datasets (DiffAugment-style, Zhao et al. 2020).

Applied to every image D sees, real and fake, in both the D and the G step, so G cannot learn the
augmentations. Each operation is applied to each sample independently with a FIXED probability ``p``
(not adaptive as in ADA). All ops are per sample: no information crosses the batch, so the
augmentation is safe inside a differentially private discriminator step.
Images are in [-1, 1]; translation and cutout fill with 0 (mid grey). Every op takes an optional
``generator`` (a ``torch.Generator`` on the images' device) so a training step can draw its
augmentation from its own stream instead of the global RNG.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

POLICIES = ("color", "translation", "cutout")


def _where(mask: torch.Tensor, augmented: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), augmented, x)


Gen = Optional[torch.Generator]


def _rand(x: torch.Tensor, *shape: int, generator: Gen = None) -> torch.Tensor:
    return torch.rand(x.shape[0], *shape, device=x.device, dtype=x.dtype, generator=generator)


def color(x: torch.Tensor, generator: Gen = None) -> torch.Tensor:
    """Random brightness (+-0.5), saturation (x0..2) and contrast (x0.5..1.5)."""
    x = x + (_rand(x, 1, 1, 1, generator=generator) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(x, 1, 1, 1, generator=generator) * 2.0) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x, 1, 1, 1, generator=generator) + 0.5) + mean


def translation(x: torch.Tensor, ratio: float = 0.125, generator: Gen = None) -> torch.Tensor:
    """Integer shifts of up to ``ratio`` of the image size, zero (grey) fill."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (n, 1, 1), device=x.device, generator=generator)
    tx = torch.randint(-sw, sw + 1, (n, 1, 1), device=x.device, generator=generator)
    gy = torch.arange(h, device=x.device).view(1, h, 1) - ty  # source row of each output row
    gx = torch.arange(w, device=x.device).view(1, 1, w) - tx
    valid = ((gy >= 0) & (gy < h) & (gx >= 0) & (gx < w)).unsqueeze(1)
    idx = (gy.clamp(0, h - 1) * w + gx.clamp(0, w - 1)).view(n, 1, h * w).expand(-1, x.shape[1], -1)
    out = x.flatten(2).gather(2, idx).view_as(x)
    return out * valid.to(x.dtype)


def cutout(x: torch.Tensor, ratio: float = 0.5, generator: Gen = None) -> torch.Tensor:
    """Zero (grey) a square of ``ratio`` times the image size at a random centre (may be clipped)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    y0 = torch.randint(0, h, (n, 1, 1), device=x.device, generator=generator) - ch // 2
    x0 = torch.randint(0, w, (n, 1, 1), device=x.device, generator=generator) - cw // 2
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= y0) & (ys < y0 + ch) & (xs >= x0) & (xs < x0 + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_OPS = {"color": color, "translation": translation, "cutout": cutout}


def parse_policy(policy: str | Sequence[str]) -> list[str]:
    """"translation,cutout,color" -> ["translation", "cutout", "color"], validated."""
    names = [p.strip() for p in (policy.split(",") if isinstance(policy, str) else policy) if p.strip()]
    bad = [p for p in names if p not in _OPS]
    if bad:
        from gmia_defend.errors import UserError

        raise UserError(f"unknown augmentation {bad}; model.augment_policy takes a comma list of {POLICIES}")
    return names


class DiffAugment(nn.Module):
    """Apply each op of ``policy`` to each sample with probability ``p`` (identity when p == 0).

    >>> aug = DiffAugment(1.0, "translation,cutout")
    >>> x = torch.rand(2, 3, 8, 8)
    >>> a, b = aug(x, torch.Generator().manual_seed(0)), aug(x, torch.Generator().manual_seed(0))
    >>> bool(torch.equal(a, b)), a.shape  # the same generator seed, the same augmentation
    (True, torch.Size([2, 3, 8, 8]))
    """

    def __init__(self, p: float = 0.0, policy: str | Sequence[str] = "translation,cutout,color") -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            from gmia_defend.errors import UserError

            raise UserError(f"model.augment_p must be in [0, 1], got {p}")
        self.p = float(p)
        self.policy = parse_policy(policy)

    def forward(self, x: torch.Tensor, generator: Gen = None) -> torch.Tensor:
        """Augment ``x``; random draws come from ``generator`` (None: the global RNG)."""
        if self.p <= 0.0 or not self.policy:
            return x
        for name in self.policy:
            augmented = _OPS[name](x, generator=generator)
            if self.p >= 1.0:
                x = augmented
            else:
                x = _where(torch.rand(x.shape[0], device=x.device, generator=generator) < self.p, augmented, x)
        return x

    def extra_repr(self) -> str:
        return f"p={self.p}, policy={','.join(self.policy)}"
