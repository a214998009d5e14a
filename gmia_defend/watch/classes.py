"""Conditional generators audited per class: one record per snapshot holding the worst class."""

from __future__ import annotations

import math
import time
from typing import Sequence

from gmia_defend.audit.record import NULL_AUC_LOW, WORST_IS_MIN, AuditRecord

__all__ = ["combine_classes"]


def combine_classes(records: Sequence[AuditRecord]) -> AuditRecord:
    """One record per snapshot of a conditional generator audited per class: the worst class on every key.

    Leakage and quality figures take the worst class (largest value; the smallest p-value and null
    band bottom); the per-class figures stay in ``extra["classes"]`` and in ``class-<k>/audits.jsonl``.
    """
    first = records[0]
    keys = {k for r in records for k in r.metrics}
    metrics: dict[str, float] = {}
    for key in keys:
        base = key.split("/", 1)[1] if key.startswith(("selection/", "confirmation/")) else key
        values = [r.metric(key) for r in records if math.isfinite(r.metric(key))]
        if not values:
            metrics[key] = math.nan
        elif base in WORST_IS_MIN or base == NULL_AUC_LOW:
            metrics[key] = min(values)
        elif base.startswith(("leakage/", "quality/")):
            metrics[key] = max(values)
        else:
            metrics[key] = values[0]
    classes = {str(r.extra.get("class_index", i)): {k: v for k, v in r.metrics.items() if k.startswith("leakage/")}
               for i, r in enumerate(records)}
    return AuditRecord(kimg=first.kimg, step=first.step, metrics=metrics, checkpoint=first.checkpoint, hook="watch",
                       num_samples=first.num_samples, embedder=first.embedder, time=time.time(),
                       audit_s=sum(r.audit_s or 0.0 for r in records),
                       extra={"class_index": "all", "classes": classes})
