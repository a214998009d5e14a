"""A plain DCGAN LightningModule, written as a user would, that knows nothing of gmia_defend.

Used to show the leakage callbacks attach to a GAN script written elsewhere: the only thing the
callbacks are told is the generator's attribute name (``generator``). Manual optimization, one D and
one G step per batch. Latents of step t are drawn from a generator seeded by (seed, t), so a run
resumed from a checkpoint continues exactly like an uninterrupted one; ``global_latents=True`` draws
them from the global RNG instead, as most GAN scripts do (then anything that moves the global RNG
changes training).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn


class DCGenerator(nn.Module):
    """z [N, z_dim] -> images [N, 3, R, R] in [-1, 1]; R = 4 * 2**k."""

    def __init__(self, z_dim: int = 32, width: int = 16, resolution: int = 16, batchnorm: bool = True) -> None:
        super().__init__()
        self.z_dim = z_dim
        ups = (resolution // 4).bit_length() - 1
        ch = width * 2 ** ups
        self.fc = nn.Linear(z_dim, ch * 16)
        layers: list[nn.Module] = []
        for _ in range(ups):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1),
                       nn.BatchNorm2d(ch // 2) if batchnorm else nn.Identity(), nn.ReLU()]
            ch //= 2
        layers += [nn.Conv2d(ch, 3, 3, 1, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self._ch0 = width * 2 ** ups

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(F.relu(self.fc(z)).view(z.shape[0], self._ch0, 4, 4))


class DCDiscriminator(nn.Module):
    def __init__(self, width: int = 16, resolution: int = 16) -> None:
        super().__init__()
        downs = (resolution // 4).bit_length() - 1
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1), nn.LeakyReLU(0.2)]
        ch = width
        for _ in range(downs):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1), nn.LeakyReLU(0.2)]
            ch *= 2
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(ch * 16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


class DCGAN(pl.LightningModule):
    """Non-saturating logistic GAN loss, Adam, manual optimization."""

    def __init__(self, z_dim: int = 32, width: int = 16, resolution: int = 16, lr: float = 2e-3,
                 batchnorm: bool = True, seed: int = 0, global_latents: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = DCGenerator(z_dim, width, resolution, batchnorm)
        self.discriminator = DCDiscriminator(width, resolution)

    def configure_optimizers(self):
        lr = self.hparams.lr
        return (torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.5, 0.99)),
                torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.99)))

    def _latents(self, n: int) -> torch.Tensor:
        if self.hparams.global_latents:
            return torch.randn(n, self.hparams.z_dim, device=self.device)
        g = torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + int(self.global_step)
                                          + 7919 * self.global_rank)
        return torch.randn(n, self.hparams.z_dim, generator=g).to(self.device)

    def training_step(self, batch, batch_idx: int) -> None:
        real = batch[0] if isinstance(batch, (tuple, list)) else batch
        opt_g, opt_d = self.optimizers()
        fake = self.generator(self._latents(real.shape[0]))
        d_loss = F.softplus(self.discriminator(fake.detach())).mean() + F.softplus(-self.discriminator(real)).mean()
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        g_loss = F.softplus(-self.discriminator(fake)).mean()
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.log_dict({"loss/d": d_loss.detach(), "loss/g": g_loss.detach()}, batch_size=real.shape[0])
