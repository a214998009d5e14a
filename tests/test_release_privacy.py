"""What leaves the machine carries nothing private: W&B offline files, the release artifact, release.ckpt."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from _fixtures_callbacks import CbTinyEmbedder, cb_monitor_kwargs, cb_trainer
from dcgan_module import DCGAN

from gmia_defend.callbacks import IdentityLeakageMonitor, LeakageEarlyStopping, ReleaseCheckpointSelector

SPLIT_SEED = 987654321
DATASET_SPEC = "synthetic-faces:num_identities=20,resolution=16,seed=3"


def test_nothing_private_in_wandb_files_or_the_release(cb_world, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.delenv("GMIA_PSEUDONYM_KEY", raising=False)

    class DM(pl.LightningDataModule):
        """A datamodule whose hyper-parameters name the dataset and the split seed (as IdentityDataModule's do)."""

        def __init__(self, dataset: str = DATASET_SPEC, split_seed: int = SPLIT_SEED) -> None:
            super().__init__()
            self.save_hyperparameters()

        def train_dataloader(self):
            return cb_world.loader()

    pl.seed_everything(0)
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="gmia-privacy")
    monitor = IdentityLeakageMonitor(**cb_monitor_kwargs(cb_world, CbTinyEmbedder(), audit_at_start=True))
    selector = ReleaseCheckpointSelector(budget=0.999)
    trainer = cb_trainer(tmp_path, [monitor, LeakageEarlyStopping(budget=0.999), selector], max_steps=16,
                         logger=logger)
    trainer.fit(DCGAN(), datamodule=DM())
    import wandb

    wandb.finish()
    assert selector.release["released"]

    names = set(cb_world.audit.member_identities) | set(cb_world.audit.nonmember_identities)
    secrets = [n.encode() for n in names] + [str(SPLIT_SEED).encode(), DATASET_SPEC.encode()]
    searched = [p for d in ("wandb", "wandb-cache", "wandb-data") for p in (tmp_path / d).rglob("*") if p.is_file()]
    assert any(p.name.endswith(".table.json") for p in searched)  # identity tables were sent
    assert any(p.name == "release.ckpt" or p.suffix == ".wandb" for p in searched)
    leaks = {(p.relative_to(tmp_path).as_posix(), s.decode()) for p in searched for s in secrets if s in p.read_bytes()}
    assert not leaks, f"private strings in files sent to W&B: {sorted(leaks)[:5]}"
    # the local run folder keeps the names (audits.jsonl), but not the release file
    assert any(n.encode() in (tmp_path / "audits.jsonl").read_bytes() for n in names)
    release = (tmp_path / "release.ckpt").read_bytes()
    assert not [s for s in secrets if s in release]
    ckpt = torch.load(tmp_path / "release.ckpt", weights_only=True, map_location="cpu")
    assert not {"callbacks", "optimizer_states", "lr_schedulers", "loops", "datamodule_hyper_parameters",
                "hyper_parameters", "state_dict_discriminator"} & set(ckpt)
    assert not any(k.startswith("discriminator") for k in ckpt["state_dict"])
    assert ckpt["hparams"] == dict(DCGAN().hparams)
