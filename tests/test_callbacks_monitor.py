"""IdentityLeakageMonitor + LeakageEarlyStopping + ReleaseCheckpointSelector on a plain DCGAN.

The DCGAN (tests/dcgan_module.py) does not import gmia_defend; the callbacks are only told the
generator's attribute name.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from _fixtures_callbacks import CbTinyEmbedder, cb_monitor_kwargs, cb_trainer
from dcgan_module import DCGAN

from gmia_defend.callbacks import IdentityLeakageMonitor, LeakageEarlyStopping, ReleaseCheckpointSelector
from gmia_defend.errors import UserError
from gmia_defend.io import read_jsonl
from gmia_defend.audit import AuditRecord, load_release, select_release

KEYS = ("leakage/auc", "leakage/tpr_at_1pct_fpr", "leakage/tpr_at_0.1pct_fpr", "leakage/advantage",
        "leakage/auc_ci_low", "leakage/auc_ci_high", "leakage/leak_rate", "quality/fd_tiny", "progress/kimg")


def _finite(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if v == v}


def test_dcgan_module_is_plain():
    tree = ast.parse(Path(__file__).with_name("dcgan_module.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(m.startswith("gmia_defend") for m in imported)


class _Epsilon(pl.Callback):
    """Stands in for PrivacyBudgetMonitor: logs privacy/epsilon after every batch."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.epsilon = 0.5 * (trainer.global_step // 2)
        pl_module.log("privacy/epsilon", self.epsilon, on_step=True, on_epoch=False, batch_size=1)


def test_plain_dcgan_with_all_three_callbacks(cb_world, tmp_path):
    pl.seed_everything(0)
    monitor = IdentityLeakageMonitor(**cb_monitor_kwargs(cb_world, CbTinyEmbedder(), audit_at_start=True))
    stopper = LeakageEarlyStopping(budget=0.999, patience=2)
    selector = ReleaseCheckpointSelector(budget=0.999, min_kimg=0.01)
    # selector listed before the monitor on purpose: the end-of-training audit must still be a candidate
    trainer = cb_trainer(tmp_path, [_Epsilon(), selector, stopper, monitor], max_steps=20)
    trainer.fit(DCGAN(), cb_world.loader())

    # cadence: start, every 4 batches of 16 images (0.064 kimg), and the end (10 batches) -> 0, .064, .128, .16
    kimgs = [r["kimg"] for r in monitor.history]
    assert kimgs == [0.0, 0.064, 0.128, 0.16]
    assert [r["hook"] for r in monitor.history][-1] == "on_train_end"
    lines = read_jsonl(tmp_path / "audits.jsonl")
    assert [r["kimg"] for r in lines] == kimgs and all(not r.get("error") for r in lines)
    for r in lines:
        assert set(KEYS) <= set(r["metrics"]) and 0.0 <= r["metrics"]["leakage/auc"] <= 1.0
        assert r["metrics"]["quality/fd_tiny"] > 0 and r["num_samples"] == 128
        assert {row["identity"] for row in r["identities"]} == set(cb_world.audit.member_identities) | set(
            cb_world.audit.nonmember_identities)  # the local file keeps real names
        assert (tmp_path / r["evidence"]).is_file()
        assert {row["half"] for row in r["identities"]} == {"selection", "confirmation"}
        assert {"selection/leakage/auc", "confirmation/leakage/auc"} <= set(r["metrics"])
    # only audits that could still be released keep a generator file (never the untrained one at 0 kimg)
    assert lines[0]["checkpoint"] is None
    kept = sorted(p.name for p in (tmp_path / "audits").glob("*.ckpt"))
    assert 1 <= len(kept) <= 3 and all(Path(r["checkpoint"]).name in kept for r in lines if r["checkpoint"]
                                       and (tmp_path / r["checkpoint"]).is_file())
    # monitorable by Lightning callbacks
    assert "leakage/auc" in trainer.callback_metrics and "quality/fd_tiny" in trainer.callback_metrics
    # release: same decision as the pure rule on the file, copied checkpoint loads safely
    release = json.loads((tmp_path / "release.json").read_text())
    expected = select_release(lines, budget=0.999, min_kimg=0.01)
    assert release["chosen"]["kimg"] == expected["chosen"]["kimg"] != 0.0
    assert len(release["candidates"]) == 4 and "ties" in release["rule"]
    assert release["candidates"][0]["excluded_by"] == "untrained"
    chosen_batches = round(release["chosen"]["kimg"] * 1000 / 16)
    assert release["epsilon"] == release["chosen"]["metrics"]["privacy/epsilon"] == 0.5 * chosen_batches
    assert release["epsilon_at_end"] == 5.0
    # reported figures come from the confirmation half, the selection half's beside them
    chosen = AuditRecord.from_json(next(r for r in lines if r["kimg"] == release["chosen"]["kimg"]))
    reported = {k: v for k, v in release["reported"].items() if v is not None}  # JSON null = NaN
    assert reported == pytest.approx(_finite(chosen.half_metrics("confirmation"))) and "leakage/auc" in reported
    assert release["selection_figures"]["leakage/auc"] == chosen.metric("selection/leakage/auc")
    assert "identity split" in release["correction"]
    assert release["selection_uses_private_data"] is True and release["epsilon_covers_selection"] is False
    # release.ckpt: the generator's fp32 weights and the model's hyper-parameters, nothing else
    ckpt = torch.load(tmp_path / "release.ckpt", weights_only=True, map_location="cpu")
    assert set(ckpt) == {"format", "version", "module_class", "hparams", "generator_attr", "state_dict", "z_dim"}
    assert all(k.startswith(("fc.", "net.")) for k in ckpt["state_dict"])
    assert ckpt["module_class"] == "dcgan_module:DCGAN" and ckpt["generator_attr"] == "generator"
    released = load_release(tmp_path / "release.ckpt")
    z = torch.randn(4, 32)
    assert released(z).shape == (4, 3, 16, 16) and not released.training
    assert sorted(p.name for p in (tmp_path / "report").glob("*.png")) == [
        "epsilon_vs_kimg.png", "identities.png", "leakage_vs_kimg.png", "leakage_vs_quality.png",
        "quality_vs_kimg.png"]
    assert stopper.stopping_reason.name == "NOT_STOPPED" and trainer.global_step == 20
    assert not (tmp_path / "pseudonym_key").exists()  # no remote logger: nothing pseudonymised


