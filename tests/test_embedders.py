"""Embedder contract, verification statistics, threshold calibration, save/load and the registry.

Fast: untrained networks or a linear toy embedder; no training here (see test_embedders_trained.py).
"""

from __future__ import annotations

import json

import pytest
import torch
from sklearn.metrics import roc_auc_score

from gmia_defend.embedders.base import Embedder
from gmia_defend.embedders.registry import load_embedder, load_embedders
from gmia_defend.embedders.trained import TrainedEmbedder
from gmia_defend.embedders.verification import (
    pair_similarities,
    roc_auc_from_pairs,
    threshold_at_far,
    verification_metrics,
)
from gmia_defend.errors import DataError, UserError, WeightsError


class LinearEmbedder(Embedder):
    """Toy embedder: a fixed random projection of the 8x8 image (identity = direction in pixel space)."""

    name = "linear"

    def __init__(self) -> None:
        super().__init__(input_size=8, dim=16)
        gen = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Linear(3 * 8 * 8, 16, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(16, 3 * 8 * 8, generator=gen))

    def embed_preprocessed(self, x):
        return self.proj(x.flatten(1))


def _images(n=20, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=gen) * 2 - 1


@pytest.fixture()
def net():
    torch.manual_seed(0)
    return TrainedEmbedder(input_size=32, dim=32, width=8)


