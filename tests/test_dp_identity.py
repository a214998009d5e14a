"""The DP frontier benchmark (shortened) and public pretraining before a private fine-tuning."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]


def _benchmark():
    spec = importlib.util.spec_from_file_location("dp_identity_bench", ROOT / "benchmarks" / "dp_identity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_frontier_benchmark_shortened(tmp_path, monkeypatch) -> None:
    bench = _benchmark()
    cfg = dict(bench.QUICK, epsilons=[8.0], log=str(tmp_path / "rows.jsonl"))
    # noise fixed here (solving it is tested in test_els.py); the per-person epsilon is still accounted
    monkeypatch.setattr(bench, "noise_for", lambda cfg, scheme, eps, labels: (2.0, 0.1))
    data = bench._setup(cfg)
    train_labels = data["train_labels"]
    assert int(torch.bincount(train_labels).max()) == cfg["heavy_images"]  # over-represented members
    assert len(data["audit"].member_identities) == cfg["heavy"]  # audited: the heavy members only
    assert not set(data["audit"].nonmember_identities) & set(data["audit"].member_identities)
    init, _ = bench.pretrain(cfg, tmp_path)
    names = ("nonprivate", "pretrained_only", "els_eps8", "uls_eps8", "scratch_els_eps8")
    rows = [bench.run_row(name, cfg, init) for name in names]
    by = {r["row"]: r for r in rows}
    assert by["els_eps8"]["scheme"] == "els" and by["uls_eps8"]["scheme"] == "uls"
    # every fine-tuning row takes the same steps of the same batch size as the non-private one
    assert by["els_eps8"]["steps"] == by["uls_eps8"]["steps"] == by["nonprivate"]["steps"] == cfg["finetune_batches"]
    assert 0 < by["els_eps8"]["epsilon_person"] < math.inf and "per person" in by["els_eps8"]["meaning"]
    assert by["scratch_els_eps8"]["pretrained"] is False and by["els_eps8"]["pretrained"] is True
    assert by["scratch_els_eps8"]["scheme"] == "els"
    result = bench.summarise(rows, cfg, 0.0, 1.0, True)
    for key in ("people", "auc_nonprivate", "epsilon_person_at_target", "auc_at_target", "auc_ci_low_at_target",
                "auc_ci_high_at_target", "fd_ratio_at_target", "fd_pretrained_at_target", "fd_scratch_at_target",
                "fd_train_ratio_at_target"):
        assert key in result and result[key] is not None, key
    assert set(result["rows"]) == set(by)
    json.dumps(result)
    bench.figure(rows, tmp_path / "frontier.png")
    assert (tmp_path / "frontier.png").stat().st_size > 1000
    assert result["fd_pretrained_only"] is not None and by["pretrained_only"]["epsilon_person"] == 0.0
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 4  # the trained rows (before the next one)
    # more D steps per G step under DP: the same D steps (all accounted), fewer G steps
    more_d = bench.run_row("uls_eps8", dict(cfg, dp_d_steps=2), init)
    assert more_d["steps"] == cfg["finetune_batches"] and more_d["epsilon_person"] == by["uls_eps8"]["epsilon_person"]
    assert bench._scheme_eps("scratch_uls_eps8") == ("uls", 8.0) and bench._scheme_eps("els_eps2") == ("els", 2.0)


def test_public_pretraining_runs_once_and_loads(tmp_path) -> None:
    from gmia_defend.data import IdentityDataModule
    from gmia_defend.mitigations.pretraining import PublicPretraining
    from gmia_defend.models import StyleGAN2

    def world():
        dm = IdentityDataModule(resolution=16, num_members=6, num_nonmembers=2, num_population_identities=0,
                                images_per_identity=5, references_per_identity=2, batch_size=4,
                                public_identities=6, public_images_per_identity=3)
        model = StyleGAN2(resolution=16, z_dim=8, w_dim=8, mapping_layers=1, channel_base=64, channel_max=8,
                          dp_compatible=True, sample_every_n_batches=0, sample_grid=2)
        return dm, model

    def fit(callback, root):
        dm, model = world()
        before = {k: v.clone() for k, v in model.G_ema.state_dict().items()}
        trainer = pl.Trainer(max_steps=2, callbacks=[callback], logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                             accelerator="cpu")
        seen = {}

        class Peek(pl.Callback):
            def on_train_start(self, trainer, pl_module):
                seen.update({k: v.clone() for k, v in pl_module.G_ema.state_dict().items()})

        trainer.callbacks.append(Peek())
        trainer.fit(model, datamodule=dm)
        return before, seen

    pl.seed_everything(0)
    ckpt = tmp_path / "pre.ckpt"
    before, started = fit(PublicPretraining(str(ckpt), batches=2), tmp_path / "a")
    assert ckpt.is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == ["a", "pre.ckpt"]  # nothing else beside
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert all(torch.equal(started[k], saved[f"G_ema.{k}"]) for k in started)  # fine-tuning starts from it
    assert any(not torch.equal(before[k], started[k]) for k in before)
    stamp = ckpt.stat().st_mtime_ns
    fit(PublicPretraining(str(ckpt), batches=2), tmp_path / "b")
    assert ckpt.stat().st_mtime_ns == stamp  # reused, not retrained
    from gmia_defend.errors import UserError

    dm = IdentityDataModule(resolution=16, num_members=6, num_nonmembers=2, num_population_identities=0,
                            images_per_identity=5, references_per_identity=2, batch_size=4)
    _, model = world()
    trainer = pl.Trainer(max_steps=2, callbacks=[PublicPretraining(str(tmp_path / "none.ckpt"))], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, accelerator="cpu")
    with pytest.raises(UserError, match="public_identities"):
        trainer.fit(model, datamodule=dm)
