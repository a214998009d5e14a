"""AuditRecord: one audit of one generator, as a typed, versioned JSON line; and every metric key.

Every module that reads an audit (callbacks, policies, report, sweeps, ``watch``) uses the key
constants below instead of spelling strings. ``AuditRecord.from_json`` also reads the lines older
versions wrote to ``audits.jsonl`` (the same field names, no ``schema``).

Example:
    >>> r = AuditRecord(kimg=1.5, step=30, metrics={AUC: 0.61, FD_PREFIX + "tiny": 2.0})
    >>> r.ok, r.metric(AUC), r.quality_key
    (True, 0.61, 'quality/fd_tiny')
    >>> AuditRecord.from_json(r.to_json()) == r
    True
    >>> AuditRecord.from_json({"kimg": 2, "error": "GeneratorError: NaN"}).ok
    False
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterable, Mapping

SCHEMA_VERSION = 2

# ---------------------------------------------------------------------------------- metric keys
AUC = "leakage/auc"
AUC_CI_LOW = "leakage/auc_ci_low"
AUC_CI_HIGH = "leakage/auc_ci_high"
TPR_1PCT = "leakage/tpr_at_1pct_fpr"
TPR_01PCT = "leakage/tpr_at_0.1pct_fpr"
ADVANTAGE = "leakage/advantage"
LEAK_RATE = "leakage/leak_rate"
P_VALUE = "leakage/p_value"
NULL_AUC_LOW = "leakage/null_auc_low"
NULL_AUC_HIGH = "leakage/null_auc_high"
EPSILON_LOWER_BOUND = "leakage/epsilon_lower_bound"
EPSILON = "privacy/epsilon"
EPSILON_PERSON = "privacy/epsilon_person"
DELTA = "privacy/delta"
KIMG = "progress/kimg"
FID = "quality/fid"
FD_PREFIX = "quality/fd_"

LEAKAGE_PREFIX = "leakage/"
QUALITY_PREFIX = "quality/"
PRIVACY_PREFIX = "privacy/"
# Leakage on public identities (canaries trained on on purpose vs public people never trained on):
# ``public/leakage/auc`` etc. A rule reading only these uses no protected person's photo.
PUBLIC_PREFIX = "public/"
PUBLIC_AUC = PUBLIC_PREFIX + AUC
# The identity halves: the release rule selects on SELECTION, figures for the release come from CONFIRMATION.
SELECTION = "selection"
CONFIRMATION = "confirmation"

# Worst case over embedders: the largest value of these (intervals included) ...
WORST_IS_MAX = (AUC, AUC_CI_LOW, AUC_CI_HIGH, TPR_1PCT, TPR_01PCT, ADVANTAGE, LEAK_RATE, EPSILON_LOWER_BOUND)
# ... and the smallest of these.
WORST_IS_MIN = (P_VALUE,)

IDENTITY_FIELDS = ("identity", "member", "train_count", "score", "max_sim", "topk_mean", "matches",
                   "match_rate", "calibrated", "block_scores", "half")

DEFAULT_BUDGET = 0.6
DEFAULT_METRIC = AUC


def half_key(key: str, half: str) -> str:
    """``leakage/auc`` on one identity half: ``selection/leakage/auc`` or ``confirmation/leakage/auc``."""
    return f"{half}/{key}"


def is_public(key: str) -> bool:
    """Whether a metric key describes the public canaries (``public/leakage/...``), not protected people."""
    return str(key).startswith(PUBLIC_PREFIX)


def to_float(value: Any) -> float:
    """``float(value)``, or NaN for None and non-numbers (JSON lines hold null for NaN)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def quality_key_of(records: Iterable[Any]) -> str | None:
    """The quality metric present in the records: ``quality/fid`` if any, else the first ``quality/fd_*``."""
    keys: list[str] = []
    for r in records:
        for k in (_metrics_of(r) or {}):
            if k.startswith(QUALITY_PREFIX) and k not in keys:
                keys.append(k)
    if FID in keys:
        return FID
    return keys[0] if keys else None


def _metrics_of(r: Any) -> Mapping[str, Any] | None:
    return r.metrics if isinstance(r, AuditRecord) else r.get("metrics")


