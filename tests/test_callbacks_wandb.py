"""W&B (offline): kimg x-axis, tables and charts, evidence image, release artifact; names pseudonymised."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
from _fixtures_callbacks import CbTinyEmbedder, cb_monitor_kwargs, cb_trainer
from dcgan_module import DCGAN

from gmia_defend.callbacks import IdentityLeakageMonitor, LeakageEarlyStopping, ReleaseCheckpointSelector


def _spy(obj, name, calls):
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        calls.append((name, args, kwargs))
        return original(*args, **kwargs)

    setattr(obj, name, wrapper)


@pytest.mark.parametrize("pseudonymize", [True, False])
def test_wandb_offline_run_gets_tables_charts_and_release(cb_world, tmp_path, monkeypatch, pseudonymize):
    pytest.importorskip("wandb")
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("GMIA_PSEUDONYM_KEY", raising=False)
    pl.seed_everything(0)
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="gmia-test")
    calls: list = []
    for name in ("log", "define_metric", "log_artifact"):
        _spy(logger.experiment, name, calls)
    monitor = IdentityLeakageMonitor(**cb_monitor_kwargs(cb_world, CbTinyEmbedder(), pseudonymize=pseudonymize))
    selector = ReleaseCheckpointSelector(budget=0.999)
    trainer = cb_trainer(tmp_path, [monitor, LeakageEarlyStopping(budget=0.999), selector], max_steps=16,
                         logger=logger)
    trainer.fit(DCGAN(), cb_world.loader())
    run_dir = tmp_path / "wandb"
    offline = next(run_dir.glob("offline-run-*"))
    import wandb

    wandb.finish()

    defined = {(a[0], k.get("step_metric")) for n, a, k in calls if n == "define_metric"}
    assert ("progress/kimg", None) in defined and ("leakage/auc", "progress/kimg") in defined
    assert ("quality/fd_tiny", "progress/kimg") in defined
    logged = [a[0] for n, a, k in calls if n == "log"]
    scalars = [d for d in logged if "leakage/auc" in d]
    assert [d["progress/kimg"] for d in scalars] == [0.064, 0.128]  # two audits, kimg alongside
    media = [d for d in logged if "audit/identities" in d]
    assert len(media) == 2 and all("audit/evidence" in d and "audit/score_vs_train_count" in d for d in media)
    assert "audit/leakage_vs_quality" in media[-1]
    release_log = next(d for d in logged if "release/audits" in d)
    assert "release/leakage_vs_quality" in release_log and "release/tradeoff" in release_log
    models = [(a[0], k) for n, a, k in calls if n == "log_artifact" and getattr(a[0], "type", None) == "model"]
    assert len(models) == 1 and "release" in models[0][1]["aliases"]
    assert "release.ckpt" in models[0][0].manifest.entries

    # identity names: what went to W&B (tables written into the offline run folder) vs the local file
    real = set(cb_world.audit.member_identities) | set(cb_world.audit.nonmember_identities)
    table_files = list(offline.rglob("*.table.json"))
    assert table_files
    sent = set()
    for f in table_files:
        table = json.loads(f.read_text())
        if "identity" in table["columns"]:
            col = table["columns"].index("identity")
            sent |= {row[col] for row in table["data"]}
    assert len(sent) == len(real)
    if pseudonymize:
        assert not sent & real and all(s.startswith("id-") for s in sent)
        mapping = json.loads((tmp_path / "pseudonyms.json").read_text())
        assert set(mapping.values()) == real and set(mapping) == sent
        assert list((tmp_path / "evidence").glob("*.pseudonymised.png"))
    else:
        assert sent == real
    local = [json.loads(line) for line in (tmp_path / "audits.jsonl").read_text().splitlines()]
    assert {r["identity"] for r in local[0]["identities"]} == real
