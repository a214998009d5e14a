"""Leakage on public canaries: scored on the audit's own samples, read by the rules, covered by epsilon.

The companion attack on the public identities must give exactly what a separate attack on them gives
(same latents, same embedder), leave the protected figures untouched, and a release rule reading it
must say that the choice used public data only.
"""

from __future__ import annotations

import math

import pytest
import torch
from _fixtures_callbacks import CbTinyEmbedder, cb_monitor_kwargs, cb_trainer
from dcgan_module import DCGAN

from gmia_defend.attack import IdentityMembershipAttack
from gmia_defend.audit import Auditor, ReleaseRule, StopRule, select_release, stop_decision
from gmia_defend.audit.policies import CORRECTION_PUBLIC
from gmia_defend.audit.record import AUC, P_VALUE, PUBLIC_AUC, PUBLIC_PREFIX
from gmia_defend.callbacks import IdentityLeakageMonitor, LeakageEarlyStopping, ReleaseCheckpointSelector
from gmia_defend.data import AuditSet, IdentitySplit, SyntheticFaces
from gmia_defend.errors import UserError
from gmia_defend.report.release import covered_selection_problem, selection_privacy

OPTIONS = {"n_bootstrap": 50, "n_permutations": 200}


@pytest.fixture(scope="module")
def public_audit() -> AuditSet:
    """Public people from a synthetic range disjoint from the callback world's 20 identities."""
    faces = SyntheticFaces(num_identities=12, images_per_identity=4, resolution=16, seed=3, identity_offset=20)
    split = IdentitySplit.create(faces, num_members=4, num_nonmembers=8, references_per_identity=3, seed=2)
    return AuditSet.from_split(faces, split)


def _generator() -> torch.nn.Module:
    torch.manual_seed(0)
    g = torch.nn.Sequential(torch.nn.Linear(8, 3 * 16 * 16), torch.nn.Tanh(), torch.nn.Unflatten(1, (3, 16, 16)))
    g.z_dim = 8
    return g


def test_companion_pass_equals_a_separate_attack_and_leaves_protected_figures(cb_world, public_audit):
    g = _generator()
    common = dict(num_samples=96, batch_size=40, quality=False, attack_options=OPTIONS)  # 40: a ragged last batch
    plain = Auditor(CbTinyEmbedder(), cb_world.audit, **common).audit(g, kimg=1.0)
    both = Auditor(CbTinyEmbedder(), cb_world.audit, public_audit=public_audit, **common).audit(g, kimg=1.0)
    alone = IdentityMembershipAttack(CbTinyEmbedder(), public_audit, num_samples=96, batch_size=40, seed=0,
                                     progress=False, **OPTIONS).run(g)
    public = {k[len(PUBLIC_PREFIX):]: v for k, v in both.metrics.items() if k.startswith(PUBLIC_PREFIX)}
    assert PUBLIC_AUC in both.metrics and f"{PUBLIC_PREFIX}{P_VALUE}" in both.metrics
    for key, value in alone.metrics.items():
        if key.startswith("leakage/") and isinstance(value, float) and math.isfinite(value):
            assert public[key] == pytest.approx(value, abs=1e-9), key
    assert {k: v for k, v in both.metrics.items() if not k.startswith(PUBLIC_PREFIX)} == plain.metrics
    assert all(not str(row["identity"]).startswith(tuple(public_audit.member_identities)) for row in both.identities)


def test_sharded_companion_pass_indexes_latents_like_one_process(cb_world, public_audit):
    """Two shards merged give the same public figures as one process (the latent index is tracked per shard), and
    the public statistics travel in the main pass's single collective call (one reduce per audit)."""
    g = _generator()
    auditor = Auditor(CbTinyEmbedder(), cb_world.audit, public_audit=public_audit, num_samples=80, batch_size=16,
                      quality=False, attack_options=OPTIONS)
    single = auditor.audit(g, kimg=0.0)
    states: list[dict] = []

    def gather(state: dict) -> dict:  # simulated all-gather: run shard 0, keep its state; merge with shard 1
        from gmia_defend.attack.scores import merge_state_dicts

        states.append(state)
        return merge_state_dicts([state, other[len(states) - 1]]) if other else state

    other: list[dict] = []
    auditor.audit(g, kimg=0.0, shard=(1, 2), reduce=lambda s: (other.append(s), s)[1])
    merged = auditor.audit(g, kimg=0.0, shard=(0, 2), reduce=gather)
    assert len(other) == len(states) == 1 and any(k.startswith("public.") for k in states[0])
    assert merged.metrics[PUBLIC_AUC] == pytest.approx(single.metrics[PUBLIC_AUC], abs=1e-9)
    assert merged.metrics[AUC] == pytest.approx(single.metrics[AUC], abs=1e-9)


