"""Membership metrics on per-identity scores: ROC, AUC, TPR at a fixed FPR, advantage, bootstrap CI.

Pure functions on 1-D scores and binary labels (1 = member, 0 = non-member), computed in float64.
Higher score = "more likely a member". Ties are handled exactly: the AUC equals the Mann-Whitney
statistic with ties counted one half, and the ROC has one point per distinct score.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["roc_curve", "roc_auc", "tpr_at_fpr", "advantage", "bootstrap_auc_ci", "membership_metrics"]

# Bootstrap with a dense (positives x negatives) comparison matrix up to this many cells.
_DENSE_PAIRS = 4_000_000


def _as_arrays(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to float64 scores and bool labels; both classes must be present."""
    if hasattr(scores, "detach"):
        scores = scores.detach().cpu().double().numpy()
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 (non-member) or 1 (member)")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise ValueError("need at least one member (label 1) and one non-member (label 0)")
    return s, y


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr, thresholds)``, thresholds decreasing, starting at (0, 0) with +inf.

    Point k predicts "member" for ``score >= thresholds[k]``; one point per distinct score, no
    points dropped (equals sklearn's ``roc_curve(..., drop_intermediate=False)``).
    """
    s, y = _as_arrays(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_run = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    tps = np.cumsum(y_sorted)[last_of_run]
    fps = (last_of_run + 1) - tps
    tpr = np.r_[0.0, tps / y.sum()]
    fpr = np.r_[0.0, fps / (~y).sum()]
    thresholds = np.r_[np.inf, s_sorted[last_of_run]]
    return fpr, tpr, thresholds


def roc_auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve = P(member score > non-member score) + 0.5 P(equal) (Mann-Whitney)."""
    s, y = _as_arrays(scores, labels)
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    mid_rank = np.cumsum(counts) - (counts - 1) / 2.0  # average 1-based rank of each tied group
    ranks = mid_rank[inverse]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def tpr_at_fpr(scores: Any, labels: Any, fpr: float) -> float:
    """Highest TPR among ROC points with FPR <= ``fpr`` (no interpolation: a threshold you can use).

    NaN when there are fewer than ``1/fpr`` non-members: the FPR cannot be resolved, e.g. 64
    non-members cannot measure a 1 % FPR.
    """
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    s, y = _as_arrays(scores, labels)
    # Small tolerance so that 1/0.001 = 1000 negatives resolve 0.1 % despite float rounding.
    if (~y).sum() < 1.0 / fpr - 1e-9:
        return math.nan
    f, t, _ = roc_curve(s, y)
    return float(t[f <= fpr + 1e-12].max())


def advantage(scores: Any, labels: Any) -> float:
    """Membership advantage: max over thresholds of TPR - FPR (0 = chance, 1 = perfect)."""
    f, t, _ = roc_curve(scores, labels)
    return float(np.max(t - f))


def bootstrap_auc_ci(
    scores: Any, labels: Any, n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC, resampling identities within each class.

    Members and non-members are resampled with replacement separately (their counts stay fixed),
    so every resample has both classes. Returns ``(nan, nan)`` for ``n_bootstrap == 0``.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    s, y = _as_arrays(scores, labels)
    if n_bootstrap <= 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    pos, neg = s[y], s[~y]
    n_pos, n_neg = pos.size, neg.size
    w_pos = rng.multinomial(n_pos, np.full(n_pos, 1.0 / n_pos), size=n_bootstrap).astype(np.float64)
    w_neg = rng.multinomial(n_neg, np.full(n_neg, 1.0 / n_neg), size=n_bootstrap).astype(np.float64)
    if n_pos * n_neg <= _DENSE_PAIRS:
        # AUC of a resample = sum_ij w_i v_j H_ij / (n_pos n_neg), H = 1 / 0.5 / 0 for >, =, <.
        h = np.sign(pos[:, None] - neg[None, :]) * 0.5 + 0.5
        aucs = np.einsum("bi,ij,bj->b", w_pos, h, w_neg, optimize=True) / (n_pos * n_neg)
    else:
        aucs = np.empty(n_bootstrap)
        both = np.r_[pos, neg]
        lab = np.r_[np.ones(n_pos), np.zeros(n_neg)]
        for b in range(n_bootstrap):
            idx = np.r_[np.repeat(np.arange(n_pos), w_pos[b].astype(int)),
                        n_pos + np.repeat(np.arange(n_neg), w_neg[b].astype(int))]
            aucs[b] = roc_auc(both[idx], lab[idx])
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(aucs, [alpha, 1.0 - alpha])
    return float(low), float(high)


def membership_metrics(scores: Any, labels: Any, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, float]:
    """The DESIGN.md ``leakage/*`` metrics of one score (all but ``leak_rate``)."""
    low, high = bootstrap_auc_ci(scores, labels, n_bootstrap=n_bootstrap, seed=seed)
    return {
        "leakage/auc": roc_auc(scores, labels),
        "leakage/tpr_at_1pct_fpr": tpr_at_fpr(scores, labels, 0.01),
        "leakage/tpr_at_0.1pct_fpr": tpr_at_fpr(scores, labels, 0.001),
        "leakage/advantage": advantage(scores, labels),
        "leakage/auc_ci_low": low,
        "leakage/auc_ci_high": high,
    }
