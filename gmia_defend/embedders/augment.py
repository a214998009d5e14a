"""Light, vectorised training augmentation for identity embedders.

Small affine jitter (shift, scale, rotation), horizontal flip, brightness/contrast, occasional blur
and pixel noise. Why: GAN samples are slightly misaligned, blurrier and noisier than the real images,
and StyleGAN training often uses x-flips; the embedder should not be thrown by any of that. Identity
is kept: no crops that cut features off, no colour shifts strong enough to change skin/hair tone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment_batch(x: torch.Tensor, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Return an augmented copy of images ``x`` [N, 3, H, W] in [-1, 1]; randomness from ``generator``.

    ``strength`` scales every jitter range (0 disables augmentation).
    """
    if strength <= 0:
        return x
    n, dev = x.shape[0], x.device

    def u(lo: float, hi: float) -> torch.Tensor:  # uniform draws on the CPU generator, moved once
        return (torch.rand(n, generator=generator) * (hi - lo) + lo).to(dev)

    s = strength
    scale = 1.0 + u(-0.06 * s, 0.06 * s)
    angle = u(-6.0 * s, 6.0 * s) * (math.pi / 180.0)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).to(dev)
    tx, ty = u(-0.08 * s, 0.08 * s), u(-0.08 * s, 0.08 * s)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos * flip, -sin, tx], 1),
        torch.stack([sin * flip, cos, ty], 1),
    ], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # Occasional blur: down- and up-sample by a random factor (GAN samples are often soft).
    blur = (torch.rand(n, generator=generator) < 0.3 * min(s, 1.0)).to(dev)
    if bool(blur.any()):
        h, w = y.shape[-2:]
        soft = F.interpolate(F.interpolate(y, scale_factor=0.6, mode="bilinear", antialias=True,
                                           align_corners=False), size=(h, w), mode="bilinear", align_corners=False)
        y = torch.where(blur.view(n, 1, 1, 1), soft, y)

    contrast = 1.0 + u(-0.15 * s, 0.15 * s)
    brightness = u(-0.1 * s, 0.1 * s)
    y = y * contrast.view(n, 1, 1, 1) + brightness.view(n, 1, 1, 1)
    sigma = u(0.0, 0.04 * s).view(n, 1, 1, 1)
    noise = torch.randn(y.shape, generator=generator).to(dev, y.dtype)
    return (y + sigma * noise).clamp(-1.0, 1.0)
