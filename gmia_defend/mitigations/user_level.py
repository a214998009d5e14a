"""Per-person (user-level) privacy accounting for DP-SGD on the discriminator: ULS and ELS.

Two ways to protect people rather than images (Charles et al. 2024, "Fine-tuning large language
models with user-level differential privacy", arXiv 2407.07737):

ULS (user-level sampling; ``unit="identity"``)
    Each step samples people with Poisson rate q; a sampled person brings up to m images whose
    summed gradient is clipped to C. One person changes the clipped sum by at most C, so the
    ordinary subsampled-Gaussian accountant (Opacus RDP/PRV) gives epsilon per person directly.

ELS (example-level sampling with a person-level guarantee; ``unit="image"`` on data capped at k
images per person)
    Each step samples images with Poisson rate q and clips each image's gradient to C; nobody has
    more than k training images. A person's k images enter a step Binomial(k, q) times, so their
    contribution is j clipped gradients (norm <= j C) with probability Binom(j; k, q): a mixture of
    Gaussians with sensitivities 0..k. ``dp_accounting``'s PLD accountant composes that mixture
    exactly (``MixtureOfGaussiansDpEvent``); with k = 1 it is the image-level accountant.

Every image-level run is an ELS run for k = the largest number of images any person has, so its
per-person epsilon is reported with the same accountant. PLD epsilons here are pessimistic
(upper bounds) at the chosen discretisation.

>>> one = els_epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=100, k=1, delta=1e-5)
>>> two = els_epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=100, k=2, delta=1e-5)
>>> round(one, 2), round(two, 2)  # a person with 2 images: about twice an image's epsilon
(0.72, 1.53)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from gmia_defend.errors import UserError
from gmia_defend.mitigations import accounting

SCHEMES = ("uls", "els")
#: PLD discretisation of the privacy loss (pessimistic: coarser = looser, still an upper bound).
DISCRETIZATION = 1e-3
#: Per-step probability that a person contributes more images than the mixture keeps (see ``mixture``).
TAIL_MASS = 1e-16
#: Grid points of the privacy loss a one-step PLD may use; beyond, the discretisation coarsens (pessimistic).
MAX_GRID = 5_000

History = Sequence[tuple[float, float, int]]


def person_delta(num_people: int) -> float:
    """Per-person delta = 1 / (10 x people)."""
    return accounting.default_delta(num_people)


def mixture(sample_rate: float, k: int) -> tuple[list[float], list[float], float]:
    """(sensitivities in units of C, probabilities, dropped tail mass) of one person's contribution to
    one ELS step: j of the person's k images are sampled with probability Binom(j; k, q).

    Counts j whose tail P(J > j) is below ``TAIL_MASS`` are dropped and the rest renormalised: the
    mechanism conditioned on "no step sampled more" is accounted exactly, and the event that some
    step did (probability at most steps x tail) is added to delta by ``els_epsilon_history``.
    """
    from scipy.stats import binom

    k = int(k)
    if k < 1:
        raise UserError(f"the per-person image cap k must be >= 1, got {k}")
    js = np.arange(k + 1)
    pmf = binom.pmf(js, k, float(sample_rate))
    tail = binom.sf(js, k, float(sample_rate))  # P(J > j)
    keep = int(np.argmax(tail < TAIL_MASS)) if (tail < TAIL_MASS).any() else k
    dropped = float(tail[keep]) if keep < k else 0.0
    probs = pmf[:keep + 1] / pmf[:keep + 1].sum()
    return [float(j) for j in range(keep + 1)], [float(p) for p in probs], dropped


@functools.lru_cache(maxsize=32)
def _one_step_pld(noise_multiplier: float, sample_rate: float, k: int, discretization: float):
    from dp_accounting.pld import privacy_loss_distribution as pld

    sens, probs, _ = mixture(sample_rate, k)
    # the privacy loss spans about (largest sensitivity)^2 / (2 sigma^2) on either side: keep its grid
    # at most MAX_GRID points (a coarser grid is pessimistic: still an upper bound)
    span = max(1.0, sens[-1] ** 2 / (2 * float(noise_multiplier) ** 2) + 8 * sens[-1] / float(noise_multiplier))
    step = max(float(discretization), span / MAX_GRID)
    # tails below e^-30 of mass are counted as infinite privacy loss (pessimistic): a 1e-13 change of
    # delta, for a third less work than the library's default e^-50
    return pld.from_mixture_gaussian_mechanism(standard_deviation=float(noise_multiplier), sensitivities=sens,
                                               sampling_probs=probs, value_discretization_interval=step,
                                               log_mass_truncation_bound=-30)


def _compact(history: Iterable[tuple[float, float, int]]) -> tuple[tuple[float, float, int], ...]:
    return accounting._compact(history)


@functools.lru_cache(maxsize=1024)
def _els_epsilon(history: tuple[tuple[float, float, int], ...], k: int, delta: float, discretization: float) -> float:
    total, eta = None, 0.0
    for sigma, q, t in history:
        step = _one_step_pld(sigma, q, k, discretization).self_compose(int(t))
        total = step if total is None else total.compose(step)
        eta += int(t) * mixture(q, k)[2]  # P(some step sampled more of the person than the mixture keeps)
    if total is None:
        return 0.0
    if eta >= 0.01 * delta:
        raise UserError(f"the per-person accountant's truncation ({eta:.2g}) is not negligible against "
                        f"delta={delta:.3g}; use a larger delta or fewer steps")
    # (eps, delta - eta)-DP given the event of probability >= 1 - eta => (eps - ln(1 - eta), delta)-DP
    return float(total.get_epsilon_for_delta(float(delta) - eta)) - math.log1p(-eta)


def els_epsilon_history(history: History, k: int, delta: float, discretization: float = DISCRETIZATION) -> float:
    """Per-person epsilon of an ELS run: a history of (noise_multiplier, image sample rate, steps)."""
    if not 0 < delta < 1:
        raise UserError(f"delta must be in (0, 1), got {delta}")
    return _els_epsilon(_compact(history), int(k), float(delta), float(discretization))


def els_epsilon(noise_multiplier: float, sample_rate: float, steps: int, k: int, delta: float,
                discretization: float = DISCRETIZATION) -> float:
    """Per-person epsilon after ``steps`` ELS steps (Poisson rate q over images, at most k images a person)."""
    return els_epsilon_history([(noise_multiplier, sample_rate, int(steps))], k, delta, discretization)


def els_max_steps(target_epsilon: float, noise_multiplier: float, sample_rate: float, k: int, delta: float,
                  history: History = (), limit: int = 10**7) -> int:
    """How many more ELS steps keep the per-person epsilon <= target after ``history`` (0 if none)."""
    base = list(_compact(history))

    def ok(t: int) -> bool:
        return els_epsilon_history(base + [(noise_multiplier, sample_rate, t)], k, delta) <= target_epsilon

    if not ok(1):
        return 0
    lo, hi = 1, 2
    while ok(hi):
        lo, hi = hi, hi * 2
        if hi >= limit:
            return limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def _solve_sigma(eps_at, target: float, max_sigma: float) -> float:
    """Smallest sigma (to 1 %) with eps_at(sigma) <= target; eps_at decreases in sigma.

    Brackets from sigma = 1 outwards (small sigmas are the slow PLD evaluations), then narrows the
    bracket by interpolating log epsilon against log sigma (nearly linear), bisecting when that stalls.
    """
    hi = min(1.0, max_sigma)
    f_hi = eps_at(hi)
    if f_hi > target:
        lo, f_lo = hi, f_hi
        while True:
            hi = min(hi * 2, max_sigma)
            f_hi = eps_at(hi)
            if f_hi <= target:
                break
            if hi >= max_sigma:
                return max_sigma  # out of reach: the caller refuses
            lo, f_lo = hi, f_hi
    else:
        lo = hi / 2
        f_lo = eps_at(lo)
        while f_lo <= target:
            hi, f_hi, lo = lo, f_lo, lo / 2
            if lo < 1e-3:
                return hi
            f_lo = eps_at(lo)
    log_t = math.log(target)
    while hi / lo > 1.01:
        if f_hi > 0 and f_lo > f_hi and math.isfinite(f_lo):
            a, b = math.log(lo), math.log(hi)
            x = a + (math.log(f_lo) - log_t) * (b - a) / (math.log(f_lo) - math.log(f_hi))
            x = min(max(x, a + 0.1 * (b - a)), b - 0.1 * (b - a))  # stay inside: no stalling at an end
            mid = math.exp(x)
        else:
            mid = math.sqrt(lo * hi)
        f_mid = eps_at(mid)
        if f_mid <= target:
            hi, f_hi = mid, f_mid
            if f_mid >= target * 0.995:
                break  # within 0.5 % of the target from below: close enough
        else:
            lo, f_lo = mid, f_mid
    return hi


def _coarse(discretization: float) -> float:
    return max(discretization, 1e-2)


def person_epsilon(scheme: str, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                   k: int = 1, accountant: str = "rdp", discretization: float = DISCRETIZATION) -> float:
    """Per-person epsilon of a scheme ("uls": Opacus accountant over people; "els": the mixture PLD)."""
    scheme = check_scheme(scheme)
    if scheme == "uls":
        return accounting.epsilon([(noise_multiplier, sample_rate, int(steps))], delta, accountant)
    return els_epsilon(noise_multiplier, sample_rate, steps, k, delta, discretization)


def check_scheme(scheme: str) -> str:
    scheme = str(scheme).lower()
    if scheme not in SCHEMES:
        raise UserError(f"unknown user-level scheme {scheme!r}; use 'uls' (sample people) or 'els' "
                        "(sample images, at most k per person)")
    return scheme


def noise_for_person_target(target_epsilon: float, *, scheme: str, people: int, steps: int,
                            expected_batch: float, k: int = 1, images: int | None = None,
                            delta: float | None = None, accountant: str = "rdp",
                            max_noise_multiplier: float = accounting.MAX_NOISE_MULTIPLIER) -> float:
    """Noise multiplier that reaches a per-person ``target_epsilon`` after ``steps`` steps.

    ``expected_batch``: expected sampled units per step (people for ULS, images for ELS); the sample
    rate is ``expected_batch / people`` (ULS) or ``expected_batch / images`` (ELS, ``images`` = the
    capped training images). A target that no noise up to ``max_noise_multiplier`` reaches is refused
    up front, naming the smallest number of people (same batch, steps and cap) or the largest number
    of steps (same people) that would reach it.
    """
    scheme = check_scheme(scheme)
    if not target_epsilon > 0 or not math.isfinite(target_epsilon):
        raise UserError(f"the per-person target epsilon must be a positive number, got {target_epsilon}")
    if people < 1 or steps < 1 or not expected_batch > 0:
        raise UserError("a per-person target needs people >= 1, steps >= 1 and a positive batch size")
    k = max(1, int(k))
    images = int(images) if images is not None else people * k
    delta = person_delta(people) if delta is None else float(delta)
    units = people if scheme == "uls" else images
    q = float(expected_batch) / units
    if not 0 < q <= 1:
        raise UserError(f"batch {expected_batch:g} over {units} {'people' if scheme == 'uls' else 'images'} gives "
                        f"sample rate {q:.4g}, outside (0, 1]; use a smaller batch or more data")

    def eps(sigma: float, q_: float = q, steps_: int = steps, delta_: float = delta,
            disc: float = _coarse(DISCRETIZATION)) -> float:
        if scheme == "uls":
            return accounting.epsilon([(sigma, q_, int(steps_))], delta_, accountant)
        return els_epsilon(sigma, q_, steps_, k, delta_, disc)

    sigma = _solve_sigma(eps, target_epsilon, max_noise_multiplier)
    if sigma >= max_noise_multiplier and eps(max_noise_multiplier) > target_epsilon:
        raise UserError(_unreachable(target_epsilon, scheme, people, steps, expected_batch, k, images, delta,
                                     max_noise_multiplier, eps))
    if scheme == "els":  # solved on a coarse grid; make sure the fine accountant agrees
        while sigma < max_noise_multiplier and els_epsilon(sigma, q, steps, k, delta) > target_epsilon:
            sigma *= 1.01
    return float(min(sigma, max_noise_multiplier))


def _unreachable(target: float, scheme: str, people: int, steps: int, batch: float, k: int, images: int,
                 delta: float, max_sigma: float, eps) -> str:
    """One line: the target, why it is out of reach, the fewest people and the most steps that reach it."""
    per_person = images / people

    def eps_people(n: int) -> float:  # same batch and steps, more people: lower rate and delta
        units = n if scheme == "uls" else max(1, int(round(n * per_person)))
        return eps(max_sigma, min(1.0, batch / units), steps, person_delta(n))

    n_lo, n_hi = people, people * 2
    while eps_people(n_hi) > target and n_hi < 10**8:
        n_lo, n_hi = n_hi, n_hi * 2
    if eps_people(n_hi) > target:
        people_hint = "no number of people up to 10^8 reaches it at this batch and step count"
    else:
        while n_hi - n_lo > max(1, n_lo // 200):
            mid = (n_lo + n_hi) // 2
            n_lo, n_hi = (n_lo, mid) if eps_people(mid) <= target else (mid, n_hi)
        people_hint = f"use at least {n_hi} people (same batch and steps)"
    t_lo, t_hi = 0, steps  # eps(steps) > target
    while t_hi - t_lo > 1:
        mid = (t_lo + t_hi) // 2
        t_lo, t_hi = (mid, t_hi) if eps(max_sigma, steps_=mid) <= target else (t_lo, mid)
    steps_hint = (f"at most {t_lo} steps with {people} people" if t_lo >= 1
                  else f"not even one step suffices with {people} people")
    return (f"per-person target epsilon {target:g} (delta {delta:.3g}, scheme {scheme.upper()}) is out of reach with "
            f"{people} people and {steps} steps at batch {batch:g}: even noise multiplier {max_sigma:g} leaves "
            f"epsilon {eps(max_sigma):.3g}; {people_hint}, or {steps_hint}, "
            "or raise the target")


# --------------------------------------------------------------------------- per-run report


@dataclass(frozen=True)
class PersonGuarantee:
    """The per-person reading of a DP run: which scheme, epsilon per person, and what it means."""

    scheme: str  # "uls" or "els" (an image-level run is ELS with k = the largest per-person image count)
    epsilon_person: float
    delta_person: float
    people: int
    k: int | None

    def describe(self) -> str:
        if self.scheme == "uls":
            return (f"epsilon {self.epsilon_person:.3g} per person (delta {self.delta_person:.3g}): people sampled "
                    "(ULS), each person's summed gradient clipped; covers all of a person's images")
        return (f"epsilon {self.epsilon_person:.3g} per person (delta {self.delta_person:.3g}): images sampled, "
                f"at most {self.k} per person (ELS), "
                "accounted as a mixture of Gaussians over the person's images")


def person_guarantee(private_d: Any, discretization: float = DISCRETIZATION) -> PersonGuarantee:
    """Per-person epsilon of a ``PrivateDiscriminator`` (identity unit: ULS; image unit: ELS)."""
    targets = getattr(private_d, "targets", None)
    if private_d.unit == "identity":
        people = int(private_d.num_units)
        delta = float(private_d.delta)
        return PersonGuarantee("uls", float(private_d.epsilon), delta, people,
                               getattr(private_d, "max_images_per_identity", None))
    if targets is None:
        raise UserError("the per-person epsilon of an image-level run needs each training image's identity: "
                        "build the private discriminator with datamodule= or targets=")
    counts = np.bincount(np.asarray(targets, dtype=np.int64) - int(np.min(np.asarray(targets))))
    counts = counts[counts > 0]
    people, k = int(counts.size), int(counts.max())
    delta = person_delta(people)
    eps = els_epsilon_history(private_d.history, k, delta, discretization)
    return PersonGuarantee("els", eps, delta, people, k)
