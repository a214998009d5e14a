"""Reliability: failing audits, kill-and-resume, and DDP (2 CPU processes) equal to one process."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from _fixtures_callbacks import CbTinyEmbedder, cb_monitor_kwargs, cb_trainer
from dcgan_module import DCGAN
from pytorch_lightning.callbacks import ModelCheckpoint

from gmia_defend.callbacks import IdentityLeakageMonitor, LeakageEarlyStopping, ReleaseCheckpointSelector
from gmia_defend.errors import GeneratorError
from gmia_defend.io import read_jsonl


def _finite(metrics: dict) -> dict:
    """Metrics that were measured (JSON null = NaN, e.g. TPR at an FPR too small to resolve)."""
    return {k: v for k, v in metrics.items() if v is not None and v == v}


class _NaNOnSecondAudit:
    """pl_module -> generator; the second audit's generator returns NaN images."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, pl_module):
        self.calls += 1
        g = pl_module.generator
        if self.calls != 2:
            return g

        class Broken(torch.nn.Module):
            z_dim = g.z_dim

            def forward(self, z):
                return torch.full((z.shape[0], 3, 16, 16), float("nan"))

        return Broken()


def test_nan_images_are_reported_and_training_continues(cb_world, tmp_path):
    pl.seed_everything(0)
    monitor = IdentityLeakageMonitor(**cb_monitor_kwargs(cb_world, CbTinyEmbedder(), generator=_NaNOnSecondAudit()))
    selector = ReleaseCheckpointSelector(budget=0.999)
    trainer = cb_trainer(tmp_path, [monitor, LeakageEarlyStopping(budget=0.999), selector], max_steps=24)
    with pytest.warns(UserWarning, match="audit at 0.128 kimg failed: GeneratorError"):
        trainer.fit(DCGAN(), cb_world.loader())
    assert trainer.global_step == 24
    lines = read_jsonl(tmp_path / "audits.jsonl")
    assert [r["kimg"] for r in lines] == [0.064, 0.128, 0.192]
    assert "GeneratorError" in lines[1]["error"] and "metrics" not in lines[1] and lines[1]["checkpoint"] is None
    assert not lines[0].get("error") and not lines[2].get("error")
    release = json.loads((tmp_path / "release.json").read_text())
    assert release["chosen"]["kimg"] in (0.064, 0.192)
    assert any("audit failed" in c["reason"] for c in release["candidates"])


def test_fail_on_error_stops_training(cb_world, tmp_path):
    pl.seed_everything(0)
    monitor = IdentityLeakageMonitor(**cb_monitor_kwargs(cb_world, CbTinyEmbedder(), generator=_NaNOnSecondAudit(),
                                                         fail_on_error=True))
    trainer = cb_trainer(tmp_path, [monitor], max_steps=24)
    with pytest.raises(GeneratorError):
        trainer.fit(DCGAN(), cb_world.loader())
    assert trainer.global_step == 16
    assert "GeneratorError" in read_jsonl(tmp_path / "audits.jsonl")[-1]["error"]  # recorded before raising


class _Kill(pl.Callback):
    def __init__(self, at_batch: int) -> None:
        self.at_batch, self.seen = at_batch, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen += 1
        if self.seen == self.at_batch:
            raise KeyboardInterrupt  # a killed job: Lightning shuts down without on_train_end


def _resumable_run(world, root, extra=(), ckpt_path=None):
    pl.seed_everything(0)
    monitor = IdentityLeakageMonitor(**cb_monitor_kwargs(world, CbTinyEmbedder(), every_n_steps=3))
    stopper = LeakageEarlyStopping(budget=0.999, fid_patience=50)
    selector = ReleaseCheckpointSelector(budget=0.999)
    last = ModelCheckpoint(dirpath=root / "ckpts", save_last=True, every_n_epochs=4)
    trainer = cb_trainer(root, [monitor, stopper, selector, last, *extra], max_steps=24, enable_checkpointing=True)
    # one batch an epoch: Lightning restarts a (non-stateful) dataloader from its first batch on resume,
    # so only a full-batch loader sees the same data after resuming as without interruption
    trainer.fit(DCGAN(), world.loader(batch_size=len(world.train_images)), ckpt_path=ckpt_path)
    return monitor, trainer


