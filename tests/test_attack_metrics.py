"""Attack metrics agree with scikit-learn (ties included) and behave at the edges."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gmia_defend.attack import metrics as M

sk_metrics = pytest.importorskip("sklearn.metrics")


def _cases():
    rng = np.random.default_rng(0)
    yield rng.normal(size=50), rng.integers(0, 2, 50)
    yield rng.normal(size=300) + np.r_[np.ones(100), np.zeros(200)], np.r_[np.ones(100), np.zeros(200)]
    yield rng.integers(0, 4, 80).astype(float), rng.integers(0, 2, 80)  # heavy ties
    yield np.zeros(20), np.r_[np.ones(7), np.zeros(13)]  # all tied
    yield np.arange(10.0), np.r_[np.zeros(5), np.ones(5)]  # perfectly separated


@pytest.mark.parametrize("case", list(range(5)))
def test_auc_and_curve_match_sklearn(case):
    s, y = list(_cases())[case]
    y = y.astype(int)
    if y.min() == y.max():
        y[0] = 1 - y[0]
    assert abs(M.roc_auc(s, y) - sk_metrics.roc_auc_score(y, s)) < 1e-9
    f, t, thr = M.roc_curve(s, y)
    fs, ts, thrs = sk_metrics.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(f, fs, atol=1e-12)
    np.testing.assert_allclose(t, ts, atol=1e-12)
    np.testing.assert_allclose(thr[1:], thrs[1:], atol=1e-12)
    assert np.isinf(thr[0])
    # Trapezoid area under our curve is the Mann-Whitney AUC too.
    assert abs(np.trapezoid(t, f) - M.roc_auc(s, y)) < 1e-9


def test_accepts_torch_tensors():
    s = torch.tensor([0.9, 0.1, 0.8, 0.3])
    y = torch.tensor([1, 0, 0, 1])
    assert M.roc_auc(s, y) == pytest.approx(sk_metrics.roc_auc_score(y.numpy(), s.numpy()), abs=1e-9)


def test_tpr_at_fpr_nan_when_unresolvable_and_matches_definition():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(40), np.zeros(64)]
    s = rng.normal(size=104) + y
    assert math.isnan(M.tpr_at_fpr(s, y, 0.01))  # 64 negatives < 100
    y2 = np.r_[np.ones(50), np.zeros(200)]
    s2 = rng.normal(size=250) + 2 * y2
    got = M.tpr_at_fpr(s2, y2, 0.01)
    fs, ts, _ = sk_metrics.roc_curve(y2, s2, drop_intermediate=False)
    assert got == pytest.approx(ts[fs <= 0.01].max())
    # Exactly 1/fpr negatives resolve it.
    y3 = np.r_[np.ones(10), np.zeros(1000)]
    assert not math.isnan(M.tpr_at_fpr(rng.normal(size=1010), y3, 0.001))


def test_advantage():
    y = np.r_[np.ones(5), np.zeros(5)]
    assert M.advantage(np.arange(10.0)[::-1], y) == pytest.approx(1.0)
    assert M.advantage(np.zeros(10), y) == pytest.approx(0.0)
    rng = np.random.default_rng(2)
    s = rng.normal(size=10)
    fs, ts, _ = sk_metrics.roc_curve(y, s, drop_intermediate=False)
    assert M.advantage(s, y) == pytest.approx((ts - fs).max())


def test_bootstrap_ci_dense_matches_loop_and_is_seeded():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(30), np.zeros(60)]
    s = np.round(rng.normal(size=90) + 0.7 * y, 1)  # ties
    lo, hi = M.bootstrap_auc_ci(s, y, n_bootstrap=300, seed=5)
    assert lo < M.roc_auc(s, y) < hi
    assert (lo, hi) == M.bootstrap_auc_ci(s, y, n_bootstrap=300, seed=5)
    old = M._DENSE_PAIRS
    try:
        M._DENSE_PAIRS = 0  # force the per-resample path: the same resamples give the same interval
        lo2, hi2 = M.bootstrap_auc_ci(s, y, n_bootstrap=300, seed=5)
    finally:
        M._DENSE_PAIRS = old
    assert lo2 == pytest.approx(lo, abs=1e-12) and hi2 == pytest.approx(hi, abs=1e-12)
    assert all(math.isnan(v) for v in M.bootstrap_auc_ci(s, y, n_bootstrap=0))


def test_bootstrap_ci_covers_chance_for_null_scores():
    rng = np.random.default_rng(4)
    y = np.r_[np.ones(40), np.zeros(80)]
    lo, hi = M.bootstrap_auc_ci(rng.normal(size=120), y, n_bootstrap=500, seed=0)
    assert lo < 0.5 < hi and hi - lo < 0.35


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        M.roc_auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError):
        M.roc_auc([0.1, float("nan")], [1, 0])
    with pytest.raises(ValueError):
        M.roc_auc([0.1, 0.2, 0.3], [1, 0])