RECORDS = [
    {"kimg": 0.0, "metrics": {AUC: 0.5, PUBLIC_AUC: 0.5, "quality/fd_x": 9.0}},
    {"kimg": 4.0, "metrics": {AUC: 0.9, PUBLIC_AUC: 0.55, "quality/fd_x": 3.0,
                              "selection/leakage/auc": 0.95, "confirmation/leakage/auc": 0.85}},
    {"kimg": 8.0, "metrics": {AUC: 0.5, PUBLIC_AUC: 0.8, "quality/fd_x": 2.0,
                              "selection/leakage/auc": 0.5, "confirmation/leakage/auc": 0.5}},
]


def test_release_rule_on_public_canaries_reports_protected_figures_on_everyone():
    decision = select_release(RECORDS, ReleaseRule(budget=0.6, metric=PUBLIC_AUC))
    assert decision["chosen"]["kimg"] == 4.0  # 8 kimg: public canaries over budget, whatever the members say
    assert decision["correction"] == CORRECTION_PUBLIC and "public identities only" in decision["selected_on"]
    assert decision["reported"][AUC] == 0.9  # all protected identities: none took part in the choice
    assert decision["selection_figures"] == {PUBLIC_AUC: 0.55}
    excluded = {c["kimg"]: c["excluded_by"] for c in decision["candidates"]}
    assert excluded == {0.0: "untrained", 4.0: None, 8.0: "budget"}
    assert "public canaries" in decision["rule"]
    # the p-value the rule reads is the canaries' own
    records = [dict(r, metrics={**r["metrics"], f"{PUBLIC_PREFIX}{P_VALUE}": 0.01, P_VALUE: 0.9}) for r in RECORDS]
    assert not select_release(records, ReleaseRule(budget=0.99, metric=PUBLIC_AUC, alpha=0.05))["released"]
    assert stop_decision(RECORDS, StopRule(budget=0.7, metric=PUBLIC_AUC))["stop"]
    with pytest.raises(UserError, match="public/leakage"):
        ReleaseRule(metric="public/quality/fd_x")


def test_epsilon_covers_a_choice_on_public_canaries_and_public_quality():
    public = ReleaseRule(metric=PUBLIC_AUC)
    covered = selection_privacy(public, "quality/fd_x", "population", epsilon=4.0)
    assert covered["epsilon_covers_selection"] is True and covered["selection_uses_private_data"] is False
    assert PUBLIC_AUC in covered["epsilon_covers_selection_reason"]
    # quality against training images is still private data
    assert selection_privacy(public, "quality/fd_x", "train", epsilon=4.0)["epsilon_covers_selection"] is False
    # an early stop on the canaries does not make the choice private; one on the members does
    assert selection_privacy(public, "quality/fd_x", "population", 4.0, "LeakageEarlyStopping",
                             PUBLIC_AUC)["epsilon_covers_selection"] is True
    assert selection_privacy(public, "quality/fd_x", "population", 4.0, "LeakageEarlyStopping",
                             AUC)["epsilon_covers_selection"] is False
    assert covered_selection_problem(public, "population") is None
    assert "public/leakage/auc" in covered_selection_problem(ReleaseRule(), "population")


def test_relative_score_falls_back_to_top_k_for_the_public_audit_without_population(public_audit):
    faces = SyntheticFaces(num_identities=20, images_per_identity=4, resolution=16, seed=3)
    split = IdentitySplit.create(faces, num_members=4, num_nonmembers=8, references_per_identity=2,
                                 num_population_identities=4, seed=1)
    auditor = Auditor(CbTinyEmbedder(), AuditSet.from_split(faces, split), public_audit=public_audit, num_samples=64, batch_size=32,
                      quality=False, attack_options={**OPTIONS, "score": "relative"})
    record = auditor.audit(_generator(), kimg=1.0)
    assert auditor.attack.score == "relative" and auditor.public_attack.score == "topk_mean"
    assert math.isfinite(record.metrics[PUBLIC_AUC])


def test_a_rule_on_public_canaries_without_canaries_is_refused(cb_world, tmp_path):
    monitor = IdentityLeakageMonitor(**cb_monitor_kwargs(cb_world, CbTinyEmbedder()))
    for callback in (ReleaseCheckpointSelector(metric=PUBLIC_AUC), LeakageEarlyStopping(metric=PUBLIC_AUC)):
        trainer = cb_trainer(tmp_path, [monitor, callback], max_steps=2)
        with pytest.raises(UserError, match="public_canaries"):
            trainer.fit(DCGAN(), train_dataloaders=cb_world.loader())