@dataclass
class AuditRecord:
    """One audit: where in training it was made, what it measured, where its files are.

    ``metrics`` maps metric keys (constants of this module) to floats; ``identities`` is the
    per-identity table (real names: it stays in the local run folder); ``error`` is set instead of
    metrics when the audit failed. ``extra`` keeps fields this version does not know, so reading
    and writing a line never drops anything.

    >>> r = AuditRecord.from_json({"kimg": 4.0, "metrics": {"leakage/auc": 0.58}, "custom": 1})
    >>> r.metric(AUC), r.extra, r["kimg"]
    (0.58, {'custom': 1}, 4.0)
    """

    kimg: float
    step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    identities: list[dict] = field(default_factory=list)
    checkpoint: str | None = None
    evidence: str | None = None
    error: str | None = None
    audit: int | None = None
    hook: str | None = None
    epoch: int | None = None
    world_size: int = 1
    final: bool = False
    time: float | None = None
    wall_s: float | None = None
    audit_s: float | None = None
    num_samples: int | None = None
    embedder: str | None = None
    batches: int | None = None
    schema: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------------------ reading
    @property
    def ok(self) -> bool:
        """The audit succeeded (no error and some metrics)."""
        return not self.error and bool(self.metrics)

    def metric(self, key: str, default: float = math.nan) -> float:
        """``metrics[key]`` as a float (NaN when absent or null)."""
        value = to_float(self.metrics.get(key, default))
        return value

    @property
    def quality_key(self) -> str | None:
        return quality_key_of([self])

    def half_metrics(self, half: str) -> dict[str, float]:
        """The metrics of one identity half with plain keys (empty if the audit did not split)."""
        prefix = f"{half}/"
        return {k[len(prefix):]: v for k, v in self.metrics.items() if k.startswith(prefix)}

    # dict-style access, so listeners written for the plain-dict records keep working
    def get(self, key: str, default: Any = None) -> Any:
        if key in _FIELDS:
            return getattr(self, key)
        return self.extra.get(key, default)

    def keys(self) -> Any:
        return self.to_json().keys()

    def __getitem__(self, key: str) -> Any:
        if key in _FIELDS:
            return getattr(self, key)
        return self.extra[key]

    # ------------------------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN stays NaN here; ``gmia_defend.io`` writes it as null)."""
        data = {name: getattr(self, name) for name in _FIELDS}  # shallow: identity tables are not copied
        data["metrics"], data["identities"] = dict(self.metrics), list(self.identities)
        extra = dict(self.extra)
        if self.error:
            data.pop("metrics")  # a failed audit measured nothing
            data.pop("identities")
        return {**extra, **data}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "AuditRecord":
        """Read a JSON line (this version's or an older one's); unknown fields go to ``extra``."""
        if isinstance(data, AuditRecord):
            return data
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["kimg"] = to_float(data.get("kimg", math.nan))
        kwargs["metrics"] = {str(k): to_float(v) for k, v in (data.get("metrics") or {}).items()}
        kwargs["identities"] = list(data.get("identities") or [])
        kwargs["world_size"] = int(data.get("world_size") or 1)
        kwargs["final"] = bool(data.get("final", False))
        kwargs["schema"] = int(data.get("schema") or 1)
        extra = {k: v for k, v in data.items() if k not in known and k != "extra"}
        extra.update(data.get("extra") or {})
        return cls(**kwargs, extra=extra)

    @classmethod
    def failed(cls, kimg: float, error: BaseException | str, **fields_: Any) -> "AuditRecord":
        """The record of an audit that raised ``error``."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        return cls(kimg=round(float(kimg), 6), error=text, **fields_)

    def summary(self) -> "AuditRecord":
        """This record without the per-identity table (what checkpoints keep: no identity names)."""
        return replace(self, identities=[], metrics=dict(self.metrics), extra=dict(self.extra))


_FIELDS = tuple(f.name for f in fields(AuditRecord) if f.name != "extra")


def as_records(records: Iterable[Any]) -> list[AuditRecord]:
    """AuditRecords from records or plain dicts (JSON lines)."""
    return [AuditRecord.from_json(r) for r in records]


def successful_audits(records: Iterable[Any]) -> list[AuditRecord]:
    """Audits without an error, one per kimg (the last one recorded wins), ordered by kimg."""
    by_kimg: dict[float, AuditRecord] = {}
    for r in as_records(records):
        if r.ok:
            by_kimg[round(r.kimg, 6)] = r
    return [by_kimg[k] for k in sorted(by_kimg)]


def worst_case(per_embedder: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Worst case over embedders of every key: the max of leakage figures and intervals (both ends).

    The p-value is Bonferroni-corrected over the J embedders, ``min(1, J * min p)`` (the smallest of J
    p-values is not itself a p-value); the null band is widened to cover every embedder's.
    """
    out: dict[str, float] = {}
    keys = {k for m in per_embedder.values() for k in m}
    for key in keys:
        values = [to_float(m.get(key)) for m in per_embedder.values()]
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            out[key] = math.nan
        elif key in WORST_IS_MIN:
            out[key] = min(1.0, len(per_embedder) * min(finite))
        elif key == NULL_AUC_LOW:
            out[key] = min(finite)
        elif key in WORST_IS_MAX or key == NULL_AUC_HIGH:
            out[key] = max(finite)
        else:
            out[key] = finite[0]
    return out


__all__ = [name for name in dir() if name.isupper()] + [
    "AuditRecord", "as_records", "half_key", "quality_key_of", "successful_audits", "to_float", "worst_case"]
