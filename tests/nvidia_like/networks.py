"""Tiny generator and discriminator with the call interface of NVIDIA's StyleGAN networks."""

from __future__ import annotations

import torch
from torch import nn


class MappingNet(nn.Module):
    def __init__(self, z_dim: int, c_dim: int, w_dim: int) -> None:
        super().__init__()
        self.z_dim, self.c_dim = z_dim, c_dim
        self.embed = nn.Linear(c_dim, w_dim) if c_dim else None
        self.fc = nn.Linear(z_dim + (w_dim if c_dim else 0), w_dim)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        x = nn.functional.normalize(z, dim=1) * z.shape[1] ** 0.5
        if self.c_dim:
            if c is None:
                raise TypeError("a conditional mapping network needs c")
            x = torch.cat([x, self.embed(c)], dim=1)
        return nn.functional.leaky_relu(self.fc(x), 0.2)


class SynthesisNet(nn.Module):
    def __init__(self, w_dim: int, img_resolution: int, img_channels: int) -> None:
        super().__init__()
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.fc = nn.Linear(w_dim, 8 * 4 * 4)
        layers: list[nn.Module] = []
        size = 4
        while size < img_resolution:
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(8, 8, 3, padding=1), nn.LeakyReLU(0.2)]
            size *= 2
        self.body = nn.Sequential(*layers)
        self.to_rgb = nn.Conv2d(8, img_channels, 1)
        self.noise_strength = nn.Parameter(torch.tensor(0.1))

    def forward(self, w: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        x = self.body(self.fc(w).view(-1, 8, 4, 4))
        if noise_mode == "random":
            x = x + self.noise_strength * torch.randn_like(x)
        elif noise_mode != "const" and noise_mode != "none":
            raise ValueError(f"noise_mode {noise_mode!r}")
        return torch.tanh(self.to_rgb(x))


class Generator(nn.Module):
    """``forward(z, c, truncation_psi=1, ..., noise_mode=...)`` -> images [N, C, R, R] in [-1, 1]."""

    def __init__(self, z_dim: int = 16, c_dim: int = 0, w_dim: int = 16, img_resolution: int = 16,
                 img_channels: int = 3) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.mapping = MappingNet(z_dim, c_dim, w_dim)
        self.synthesis = SynthesisNet(w_dim, img_resolution, img_channels)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False, **synthesis_kwargs):
        return self.synthesis(self.mapping(z, c), **synthesis_kwargs)


class Discriminator(nn.Module):
    def __init__(self, c_dim: int = 0, img_resolution: int = 16, img_channels: int = 3) -> None:
        super().__init__()
        self.c_dim, self.img_resolution = c_dim, img_resolution
        self.net = nn.Sequential(nn.Conv2d(img_channels, 4, 3, stride=2, padding=1), nn.Flatten(),
                                 nn.Linear(4 * (img_resolution // 2) ** 2, 1))

    def forward(self, img, c):
        return self.net(img)


class FlatGenerator(nn.Module):
    """A generator whose output is not an image batch (flat vectors), for the bad-input tests."""

    z_dim, c_dim, img_resolution = 16, 0, 16

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 48)

    def forward(self, z, c, **kwargs):
        return self.fc(z)
