"""membership_metrics: p-value, null band, two-level interval, epsilon lower bound, re-scoring subsets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from _fixtures_attack import ToyEmbedder, ToyMemoriser, ToyRandom, make_toy_audit
from gmia_defend.attack import IdentityMembershipAttack
from gmia_defend.attack import metrics as M
from gmia_defend.attack.scores import StreamingIdentityStats, merge_state_dicts

Y = np.r_[np.ones(32), np.zeros(128)].astype(bool)


def test_every_key_and_ranges():
    rng = np.random.default_rng(0)
    m = M.membership_metrics(rng.normal(size=160), Y, rng.normal(size=(160, 8)), n_bootstrap=200,
                             n_permutations=300)
    assert set(m) == set(M.METRIC_KEYS)
    assert 0 < m["leakage/p_value"] <= 1 and m["leakage/null_auc_low"] < 0.5 < m["leakage/null_auc_high"]
    assert m["leakage/auc_ci_low"] <= m["leakage/auc"] <= m["leakage/auc_ci_high"]
    s = np.r_[np.ones(32), np.zeros(128)]
    assert M.membership_metrics(s, Y, n_bootstrap=50, n_permutations=50, seed=1) == M.membership_metrics(
        s, Y, n_bootstrap=50, n_permutations=50, seed=1)


def test_permutation_agrees_with_mann_whitney_and_is_calibrated():
    rng = np.random.default_rng(1)
    for shift in (0.0, 0.3, 0.6):
        s = rng.normal(size=160) + shift * Y
        p, lo, hi = M.permutation_null(s, Y, 4000, seed=2)
        p_mw, lo_mw, hi_mw = M.mann_whitney_null(s, Y)
        assert abs(p - p_mw) < 0.02 + 0.15 * p_mw
        assert abs(lo - lo_mw) < 0.012 and abs(hi - hi_mw) < 0.012
    # ties: a discrete score keeps the exact permutation null; the MW band shrinks with the tie correction
    s = rng.integers(0, 3, 160).astype(float)
    p, lo, hi = M.permutation_null(s, Y, 4000, seed=3)
    p_mw, lo_mw, hi_mw = M.mann_whitney_null(s, Y)
    assert abs(p - p_mw) < 0.05 and abs(hi - hi_mw) < 0.015
    # type-I error under the null: about 5 % of p < 0.05
    ps = [M.permutation_null(rng.normal(size=160), Y, 399, seed=k)[0] for k in range(500)]
    assert 0.025 <= np.mean(np.array(ps) < 0.05) <= 0.08
    # a clear leak is significant
    assert M.permutation_null(rng.normal(size=160) + 1.5 * Y, Y, 500)[0] < 0.01


def test_null_spread_falls_with_square_root_of_counts():
    _, lo1, hi1 = M.mann_whitney_null(np.arange(160.0), Y)
    y4 = np.r_[np.ones(128), np.zeros(512)].astype(bool)
    _, lo4, hi4 = M.mann_whitney_null(np.arange(640.0), y4)
    assert (hi1 - lo1) / (hi4 - lo4) == pytest.approx(2.0, rel=0.02)


def test_two_level_interval_adds_sample_variation():
    rng = np.random.default_rng(4)
    s = rng.normal(size=160) + 0.5 * Y
    flat = np.repeat(s[:, None], 10, axis=1)
    one = M.bootstrap_auc_ci(s, Y, 400, seed=1)
    assert M.bootstrap_auc_ci(s, Y, 400, seed=1, block_scores=flat) == one  # no block variation: same
    noisy = s[:, None] + rng.normal(scale=3.0, size=(160, 10))
    lo, hi = M.bootstrap_auc_ci(s, Y, 400, seed=1, block_scores=noisy)
    assert hi - lo > 1.2 * (one[1] - one[0])
    with pytest.raises(ValueError):
        M.bootstrap_auc_ci(s, Y, 10, block_scores=np.zeros((5, 3)))


def test_epsilon_lower_bound():
    rng = np.random.default_rng(5)
    assert M.epsilon_lower_bound(rng.normal(size=160), Y) == 0.0
    perfect = np.r_[np.ones(32), np.zeros(128)]
    eps = M.epsilon_lower_bound(perfect, Y, delta=0.0, alpha=0.05)
    # one threshold tried: FNR upper = 1 - (a)^(1/32), FPR upper = 1 - (a)^(1/128), a = 0.05 / 2
    a = 0.025
    fnr, fpr = 1 - a ** (1 / 32), 1 - a ** (1 / 128)
    assert eps == pytest.approx(max(math.log((1 - fpr) / fnr), math.log((1 - fnr) / fpr)), rel=1e-9)
    # more identities prove more; a looser confidence proves more; delta costs
    y4 = np.r_[np.ones(128), np.zeros(512)].astype(bool)
    assert M.epsilon_lower_bound(y4.astype(float), y4, 0.0) > eps
    assert M.epsilon_lower_bound(perfect, Y, 0.0, alpha=0.5) > eps > M.epsilon_lower_bound(perfect, Y, 0.5)
    # Bonferroni: many distinct thresholds cost confidence compared to one
    spread = np.r_[rng.uniform(10, 11, 32), rng.uniform(0, 1, 128)]
    assert M.epsilon_lower_bound(spread, Y, 0.0) < eps


def test_block_stats_merge_and_match_whole_pass():
    g = torch.Generator().manual_seed(0)
    sims = torch.rand(200, 6, generator=g) * 2 - 1
    whole = StreamingIdentityStats(6, 4, 0.5, num_blocks=5, num_samples=200)
    for a in range(0, 200, 37):
        whole.update(sims[a:a + 37], torch.arange(a, min(a + 37, 200)))
    blocks = whole.block_summary(3)
    for b in range(5):
        seg = sims[b * 40:(b + 1) * 40]
        np.testing.assert_allclose(blocks["max_sim"][:, b], seg.max(0).values.double().numpy())
        np.testing.assert_allclose(blocks["topk_mean"][:, b], seg.topk(3, dim=0).values.double().mean(0).numpy(),
                                   rtol=1e-6)
        np.testing.assert_allclose(blocks["mean_sim"][:, b], seg.double().mean(0).numpy(), rtol=1e-9)
    a, c = (StreamingIdentityStats(6, 4, 0.5, num_blocks=5, num_samples=200) for _ in range(2))
    a.update(sims[:90], torch.arange(90))
    c.update(sims[90:], torch.arange(90, 200))
    merged = merge_state_dicts([a.state_dict(), c.state_dict()])
    for key, value in whole.state_dict().items():
        assert torch.allclose(merged[key].double(), value.double()), key


def test_attack_rows_carry_block_scores_and_rescore_any_subset():
    audit = make_toy_audit(num_members=12, num_nonmembers=20)
    attack = IdentityMembershipAttack(ToyEmbedder(), audit, num_samples=300, batch_size=64, seed=3,
                                      progress=False, n_bootstrap=200, n_permutations=400, num_blocks=6)
    res = attack.run(ToyMemoriser(audit.vectors[:12]))
    rows = res.identities
    assert all(len(r["block_scores"]) == 6 for r in rows)
    scores = [r["score"] for r in rows]
    member = [r["member"] for r in rows]
    again = M.membership_metrics(scores, member, [r["block_scores"] for r in rows], n_bootstrap=200,
                                 n_permutations=400, seed=3)
    for key in M.METRIC_KEYS:
        a, b = res.metrics[key], again[key]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b), key
    assert res.metrics["leakage/p_value"] < 0.01 and res.metrics["leakage/auc_ci_low"] > 0.8
    half = rows[::2]
    sub = M.membership_metrics([r["score"] for r in half], [r["member"] for r in half],
                               [r["block_scores"] for r in half], n_bootstrap=100, n_permutations=100)
    assert set(sub) == set(M.METRIC_KEYS)
    null = attack.run(ToyRandom())
    assert null.metrics["leakage/null_auc_low"] < 0.5 < null.metrics["leakage/null_auc_high"]
    assert null.metrics["leakage/epsilon_lower_bound"] == 0.0


def test_relative_score_subtracts_the_population_level():
    from gmia_defend.attack.scores import relative_scores
    from gmia_defend.errors import UserError

    pop = np.array([[0.1, 0.5], [0.3, 0.7], [0.2, 0.6]])
    np.testing.assert_allclose(relative_scores(np.array([0.4, 0.8]), pop), [0.2, 0.2], atol=1e-12)
    np.testing.assert_allclose(relative_scores(np.array([[0.4, 0.2], [0.8, 0.6]]), pop), [[0.2, 0.0], [0.2, 0.0]],
                               atol=1e-12)
    audit = make_toy_audit(num_members=12, num_nonmembers=20, population=10)
    res = IdentityMembershipAttack(ToyEmbedder(), audit, num_samples=300, batch_size=100, score="relative",
                                   progress=False, n_bootstrap=50, n_permutations=50).run(
        ToyMemoriser(audit.vectors[:12]))
    assert res.metrics["leakage/auc"] > 0.9 and all(r["score"] == r["relative"] for r in res.identities)
    with pytest.raises(UserError, match="population"):
        IdentityMembershipAttack(ToyEmbedder(), make_toy_audit(), score="relative", progress=False)


def test_torchmetrics_reduction_equals_one_process():
    """Two simulated ranks reduced through torchmetrics' sync give the single-process statistics."""
    from gmia_defend.attack.scores import metric_reduce

    g = torch.Generator().manual_seed(1)
    sims = torch.rand(120, 5, generator=g) * 2 - 1
    whole = StreamingIdentityStats(5, 3, 0.4, num_blocks=4, num_samples=120)
    whole.update(sims, torch.arange(120))
    ranks = [StreamingIdentityStats(5, 3, 0.4, num_blocks=4, num_samples=120) for _ in range(2)]
    ranks[0].update(sims[:50], torch.arange(50))
    ranks[1].update(sims[50:], torch.arange(50, 120))
    prefix = lambda st: {f"0.{k}": v for k, v in st.state_dict().items()}  # noqa: E731  (as the engine does)
    other = list(prefix(ranks[1]).values())
    queue = iter(other)

    def fake_gather(tensor, group=None):  # what torch.distributed would return on rank 0: [rank0, rank1]
        return [tensor, next(queue)]

    merged = metric_reduce(dist_sync_fn=fake_gather, distributed_available=lambda: True)(prefix(ranks[0]))
    for key, value in whole.state_dict().items():
        assert torch.allclose(merged[f"0.{key}"].double(), value.double()), key
    # without a process group the state passes through unchanged
    alone = metric_reduce()(prefix(ranks[0]))
    assert all(torch.equal(alone[k], v) for k, v in prefix(ranks[0]).items())


def test_clopper_pearson_matches_scipy_beta_quantiles():
    beta = pytest.importorskip("scipy.stats").beta
    for n, a in ((32, 0.05 / 300), (128, 0.025), (7, 0.2)):
        k = np.arange(n + 1)
        lo, hi = M.clopper_pearson(k, n, a)
        np.testing.assert_allclose(lo, np.where(k > 0, beta.ppf(a, k, n - k + 1), 0.0), atol=1e-9)
        np.testing.assert_allclose(hi, np.where(k < n, beta.ppf(1 - a, k + 1, n - k), 1.0), atol=1e-9)


def test_prepare_embeds_references_once():
    audit = make_toy_audit()
    emb = ToyEmbedder()
    attack = IdentityMembershipAttack(emb, audit, num_samples=64, batch_size=64, progress=False, n_bootstrap=10,
                                      n_permutations=10, evidence_identities=0).prepare()
    refs = emb.calls
    assert refs == audit.member_images.shape[0] + audit.nonmember_images.shape[0]
    attack.run(ToyRandom())
    assert emb.calls == refs + 64  # the run embedded only its generated samples