def test_budget_exceeded_stops_training_with_a_reason(cb_world, tmp_path):
    pl.seed_everything(0)
    monitor = IdentityLeakageMonitor(**cb_monitor_kwargs(cb_world, CbTinyEmbedder(), every_n_steps=2))
    stopper = LeakageEarlyStopping(budget=-1.0, patience=2)  # any AUC exceeds it
    selector = ReleaseCheckpointSelector(budget=-1.0)
    trainer = cb_trainer(tmp_path, [monitor, stopper, selector], max_steps=40)
    trainer.fit(DCGAN(), cb_world.loader())
    assert stopper.stopping_reason.name == "LEAKAGE_BUDGET"
    assert "patience 2" in stopper.stopping_reason_message
    assert trainer.global_step == 8 and [r["kimg"] for r in monitor.history] == [0.032, 0.064]
    release = json.loads((tmp_path / "release.json").read_text())
    assert not release["released"] and not (tmp_path / "release.ckpt").exists()


def test_cadence_by_counted_kimg_and_by_epoch(cb_world, tmp_path):
    pl.seed_everything(0)
    by_kimg = IdentityLeakageMonitor(**cb_monitor_kwargs(cb_world, CbTinyEmbedder(), every_n_steps=None,
                                                         every_n_kimg=0.05, fid=False, evidence=False,
                                                         run_dir=str(tmp_path / "a")))
    cb_trainer(tmp_path, [by_kimg], max_steps=16).fit(DCGAN(), cb_world.loader())
    # 16 images a batch: 0.05, 0.10 kimg are crossed at 0.064 and 0.112; end at 0.128
    assert [r["kimg"] for r in by_kimg.history] == [0.064, 0.112, 0.128]
    assert all("quality/fd_tiny" not in r["metrics"] for r in by_kimg.history)
    by_epoch = IdentityLeakageMonitor(**cb_monitor_kwargs(cb_world, CbTinyEmbedder(), every_n_steps=None,
                                                          every_n_epochs=1, run_dir=str(tmp_path / "b")))
    cb_trainer(tmp_path, [by_epoch], max_steps=-1, max_epochs=2).fit(DCGAN(), cb_world.loader(batch_size=40))
    assert [r["hook"] for r in by_epoch.history] == ["on_train_epoch_end", "on_train_epoch_end"]
    assert [r["kimg"] for r in by_epoch.history] == [0.08, 0.16]


