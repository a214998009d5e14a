"""Selection and confirmation halves of the audited identities, and the worst case over embedders.

A release chosen as the best of K audits on the same identities reports figures biased low (the
winner's curse). So each audit splits its identities once, seeded and stratified by membership, into
a selection half (the rules read it) and a confirmation half (the reported figures come from it).
Per-half metrics come from ``gmia_defend.attack.metrics.membership_metrics`` on the identities' scores.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Mapping, Sequence

import numpy as np

from gmia_defend.audit.record import CONFIRMATION, LEAK_RATE, SELECTION, half_key, worst_case

_HALF_SEED = 104_729  # keeps the halves independent of the latents drawn from the same seed


def split_halves(identities: Sequence[Mapping[str, Any]], seed: int) -> dict[str, str]:
    """identity name -> ``"selection"`` / ``"confirmation"``; members and non-members split alike.

    Empty when a class has fewer than two identities (a half would lack it).
    """
    members = sorted(str(r["identity"]) for r in identities if r.get("member"))
    others = sorted(str(r["identity"]) for r in identities if not r.get("member"))
    if len(members) < 2 or len(others) < 2:
        return {}
    rng = np.random.default_rng(int(seed) + _HALF_SEED)
    out: dict[str, str] = {}
    for group in (members, others):
        order = rng.permutation(len(group))
        cut = (len(group) + 1) // 2
        for rank, i in enumerate(order):
            out[group[i]] = SELECTION if rank < cut else CONFIRMATION
    return out


def _membership_metrics(scores: np.ndarray, member: np.ndarray, blocks: np.ndarray | None,
                        options: Mapping[str, Any]) -> dict[str, float]:
    from gmia_defend.attack import metrics

    fn = metrics.membership_metrics
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in options.items() if k in params and v is not None}
    if blocks is not None and "block_scores" in params:
        kwargs["block_scores"] = blocks
    return {k: float(v) for k, v in fn(scores, member, **kwargs).items()}


def metrics_of(rows: Sequence[Mapping[str, Any]], **options: Any) -> dict[str, float]:
    """``leakage/*`` metrics of these identity rows (score, member, match_rate, block_scores)."""
    scores = np.array([float(r["score"]) for r in rows])
    member = np.array([bool(r.get("member")) for r in rows])
    blocks = None
    if rows and all(r.get("block_scores") for r in rows):
        lengths = {len(r["block_scores"]) for r in rows}
        if len(lengths) == 1:
            blocks = np.array([r["block_scores"] for r in rows], dtype=np.float64)
    out = _membership_metrics(scores, member, blocks, options)
    rates = [(bool(r.get("member")), r.get("match_rate")) for r in rows]
    if all(v is not None for _, v in rates):
        m = [float(v) for is_m, v in rates if is_m]
        o = [float(v) for is_m, v in rates if not is_m]
        out[LEAK_RATE] = float(np.mean(m) - np.mean(o)) if m and o else math.nan
    return out


def half_metrics(per_embedder_rows: Mapping[str, Sequence[Mapping[str, Any]]], halves: Mapping[str, str],
                 **options: Any) -> dict[str, float]:
    """``selection/leakage/*`` and ``confirmation/leakage/*``: worst case over embedders of each half.

    ``options`` go to ``membership_metrics`` (``n_bootstrap``, ``n_permutations``, ``seed``, ``delta``).
    """
    if not halves:
        return {}
    out: dict[str, float] = {}
    for half in (SELECTION, CONFIRMATION):
        per = {}
        for name, rows in per_embedder_rows.items():
            part = [r for r in rows if halves.get(str(r.get("identity"))) == half and r.get("score") is not None
                    and math.isfinite(float(r["score"]))]
            if part and any(r.get("member") for r in part) and not all(r.get("member") for r in part):
                per[name] = metrics_of(part, **options)
        for key, value in worst_case(per).items():
            out[half_key(key, half)] = value
    return out
