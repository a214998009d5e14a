"""Shared fixtures for the StyleGAN2 tests: tiny model settings and a tiny image loader."""

from __future__ import annotations

import time
import warnings

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

TINY_STYLEGAN2 = dict(resolution=16, z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16,
                      sample_every_n_batches=0, sample_grid=2, r1_gamma=1.0, r1_interval=2, ema_kimg=0.01)


@pytest.fixture
def tiny_stylegan2_kwargs() -> dict:
    """Constructor kwargs for a StyleGAN2 small enough for a test to train a few batches in ~1 s."""
    return dict(TINY_STYLEGAN2)


def tiny_image_loader(n: int = 16, resolution: int = 16, batch_size: int = 4, seed: int = 0) -> DataLoader:
    """(image, label) batches of random images in [-1, 1], fixed order (no shuffling)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, resolution, resolution, generator=g) * 2 - 1
    labels = torch.arange(n) % 4
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=False, drop_last=True)


def tiny_trainer(root, max_batches: int, **kwargs):
    """A quiet CPU Trainer running ``max_batches`` batches (global_step counts 2 per batch)."""
    import pytorch_lightning as pl

    warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers|log_every_n_steps).*")
    opts = dict(max_steps=2 * max_batches, accelerator="cpu", devices=1, logger=False,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                default_root_dir=str(root), deterministic=False)
    opts.update(kwargs)
    return pl.Trainer(**opts)



class HangAfterBatch(pl.Callback):
    """For crash tests: after ``batches`` batches, touch ``marker`` and sleep, so the test can kill the
    process (SIGKILL) at a known point after a checkpoint was written."""

    def __init__(self, batches: int, marker: str) -> None:
        self.batches, self.marker = int(batches), marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if int(pl_module.batches_seen) >= self.batches:
            open(self.marker, "w").close()
            time.sleep(600)
