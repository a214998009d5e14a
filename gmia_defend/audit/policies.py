"""What to release and when to stop, as pure functions of audit records.

The callbacks, ``gmia-defend report``, ``watch`` and the benchmarks all call these two functions, so
a decision made during training can be recomputed from ``audits.jsonl`` alone.

Release rule: among successful audits that are trained (after ``min_kimg``, not the untrained
generator, and, when the untrained generator was audited, of a quality at least ``min_quality_gain``
better than it), measured, and within the leakage budget (``metric <= budget``, and with ``alpha``
also ``p_value >= alpha``), release the best quality; ties go to lower leakage, then earlier kimg.
When the audits split their identities into a selection and a confirmation half, the rule reads the
selection half and the figures reported for the release come from the confirmation half (the release
is chosen among K audits: its own figures on the identities it was chosen with are biased low).

Example:
    >>> recs = [{"kimg": 0.0, "metrics": {"leakage/auc": 0.35, "quality/fd_x": 9.0}},
    ...         {"kimg": 4.0, "metrics": {"leakage/auc": 0.55, "quality/fd_x": 3.0}},
    ...         {"kimg": 8.0, "metrics": {"leakage/auc": 0.75, "quality/fd_x": 2.0}}]
    >>> d = select_release(recs, ReleaseRule(budget=0.6))
    >>> d["chosen"]["kimg"], [c["excluded_by"] for c in d["candidates"]]
    (4.0, ['untrained', None, 'budget'])
    >>> stop_decision(recs, StopRule(budget=0.7))["stop"]
    True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable, Mapping

from gmia_defend.audit.record import (CONFIRMATION, DEFAULT_BUDGET, DEFAULT_METRIC, LEAKAGE_PREFIX, P_VALUE,
                                      PUBLIC_PREFIX, SELECTION, AuditRecord, as_records, half_key, is_public,
                                      quality_key_of, successful_audits)
from gmia_defend.errors import UserError

CORRECTION_SPLIT = ("identity split: the rule selected on a seeded half of the audited identities (stratified by "
                    "membership); the reported figures come from the other half, which took no part in the choice")
CORRECTION_PUBLIC = ("none needed: the rule read public identities only (canaries trained on on purpose against "
                     "public people never trained on), so the figures reported on the protected identities took no "
                     "part in the choice")
CORRECTION_NONE = ("none: the audits did not split their identities, so the reported figures come from the same "
                   "identities the rule selected on and are biased low (winner's curse over the audits compared)")


@dataclass(frozen=True)
class ReleaseRule:
    """Options of ``select_release``; ``min_kimg`` and ``min_quality_gain`` keep untrained generators out.

    ``use_leakage=False`` selects on quality alone (with a public quality reference, a choice that
    uses no private data, so a DP epsilon covers it); leakage is still reported. A ``public/leakage/...``
    metric (public canaries, see ``IdentityDataModule(public_canaries=...)``) selects on leakage
    without private data: the protected identities' figures are then reported on all of them.
    """

    budget: float = DEFAULT_BUDGET
    metric: str = DEFAULT_METRIC
    quality_metric: str | None = None
    min_kimg: float = 0.0
    min_quality_gain: float | None = 0.05
    alpha: float | None = None
    halves: bool = True
    require_checkpoint: bool = False
    use_leakage: bool = True

    def __post_init__(self) -> None:
        _check_common(self.metric, self.alpha)


@dataclass(frozen=True)
class StopRule:
    """Options of ``stop_decision`` (``LeakageEarlyStopping`` takes the same names)."""

    budget: float = DEFAULT_BUDGET
    metric: str = DEFAULT_METRIC
    patience: int = 1
    fid_patience: int | None = None
    fid_min_delta: float = 0.0
    leakage_min_delta: float = 0.0
    quality_metric: str | None = None
    min_kimg: float = 0.0
    alpha: float | None = None
    halves: bool = True

    def __post_init__(self) -> None:
        _check_common(self.metric, self.alpha)
        if int(self.patience) < 1 or (self.fid_patience is not None and int(self.fid_patience) < 1):
            raise UserError("patience and fid_patience must be >= 1")


def _check_common(metric: str, alpha: float | None) -> None:
    if not str(metric).startswith((LEAKAGE_PREFIX, PUBLIC_PREFIX + LEAKAGE_PREFIX)):
        raise UserError(f"metric must be a leakage/... key (e.g. leakage/auc), or public/leakage/... for the public "
                        f"canaries; got {metric!r}")
    if alpha is not None and not 0.0 < float(alpha) < 1.0:
        raise UserError(f"alpha (the p-value threshold) must be in (0, 1); got {alpha}")


def _rule(rule: Any, cls: type, overrides: Mapping[str, Any]) -> Any:
    if rule is None:
        rule = cls()
    elif isinstance(rule, Mapping):
        rule = cls(**rule)
    elif not isinstance(rule, cls):
        raise UserError(f"rule must be a {cls.__name__} or a dict of its options; got {type(rule).__name__}")
    return replace(rule, **overrides) if overrides else rule


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.4g}"


def _has_halves(records: Iterable[AuditRecord], metric: str) -> bool:
    return any(half_key(metric, SELECTION) in r.metrics for r in records)


def _value(r: AuditRecord, key: str, halves: bool) -> float:
    return r.metric(half_key(key, SELECTION)) if halves else r.metric(key)


def _p_key(metric: str) -> str:
    """The p-value that goes with ``metric``: the public canaries' own for a public metric."""
    return PUBLIC_PREFIX + P_VALUE if is_public(metric) else P_VALUE


