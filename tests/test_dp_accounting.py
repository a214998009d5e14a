"""Privacy accounting: epsilon matches Opacus's accountants; noise for a target; step budgets; refusals."""

from __future__ import annotations

import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from _fixtures_dp import DpTinyD, dp_batch
from gmia_defend.errors import UserError
from gmia_defend.mitigations import accounting
from gmia_defend.mitigations.dp import make_discriminator_private

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")


def _opacus_epsilon(cls, sigma: float, q: float, steps: int, delta: float) -> float:
    acc = cls()
    for _ in range(steps):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    return acc.get_epsilon(delta=delta)


@pytest.mark.parametrize("sigma,q,steps", [(1.0, 0.125, 4), (0.8, 0.01, 300), (2.0, 0.3, 17)])
def test_rdp_epsilon_equals_opacus(sigma: float, q: float, steps: int) -> None:
    expected = _opacus_epsilon(RDPAccountant, sigma, q, steps, 1e-5)
    assert accounting.epsilon([(sigma, q, steps)], 1e-5, "rdp") == pytest.approx(expected, rel=1e-9)


def test_notes_reference_values() -> None:
    """Reference figures measured with Opacus 1.6: RDP, sigma=1.0, q=0.125, delta=1e-5: epsilon 3.165 after 4 steps, 3.507 after 6."""
    assert accounting.epsilon([(1.0, 0.125, 4)], 1e-5) == pytest.approx(3.165, abs=2e-3)
    assert accounting.epsilon([(1.0, 0.125, 6)], 1e-5) == pytest.approx(3.507, abs=2e-3)


def test_prv_epsilon_equals_opacus() -> None:
    expected = _opacus_epsilon(PRVAccountant, 1.1, 0.05, 40, 1e-4)
    assert accounting.epsilon([(1.1, 0.05, 40)], 1e-4, "prv") == pytest.approx(expected, rel=1e-9)


def test_mixed_history_and_empty() -> None:
    hist = [(1.0, 0.1, 5), (2.0, 0.1, 3), (1.0, 0.1, 2)]
    acc = RDPAccountant()
    for s, q, t in hist:
        for _ in range(t):
            acc.step(noise_multiplier=s, sample_rate=q)
    assert accounting.epsilon(hist, 1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert accounting.epsilon([], 1e-5) == 0.0


def test_noise_for_target_matches_opacus_and_reaches_it() -> None:
    sigma = accounting.noise_multiplier_for(4.0, 1e-5, 0.02, 500)
    assert sigma == get_noise_multiplier(target_epsilon=4.0, target_delta=1e-5, sample_rate=0.02, steps=500)
    assert accounting.epsilon([(sigma, 0.02, 500)], 1e-5) <= 4.0
    assert accounting.epsilon([(sigma * 0.95, 0.02, 500)], 1e-5) > 4.0 * 0.99


def test_unreachable_targets_are_refused() -> None:
    with pytest.raises(UserError, match="needs a noise multiplier above"):
        accounting.noise_multiplier_for(0.05, 1e-5, 0.5, 10_000)
    with pytest.raises(UserError, match="positive"):
        accounting.noise_multiplier_for(0.0, 1e-5, 0.1, 10)


def test_max_steps_within_is_tight() -> None:
    t = accounting.max_steps_within(3.0, 1e-5, 1.0, 0.05)
    assert t > 1
    assert accounting.epsilon([(1.0, 0.05, t)], 1e-5) <= 3.0 < accounting.epsilon([(1.0, 0.05, t + 1)], 1e-5)
    assert accounting.max_steps_within(0.01, 1e-5, 0.5, 0.5) == 0


def test_default_delta_below_one_over_n() -> None:
    assert accounting.default_delta(200) == pytest.approx(1 / 2000)
    with pytest.raises(UserError):
        accounting.default_delta(0)


@pytest.mark.parametrize("unit", ["image", "identity"])
def test_private_d_epsilon_equals_opacus_after_steps(unit: str) -> None:
    """The reported epsilon is Opacus's for the same sample rate (per unit), noise and steps."""
    torch.manual_seed(0)
    D = DpTinyD()
    targets = torch.arange(60) % 12  # 12 identities x 5 images
    opt = torch.optim.SGD(D.parameters(), lr=0.01)
    cap = 2 if unit == "identity" else None  # image unit: a cap must hold on the data itself (ELS)
    pd = make_discriminator_private(D, noise_multiplier=1.3, batch_size=6, targets=targets, unit=unit,
                                    max_images_per_identity=cap, optimizer=opt, seed=0)
    if unit == "identity":
        assert pd.num_units == 12 and pd.sample_rate == pytest.approx(6 / (12 * 2))
        assert pd.delta == pytest.approx(1 / 120)
    else:
        assert pd.num_units == 60 and pd.sample_rate == pytest.approx(6 / 60)
        assert pd.delta == pytest.approx(1 / 600)
    real, labels, fake = dp_batch(6, 3)
    for _ in range(5):
        pd.step(None, real, labels, fake)
    expected = _opacus_epsilon(RDPAccountant, 1.3, pd.sample_rate, 5, pd.delta)
    assert pd.epsilon == pytest.approx(expected, rel=1e-9)
    assert pd.epsilon_after(0) == pytest.approx(expected, rel=1e-9)
    summary = pd.summary()
    assert summary["unit"] == unit and summary["steps"] == 5 and summary["accountant"] == "rdp"


def test_target_epsilon_sets_noise_and_budget() -> None:
    D = DpTinyD()
    pd = make_discriminator_private(D, target_epsilon=2.0, steps=40, batch_size=10, dataset_size=200,
                                    optimizer=torch.optim.SGD(D.parameters(), lr=0.01), seed=0)
    assert pd.noise_multiplier == get_noise_multiplier(target_epsilon=2.0, target_delta=pd.delta,
                                                       sample_rate=0.05, steps=40)
    assert pd.budget_steps >= 40
    assert pd.epsilon_after(pd.budget_steps) <= 2.0 < pd.epsilon_after(pd.budget_steps + 1)
