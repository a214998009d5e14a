"""What ``release.json`` says about the release besides the decision: epsilon, and what epsilon covers.

A DP epsilon bounds what the training reveals; a checkpoint chosen with private data (leakage figures
computed on the members' own held-out photos, or a quality figure computed against training images)
is not post-processing of that training, so the epsilon does not cover the choice. The release rule
itself lives in ``gmia_defend.audit.policies`` (re-exported here for older imports).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from gmia_defend.audit.policies import ReleaseRule, select_release  # noqa: F401 - older imports
from gmia_defend.audit.record import (DEFAULT_BUDGET, DEFAULT_METRIC, EPSILON, EPSILON_LOWER_BOUND,  # noqa: F401
                                      is_public, quality_key_of, successful_audits, to_float)


def selection_privacy(rule: ReleaseRule, quality_metric: str | None, quality_reference: str | None,
                      epsilon: float | None, stopped_by: str | None = None,
                      stop_metric: str | None = None) -> dict[str, Any]:
    """``selection_uses_private_data``, ``epsilon_covers_selection`` and the reason, for ``release.json``.

    ``stopped_by``: the callback that stopped training early, ``stop_metric`` the figure it read (a
    ``public/leakage/...`` figure uses no private data)."""
    private = []
    if stopped_by and not (stop_metric and is_public(stop_metric)):
        private.append(f"training was stopped early by {stopped_by}, which read leakage figures of the members")
    if rule.use_leakage and not is_public(rule.metric):
        private.append("the leakage figures it compares use the member identities' held-out photos")
    if quality_metric and quality_reference in (None, "train"):
        private.append(f"{quality_metric} is measured against training images")
    uses = bool(private)
    if epsilon is None or not math.isfinite(epsilon):
        covers, reason = False, "no differential-privacy guarantee was recorded for this run (no privacy/epsilon)"
    elif uses:
        covers, reason = False, ("the choice used private data (" + "; ".join(private) + "): choosing with private "
                                 "data is not post-processing of the DP training, so epsilon does not cover it")
    else:
        leakage = (f"leakage read on public canaries only ({rule.metric})" if rule.use_leakage else "leakage not used")
        covers, reason = True, (f"the choice used public data only (quality against a public reference, {leakage}), "
                                "so it is post-processing of the DP training and epsilon covers it")
    return {"selection_uses_private_data": uses, "epsilon_covers_selection": covers,
            "epsilon_covers_selection_reason": reason, "quality_reference": quality_reference}


def covered_selection_problem(rule: ReleaseRule, quality_reference: Any, fid: bool = True) -> str | None:
    """Why a selection would use private data (None when it would not): for ``require_covered_epsilon``."""
    if rule.use_leakage and not is_public(rule.metric):
        return ("the release rule compares leakage figures computed on the members' own photos; pass "
                "metric='public/leakage/auc' (with data.public_canaries) or use_leakage=False to "
                "ReleaseCheckpointSelector")
    if fid and (quality_reference is None or quality_reference == "train"):
        return ("quality is measured against training images; give the monitor quality_reference='population' "
                "or a tensor of public images")
    return None


def epsilon_figures(chosen: Mapping[str, Any] | None, records: Iterable[Any], at_end: Mapping[str, float]) -> dict:
    """Epsilon (upper bound, DP) and the attack's epsilon lower bound of the release, side by side."""
    metrics = dict((chosen or {}).get("metrics") or {})
    last_kimg = max((to_float(getattr(r, "kimg", None) if not isinstance(r, Mapping) else r.get("kimg"))
                     for r in records), default=math.nan)
    is_last = chosen is not None and chosen.get("kimg") == last_kimg
    out = {}
    for key in (EPSILON, "privacy/epsilon_person", "privacy/delta"):
        value = metrics.get(key)
        if value is None and is_last:
            value = at_end.get(key)  # the release is the last audit: the final figure is its figure
        out[key.split("/", 1)[1]] = value
    out["epsilon_at_end"] = at_end.get(EPSILON)
    out["epsilon_lower_bound"] = metrics.get(EPSILON_LOWER_BOUND)
    return out