def _label(metric: str, halves: bool) -> str:
    if is_public(metric):
        return f"{metric} (public canaries)"
    return f"{metric} (selection half)" if halves else metric


# ------------------------------------------------------------------------------------ release
def select_release(records: Iterable[Any], rule: ReleaseRule | Mapping[str, Any] | None = None,
                   **overrides: Any) -> dict[str, Any]:
    """Pick the release among audit records; returns a JSON-ready decision.

    Keys: ``released``, ``chosen`` (candidate or None), ``rule`` (text), ``options``, ``message``,
    ``selected_on``, ``correction``, ``reported`` (figures for the release, confirmation half when
    the audits split identities) and ``selection_figures``, and ``candidates``: every audit with
    ``eligible``, ``chosen``, ``reason`` and ``excluded_by`` (the rule that excluded it, or None).
    """
    rule = _rule(rule, ReleaseRule, overrides)
    records = as_records(records)
    audits = successful_audits(records)
    qkey = rule.quality_metric or quality_key_of(audits)
    halves = rule.halves and _has_halves(audits, rule.metric)
    label = _label(rule.metric, halves)
    baseline = next((r for r in audits if r.kimg <= 0.0), None)
    base_q = baseline.metric(qkey) if baseline is not None and qkey else math.nan
    candidates = [_candidate(r, rule, qkey, halves, label, base_q) for r in audits]
    candidates += [{"kimg": r.kimg, "step": r.step, "checkpoint": r.checkpoint, "leakage": math.nan,
                    "quality": math.nan, "metrics": {}, "eligible": False, "chosen": False,
                    "excluded_by": "failed", "reason": f"audit failed: {r.error}"} for r in records if r.error]
    eligible = [c for c in candidates if c["eligible"]]
    eligible.sort(key=(lambda c: (c["quality"], c["leakage"], c["kimg"])) if qkey else (lambda c: -c["kimg"]))
    chosen = eligible[0] if eligible else None
    for c in eligible:
        c["reason"] = _ranking_reason(c, chosen, qkey, label, len(eligible))
        c["chosen"] = c is chosen
    candidates.sort(key=lambda c: c["kimg"])
    decision: dict[str, Any] = {
        "released": chosen is not None, "chosen": chosen, "budget": rule.budget, "metric": rule.metric,
        "quality_metric": qkey, "min_kimg": rule.min_kimg, "options": asdict(rule),
        "rule": _rule_text(rule, qkey, label),
        "message": _message(chosen, audits, candidates, rule, qkey, label),
        "selected_on": _selected_on(rule.metric, halves),
        "correction": CORRECTION_PUBLIC if is_public(rule.metric) else CORRECTION_SPLIT if halves else CORRECTION_NONE,
        "reported": None, "selection_figures": None, "candidates": candidates,
    }
    if chosen is not None:
        record = next(r for r in audits if r.kimg == chosen["kimg"])
        decision["reported"] = record.half_metrics(CONFIRMATION) if halves else _plain(record.metrics)
        decision["selection_figures"] = record.half_metrics(SELECTION) if halves else (
            {k: v for k, v in record.metrics.items() if is_public(k)} if is_public(rule.metric) else None)
    return decision


def _selected_on(metric: str, halves: bool) -> str:
    if is_public(metric):
        return "public identities only (canaries trained on on purpose vs public people never trained on)"
    return "selection half of the audited identities" if halves else "all audited identities"


def _plain(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith((f"{SELECTION}/", f"{CONFIRMATION}/"))}


def _candidate(r: AuditRecord, rule: ReleaseRule, qkey: str | None, halves: bool, label: str,
               base_q: float) -> dict[str, Any]:
    leak = _value(r, rule.metric, halves)
    p = _value(r, _p_key(rule.metric), halves)
    qual = r.metric(qkey) if qkey else math.nan
    cand = {"kimg": r.kimg, "step": r.step, "checkpoint": r.checkpoint, "leakage": leak, "quality": qual,
            "p_value": p, "metrics": dict(r.metrics), "eligible": False, "chosen": False}
    gain = rule.min_quality_gain
    if r.kimg <= 0.0:
        why = ("untrained", "the untrained generator (0 kimg) is never released")
    elif r.kimg < rule.min_kimg:
        why = ("min_kimg", f"before min_kimg ({_fmt(r.kimg)} < {rule.min_kimg:g})")
    elif rule.use_leakage and not math.isfinite(leak):
        why = ("not_measured", f"{label} not measured")
    elif rule.use_leakage and leak > rule.budget:
        why = ("budget", f"{label} {_fmt(leak)} > budget {rule.budget:g}")
    elif rule.use_leakage and rule.alpha is not None and math.isfinite(p) and p < rule.alpha:
        why = ("p_value", f"leakage is significant: p-value {_fmt(p)} < alpha {rule.alpha:g}")
    elif qkey and not math.isfinite(qual):
        why = ("not_measured", f"{qkey} not measured")
    elif qkey and gain is not None and math.isfinite(base_q) and not qual <= (1.0 - gain) * base_q:
        why = ("quality_bar", f"{qkey} {_fmt(qual)} is not {gain:.0%} better than the untrained generator's "
                              f"{_fmt(base_q)}: it has not learned enough")
    elif rule.require_checkpoint and not r.checkpoint:
        why = ("no_checkpoint", "no checkpoint kept for this audit")
    else:
        why = (None, "")
        cand["eligible"] = True
    cand["excluded_by"], cand["reason"] = why
    return cand


def _ranking_reason(c: dict, chosen: dict, qkey: str | None, label: str, n: int) -> str:
    if c is chosen:
        best = f"lowest {qkey} ({_fmt(c['quality'])})" if qkey else "latest audit"
        return f"chosen: {best} among {n} within budget"
    if qkey and c["quality"] > chosen["quality"]:
        return f"within budget, but {qkey} {_fmt(c['quality'])} > {_fmt(chosen['quality'])}"
    if qkey and c["leakage"] > chosen["leakage"]:
        return f"within budget, same quality, but higher {label} {_fmt(c['leakage'])}"
    return "within budget, same quality and leakage, but later kimg" if qkey else "within budget, but not the latest"


def _rule_text(rule: ReleaseRule, qkey: str | None, label: str) -> str:
    if not rule.use_leakage:
        text = (f"release the audited checkpoint with the lowest {qkey}; leakage is reported but not used to "
                "choose (use_leakage=False)" if qkey else "release the latest audited checkpoint (use_leakage=False)")
        return text + "; the untrained generator (0 kimg) is never released"
    text = (f"release the audited checkpoint with the lowest {qkey} among those with {label} <= {rule.budget:g}; "
            f"ties: lowest {label}, then earliest kimg" if qkey else
            f"no quality metric recorded: release the latest audited checkpoint with {label} <= {rule.budget:g}")
    if rule.alpha is not None:
        text += f"; leakage significant at p < {rule.alpha:g} is excluded"
    text += "; the untrained generator (0 kimg) is never released"
    if rule.min_kimg > 0:
        text += f"; audits before {rule.min_kimg:g} kimg are not considered"
    if qkey and rule.min_quality_gain is not None:
        text += (f"; when the untrained generator was audited, {qkey} must be at least "
                 f"{rule.min_quality_gain:.0%} better than its")
    return text


def _message(chosen: dict | None, audits: list, candidates: list[dict], rule: ReleaseRule, qkey: str | None,
             label: str) -> str:
    if chosen is not None:
        return (f"release: the checkpoint at {_fmt(chosen['kimg'])} kimg ({label} {_fmt(chosen['leakage'])} <= "
                f"{rule.budget:g}" + (f", {qkey} {_fmt(chosen['quality'])}" if qkey else "") + ")")
    if not audits:
        return "nothing released: no successful audit was recorded"
    by_rule: dict[str, int] = {}
    for c in candidates:
        by_rule[c["excluded_by"]] = by_rule.get(c["excluded_by"], 0) + 1
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(by_rule.items()))
    leaks = [c["leakage"] for c in candidates if c["excluded_by"] == "budget"]
    lowest = f"; lowest {label} over budget: {_fmt(min(leaks))}" if leaks else ""
    return f"nothing released: no audited checkpoint passes the rule (excluded by {counts}){lowest}"


# ------------------------------------------------------------------------------------ stopping
def stop_decision(records: Iterable[Any], rule: StopRule | Mapping[str, Any] | None = None,
                  **overrides: Any) -> dict[str, Any]:
    """Whether training should stop after the last of ``records`` (in the order they were made).

    Stop when the leakage ``metric`` exceeded ``budget`` (or, with ``alpha``, its p-value fell below
    ``alpha``) at ``patience`` consecutive measured audits, or (with ``fid_patience``) when quality
    has not improved for ``fid_patience`` audits while leakage rose. Audits before ``min_kimg`` never
    stop training (but count). Returns ``stop``, ``reason`` (``leakage_budget``, ``quality_plateau``
    or None), ``message`` and the counters.
    """
    rule = _rule(rule, StopRule, overrides)
    records = as_records(records)
    halves = rule.halves and _has_halves(records, rule.metric)
    label = _label(rule.metric, halves)
    state = {"wait": 0, "quality_wait": 0, "best_quality": math.inf, "leakage_at_best_quality": math.nan}
    out: dict[str, Any] = {"stop": False, "reason": None, "message": None, "kimg": None}
    for r in records:
        out = {"stop": False, "reason": None, "message": None, "kimg": r.kimg}
        if not r.ok:
            continue
        value, p = _value(r, rule.metric, halves), _value(r, _p_key(rule.metric), halves)
        if not math.isfinite(value):
            out["message"] = f"LeakageEarlyStopping: {label} not measured at {r.kimg:g} kimg; not counted"
            continue
        significant = rule.alpha is not None and math.isfinite(p) and p < rule.alpha
        state["wait"] = state["wait"] + 1 if (value > rule.budget or significant) else 0
        stalled, qkey = _plateau(state, r, rule, value)
        if r.kimg < rule.min_kimg:
            continue
        if state["wait"] >= rule.patience:
            why = (f"{label} = {value:.4g} > budget {rule.budget:g}" if value > rule.budget else
                   f"{label} = {value:.4g}, significant: p-value {p:.3g} < alpha {rule.alpha:g}")
            out.update(stop=True, reason="leakage_budget", message=(
                f"LeakageEarlyStopping: {why} at {state['wait']} consecutive audit(s) (patience "
                f"{rule.patience}); stopping at {r.kimg:g} kimg"))
        elif stalled:
            out.update(stop=True, reason="quality_plateau", message=(
                f"LeakageEarlyStopping: {qkey} has not improved on {state['best_quality']:.4g} for "
                f"{state['quality_wait']} audits while {label} rose from {state['leakage_at_best_quality']:.4g} "
                f"to {value:.4g}; stopping at {r.kimg:g} kimg"))
        else:
            out["message"] = (f"LeakageEarlyStopping: {label} = {value:.4g} at {r.kimg:g} kimg "
                              f"(budget {rule.budget:g}, {state['wait']}/{rule.patience} over)")
    out.update(state)
    return out


def _plateau(state: dict, r: AuditRecord, rule: StopRule, value: float) -> tuple[bool, str | None]:
    qkey = rule.quality_metric or r.quality_key
    if rule.fid_patience is None or qkey is None:
        return False, qkey
    quality = r.metric(qkey)
    if not math.isfinite(quality):
        return False, qkey
    if quality < state["best_quality"] - rule.fid_min_delta:
        state.update(best_quality=quality, leakage_at_best_quality=value, quality_wait=0)
        return False, qkey
    state["quality_wait"] += 1
    grew = value > state["leakage_at_best_quality"] + rule.leakage_min_delta
    return state["quality_wait"] >= rule.fid_patience and grew, qkey


def kept_candidates(records: Iterable[Any], rule: ReleaseRule | Mapping[str, Any] | None, keep: int) -> list[float]:
    """kimg of the at most ``keep`` audits that could still be released (best first under ``rule``).

    An audit outside this list can never become the release later: more audits only add competitors.
    """
    decision = select_release(records, rule, require_checkpoint=False)
    eligible = [c for c in decision["candidates"] if c["eligible"]]
    qkey = decision["quality_metric"]
    eligible.sort(key=(lambda c: (c["quality"], c["leakage"], c["kimg"])) if qkey else (lambda c: -c["kimg"]))
    return [c["kimg"] for c in eligible[:max(int(keep), 0)]]


__all__ = ["ReleaseRule", "StopRule", "select_release", "stop_decision", "kept_candidates",
           "CORRECTION_SPLIT", "CORRECTION_NONE", "CORRECTION_PUBLIC"]
