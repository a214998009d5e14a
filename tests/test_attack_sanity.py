"""Sanity of the attack on SyntheticFaces with a trained embedder: a memoriser leaks, others do not.

32 member identities (10 training + 5 held-out reference images each) and 64 non-member
identities; 2,000 generated samples per generator; the default top-k-mean score.
"""

from __future__ import annotations

from _fixtures_attack import FreshIdentityGenerator, TrainingSetMemoriser, UntrainedConvGenerator
from gmia_defend.attack import IdentityMembershipAttack


def _run(world, embedder, generator, **kw):
    attack = IdentityMembershipAttack(embedder, world.audit, num_samples=2000, batch_size=256, seed=0,
                                      progress=False, n_bootstrap=1000, **kw)
    return attack.run(generator)


def test_perfect_memoriser_is_detected(attack_world, trained_embedder):
    res = _run(attack_world, trained_embedder, TrainingSetMemoriser(attack_world.train_images))
    m = res.metrics
    assert m["leakage/auc"] >= 0.95, m
    assert m["leakage/auc_ci_low"] > 0.85 and m["leakage/advantage"] > 0.7
    assert m["leakage/leak_rate"] > 0.005  # members attract matches, non-members (almost) none
    members = [r for r in res.identities if r["member"]]
    assert sum(r["matches"] for r in members) > 10 * sum(r["matches"] for r in res.identities if not r["member"])
    assert res.evidence and res.evidence[0]["member"]


def test_fresh_identities_are_not_flagged(attack_world, trained_embedder):
    m = _run(attack_world, trained_embedder, FreshIdentityGenerator(attack_world.dataset)).metrics
    assert m["leakage/auc_ci_low"] < 0.5 < m["leakage/auc_ci_high"], m
    assert abs(m["leakage/leak_rate"]) < 0.002


def test_untrained_generator_is_chance(attack_world, trained_embedder):
    m = _run(attack_world, trained_embedder, UntrainedConvGenerator(attack_world.audit.resolution)).metrics
    assert abs(m["leakage/auc"] - 0.5) < 0.15 or m["leakage/auc_ci_low"] < 0.5 < m["leakage/auc_ci_high"], m
    assert m["leakage/auc_ci_low"] < 0.5 < m["leakage/auc_ci_high"], m


def test_runs_on_data_audit_set_with_population(audit_set, trained_embedder):
    """DATA's AuditSet (with population images) plugs in; calibrated scores use the population."""
    res = IdentityMembershipAttack(trained_embedder, audit_set, num_samples=200, batch_size=100, score="calibrated",
                                   progress=False, n_bootstrap=50).run(UntrainedConvGenerator(audit_set.resolution))
    assert len(res.identities) == len(audit_set.member_identities) + len(audit_set.nonmember_identities)
    n_pop = audit_set.population_images.shape[0]
    for row in res.identities:
        assert row["num_references"] == 3
        baseline = (row["population_matches"] + 1) / (n_pop + 1)
        assert row["calibrated"] == row["score"] == (row["matches"] / 200) / baseline
    assert all(r["train_count"] > 0 for r in res.identities if r["member"])