def test_monitor_logs_and_releases_on_public_canaries(cb_world, public_audit, tmp_path):
    monitor = IdentityLeakageMonitor(**cb_monitor_kwargs(cb_world, CbTinyEmbedder()), public_audit=public_audit)
    selector = ReleaseCheckpointSelector(metric=PUBLIC_AUC, budget=1.0)
    trainer = cb_trainer(tmp_path, [monitor, selector], max_steps=16)
    trainer.fit(DCGAN(), train_dataloaders=cb_world.loader())
    assert monitor.history and all(PUBLIC_AUC in r.metrics for r in monitor.history if r.ok)
    assert PUBLIC_AUC in trainer.callback_metrics
    assert selector.release["correction"] == CORRECTION_PUBLIC
    # no DP here: nothing for epsilon to cover, but the choice itself used no member photo
    assert selector.release["selection_uses_private_data"] is True  # quality is against training images here
    assert "held-out photos" not in selector.release["epsilon_covers_selection_reason"]


def test_public_audit_rebuilt_from_split_json_equals_the_datamodules(tmp_path):
    """``watch`` and ``attack`` rebuild the canaries' audit from split.json alone (a re-rendered public range)."""
    from gmia_defend.data import IdentityDataModule

    dm = IdentityDataModule(num_members=3, num_nonmembers=3, num_population_identities=0, images_per_identity=4,
                            references_per_identity=2, batch_size=2, resolution=16, public_identities=12,
                            public_canaries=2, public_canary_images=6)
    path = dm.save_split(tmp_path)
    rebuilt = AuditSet.public_from_split(IdentitySplit.load(path))
    direct = dm.public_audit_set
    assert rebuilt.member_identities == direct.member_identities
    assert rebuilt.nonmember_identities == direct.nonmember_identities
    assert torch.equal(rebuilt.member_images, direct.member_images)
    assert torch.equal(rebuilt.nonmember_images, direct.nonmember_images)
    assert AuditSet.public_from_split(IdentitySplit.load(path).with_public([])) is None


def test_resuming_from_a_split_with_canaries_needs_the_canary_options(tmp_path):
    from gmia_defend.data import IdentityDataModule

    args = dict(num_members=3, num_nonmembers=3, num_population_identities=0, images_per_identity=4,
                references_per_identity=2, batch_size=2, resolution=16)
    dm = IdentityDataModule(**args, public_identities=12, public_canaries=2)
    path = dm.save_split(tmp_path)
    with pytest.raises(UserError, match="lists 2 public canaries"):
        IdentityDataModule(**args, split_path=str(path)).split
    again = IdentityDataModule(**args, split_path=str(path), public_identities=12, public_canaries=2)
    assert again.split_hash() == dm.split_hash() and again.num_train_images == dm.num_train_images


def test_watch_refuses_a_public_rule_on_a_split_without_canaries(tmp_path, capsys):
    from gmia_defend.cli import main as cli_main
    from gmia_defend.data import IdentityDataModule

    dm = IdentityDataModule(num_members=3, num_nonmembers=3, num_population_identities=0, images_per_identity=4,
                            references_per_identity=2, batch_size=2, resolution=16)
    split = dm.save_split(tmp_path / "run")
    code = cli_main(["watch", str(tmp_path / "run"), "--audit", str(split), "--metric", PUBLIC_AUC, "--once",
                     "--embedder", "pixels", "--device", "cpu"])
    assert code != 0 and "lists none" in capsys.readouterr().err
    assert not (tmp_path / "run" / "audits.jsonl").exists()


def test_a_shared_pretraining_checkpoint_is_refused_when_the_public_people_differ(tmp_path):
    """Another split_seed draws other canaries and controls: the first run's pretraining saw them."""
    import pytorch_lightning as pl

    from gmia_defend.data import IdentityDataModule
    from gmia_defend.mitigations.pretraining import PublicPretraining
    from gmia_defend.models import StyleGAN2

    def fit(split_seed: int) -> None:
        dm = IdentityDataModule(resolution=16, num_members=4, num_nonmembers=2, num_population_identities=0,
                                images_per_identity=4, references_per_identity=1, batch_size=4, split_seed=split_seed,
                                public_identities=16, public_images_per_identity=3, public_canaries=2)
        model = StyleGAN2(resolution=16, z_dim=8, w_dim=8, mapping_layers=1, channel_base=64, channel_max=8,
                          dp_compatible=True, sample_every_n_batches=0, sample_grid=2)
        trainer = pl.Trainer(max_steps=2, callbacks=[PublicPretraining(str(tmp_path / "pre.ckpt"), batches=1)],
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
        trainer.fit(model, datamodule=dm)

    fit(0)
    fit(0)  # the same people: reused
    with pytest.raises(UserError, match="other public people"):
        fit(1)
