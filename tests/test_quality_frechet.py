"""Fréchet distance: agrees with torchmetrics' FID formula, merges shards exactly, feeds from batches."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gmia_defend.errors import WeightsError
from gmia_defend.quality.fid import FrechetQuality
from gmia_defend.quality.frechet import GaussianStats, frechet_distance, frechet_from_stats


class _Identity(nn.Module):
    """A feature extractor for which the "images" already are feature vectors."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _features(n: int, dim: int, shift: float, seed: int) -> torch.Tensor:
    mix = torch.randn(dim, dim, generator=torch.Generator().manual_seed(99)) / math.sqrt(dim)
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) @ mix + shift


def test_matches_the_fid_formula_computed_another_way():
    """torchmetrics' FID formula (eigenvalues of the non-symmetric C1 C2; its module is slow to import)."""
    dim = 12
    real, fake = _features(400, dim, 0.0, 1).double(), _features(300, dim, 0.3, 2).double()
    mu1, mu2 = real.mean(0), fake.mean(0)
    c1, c2 = torch.cov(real.T), torch.cov(fake.T)
    expected = ((mu1 - mu2).square().sum() + c1.trace() + c2.trace()
                - 2 * torch.linalg.eigvals(c1 @ c2).sqrt().real.sum())
    a, b = GaussianStats(dim), GaussianStats(dim)
    a.update(real)
    b.update(fake)
    assert frechet_from_stats(a, b) == pytest.approx(float(expected), rel=1e-6)


def test_closed_form_for_diagonal_gaussians():
    mu1, mu2 = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])
    c1, c2 = torch.diag(torch.tensor([1.0, 4.0])), torch.diag(torch.tensor([4.0, 1.0]))
    # |mu1-mu2|^2 + sum (s1 - s2)^2 over std devs = 1 + (1-2)^2 + (2-1)^2
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(3.0, abs=1e-9)
    assert frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-9)


def test_shards_merge_to_the_single_process_result():
    x = _features(301, 8, 0.1, 3)
    whole = GaussianStats(8)
    whole.update(x)
    shards = [GaussianStats(8) for _ in range(3)]
    for i, s in enumerate(shards):
        s.update(x[i::3])
    total = sum(torch.cat([s.n.reshape(1), s.sum, s.outer.reshape(-1)]) for s in shards)
    merged = GaussianStats(8)
    merged.reduce(lambda t: total)
    assert float(merged.n) == 301
    m1, c1 = whole.mean_cov()
    m2, c2 = merged.mean_cov()
    assert torch.allclose(m1, m2, atol=1e-12) and torch.allclose(c1, c2, atol=1e-12)


def test_quality_from_batches_equals_one_shot():
    extractor = _Identity(6)
    extractor.dim = 6
    q = FrechetQuality(extractor, 6, "quality/fd_test", batch_size=7)
    q.set_real_images(_features(200, 6, 0.0, 4))
    fake = _features(150, 6, 0.5, 5)
    for i in range(0, 150, 40):
        q.update(fake[i:i + 40])
    one = GaussianStats(6)
    one.update(fake)
    assert q.compute() == pytest.approx(frechet_from_stats(q.real, one), rel=1e-9)
    q.reset_fake()
    q.update(_features(150, 6, 0.0, 6))
    assert q.compute() < 0.5 * frechet_from_stats(q.real, one)  # same distribution: much closer


def test_embedder_key_and_missing_inception_weights(tmp_path):
    class E(nn.Module):
        name, dim = "toy", 4

    assert FrechetQuality.for_embedder(E()).key == "quality/fd_toy"
    with pytest.raises(WeightsError, match="fid_weights_path"):
        FrechetQuality.inception(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        FrechetQuality.inception(bad)


@pytest.mark.slow
def test_inception_fid_from_a_local_weights_file(tmp_path, monkeypatch):
    """The FID path with torchmetrics' InceptionV3, fed a local file (random weights: offline test)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    with monkeypatch.context() as m:  # build the architecture once without weights, to save a state dict
        m.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        torch.manual_seed(0)
        net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    weights = tmp_path / "inception.pth"
    torch.save(net.state_dict(), weights)
    q = FrechetQuality.inception(weights, batch_size=4)
    assert q.key == "quality/fid" and q.dim == 2048
    g = torch.Generator().manual_seed(1)
    q.set_real_images(torch.rand(6, 3, 32, 32, generator=g) * 2 - 1)
    q.update(torch.rand(6, 3, 32, 32, generator=g) * 2 - 1)
    value = q.compute()
    assert math.isfinite(value) and value >= 0


def test_embedder_without_dim_gets_a_clear_error():
    from gmia_defend.errors import UserError
    from gmia_defend.quality.fid import FrechetQuality

    def bare(images):
        return images.flatten(1)

    with pytest.raises(UserError, match="fid=False"):
        FrechetQuality.for_embedder(bare)


def test_uint8_quantisation_rounds_reals_and_fakes_alike():
    import torch

    from gmia_defend.quality.fid import to_uint8

    levels = torch.arange(256, dtype=torch.uint8)
    real = levels.float() / 127.5 - 1.0  # how an 8-bit photo is loaded
    assert torch.equal(to_uint8(real), levels)  # round trip exact
    fake = real + 0.49 / 127.5  # just under half a level above: rounds back down, truncation would not
    fake_down = real - 0.49 / 127.5
    assert torch.equal(to_uint8(fake), levels) and torch.equal(to_uint8(fake_down), levels)


def test_gaussian_stats_reduce_through_torchmetrics_sum():
    import torch

    from gmia_defend.quality.frechet import GaussianStats, metric_sum

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(30, 3, generator=g)
    whole, a, b = GaussianStats(3), GaussianStats(3), GaussianStats(3)
    whole.update(feats)
    a.update(feats[:12])
    b.update(feats[12:])
    other = torch.cat([b.n.reshape(1), b.sum, b.outer.reshape(-1)])
    a.reduce(metric_sum(dist_sync_fn=lambda t, group=None: [t, other], distributed_available=lambda: True))
    assert torch.allclose(a.outer, whole.outer) and torch.allclose(a.sum, whole.sum) and float(a.n) == 30