def _clustered(num_ids, per_id, dim=16, spread=0.6, seed=0):
    """Unit-norm toy embeddings: identity centre + Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_ids, dim, generator=gen), dim=1)
    labels = torch.arange(num_ids).repeat_interleave(per_id)
    emb = centres[labels] + spread * torch.randn(len(labels), dim, generator=gen) / dim**0.5
    return torch.nn.functional.normalize(emb, dim=1), labels


# ------------------------------------------------------------------------------------ contract
def test_forward_contract_shape_dtype_unit_norm(net):
    x = _images(6)
    e = net.eval()(x)
    assert e.shape == (6, 32) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=1), torch.ones(6), atol=1e-5)
    # Any input size is resized to input_size; float64 input is accepted.
    e64 = net(torch.nn.functional.interpolate(x, size=64, mode="bilinear").double())
    assert e64.shape == (6, 32) and e64.dtype == torch.float32
    assert net.preprocess(_images(2, size=50)).shape == (2, 3, 32, 32)


def test_range_handling_uint8_clamp_and_grey(net):
    net.eval()
    x = _images(4)
    as_uint8 = ((x + 1) * 127.5).round().to(torch.uint8)
    assert torch.allclose(net(as_uint8), net(as_uint8.float() / 127.5 - 1), atol=1e-6)
    # Generators overshoot [-1, 1] slightly: values are clamped, not passed through.
    assert torch.allclose(net(x * 3), net((x * 3).clamp(-1, 1)), atol=1e-6)
    assert not torch.allclose(net.preprocess(x * 3), x * 3)
    grey = x[:, :1]
    assert torch.allclose(net(grey), net(grey.expand(-1, 3, -1, -1)), atol=1e-6)
    with pytest.raises(UserError, match=r"\[N, 3, H, W\]"):
        net(x[0])
    with pytest.raises(UserError, match="float images"):
        net(torch.zeros(2, 3, 32, 32, dtype=torch.int32))


def test_embed_batches_equal_one_shot_and_restore_training_flag(net):
    x = _images(37)
    net.train()
    bn_before = net.net.bn.running_mean.clone()
    batched = net.embed(x, batch_size=5)
    assert net.training, "embed must restore the training flag"
    assert torch.equal(net.net.bn.running_mean, bn_before), "embed must run in eval mode (BN stats untouched)"
    net.eval()
    one_shot = net(x)
    assert torch.allclose(batched, one_shot, atol=1e-5)
    assert not batched.requires_grad
    assert not net.training
    net.embed(x[:3])
    assert not net.training
    assert net.embed(x[:0]).shape == (0, 32)
    assert net.embed(x, device="cpu").device.type == "cpu"
    with pytest.raises(UserError):
        net.embed(x, batch_size=0)


def test_forward_is_differentiable(net):
    x = _images(4).requires_grad_(True)
    net.eval()(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ------------------------------------------------------------------------------------ verification
def test_pair_similarities_match_brute_force():
    emb, labels = _clustered(5, 4)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4, 4, 4, 4, 4, 1, 0, 2, 3])
    genuine, impostor = pair_similarities(emb, labels)
    sims = emb.double() @ emb.double().T
    g_ref, i_ref = [], []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            (g_ref if labels[i] == labels[j] else i_ref).append(sims[i, j].item())
    assert len(genuine) == len(g_ref) and len(impostor) == len(i_ref)
    assert torch.allclose(genuine.sort().values, torch.tensor(sorted(g_ref), dtype=torch.float64))
    assert torch.allclose(impostor.sort().values, torch.tensor(sorted(i_ref), dtype=torch.float64))


def test_pair_similarities_subsample_is_seeded_and_cross_identity():
    emb, labels = _clustered(30, 10, spread=0.3)
    _, full = pair_similarities(emb, labels)
    _, sub = pair_similarities(emb, labels, max_impostor_pairs=1000, seed=3)
    _, again = pair_similarities(emb, labels, max_impostor_pairs=1000, seed=3)
    assert sub.numel() == 1000 and torch.equal(sub, again)
    # Cross-identity pairs only: no genuine-level similarities (clusters are tight here).
    assert sub.max() < 0.99 and abs(sub.mean() - full.mean()) < 0.05


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_sklearn_with_ties(seed):
    gen = torch.Generator().manual_seed(seed)
    pos = (torch.randn(300, generator=gen) + 0.7).round(decimals=1)
    neg = torch.randn(700, generator=gen).round(decimals=1)
    ref = roc_auc_score([1] * 300 + [0] * 700, torch.cat([pos, neg]).numpy())
    assert roc_auc_from_pairs(pos, neg) == pytest.approx(ref, abs=1e-12)
    assert roc_auc_from_pairs(torch.ones(3), torch.ones(5)) == 0.5


def test_verification_metrics_auc_and_tar_vs_sklearn():
    emb, labels = _clustered(40, 6, spread=1.0, seed=1)
    m = verification_metrics(emb, labels, far=1e-2)
    genuine, impostor = pair_similarities(emb, labels)
    ref = roc_auc_score([1] * len(genuine) + [0] * len(impostor), torch.cat([genuine, impostor]).numpy())
    assert m["auc"] == pytest.approx(ref, abs=1e-12)
    assert m["tar_at_far"] == pytest.approx((genuine >= m["threshold"]).double().mean().item())
    assert m["measured_far"] <= 1e-2
    assert m["num_genuine"] == 40 * 15 and m["num_impostor"] == 240 * 239 // 2 - 40 * 15


def test_threshold_hits_far_on_fresh_embeddings():
    far = 1e-3
    calib, calib_labels = _clustered(120, 10, spread=1.2, seed=0)
    thr = threshold_at_far(pair_similarities(calib, calib_labels)[1], far)
    _, calib_imp = pair_similarities(calib, calib_labels)
    n = calib_imp.numel()
    assert far - 1.0 / n <= (calib_imp >= thr).double().mean().item() <= far
    # Same distribution, other identities: the FAR generalises (binomial noise on ~7e5 pairs).
    test, test_labels = _clustered(120, 10, spread=1.2, seed=1)
    _, imp = pair_similarities(test, test_labels)
    assert 0.6 * far <= (imp >= thr).double().mean().item() <= 1.6 * far


def test_threshold_at_far_edge_cases():
    imp = torch.tensor([0.1, 0.2, 0.3, 0.3, 0.9])
    assert threshold_at_far(imp, 0.1) > imp.double().max()  # 0.5 pair allowed -> none accepted
    t = threshold_at_far(imp, 0.2)  # one pair allowed
    assert (imp >= t).sum() == 1
    t = threshold_at_far(imp, 0.4)  # two allowed, but 0.3 is tied twice -> only the top one
    assert (imp >= t).sum() == 1
    with pytest.raises(ValueError):
        threshold_at_far(imp, 0.0)


def test_calibrate_threshold_sets_attributes():
    model = LinearEmbedder()
    gen = torch.Generator().manual_seed(0)
    protos = torch.rand(12, 3, 8, 8, generator=gen) * 2 - 1
    labels = torch.arange(12).repeat_interleave(5)
    images = (protos[labels] + 0.3 * torch.randn(60, 3, 8, 8, generator=gen)).clamp(-1, 1)
    thr = model.calibrate_threshold(images, labels, far=0.01)
    assert model.threshold == thr and model.threshold_far == 0.01
    assert model.calibration["auc"] > 0.9 and model.calibration["measured_far"] <= 0.01
    emb = model.embed(images)
    same = labels[:, None] == labels[None, :]
    upper = torch.triu(torch.ones(60, 60, dtype=torch.bool), 1)
    assert ((emb @ emb.T >= thr) & ~same & upper).sum() <= int(0.01 * (~same & upper).sum())


def test_verification_errors_name_the_fix():
    emb, _ = _clustered(3, 3)
    with pytest.raises(DataError, match="at least 2 identities"):
        verification_metrics(emb, torch.zeros(9, dtype=torch.long))
    with pytest.raises(DataError, match="genuine pairs"):
        verification_metrics(emb, torch.arange(9))
    with pytest.raises(DataError, match="one label per image"):
        verification_metrics(emb, torch.arange(4))
    with pytest.raises(UserError, match="at least 2 identities"):
        LinearEmbedder().calibrate_threshold(_images(4, size=8), torch.zeros(4, dtype=torch.long))


# ------------------------------------------------------------------------------------ save / load / registry
def test_save_load_round_trip_identical(tmp_path, net):
    net.eval()
    net.threshold, net.threshold_far = 0.42, 1e-3
    net.report = {"auc": 0.99, "config": {"epochs": 3}}
    path = net.save(tmp_path / "sub" / "emb.pt")
    loaded = TrainedEmbedder.load(path)
    x = _images(9)
    assert torch.equal(loaded.embed(x), net.embed(x))
    assert (loaded.threshold, loaded.threshold_far, loaded.report) == (0.42, 1e-3, net.report)
    assert (loaded.input_size, loaded.dim, loaded.width, loaded.name) == (32, 32, 8, "trained")
    assert not loaded.training
    via_registry = load_embedder(str(path))
    assert torch.equal(via_registry.embed(x), net.embed(x))
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["emb.pt"]  # atomic: no temp left


def test_load_rejects_foreign_or_corrupt_files(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="not a gmia-defend trained embedder"):
        TrainedEmbedder.load(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="cannot read"):
        TrainedEmbedder.load(tmp_path / "junk.pt")
    with pytest.raises(WeightsError, match="not found"):
        TrainedEmbedder.load(tmp_path / "missing.pt")


def test_registry_errors_name_valid_forms(tmp_path):
    with pytest.raises(UserError, match="valid embedder specs: .*synthetic.*facenet.*dlib"):
        load_embedder("arcface")
    with pytest.raises(WeightsError, match="not found.*train-embedder"):
        load_embedder(str(tmp_path / "nope.pt"))
    with pytest.raises(WeightsError, match="FaceNet weights file not found"):
        load_embedder(f"facenet:{tmp_path / 'nope.pt'}")
    with pytest.raises(WeightsError, match="dlib weights file not found"):
        load_embedder(f"dlib:{tmp_path / 'nope.dat'}")
    with pytest.raises(UserError, match="must be an integer"):
        load_embedder("synthetic:big")
    with pytest.raises(UserError, match="no embedder given"):
        load_embedders("")


def test_registry_passes_instances_and_checks_distinct_names(net):
    assert load_embedder(net, device="cpu") is net and not net.training
    with pytest.raises(UserError, match="distinct names"):
        load_embedders([net, TrainedEmbedder(width=4)])
    assert [m.name for m in load_embedders([net, LinearEmbedder()])] == ["trained", "linear"]


def test_cli_train_embedder_writes_pt_and_prints_report(tmp_path, capsys):
    from gmia_defend.cli import main

    out = tmp_path / "emb.pt"
    rc = main(["train-embedder", "--num-identities", "6", "--images-per-identity", "3", "--holdout-identities", "4",
               "--epochs", "1", "--batch-size", "8", "--width", "4", "--dim", "16", "--no-cache", "--quiet",
               "--device", "cpu", "--out", str(out)])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["out"] == str(out) and 0.0 <= report["auc"] <= 1.0
    assert report["config"]["dataset"]["num_identities"] == 6 and report["num_holdout_identities"] == 4
    loaded = load_embedder(str(out))
    assert loaded.dim == 16 and loaded.threshold == pytest.approx(report["threshold"])


@pytest.mark.parametrize("size", [16, 32, 64])
def test_trained_network_works_at_several_input_sizes(size):
    model = TrainedEmbedder(input_size=size, dim=8, width=4).eval()
    e = model(_images(3, size=size))
    assert e.shape == (3, 8) and torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)


def test_registry_dispatches_specs(monkeypatch, tmp_path):
    import sys
    import types

    import gmia_defend.embedders.trained as trained

    calls = []
    monkeypatch.setattr(trained, "train_identity_embedder",
                        lambda **kw: calls.append(kw) or TrainedEmbedder(input_size=kw.get("resolution", 32), width=4))
    assert load_embedder("synthetic").input_size == 32 and calls[-1] == {}
    assert load_embedder("synthetic:64").input_size == 64 and calls[-1] == {"resolution": 64}

    class Fake(Embedder):
        def __init__(self, weights="default"):
            super().__init__(input_size=8, dim=4)
            self.weights = weights

    for module, cls in (("facenet", "FaceNetEmbedder"), ("dlib", "DlibResNetEmbedder")):
        monkeypatch.setitem(sys.modules, f"gmia_defend.embedders.{module}", types.SimpleNamespace(**{cls: Fake}))
        weights = tmp_path / f"{module}.pt"
        weights.write_bytes(b"x")
        assert load_embedder(module).weights == "default"
        assert load_embedder(f"{module.upper()}:{weights}").weights == str(weights)
