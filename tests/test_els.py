"""Per-person accounting: ELS (mixture-of-Gaussians PLD) against Opacus, noise for a target, refusals."""

from __future__ import annotations

import math

import pytest

from gmia_defend.errors import UserError
from gmia_defend.mitigations import accounting, user_level

SIGMA, Q, STEPS, DELTA = 1.5, 0.05, 60, 1e-4


def test_els_with_one_image_a_person_agrees_with_opacus() -> None:
    """k = 1: ELS is image-level DP-SGD, so its accountant must agree with Opacus's (PRV: tight, RDP: looser)."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    els = user_level.els_epsilon(SIGMA, Q, STEPS, k=1, delta=DELTA)
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=user_level.DISCRETIZATION)
    acc.compose(dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(Q, dp_event.GaussianDpEvent(SIGMA)), STEPS))
    assert els == pytest.approx(acc.get_epsilon(DELTA), rel=1e-4)  # same mechanism and accountant (grids differ)
    prv = accounting.epsilon([(SIGMA, Q, STEPS)], DELTA, "prv")
    rdp = accounting.epsilon([(SIGMA, Q, STEPS)], DELTA, "rdp")
    assert els == pytest.approx(prv, rel=0.03)  # stated tolerance: 3 % (both are numerical PLD/PRV bounds)
    assert els <= rdp * 1.001  # RDP is an upper bound the PLD accountant may only improve on


def test_els_grows_with_the_per_person_cap() -> None:
    coarse = 1e-2  # pessimistic either way; coarse keeps the test fast
    eps = [user_level.els_epsilon(SIGMA, Q, STEPS, k=k, delta=DELTA, discretization=coarse) for k in (1, 2, 4)]
    assert eps[0] < eps[1] < eps[2]
    # a history split in two segments composes to the same epsilon as one segment
    split = user_level.els_epsilon_history([(SIGMA, Q, 20), (SIGMA, Q, STEPS - 20)], 2, DELTA, coarse)
    assert split == pytest.approx(eps[1], rel=1e-6)


def test_mixture_drops_only_a_negligible_tail_and_stays_fast() -> None:
    sens, probs, dropped = user_level.mixture(0.01, 300)
    assert sens[-1] < 40 and 0 < dropped < 1e-15  # 300 images, but more than ~26 in one step: never
    assert sum(probs) == pytest.approx(1.0)
    sens, probs, dropped = user_level.mixture(0.25, 3)  # small k: exact binomial weights, nothing dropped
    assert sens == [0.0, 1.0, 2.0, 3.0] and probs[0] == pytest.approx(0.75 ** 3) and dropped == 0.0
    import time

    start = time.perf_counter()  # an uncapped image-level run (300 images a person, small noise)
    eps = user_level.els_epsilon(0.5, 16 / 9600, 3, 300, 1e-5)
    assert math.isfinite(eps) and eps > user_level.els_epsilon(0.5, 16 / 9600, 3, 1, 1e-5)
    assert time.perf_counter() - start < 20  # was minutes with the worst-case component kept


def test_noise_for_a_per_person_target_reaches_it_tightly() -> None:
    sigma = user_level.noise_for_person_target(4.0, scheme="uls", people=500, steps=200, expected_batch=10)
    eps = accounting.epsilon([(sigma, 10 / 500, 200)], 1 / 5000, "rdp")
    assert eps <= 4.0 < accounting.epsilon([(sigma * 0.97, 10 / 500, 200)], 1 / 5000, "rdp")
    sigma = user_level.noise_for_person_target(3.0, scheme="els", people=100, steps=10, expected_batch=20, k=2,
                                               images=200)
    assert user_level.els_epsilon(sigma, 0.1, 10, 2, 1e-3) <= 3.0
    assert user_level.els_epsilon(sigma * 0.95, 0.1, 10, 2, 1e-3, discretization=1e-2) > 3.0


def test_unreachable_person_target_is_refused_with_the_fix() -> None:
    with pytest.raises(UserError) as err:
        user_level.noise_for_person_target(1.0, scheme="uls", people=20, steps=2000, expected_batch=4,
                                           max_noise_multiplier=5)
    text = str(err.value)
    assert "out of reach" in text and "20 people" in text
    import re

    people = int(re.search(r"at least (\d+) people", text).group(1))
    steps = int(re.search(r"at most (\d+) steps", text).group(1))
    # the named fixes do reach the target, and are (near) the smallest / largest that do
    user_level.noise_for_person_target(1.0, scheme="uls", people=people, steps=2000, expected_batch=4,
                                       max_noise_multiplier=5)
    user_level.noise_for_person_target(1.0, scheme="uls", people=20, steps=steps, expected_batch=4,
                                       max_noise_multiplier=5)
    with pytest.raises(UserError):
        user_level.noise_for_person_target(1.0, scheme="uls", people=20, steps=steps + 1, expected_batch=4,
                                           max_noise_multiplier=5)
    with pytest.raises(UserError):
        user_level.noise_for_person_target(1.0, scheme="uls", people=int(people * 0.9), steps=2000,
                                           expected_batch=4, max_noise_multiplier=5)
    with pytest.raises(UserError, match="scheme"):
        user_level.check_scheme("group")
