"""Privacy accounting for DP-SGD: epsilon spent, noise for a target epsilon, steps left in a budget.

Thin, cached wrappers around Opacus's accountants (``opacus.accountants``): the history format is
Opacus's ``[(noise_multiplier, sample_rate, steps), ...]`` so a history can be handed to
``RDPAccountant``/``PRVAccountant`` unchanged and gives the same epsilon. RDP epsilon is linear in
steps before the conversion to (epsilon, delta), so the per-step RDP curve is computed once per
(sample rate, noise) and every later query is a few vector operations (Opacus recomputes it each
time, ~20 ms). PRV queries are cached by history.
"""

from __future__ import annotations

import functools
import math
from typing import Iterable, Sequence

import numpy as np

from gmia_defend.errors import UserError

ACCOUNTANTS = ("rdp", "prv")
History = Sequence[tuple[float, float, int]]

#: Above this noise multiplier the clipped signal drowns; a target that needs more is refused.
MAX_NOISE_MULTIPLIER = 50.0


def check_accountant(name: str) -> str:
    """Validate an accountant name ("rdp" or "prv")."""
    name = str(name).lower()
    if name not in ACCOUNTANTS:
        raise UserError(f"unknown privacy accountant {name!r}; use accountant='rdp' or 'prv'")
    return name


def default_delta(num_units: int) -> float:
    """delta = 1 / (10 n): well below 1/n, the level at which "leak one unit in full" becomes likely."""
    if num_units < 1:
        raise UserError("cannot choose delta for an empty training set; pass delta= or a non-empty dataset")
    return 1.0 / (10.0 * num_units)


def create_accountant(name: str):
    """A fresh Opacus accountant (``RDPAccountant`` or ``PRVAccountant``)."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    return {"rdp": RDPAccountant, "prv": PRVAccountant}[check_accountant(name)]()


@functools.lru_cache(maxsize=64)
def _rdp_one_step(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp

    return np.asarray(rdp.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                      orders=RDPAccountant.DEFAULT_ALPHAS), dtype=np.float64)


@functools.lru_cache(maxsize=256)
def _prv_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    import warnings

    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = list(history)
    with warnings.catch_warnings():  # its RDP-based domain bound warns about alphas; same value
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


def _compact(history: Iterable[tuple[float, float, int]]) -> tuple[tuple[float, float, int], ...]:
    """Drop empty entries and merge consecutive equal (noise, rate) entries, as Opacus's ``step`` does."""
    out: list[tuple[float, float, int]] = []
    for s, q, t in history:
        if int(t) <= 0:
            continue
        if out and out[-1][0] == float(s) and out[-1][1] == float(q):
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + int(t))
        else:
            out.append((float(s), float(q), int(t)))
    return tuple(out)


def epsilon(history: History, delta: float, accountant: str = "rdp") -> float:
    """Epsilon spent by a history of Poisson-subsampled Gaussian steps, as Opacus's accountant gives it."""
    history = _compact(history)
    if not history:
        return 0.0
    if check_accountant(accountant) == "prv":
        return _prv_epsilon(history, float(delta))
    import warnings

    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp

    total = sum(t * _rdp_one_step(q, s) for s, q, t in history)
    with warnings.catch_warnings():  # "optimal order is the largest alpha": Opacus warns, same value
        warnings.simplefilter("ignore")
        eps, _ = rdp.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=total, delta=delta)
    return float(eps)


def noise_multiplier_for(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                         accountant: str = "rdp", max_noise_multiplier: float = MAX_NOISE_MULTIPLIER) -> float:
    """Smallest noise multiplier (Opacus ``get_noise_multiplier``) reaching ``target_epsilon`` after
    ``steps`` steps at ``sample_rate``; UserError (naming the fix) if the target is out of reach."""
    from opacus.accountants.utils import get_noise_multiplier

    if not target_epsilon > 0 or not math.isfinite(target_epsilon):
        raise UserError(f"target_epsilon must be a positive number, got {target_epsilon}")
    if steps < 1:
        raise UserError(f"the step budget must be at least one step, got {steps}; pass steps= or epochs=")
    fix = ("raise target_epsilon, train fewer steps/epochs, lower the sample rate (smaller batches), "
           "or use more training units")
    accountant = check_accountant(accountant)
    at_most = epsilon([(max_noise_multiplier, sample_rate, int(steps))], delta, accountant)
    if at_most > target_epsilon:  # checked first: Opacus's search would take minutes to give up
        raise UserError(f"target_epsilon={target_epsilon} (delta={delta:.3g}) over {steps} steps at sample rate "
                        f"{sample_rate:.4g} needs a noise multiplier above {max_noise_multiplier:g} (epsilon is "
                        f"still {at_most:.3g} there): the gradient would be noise; {fix}")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sigma = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                         sample_rate=sample_rate, steps=int(steps),
                                         accountant=accountant)
        except ValueError as err:  # Opacus: "The privacy budget is too low."
            raise UserError(f"target_epsilon={target_epsilon} (delta={delta:.3g}) is unreachable in {steps} steps "
                            f"at sample rate {sample_rate:.4g} ({err}); {fix}") from None
    return float(min(sigma, max_noise_multiplier))


def max_steps_within(target_epsilon: float, delta: float, noise_multiplier: float, sample_rate: float,
                     accountant: str = "rdp", history: History = (), limit: int = 10**8,
                     hint: int | None = None) -> int:
    """How many more steps at (noise, rate) keep epsilon <= target after ``history`` (0 if none).

    ``hint``: a guess (e.g. the planned number of steps); the search gallops out from it, so a good
    guess costs ~3 epsilon evaluations (that matters for the slower PRV accountant).
    """
    base = list(_compact(history))

    def ok(t: int) -> bool:
        return epsilon(base + [(noise_multiplier, sample_rate, t)], delta, accountant) <= target_epsilon

    if not ok(1):
        return 0
    start, gap = min(max(1, int(hint or 1)), limit), 1
    if ok(start):
        lo = start
        while True:  # find hi > lo with not ok(hi)
            hi = lo + gap
            if hi >= limit:
                return limit
            if not ok(hi):
                break
            lo, gap = hi, gap * 2
    else:
        hi = start
        while True:  # find lo < hi with ok(lo); ok(1) holds
            lo = max(1, hi - gap)
            if ok(lo):
                break
            hi, gap = lo, gap * 2
    while hi - lo > 1:  # ok(lo), not ok(hi)
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo
