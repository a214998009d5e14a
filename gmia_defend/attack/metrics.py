"""Membership metrics on per-identity scores: ROC, AUC, TPR at a fixed FPR, advantage, intervals,
permutation p-value and null band, empirical epsilon lower bound.

Pure functions on 1-D scores and binary labels (1 = member, 0 = non-member), computed in float64.
Higher score = "more likely a member". Ties are handled exactly: the AUC equals the Mann-Whitney
statistic with ties counted one half, and the ROC has one point per distinct score.

The unit is the identity: a label says whether a *person* was trained on, so the p-value, the null
band and the epsilon lower bound are statements about people, not images.

Example:

>>> import numpy as np
>>> scores = np.r_[np.linspace(0.6, 1.0, 20), np.linspace(0.0, 0.7, 60)]
>>> member = np.r_[np.ones(20), np.zeros(60)]
>>> m = membership_metrics(scores, member, n_bootstrap=200, n_permutations=500, seed=0)
>>> round(m["leakage/auc"], 3), m["leakage/p_value"] < 0.01
(0.978, True)
>>> m["leakage/null_auc_low"] < 0.5 < m["leakage/null_auc_high"]
True

One file on purpose: every figure of an audit is a pure function of the same scores and labels, kept beside each other.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["roc_curve", "roc_auc", "tpr_at_fpr", "advantage", "bootstrap_auc_ci", "permutation_null",
           "mann_whitney_null", "epsilon_lower_bound", "clopper_pearson", "membership_metrics", "METRIC_KEYS"]

METRIC_KEYS = ("leakage/auc", "leakage/auc_ci_low", "leakage/auc_ci_high", "leakage/tpr_at_1pct_fpr",
               "leakage/tpr_at_0.1pct_fpr", "leakage/advantage", "leakage/p_value", "leakage/null_auc_low",
               "leakage/null_auc_high", "leakage/epsilon_lower_bound")
# delta used by the epsilon lower bound when the caller gives none (a common DP target).
DEFAULT_DELTA = 1e-5

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


def _weighted_aucs(pos: np.ndarray, neg: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray) -> np.ndarray:
    """AUC of each weighted resample: ``pos`` [C, P], ``neg`` [C, Q] scores, weights of the same shapes.

    AUC_b = sum_ij w_i v_j H(pos_i - neg_j) / (P Q), H = 1 / 0.5 / 0 for >, =, <. Chunked so that a
    chunk's comparison tensor holds at most ``_DENSE_PAIRS`` cells.
    """
    c, p = pos.shape
    q = neg.shape[1]
    out = np.empty(c)
    chunk = max(1, _DENSE_PAIRS // max(p * q, 1))
    for s in range(0, c, chunk):
        e = min(s + chunk, c)
        h = np.sign(pos[s:e, :, None] - neg[s:e, None, :]) * 0.5 + 0.5
        out[s:e] = np.einsum("bi,bij,bj->b", w_pos[s:e], h, w_neg[s:e], optimize=True) / (p * q)
    return out


def _block_array(block_scores: Any, n: int) -> np.ndarray | None:
    if block_scores is None:
        return None
    if hasattr(block_scores, "detach"):
        block_scores = block_scores.detach().cpu().double().numpy()
    b = np.asarray(block_scores, dtype=np.float64)
    if b.ndim != 2 or b.shape[0] != n:
        raise ValueError(f"block_scores must be [identities={n}, blocks], got shape {b.shape}")
    if b.shape[1] < 2:
        return None  # one block carries no sample-level variation
    if not np.all(np.isfinite(b)):
        raise ValueError("block_scores contain NaN or inf")
    return b


def bootstrap_auc_ci(
    scores: Any, labels: Any, n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95,
    block_scores: Any = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC, resampling identities and, if given, latent blocks.

    Level 1 (identities): members and non-members are resampled with replacement separately (their
    counts stay fixed), so every resample has both classes. Level 2 (generated samples, when
    ``block_scores`` [identities, blocks] is given): the B latent blocks are resampled with
    replacement, *the same blocks for every identity* (all identities are scored on the same
    generated samples), and each identity's score moves by the change of its mean block score:
    ``score_i* = score_i + mean_b* block_i - mean_b block_i``. For a score that is a mean over
    samples this reproduces its sampling variance; for top-k / max scores it is the variance of
    the same statistic on N/B samples divided by B, a close stand-in. Returns ``(nan, nan)`` for
    ``n_bootstrap == 0``.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    s, y = _as_arrays(scores, labels)
    blocks = _block_array(block_scores, s.size)
    if n_bootstrap <= 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    w_pos = rng.multinomial(n_pos, np.full(n_pos, 1.0 / n_pos), size=n_bootstrap).astype(np.float64)
    w_neg = rng.multinomial(n_neg, np.full(n_neg, 1.0 / n_neg), size=n_bootstrap).astype(np.float64)
    if blocks is not None:
        nb = blocks.shape[1]
        w_blk = rng.multinomial(nb, np.full(nb, 1.0 / nb), size=n_bootstrap).astype(np.float64) / nb
        shifted = s[None, :] + w_blk @ blocks.T - blocks.mean(axis=1)[None, :]  # [n_bootstrap, n]
    else:
        shifted = np.broadcast_to(s, (n_bootstrap, s.size))
    if n_pos * n_neg <= _DENSE_PAIRS:
        aucs = _weighted_aucs(shifted[:, y], shifted[:, ~y], w_pos, w_neg)
    else:
        aucs = np.empty(n_bootstrap)
        lab = np.r_[np.ones(n_pos), np.zeros(n_neg)]
        for b in range(n_bootstrap):
            pos, neg = shifted[b, y], shifted[b, ~y]
            idx_p = np.repeat(np.arange(n_pos), w_pos[b].astype(int))
            idx_n = np.repeat(np.arange(n_neg), w_neg[b].astype(int))
            aucs[b] = roc_auc(np.r_[pos[idx_p], neg[idx_n]], lab)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(aucs, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _mid_ranks(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    mid_rank = np.cumsum(counts) - (counts - 1) / 2.0
    return mid_rank[inverse], counts


def permutation_null(scores: Any, labels: Any, n_permutations: int = 2000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """Permutation test of the member/non-member labels: ``(p_value, null_low, null_high)``.

    Shuffles which identities are called members (counts fixed) and recomputes the AUC. Under "the
    score does not depend on membership" the labels are exchangeable, so the test is exact:
    ``p = (1 + #{AUC_perm >= AUC}) / (1 + n_permutations)`` (one-sided: leakage raises member
    scores). The AUC's permutation distribution is the Mann-Whitney null of this split (ties
    included); ``null_low/high`` are its ``(1-level)/2`` and ``(1+level)/2`` quantiles: where a
    generator that learned nobody lands on these identities.
    """
    s, y = _as_arrays(scores, labels)
    n_permutations = int(n_permutations)
    if n_permutations < 1:
        raise ValueError("n_permutations must be >= 1 (use mann_whitney_null for the normal approximation)")
    ranks, _ = _mid_ranks(s)
    n, n_pos = s.size, int(y.sum())
    n_neg = n - n_pos
    observed = (ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    rng = np.random.default_rng(seed)
    aucs = np.empty(n_permutations)
    chunk = max(1, _DENSE_PAIRS // max(n, 1))
    for start in range(0, n_permutations, chunk):
        stop = min(start + chunk, n_permutations)
        picks = np.argsort(rng.random((stop - start, n)), axis=1)[:, :n_pos]
        aucs[start:stop] = (ranks[picks].sum(axis=1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    p = (1.0 + np.count_nonzero(aucs >= observed - 1e-12)) / (1.0 + n_permutations)
    a = (1.0 - level) / 2.0
    low, high = np.quantile(aucs, [a, 1.0 - a])
    return float(p), float(low), float(high)


def mann_whitney_null(scores: Any, labels: Any, level: float = 0.95) -> tuple[float, float, float]:
    """Normal approximation of the same null (tie-corrected Mann-Whitney): ``(p, null_low, null_high)``.

    Null mean 0.5, standard deviation ``sqrt(P Q (n + 1 - sum(t^3 - t) / (n (n - 1))) / 12) / (P Q)``
    for P members, Q non-members, n = P + Q and tie groups of sizes t. One-sided p with a
    continuity correction. Its spread falls as ``sqrt((P + Q + 1) / (12 P Q))``: four times the
    identities halve it.
    """
    from statistics import NormalDist

    s, y = _as_arrays(scores, labels)
    ranks, counts = _mid_ranks(s)
    n, n_pos = s.size, int(y.sum())
    n_neg = n - n_pos
    pq = float(n_pos * n_neg)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    tie = float(np.sum(counts.astype(np.float64) ** 3 - counts)) / (n * (n - 1)) if n > 1 else 0.0
    sd_u = math.sqrt(max(pq * ((n + 1) - tie) / 12.0, 0.0))
    if sd_u == 0.0:
        return 1.0, 0.5, 0.5
    z = (u - pq / 2.0 - 0.5) / sd_u
    p = 1.0 - NormalDist().cdf(z)
    q = NormalDist().inv_cdf(0.5 + level / 2.0)
    return float(p), 0.5 - q * sd_u / pq, 0.5 + q * sd_u / pq


def _binom_cdf(k: np.ndarray, n: int, p: np.ndarray) -> np.ndarray:
    """P(X <= k) for X ~ Binomial(n, p), elementwise over k and p (log-space sums, float64)."""
    i = np.arange(n + 1, dtype=np.float64)
    log_fact = np.r_[0.0, np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))]
    log_comb = log_fact[n] - log_fact - log_fact[::-1]
    p = np.clip(p, 1e-300, 1 - 1e-16)[:, None]
    log_pmf = log_comb[None, :] + i[None, :] * np.log(p) + (n - i)[None, :] * np.log1p(-p)
    mask = i[None, :] <= k[:, None]
    return np.where(mask, np.exp(log_pmf), 0.0).sum(axis=1)


def clopper_pearson(k: np.ndarray, n: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper-Pearson bounds of a binomial rate: ``(lower, upper)``, each at level 1-alpha.

    ``upper`` solves ``P(X <= k; n, p) = alpha``, ``lower`` solves ``P(X >= k; n, p) = alpha`` (the
    beta-quantile form, found by bisection to 1e-12 so no scipy is needed).

    >>> lo, hi = clopper_pearson(np.array([0, 5]), 10, 0.025)
    >>> [round(float(v), 4) for v in (lo[0], hi[0], lo[1], hi[1])]
    [0.0, 0.3085, 0.1871, 0.8129]
    """
    k = np.asarray(k, dtype=np.float64).reshape(-1)
    n = int(n)

    def solve(target_fn) -> np.ndarray:
        lo, hi = np.zeros_like(k), np.ones_like(k)
        for _ in range(45):  # 2^-45 < 3e-14
            mid = (lo + hi) / 2.0
            below = target_fn(mid)  # True where the root is above mid
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        return (lo + hi) / 2.0

    # upper: CDF(k; p) decreases in p; root where CDF = alpha
    upper = np.where(k >= n, 1.0, solve(lambda p: _binom_cdf(k, n, p) > alpha))
    # lower: P(X >= k; p) = 1 - CDF(k - 1; p) increases in p; root where it equals alpha
    lower = np.where(k <= 0, 0.0, solve(lambda p: 1.0 - _binom_cdf(k - 1, n, p) < alpha))
    return lower, upper