def test_killed_and_resumed_run_equals_uninterrupted(cb_world, tmp_path):
    """Audits every 3 batches, checkpoints every 4; killed at batch 7, after the batch-6 audit, which is
    newer than the last checkpoint (batch 4); resumed from last.ckpt."""
    full, _ = _resumable_run(cb_world, tmp_path / "full")
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        _resumable_run(cb_world, tmp_path / "cut", extra=[_Kill(7)])
    assert [r["kimg"] for r in read_jsonl(tmp_path / "cut" / "audits.jsonl")] == [0.24, 0.48]
    resumed, trainer = _resumable_run(cb_world, tmp_path / "cut", ckpt_path=tmp_path / "cut" / "ckpts" / "last.ckpt")
    assert trainer.global_step == 24

    def summary(records):
        return [(r["kimg"], r["step"], _finite(r["metrics"])) for r in records]

    a = read_jsonl(tmp_path / "full" / "audits.jsonl")
    b = read_jsonl(tmp_path / "cut" / "audits.jsonl")
    assert [r["kimg"] for r in a] == [0.24, 0.48, 0.72, 0.96]
    assert [x[:2] for x in summary(b)] == [x[:2] for x in summary(a)]
    for ra, rb in zip(a, b):
        assert _finite(rb["metrics"]) == pytest.approx(_finite(ra["metrics"]), rel=1e-6, abs=1e-9)
    assert summary(resumed.history) == summary(b)
    rel_a = json.loads((tmp_path / "full" / "release.json").read_text())
    rel_b = json.loads((tmp_path / "cut" / "release.json").read_text())
    assert rel_b["chosen"]["kimg"] == rel_a["chosen"]["kimg"]
    assert [c["reason"] for c in rel_b["candidates"]] == [c["reason"] for c in rel_a["candidates"]]
    assert list((tmp_path / "cut").glob("audits.jsonl.*.bak"))  # the abandoned batch-6 audit is kept aside


def _ddp_run(world, root, devices: int):
    pl.seed_everything(0)
    monitor = IdentityLeakageMonitor(**cb_monitor_kwargs(world, CbTinyEmbedder(), audit_at_start=True))
    # lr=0: the generator never learns, so the quality bar over the untrained generator is switched off
    callbacks = [monitor, LeakageEarlyStopping(budget=0.999), ReleaseCheckpointSelector(budget=0.999,
                                                                                        min_quality_gain=None)]
    strategy = "ddp_fork_find_unused_parameters_true" if devices > 1 else "auto"
    trainer = cb_trainer(root, callbacks, max_steps=16, devices=devices, strategy=strategy,
                         use_distributed_sampler=True)
    batch = 16 // devices
    trainer.fit(DCGAN(lr=0.0, batchnorm=False), world.loader(batch_size=batch))
    return read_jsonl(root / "audits.jsonl"), json.loads((root / "release.json").read_text())


@pytest.mark.slow
def test_ddp_two_processes_match_one(cb_world, tmp_path):
    one, rel_one = _ddp_run(cb_world, tmp_path / "one", 1)
    two, rel_two = _ddp_run(cb_world, tmp_path / "two", 2)
    assert [r["kimg"] for r in two] == [r["kimg"] for r in one] == [0.0, 0.064, 0.128]
    assert {r["world_size"] for r in two} == {2} and {r["world_size"] for r in one} == {1}
    for a, b in zip(one, two):
        assert not b.get("error")
        assert _finite(b["metrics"]) == pytest.approx(_finite(a["metrics"]), rel=1e-6, abs=1e-9)
        assert b["metrics"].keys() == a["metrics"].keys()
        assert [(r["identity"], r["matches"]) for r in b["identities"]] == [
            (r["identity"], r["matches"]) for r in a["identities"]]
    assert rel_two["chosen"]["kimg"] == rel_one["chosen"]["kimg"]
    assert len(list((tmp_path / "two" / "audits").glob("*.ckpt"))) == 2  # the untrained generator is never kept


class _NaNOnRank1(_NaNOnSecondAudit):
    """pl_module -> generator; on rank 1 only, the second audit gets NaN images."""

    def __call__(self, pl_module):
        generator = super().__call__(pl_module)
        return generator if pl_module.global_rank == 1 else pl_module.generator


@pytest.mark.slow
def test_ddp_failure_on_one_rank_is_reported_without_hanging(cb_world, tmp_path):
    pl.seed_everything(0)
    monitor = IdentityLeakageMonitor(**cb_monitor_kwargs(cb_world, CbTinyEmbedder(), generator=_NaNOnRank1()))
    selector = ReleaseCheckpointSelector(0.999, min_quality_gain=None)
    trainer = cb_trainer(tmp_path, [monitor, LeakageEarlyStopping(budget=0.999), selector],
                         max_steps=24, devices=2, strategy="ddp_fork_find_unused_parameters_true")
    trainer.fit(DCGAN(lr=0.0, batchnorm=False), cb_world.loader(batch_size=8))
    lines = read_jsonl(tmp_path / "audits.jsonl")
    assert [r["kimg"] for r in lines] == [0.064, 0.128, 0.192]
    assert "another process" in lines[1]["error"]  # rank 0 was healthy; rank 1's shard failed
    assert not lines[0].get("error") and not lines[2].get("error")
    assert json.loads((tmp_path / "release.json").read_text())["released"]
