"""The private discriminator step: clipping per unit, sensitivity, R1, noise, no leaks, refusals."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _fixtures_dp import DpBatchMeanD, DpTinyD, dp_batch
from gmia_defend.errors import UserError
from gmia_defend.mitigations.dp import make_discriminator_private
from gmia_defend.mitigations.per_sample import PerUnitGradients, unit_layout


def _flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(g.shape[0], -1) if g.dim() > 1 else g[:, None] for g in grads.values()], 1)


def _sum_flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads.values()])


def test_per_unit_gradients_equal_autograd_with_r1(dp_tiny_d: DpTinyD) -> None:
    """Identity unit gradient = sum of its images' gradients of logistic loss + R1 (double backward)."""
    real, labels, fake = dp_batch(9, 3)
    layout = unit_layout(9, labels)
    grads, _ = PerUnitGradients(dp_tiny_d).per_unit(real, fake, layout, r1_weight=3.0)
    for u, identity in enumerate(range(3)):
        idx = (labels == identity).nonzero().flatten()
        x = real[idx].clone().requires_grad_(True)
        out = dp_tiny_d(x)
        (g_in,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        loss = F.softplus(-out).sum() + F.softplus(dp_tiny_d(fake[idx])).sum() + 3.0 * g_in.square().sum()
        expected = torch.autograd.grad(loss, list(dp_tiny_d.parameters()))
        for (name, got), exp in zip(grads.items(), expected):
            torch.testing.assert_close(got[u], exp, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("labels_on", [False, True])
def test_clipped_norms_never_exceed_bound(dp_tiny_d: DpTinyD, labels_on: bool) -> None:
    real, labels, fake = dp_batch(16, 5)
    real = real * 4  # large inputs: large gradients, so clipping is active
    layout = unit_layout(16, labels if labels_on else None)
    engine = PerUnitGradients(dp_tiny_d, chunk_size=3)
    grads, _ = engine.per_unit(real, fake, layout, r1_weight=1.0)
    norms = _flat(grads).norm(dim=1)
    C = float(norms.median())
    assert (norms > C).any()  # the bound binds for some units
    clipped = _flat(grads) * (C / (norms + 1e-6)).clamp(max=1)[:, None]
    assert (clipped.norm(dim=1) <= C * (1 + 1e-5)).all()
    total = engine.clipped_sum(real, fake, layout, C, r1_weight=1.0)
    torch.testing.assert_close(_sum_flat(total.grads), clipped.sum(0), rtol=1e-4, atol=1e-5)
    assert total.num_units == (5 if labels_on else 16)


def test_removing_an_identity_moves_sum_by_at_most_the_bound(dp_tiny_d: DpTinyD) -> None:
    """Sensitivity: dropping all images of one identity changes the pre-noise sum by <= C."""
    real, labels, fake = dp_batch(20, 4, seed=1)
    real = real * 4
    engine = PerUnitGradients(dp_tiny_d)
    C = 0.05
    full = _sum_flat(engine.clipped_sum(real, fake, unit_layout(20, labels), C, r1_weight=0.5).grads)
    changes = []
    for identity in range(4):
        keep = labels != identity
        part = engine.clipped_sum(real[keep], fake[keep], unit_layout(int(keep.sum()), labels[keep]), C, 0.5)
        changes.append(float((full - _sum_flat(part.grads)).norm()))
    assert max(changes) <= C * (1 + 1e-4)
    assert min(changes) > 0.9 * C  # each identity's gradient was clipped to the bound


def _sgd_private(D: nn.Module, **kw):
    opt = torch.optim.SGD(D.parameters(), lr=1.0)
    return make_discriminator_private(D, optimizer=opt, **kw), opt


def test_noise_scale_and_normalisation() -> None:
    """Empty batch: the update is pure noise N(0, (sigma C)^2) / expected units."""
    torch.manual_seed(0)
    D = DpTinyD()
    pd, _ = _sgd_private(D, noise_multiplier=2.0, max_grad_norm=0.5, batch_size=8, dataset_size=80, seed=0)
    before = torch.cat([p.detach().reshape(-1).clone() for p in D.parameters()])
    real, _, fake = dp_batch(0)
    pd.step(None, real, None, fake)
    delta = before - torch.cat([p.detach().reshape(-1) for p in D.parameters()])
    expected_std = 2.0 * 0.5 / 8
    assert delta.std().item() == pytest.approx(expected_std, rel=0.15)
    assert abs(delta.mean().item()) < 3 * expected_std / delta.numel() ** 0.5
    assert pd.steps == 1 and pd.epsilon > 0


def test_seeded_step_is_reproducible_and_ignores_stale_grads() -> None:
    """Gradients left on D (e.g. by a generator backward) do not enter the private update."""
    real, labels, fake = dp_batch(8, 4)
    torch.manual_seed(0)
    D1 = DpTinyD()
    D2 = copy.deepcopy(D1)
    pd1, _ = _sgd_private(D1, noise_multiplier=1.0, batch_size=4, targets=labels, unit="identity", seed=3)
    pd2, _ = _sgd_private(D2, noise_multiplier=1.0, batch_size=4, targets=labels, unit="identity", seed=3)
    for p in D2.parameters():
        p.grad = torch.full_like(p, 100.0)
    pd1.step(None, real, labels, fake)
    pd2.step(None, real, labels, fake)
    for a, b in zip(D1.parameters(), D2.parameters()):
        torch.testing.assert_close(a, b)
        assert b.grad is None  # nothing per-sample left for the generator step to pick up
    # the generator reads D afterwards: a G backward through D works and private state is untouched
    z = torch.randn(4, 3, 8, 8, requires_grad=True)
    F.softplus(-D2(z)).mean().backward()
    assert z.grad is not None and pd2.steps == 1


def test_noise_differs_without_seed() -> None:
    real, _, fake = dp_batch(4)
    torch.manual_seed(0)
    D1 = DpTinyD()
    D2 = copy.deepcopy(D1)
    _sgd_private(D1, noise_multiplier=1.0, batch_size=4, dataset_size=40)[0].step(None, real, None, fake)
    _sgd_private(D2, noise_multiplier=1.0, batch_size=4, dataset_size=40)[0].step(None, real, None, fake)
    assert not torch.equal(D1.net[0].weight, D2.net[0].weight)


def test_lazy_r1_every_interval() -> None:
    torch.manual_seed(0)
    D = DpTinyD()
    pd, _ = _sgd_private(D, noise_multiplier=1.0, batch_size=4, dataset_size=40, r1_gamma=10.0, r1_interval=4, seed=0)
    seen = []
    original = PerUnitGradients.clipped_sum

    def spy(self, real, fake, layout, C, r1_weight=0.0):
        seen.append(r1_weight)
        return original(self, real, fake, layout, C, r1_weight)

    PerUnitGradients.clipped_sum = spy
    try:
        real, _, fake = dp_batch(4)
        for _ in range(6):
            pd.step(None, real, None, fake)
    finally:
        PerUnitGradients.clipped_sum = original
    assert seen == [20.0, 0.0, 0.0, 0.0, 20.0, 0.0]  # gamma / 2 * interval on every 4th step


def test_state_dict_round_trip() -> None:
    real, _, fake = dp_batch(4)
    torch.manual_seed(0)
    D = DpTinyD()
    pd, _ = _sgd_private(D, noise_multiplier=1.0, batch_size=4, dataset_size=40, seed=0)
    for _ in range(3):
        pd.step(None, real, None, fake)
    state = pd.state_dict()
    # only the accountant: no noise-generator state, nothing about realised batches
    assert set(state) == {"steps", "history", "accountant", "unit", "delta"}
    D2, D3 = copy.deepcopy(D), copy.deepcopy(D)
    pd2, _ = _sgd_private(D2, noise_multiplier=1.0, batch_size=4, dataset_size=40, seed=0)
    pd3, _ = _sgd_private(D3, noise_multiplier=1.0, batch_size=4, dataset_size=40, seed=0)
    pd2.load_state_dict(state)
    pd3.load_state_dict(state)
    assert pd2.steps == 3 and pd2.epsilon == pd.epsilon
    pd.step(None, real, None, fake)
    pd2.step(None, real, None, fake)
    pd3.step(None, real, None, fake)
    # resumed noise is reseeded from OS entropy even with an explicit seed: it neither continues the
    # original stream (which no checkpoint holds) nor repeats between two resumes of the same state
    for a, b, c in zip(D.parameters(), D2.parameters(), D3.parameters()):
        assert not torch.equal(a, b) and not torch.equal(b, c)
    wrong, _ = _sgd_private(DpTinyD(), noise_multiplier=1.0, batch_size=4, targets=torch.arange(40) % 4,
                            unit="identity")
    with pytest.raises(UserError, match="unit"):
        wrong.load_state_dict(state)


def test_budget_exhausted_refuses_another_step() -> None:
    real, _, fake = dp_batch(4)
    D = DpTinyD()
    pd, _ = _sgd_private(D, noise_multiplier=1.0, target_epsilon=2.0, batch_size=4, dataset_size=40, seed=0)
    n = pd.budget_steps
    assert 0 < n < 50
    for _ in range(n):
        pd.step(None, real, None, fake)
    assert pd.epsilon <= 2.0 and pd.budget_exhausted
    with pytest.raises(UserError, match="budget exhausted"):
        pd.step(None, real, None, fake)


# ---------------------------------------------------------------------------------------- refusals


def _opt(D: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(D.parameters(), lr=0.1)


def test_refuses_cross_sample_discriminators() -> None:
    D = DpTinyD(norm="batch")
    with pytest.raises(UserError, match="BatchNorm"):
        make_discriminator_private(D, noise_multiplier=1.0, batch_size=4, dataset_size=40, optimizer=_opt(D))
    D = DpBatchMeanD()
    with pytest.raises(UserError, match="depends on the other images"):
        make_discriminator_private(D, noise_multiplier=1.0, batch_size=4, dataset_size=40, optimizer=_opt(D))

    class WithMbstd(DpTinyD):
        has_cross_sample_ops = True

    with pytest.raises(UserError, match="minibatch-std"):
        make_discriminator_private(WithMbstd(), noise_multiplier=1.0, batch_size=4, dataset_size=40)


def test_refuses_adaptive_augmentation() -> None:
    class Module(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.D = DpTinyD()
            self.private_d = None
            self.ada_target = 0.6

    with pytest.raises(UserError, match="adaptive augmentation"):
        make_discriminator_private(Module(), noise_multiplier=1.0, batch_size=4, dataset_size=40)
    module = Module()
    module.ada_target = None
    make_discriminator_private(module, noise_multiplier=1.0, batch_size=4, dataset_size=40)
    assert module.private_d is not None


def test_refuses_module_without_private_hook() -> None:
    class Plain(nn.Module):  # its D update would never call private_d.step
        def __init__(self) -> None:
            super().__init__()
            self.discriminator = DpTinyD()

    with pytest.raises(UserError, match="no private_d hook"):
        make_discriminator_private(Plain(), noise_multiplier=1.0, batch_size=4, dataset_size=40)


def test_refuses_bad_configurations() -> None:
    D = DpTinyD()
    common = dict(batch_size=4, optimizer=_opt(D))
    with pytest.raises(UserError, match="identity of every training image"):
        make_discriminator_private(D, noise_multiplier=1.0, unit="identity", dataset_size=40, **common)
    with pytest.raises(UserError, match="steps="):
        make_discriminator_private(D, target_epsilon=1.0, dataset_size=40, **common)
    with pytest.raises(UserError, match="noise multiplier above"):
        make_discriminator_private(D, target_epsilon=0.01, steps=100_000, dataset_size=40, **common)
    with pytest.raises(UserError, match="noise_multiplier= or target_epsilon="):
        make_discriminator_private(D, dataset_size=40, **common)
    with pytest.raises(UserError, match="unit must be"):
        make_discriminator_private(D, noise_multiplier=1.0, unit="person", dataset_size=40, **common)
    pd = make_discriminator_private(D, noise_multiplier=1.0, unit="identity", targets=torch.arange(40) % 4, **common)
    real, _, fake = dp_batch(4)
    with pytest.raises(UserError, match="identity of every training image"):
        pd.step(None, real, None, fake)
    with pytest.raises(UserError, match="optimizer"):
        make_discriminator_private(DpTinyD(), noise_multiplier=1.0, batch_size=4, dataset_size=40).step(
            None, real, None, fake)


def test_private_steps_descend_the_loss() -> None:
    """With little noise, private steps learn to tell real from fake (the update has the right sign)."""
    torch.manual_seed(0)
    D = DpTinyD()
    pd, _ = _sgd_private(D, noise_multiplier=0.01, max_grad_norm=1.0, batch_size=16, dataset_size=160, seed=0)
    g = torch.Generator().manual_seed(0)
    real = 0.5 + 0.3 * torch.randn(16, 3, 8, 8, generator=g)
    fake = -0.5 + 0.3 * torch.randn(16, 3, 8, 8, generator=g)

    def loss() -> float:
        with torch.no_grad():
            return float(F.softplus(-D(real)).mean() + F.softplus(D(fake)).mean())

    before = loss()
    for _ in range(15):
        pd.step(None, real, None, fake)
    assert loss() < 0.5 * before


def test_shuffled_sampling_is_refused_or_flagged() -> None:
    with pytest.raises(UserError, match="Poisson"):
        _sgd_private(DpTinyD(), noise_multiplier=1.0, batch_size=4, dataset_size=40, poisson_sampling=False)
    pd, _ = _sgd_private(DpTinyD(), noise_multiplier=1.0, batch_size=4, dataset_size=40, poisson_sampling=False,
                         allow_shuffled_sampling=True)
    summary = pd.summary()
    assert summary["epsilon_valid"] is False and "not a valid bound" in summary["epsilon_note"]
    ok, _ = _sgd_private(DpTinyD(), noise_multiplier=1.0, batch_size=4, dataset_size=40)
    assert ok.summary()["epsilon_valid"] is True and ok.summary()["epsilon_note"] is None


def test_image_level_cap_per_person_is_enforced() -> None:
    targets = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    with pytest.raises(UserError, match="3 training images, more than max_images_per_identity=2"):
        _sgd_private(DpTinyD(), noise_multiplier=1.0, batch_size=2, targets=targets, max_images_per_identity=2)
    pd, _ = _sgd_private(DpTinyD(), noise_multiplier=1.0, batch_size=2, targets=targets, max_images_per_identity=3)
    assert pd.summary()["max_images_per_identity"] == 3 and pd.unit == "image"