def epsilon_lower_bound(scores: Any, labels: Any, delta: float = DEFAULT_DELTA, alpha: float = 0.05) -> float:
    """Smallest epsilon consistent with the attack's TPR/FPR, with confidence 1 - alpha (0 = nothing shown).

    Any (epsilon, delta)-DP mechanism forces every test to satisfy ``FPR + e^eps FNR >= 1 - delta``
    and ``FNR + e^eps FPR >= 1 - delta`` (Kairouz et al. 2015), so a measured pair bounds epsilon
    from below (Jagielski et al. 2020, "Auditing differentially private machine learning"; the
    epsilon lower bound of TensorFlow Privacy's membership-inference report). Per threshold we take
    one-sided Clopper-Pearson *upper* bounds of FPR (over non-member identities) and FNR (over
    member identities). Choosing the threshold is corrected by **Bonferroni over every threshold
    tried** (each distinct score; 2 bounds each, so each bound is at ``alpha / (2 T)``): the result
    holds at 1 - alpha for the best threshold. The unit is the identity, i.e. a person-level
    epsilon; like TensorFlow Privacy it treats the audited identities of one model as the trials,
    which is the usual one-model heuristic rather than a proof over retrained models.
    """
    if not 0.0 <= float(delta) < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    s, y = _as_arrays(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    fpr, tpr, _ = roc_curve(s, y)
    fp, tp = np.rint(fpr * n_neg), np.rint(tpr * n_pos)
    # Thresholds that flag no member or every non-member can never prove epsilon > 0, whatever the
    # data: they are not counted as tried.
    useful = (tp > 0) & (fp < n_neg)
    fp, tp = fp[useful], tp[useful]
    if fp.size == 0:
        return 0.0
    a = float(alpha) / (2.0 * fp.size)
    _, fpr_hi = clopper_pearson(fp, n_neg, a)
    _, fnr_hi = clopper_pearson(n_pos - tp, n_pos, a)
    with np.errstate(divide="ignore", invalid="ignore"):
        one = np.log((1.0 - delta - fpr_hi) / fnr_hi)
        two = np.log((1.0 - delta - fnr_hi) / fpr_hi)
    best = np.nanmax(np.r_[one, two, 0.0])
    return float(max(best, 0.0)) if math.isfinite(best) else 0.0


def membership_metrics(
    scores: Any,
    member: Any,
    block_scores: Any = None,
    *,
    n_bootstrap: int = 1000,
    n_permutations: int = 2000,
    seed: int = 0,
    delta: float | None = None,
    alpha: float = 0.05,
) -> dict[str, float]:
    """Every ``leakage/*`` metric of one score except ``leak_rate`` (see ``METRIC_KEYS``).

    ``scores``: one per identity; ``member``: 1 / True for members; ``block_scores``: optional
    [identities, latent blocks] array of the same score computed on each block of the generated
    samples (two-level bootstrap interval, see ``bootstrap_auc_ci``). ``n_permutations=0`` uses the
    tie-corrected normal Mann-Whitney null instead of permutations. ``delta`` (default 1e-5) and
    ``alpha`` set the epsilon lower bound (``epsilon_lower_bound``: Clopper-Pearson, Bonferroni over
    thresholds); ``alpha`` also sets the interval and null-band levels (1 - alpha). Deterministic in
    ``seed``; any subset of identities (e.g. a selection or confirmation half) can be scored alone.
    """
    s, y = _as_arrays(scores, member)
    level = 1.0 - float(alpha)
    low, high = bootstrap_auc_ci(s, y, n_bootstrap=n_bootstrap, seed=seed, level=level,
                                 block_scores=block_scores)
    if int(n_permutations) > 0:
        p, null_low, null_high = permutation_null(s, y, n_permutations, seed=seed + 1, level=level)
    else:
        p, null_low, null_high = mann_whitney_null(s, y, level=level)
    return {
        "leakage/auc": roc_auc(s, y),
        "leakage/auc_ci_low": low,
        "leakage/auc_ci_high": high,
        "leakage/tpr_at_1pct_fpr": tpr_at_fpr(s, y, 0.01),
        "leakage/tpr_at_0.1pct_fpr": tpr_at_fpr(s, y, 0.001),
        "leakage/advantage": advantage(s, y),
        "leakage/p_value": p,
        "leakage/null_auc_low": null_low,
        "leakage/null_auc_high": null_high,
        "leakage/epsilon_lower_bound": epsilon_lower_bound(
            s, y, DEFAULT_DELTA if delta is None else float(delta), alpha),
    }
