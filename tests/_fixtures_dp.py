"""DP test helpers: a tiny per-sample discriminator (and variants DP must refuse), labelled batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class DpTinyD(nn.Module):
    """conv(3->8, s2) -> lrelu -> conv(8->8, s2) -> lrelu -> linear -> logit; 8x8 inputs, no cross-sample ops."""

    resolution = 8

    def __init__(self, norm: str | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, 2, 1)]
        if norm == "batch":
            layers.append(nn.BatchNorm2d(8))
        layers += [nn.LeakyReLU(0.2), nn.Conv2d(8, 8, 3, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(32, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


class DpBatchMeanD(DpTinyD):
    """Mixes samples: subtracts the batch mean of the features (a cross-sample op under another name)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net[:-1](x)
        return self.net[-1](h - h.mean(0, keepdim=True)).flatten()


def dp_batch(n: int = 12, identities: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(real [n,3,8,8], labels [n] over ``identities``, fake [n,3,8,8]) seeded."""
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(n, 3, 8, 8, generator=g)
    labels = torch.arange(n) % identities
    fake = torch.randn(n, 3, 8, 8, generator=g)
    return real, labels, fake


@pytest.fixture()
def dp_tiny_d() -> DpTinyD:
    torch.manual_seed(0)
    return DpTinyD()
