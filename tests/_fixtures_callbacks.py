"""Shared fixtures of the callback tests: a tiny SyntheticFaces world, a fast embedder, a trainer factory.

The world is small on purpose (16 px faces, 8 member and 8 non-member identities): these tests check
the callbacks' mechanics (cadence, files, loggers, resume, DDP, failures), not attack power, so the
embedder is a fixed random CNN (deterministic, no training).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gmia_defend.embedders.base import Embedder

CB_RES = 16


class CbTinyEmbedder(Embedder):
    """A fixed random conv net (seeded): cheap features good enough to exercise the callbacks."""

    def __init__(self, seed: int = 0, dim: int = 16, name: str = "tiny") -> None:
        super().__init__(input_size=CB_RES, dim=dim, name=name)
        g = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(16 * (CB_RES // 4) ** 2, dim))
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.eval()

    def embed_preprocessed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class CbWorld:
    audit: Any
    train_images: torch.Tensor
    train_labels: torch.Tensor

    def loader(self, batch_size: int = 16) -> DataLoader:
        return DataLoader(TensorDataset(self.train_images, self.train_labels), batch_size=batch_size,
                          shuffle=False, drop_last=True)


@pytest.fixture(scope="session")
def cb_world() -> CbWorld:
    """8 member identities x ~10 training images, 8 non-members, 3 references each, 16 px."""
    from gmia_defend.data import AuditSet, IdentitySplit, SyntheticFaces

    ds = SyntheticFaces(num_identities=20, images_per_identity=13, resolution=CB_RES, seed=3)
    split = IdentitySplit.create(ds, num_members=8, num_nonmembers=8, references_per_identity=3, seed=1)
    audit = AuditSet.from_split(ds, split)
    idx = split.train_indices(ds)
    return CbWorld(audit, ds.load(idx), ds.targets[torch.as_tensor(idx)])


@pytest.fixture()
def cb_embedder() -> CbTinyEmbedder:
    return CbTinyEmbedder()


def cb_monitor_kwargs(world: CbWorld, embedder: nn.Module, **overrides: Any) -> dict:
    """Fast IdentityLeakageMonitor settings for tests (DCGAN's generator, small N, no progress bar)."""
    kwargs = dict(embedder=embedder, audit=world.audit, generator="generator", every_n_steps=4,
                  num_samples=128, batch_size=64, seed=0, progress=False, num_real_images=64,
                  attack_options={"n_bootstrap": 50, "evidence_identities": 2, "evidence_neighbours": 3,
                                  "top_k": 4})
    kwargs.update(overrides)
    return kwargs


def cb_trainer(root: Any, callbacks: list, max_steps: int = 24, logger: Any = False, **overrides: Any):
    """A quiet CPU trainer; ``max_steps`` counts optimizer steps (2 per batch for the DCGAN)."""
    import pytorch_lightning as pl

    kwargs = dict(default_root_dir=str(root), accelerator="cpu", devices=1, max_steps=max_steps,
                  callbacks=callbacks, logger=logger, enable_progress_bar=False, enable_model_summary=False,
                  enable_checkpointing=False, log_every_n_steps=1, num_sanity_val_steps=0)
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)
