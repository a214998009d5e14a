"""IdentityMembershipAttack on a toy linear world: streaming = brute force, sharding, hooks, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from _fixtures_attack import ToyEmbedder, ToyMemoriser, ToyRandom, make_toy_audit
from gmia_defend.attack import AttackResult, IdentityMembershipAttack
from gmia_defend.attack.generators import LatentSampler
from gmia_defend.attack.scores import (IdentitySimilarity, StreamingIdentityStats, all_gather_reduce,
                                       merge_state_dicts, threshold_from_impostors)
from gmia_defend.errors import DataError, GeneratorError, UserError


def _attack(audit, embedder=None, **kw):
    opts = dict(num_samples=300, batch_size=64, seed=3, progress=False, n_bootstrap=200,
                evidence_identities=3, evidence_neighbours=4)
    opts.update(kw)
    return IdentityMembershipAttack(embedder or ToyEmbedder(), audit, **opts)


def test_latents_do_not_depend_on_batching_or_sharding():
    s = LatentSampler(seed=5, z_dim=4, block=16)
    full = s.get(0, 100)
    pieces = torch.cat([LatentSampler(5, 4, 16).get(a, min(a + 7, 100)) for a in range(0, 100, 7)])
    assert torch.equal(full, pieces)
    assert torch.equal(LatentSampler(5, 4, 16).take([3, 97, 40]), full[[3, 97, 40]])
    assert not torch.equal(LatentSampler(6, 4, 16).get(0, 100), full)


def test_streaming_stats_equal_brute_force():
    g = torch.Generator().manual_seed(0)
    ref = nn.functional.normalize(torch.randn(30, 8, generator=g), dim=1)
    labels = torch.arange(10).repeat_interleave(3)
    gen = nn.functional.normalize(torch.randn(257, 8, generator=g), dim=1)
    for reduction in ("mean", "max"):
        sim = IdentitySimilarity(ref, labels, 10, reduction)
        stats = StreamingIdentityStats(10, keep=5, threshold=0.3)
        for a in range(0, 257, 50):
            stats.update(sim(gen[a:a + 50]), torch.arange(a, min(a + 50, 257)))
        pair = gen @ ref.T  # [N, 30]
        per = pair.reshape(257, 10, 3)
        full = per.mean(2) if reduction == "mean" else per.amax(2)
        torch.testing.assert_close(stats.max_sim, full.max(0).values)
        top, idx = full.T.topk(5, dim=1)
        torch.testing.assert_close(stats.topk_sim, top)
        assert torch.equal(stats.topk_idx, idx)
        best, nearest = full.max(1)
        expect = torch.bincount(nearest[best >= 0.3], minlength=10)
        assert torch.equal(stats.matches, expect) and int(stats.count) == 257
        s = stats.summary(top_k=3)
        np.testing.assert_allclose(s["topk_mean"], top[:, :3].double().mean(1).numpy(), rtol=1e-6)
        np.testing.assert_allclose(s["mean_sim"], full.double().mean(0).numpy(), rtol=1e-5)


def test_merge_and_all_gather_reduce_are_exact():
    g = torch.Generator().manual_seed(1)
    sims = torch.rand(100, 6, generator=g)
    whole = StreamingIdentityStats(6, 4, 0.5)
    whole.update(sims, torch.arange(100))
    a, b = StreamingIdentityStats(6, 4, 0.5), StreamingIdentityStats(6, 4, 0.5)
    a.update(sims[:40], torch.arange(40))
    b.update(sims[40:], torch.arange(40, 100))
    merged = a.merge(b).state_dict()
    for k, v in whole.state_dict().items():
        assert torch.equal(merged[k], v), k
    # all_gather_reduce with a fake 2-rank gather that stacks both shards' tensors
    a2, b2 = StreamingIdentityStats(6, 4, 0.5), StreamingIdentityStats(6, 4, 0.5)
    a2.update(sims[:40], torch.arange(40))
    b2.update(sims[40:], torch.arange(40, 100))
    others = iter(b2.state_dict().values())  # the reduce gathers keys in state_dict order
    gather = lambda t: torch.stack([t, next(others)])
    reduce = all_gather_reduce(gather, world_size=2)
    out = reduce({f"0.{k}": v for k, v in a2.state_dict().items()})
    for k, v in whole.state_dict().items():
        assert torch.equal(out[f"0.{k}"], v), k


def test_memoriser_leaks_random_generator_does_not(attack_toy_audit):
    audit = attack_toy_audit
    mem = _attack(audit).run(ToyMemoriser(audit.vectors[:12]))
    assert mem.metrics["leakage/auc"] == 1.0
    assert mem.metrics["leakage/leak_rate"] > 0.5 / 12
    assert mem.metrics["leakage/auc_ci_low"] > 0.9
    rnd = _attack(audit, num_samples=600).run(ToyRandom())
    assert abs(rnd.metrics["leakage/auc"] - 0.5) < 0.3
    assert rnd.metrics["leakage/auc_ci_low"] < 0.5 < rnd.metrics["leakage/auc_ci_high"]
    assert abs(rnd.metrics["leakage/leak_rate"]) < 0.02
    # 20 non-members cannot resolve 1 % or 0.1 % FPR
    assert math.isnan(mem.metrics["leakage/tpr_at_1pct_fpr"]) and math.isnan(mem.metrics["leakage/tpr_at_0.1pct_fpr"])


def test_shards_reduce_to_the_single_process_result(attack_toy_audit):
    audit = attack_toy_audit
    gen = ToyMemoriser(audit.vectors[:12])
    single = _attack(audit).run(gen)
    saved = {}

    def keep(sd):
        saved.update(sd)
        return sd

    _attack(audit).run(gen, shard=(1, 2), reduce=keep)
    sharded = _attack(audit).run(gen, shard=(0, 2), reduce=lambda sd: merge_state_dicts([sd, saved]))
    assert sharded.num_samples == single.num_samples == 300
    assert sharded.metrics == pytest.approx(single.metrics, nan_ok=True)
    for r1, r2 in zip(single.identities, sharded.identities):
        assert r1["matches"] == r2["matches"] and r1["max_sim"] == pytest.approx(r2["max_sim"])
        assert r1["topk_mean"] == pytest.approx(r2["topk_mean"])
    with pytest.raises(UserError):
        _attack(audit).run(gen, shard=(0, 2))


def test_batch_size_does_not_change_the_result(attack_toy_audit):
    gen = ToyMemoriser(attack_toy_audit.vectors[:12])
    a = _attack(attack_toy_audit, batch_size=7).run(gen)
    b = _attack(attack_toy_audit, batch_size=128).run(gen)
    assert a.metrics == pytest.approx(b.metrics, nan_ok=True)
    assert [r["nearest_samples"] for r in a.identities] == [r["nearest_samples"] for r in b.identities]


def test_on_batch_sees_every_sample_and_references_are_cached(attack_toy_audit):
    emb = ToyEmbedder()
    attack = _attack(attack_toy_audit, emb, evidence_identities=0)
    seen = []
    attack.run(ToyRandom(), on_batch=lambda x: seen.append((x.shape[0], float(x.min()), float(x.max()))))
    assert sum(n for n, _, _ in seen) == 300 and all(-1 <= lo and hi <= 1 for _, lo, hi in seen)
    first = emb.calls
    attack.run(ToyRandom())
    assert emb.calls - first == 300  # only generated samples embedded the second time


def test_generator_modes_are_restored_and_nvidia_style_is_adapted(attack_toy_audit):
    class WithC(nn.Module):
        z_dim = TOY = 16

        def __init__(self):
            super().__init__()
            self.inner = ToyRandom()
            self.drop = nn.Dropout(0.5)
            self.seen_c = []
            self.modes = []

        def forward(self, z, c, truncation_psi=1.0):
            self.seen_c.append(c)
            self.modes.append(self.drop.training)
            return self.drop(self.inner(z))

    g = WithC().train()
    _attack(attack_toy_audit, evidence_identities=0).run(g)
    assert g.training and g.drop.training and g.inner.training
    assert set(g.modes) == {False} and all(c is None for c in g.seen_c)
    # plain functions without z_dim need z_dim=
    with pytest.raises(GeneratorError, match="z_dim"):
        _attack(attack_toy_audit).run(lambda z: ToyRandom()(z))
    r = _attack(attack_toy_audit, z_dim=16, evidence_identities=0).run(lambda z: ToyRandom()(z))
    assert r.num_samples == 300


@pytest.mark.parametrize("bad, match", [
    (lambda z: torch.zeros(z.shape[0], 8, 8, 3), "channels-last"),
    (lambda z: torch.zeros(z.shape[0], 4, 8, 8), "channels"),
    (lambda z: torch.zeros(z.shape[0], 3, 8), "4-D"),
    (lambda z: torch.full((z.shape[0], 3, 8, 8), float("nan")), "NaN"),
    (lambda z: torch.full((z.shape[0], 3, 8, 8), 200.0), "input_range"),
    (lambda z: torch.rand(z.shape[0], 3, 8, 8) * 255, "input_range"),
    (lambda z: torch.rand(z.shape[0], 3, 8, 8) * 2 - 4, "input_range"),
    (lambda z: torch.zeros(z.shape[0], 3, 8, 8, dtype=torch.uint8), "dtype"),
    (lambda z: torch.zeros(z.shape[0] + 1, 3, 8, 8), "latents"),
    (lambda z: (torch.zeros(z.shape[0], 3, 8, 8), None), "tuple"),
    (lambda z: np.zeros((z.shape[0], 3, 8, 8)), "torch.Tensor"),
])
def test_bad_generator_output_is_a_clear_error(attack_toy_audit, bad, match):
    with pytest.raises(GeneratorError, match=match):
        _attack(attack_toy_audit, z_dim=4).run(bad)


def test_input_range_is_mapped(attack_toy_audit):
    base = _attack(attack_toy_audit, evidence_identities=0).run(ToyRandom())
    with pytest.warns(UserWarning, match="input_range"):  # [0, 1] output with the default range is suspicious
        _attack(attack_toy_audit, z_dim=4, num_samples=20, top_k=2, evidence_identities=0).run(
            lambda z: torch.rand(z.shape[0], 3, 8, 8))
    with pytest.warns(UserWarning, match="clamping"):  # unbounded generators are clamped, not refused
        _attack(attack_toy_audit, z_dim=4, num_samples=20, top_k=2, evidence_identities=0).run(
            lambda z: torch.randn(z.shape[0], 3, 8, 8) * 10)

    def early_stylegan(z):  # in range but for a one-sided tail, as an untrained StyleGAN2 can be
        x = torch.rand(z.shape[0], 3, 8, 8) * 2 - 1
        x[:, 0, :2, :2] = 2.6
        return x

    with pytest.warns(UserWarning, match="clamping"):
        _attack(attack_toy_audit, z_dim=4, num_samples=20, top_k=2, evidence_identities=0).run(early_stylegan)
    with pytest.raises(GeneratorError, match="input_range"):  # [-1, 1] images declared as 0..255
        _attack(attack_toy_audit, z_dim=16, input_range=(0, 255), evidence_identities=0).run(ToyRandom())
    g = ToyRandom()
    mapped = _attack(attack_toy_audit, input_range=(0, 255), evidence_identities=0, z_dim=16).run(
        lambda z: (g(z) + 1) * 127.5)
    assert mapped.metrics == pytest.approx(base.metrics, nan_ok=True, abs=1e-5)


def test_bad_construction(attack_toy_audit):
    with pytest.raises(UserError, match="score"):
        _attack(attack_toy_audit, score="nope")
    with pytest.raises(UserError, match="top_k"):
        _attack(attack_toy_audit, top_k=0)
    with pytest.raises(UserError, match="input_range"):
        _attack(attack_toy_audit, input_range=(1, -1))
    small = make_toy_audit(num_members=1)
    with pytest.raises(DataError, match="at least 2"):
        _attack(small)


def test_threshold_fallback_and_population_calibration():
    audit = make_toy_audit(population=30, noise=0.15)
    emb = ToyEmbedder(threshold=None)
    res = _attack(audit, emb, score="calibrated").run(ToyMemoriser(audit.vectors[:12]))
    report = res.embedders["toy"]
    assert report.threshold_source.startswith("audit references")
    ref = torch.cat([emb.embed(audit.member_images), emb.embed(audit.nonmember_images)])
    labels = torch.cat([audit.member_labels, audit.nonmember_labels + 12])
    assert report.threshold == pytest.approx(threshold_from_impostors(ref, labels, 1e-3))
    n = res.num_samples
    for row in res.identities:
        expect = (row["matches"] / n) / ((row["population_matches"] + 1) / (60 + 1))
        assert row["calibrated"] == pytest.approx(expect) and row["score"] == row["calibrated"]
    assert res.metrics["leakage/auc"] > 0.9


def test_several_embedders_report_each_and_the_worst(attack_toy_audit, tmp_path):
    a, b = ToyEmbedder("alpha"), ToyEmbedder("beta", dims=6)
    res = _attack(attack_toy_audit, [a, b]).run(ToyMemoriser(attack_toy_audit.vectors[:12]))
    for name in ("alpha", "beta"):
        assert f"leakage/{name}/auc" in res.metrics and f"leakage/{name}/leak_rate" in res.metrics
    for key in ("auc", "advantage", "leak_rate", "auc_ci_low", "auc_ci_high"):
        per = [res.metrics[f"leakage/{name}/{key}"] for name in ("alpha", "beta")]
        assert res.metrics[f"leakage/{key}"] == max(per)
    p = [res.metrics[f"leakage/{name}/p_value"] for name in ("alpha", "beta")]
    assert res.metrics["leakage/p_value"] == min(1.0, 2 * min(p))  # Bonferroni over the two matchers
    assert res.metrics["leakage/null_auc_low"] == min(res.metrics[f"leakage/{n}/null_auc_low"] for n in ("alpha", "beta"))
    # epsilon bound recomputed at alpha / 2: never above the larger single-embedder bound at alpha
    assert res.metrics["leakage/epsilon_lower_bound"] <= max(
        res.metrics[f"leakage/{n}/epsilon_lower_bound"] for n in ("alpha", "beta")) + 1e-12
    assert res.metrics["leakage/alpha/leak_rate"] != res.metrics["leakage/beta/leak_rate"]
    worst = res.embedders[res.worst_embedder]
    assert res.identities is worst.identities and res.metrics["leakage/auc"] == worst.metrics["leakage/auc"]
    assert res.worst_embedder in ("alpha", "beta") and res.embedder_name == res.worst_embedder
    same = _attack(attack_toy_audit, [ToyEmbedder("x"), ToyEmbedder("x")]).run(ToyRandom())
    assert set(same.embedders) == {"x", "x-2"}


def test_result_json_and_evidence_png(attack_toy_audit, tmp_path):
    res = _attack(attack_toy_audit).run(ToyMemoriser(attack_toy_audit.vectors[:12]))
    assert isinstance(res, AttackResult)
    assert len(res.evidence) == 3
    ev = res.evidence[0]
    assert ev["images"].shape == (4, 3, 8, 8) and ev["reference"].shape == (3, 8, 8)
    assert ev["similarities"] == sorted(ev["similarities"], reverse=True)
    top = max((r for r in res.identities if r["member"]), key=lambda r: r["score"])
    assert ev["identity"] == top["identity"]
    # regenerated evidence images really are the stored samples: re-embedding gives the stored similarity
    emb = ToyEmbedder()
    e = emb.embed(ev["images"])
    ident = res.identities.index(top)
    tmpl = emb.embed(attack_toy_audit.member_images[attack_toy_audit.member_labels == ident]).mean(0)
    np.testing.assert_allclose((e @ tmpl).numpy(), ev["similarities"], atol=1e-4)
    path = res.save_json(tmp_path / "a" / "attack.json")
    data = json.loads(path.read_text())
    assert data["metrics"]["leakage/tpr_at_1pct_fpr"] is None  # NaN -> null
    assert data["metrics"]["leakage/auc"] == res.metrics["leakage/auc"]
    assert "images" not in data["evidence"][0] and len(data["identities"]) == 32
    png = res.save_evidence_png(tmp_path / "evidence.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