def test_audit_set_from_the_datamodule_and_fd_shares_samples(cb_world, tmp_path):
    """audit=None takes trainer.datamodule.audit_set; the FD equals one computed on a separate pass."""
    from gmia_defend.attack.generators import LatentSampler
    from gmia_defend.quality.fid import FrechetQuality

    class DM(pl.LightningDataModule):
        audit_set = cb_world.audit

        def train_dataloader(self):
            return cb_world.loader()

    pl.seed_everything(0)
    embedder = CbTinyEmbedder()
    monitor = IdentityLeakageMonitor(**cb_monitor_kwargs(cb_world, embedder, audit=None, every_n_steps=100))
    model = DCGAN()
    cb_trainer(tmp_path, [monitor], max_steps=6).fit(model, datamodule=DM())
    (record,) = monitor.history
    # separate pass: same latents, same real images
    q = FrechetQuality.for_embedder(embedder)
    q.set_real_images(monitor._real_images(type("T", (), {"train_dataloader": cb_world.loader()})()))
    model.generator.eval()
    with torch.no_grad():
        q.update(model.generator(LatentSampler(0, 32).get(0, 128)))
    assert record["metrics"]["quality/fd_tiny"] == pytest.approx(q.compute(), rel=1e-5)
    with pytest.raises(UserError, match="audit_set"):
        bad = IdentityLeakageMonitor(**cb_monitor_kwargs(cb_world, embedder, audit=None))
        cb_trainer(tmp_path / "bad", [bad], max_steps=8).fit(DCGAN(), cb_world.loader())


def test_csv_logger_receives_the_scalars(cb_world, tmp_path):
    from pytorch_lightning.loggers import CSVLogger

    pl.seed_everything(0)
    monitor = IdentityLeakageMonitor(**cb_monitor_kwargs(cb_world, CbTinyEmbedder(), evidence=False))
    logger = CSVLogger(tmp_path, name="csv")
    cb_trainer(tmp_path, [monitor], max_steps=8, logger=logger, log_every_n_steps=50).fit(DCGAN(), cb_world.loader())
    import csv

    with open(Path(logger.log_dir) / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    audited = [r for r in rows if r.get("leakage/auc")]
    assert len(audited) == 1 and math.isfinite(float(audited[0]["leakage/auc"]))
    assert float(audited[0]["progress/kimg"]) == 0.064 and audited[0]["quality/fd_tiny"]


def test_bad_generator_name_and_cadence_are_user_errors(cb_world, tmp_path):
    with pytest.raises(UserError, match="only one cadence"):
        IdentityLeakageMonitor(every_n_kimg=1, every_n_steps=2)
    monitor = IdentityLeakageMonitor(**cb_monitor_kwargs(cb_world, CbTinyEmbedder(), generator="G_ema"))
    with pytest.raises(UserError, match="no attribute 'G_ema'.*generator"):
        cb_trainer(tmp_path, [monitor], max_steps=8).fit(DCGAN(), cb_world.loader())
    with pytest.raises(UserError, match="needs an IdentityLeakageMonitor"):
        cb_trainer(tmp_path, [LeakageEarlyStopping()], max_steps=2).fit(DCGAN(), cb_world.loader())
