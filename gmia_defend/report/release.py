"""Choose the release checkpoint from audit records (pure; shared by the callback and ``gmia-defend report``).

Rule: among successful audits whose leakage metric is within the budget (``<= budget``), release the
one with the best quality (lowest FID / Fréchet distance); ties go to the lowest leakage, then to the
earliest kimg. Without a quality metric the latest audit within the budget is released. If no audit
is within the budget, nothing is released.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

DEFAULT_BUDGET = 0.6
DEFAULT_METRIC = "leakage/auc"


def quality_key_of(records: Iterable[dict]) -> str | None:
    """The quality metric present in the records: ``quality/fid`` if any, else the first ``quality/fd_*``."""
    keys: list[str] = []
    for r in records:
        for k in (r.get("metrics") or {}):
            if k.startswith("quality/") and k not in keys:
                keys.append(k)
    if "quality/fid" in keys:
        return "quality/fid"
    return keys[0] if keys else None


def to_float(value: Any) -> float:
    """``float(value)``, or NaN for None and non-numbers (audit records hold nulls for NaN)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def successful_audits(records: Iterable[dict]) -> list[dict]:
    """Audits without an error, one per kimg (the last one recorded wins), ordered by kimg."""
    by_kimg: dict[float, dict] = {}
    for r in records:
        if r.get("error") or not r.get("metrics"):
            continue
        by_kimg[round(to_float(r.get("kimg")), 6)] = r
    return [by_kimg[k] for k in sorted(by_kimg)]


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.4g}"


def select_release(records: Sequence[dict], budget: float = DEFAULT_BUDGET, metric: str = DEFAULT_METRIC,
                   quality_metric: str | None = None, min_kimg: float = 0.0,
                   require_checkpoint: bool = False) -> dict[str, Any]:
    """Pick the release among audit records (``audits.jsonl`` lines). Returns a JSON-ready decision.

    Keys: ``released`` (bool), ``chosen`` (the chosen candidate or None), ``budget``, ``metric``,
    ``quality_metric``, ``rule``, ``message``, ``candidates`` (every audit with ``eligible``,
    ``chosen`` and ``reason``).
    """
    audits = successful_audits(records)
    quality_metric = quality_metric or quality_key_of(audits)
    rule = (f"release the audited checkpoint with the lowest {quality_metric} among those with "
            f"{metric} <= {budget}; ties: lowest {metric}, then earliest kimg"
            if quality_metric else
            f"no quality metric recorded: release the latest audited checkpoint with {metric} <= {budget}")
    if min_kimg > 0:
        rule += f"; audits before {min_kimg} kimg are not considered"
    candidates: list[dict[str, Any]] = []
    for r in audits:
        m = r["metrics"]
        leak = to_float(m.get(metric))
        qual = to_float(m.get(quality_metric)) if quality_metric else math.nan
        cand = {"kimg": to_float(r.get("kimg")), "step": r.get("step"), "checkpoint": r.get("checkpoint"),
                "leakage": leak, "quality": qual, "metrics": dict(m), "eligible": False, "chosen": False}
        if cand["kimg"] < min_kimg:
            cand["reason"] = f"before min_kimg ({_fmt(cand['kimg'])} < {min_kimg})"
        elif not math.isfinite(leak):
            cand["reason"] = f"{metric} not measured"
        elif leak > budget:
            cand["reason"] = f"{metric} {_fmt(leak)} > budget {budget}"
        elif quality_metric and not math.isfinite(qual):
            cand["reason"] = f"{quality_metric} not measured"
        elif require_checkpoint and not cand["checkpoint"]:
            cand["reason"] = "no checkpoint saved for this audit"
        else:
            cand["eligible"] = True
        candidates.append(cand)
    # failed audits are listed too, so the decision accounts for every audit
    for r in records:
        if r.get("error"):
            candidates.append({"kimg": to_float(r.get("kimg")), "step": r.get("step"), "checkpoint": r.get("checkpoint"),
                               "leakage": math.nan, "quality": math.nan, "metrics": {}, "eligible": False,
                               "chosen": False, "reason": f"audit failed: {r['error']}"})
    eligible = [c for c in candidates if c["eligible"]]
    if quality_metric:
        eligible.sort(key=lambda c: (c["quality"], c["leakage"], c["kimg"]))
    else:
        eligible.sort(key=lambda c: -c["kimg"])
    chosen = eligible[0] if eligible else None
    for c in eligible:
        if c is chosen:
            c["chosen"] = True
            c["reason"] = ("chosen: " + (f"lowest {quality_metric} ({_fmt(c['quality'])})" if quality_metric
                                         else "latest audit") + f" among {len(eligible)} within budget")
        elif quality_metric and c["quality"] > chosen["quality"]:
            c["reason"] = f"within budget, but {quality_metric} {_fmt(c['quality'])} > {_fmt(chosen['quality'])}"
        elif quality_metric and c["leakage"] > chosen["leakage"]:
            c["reason"] = f"within budget, same quality, but higher {metric} {_fmt(c['leakage'])}"
        else:
            c["reason"] = "within budget, same quality and leakage, but later kimg" if quality_metric \
                else "within budget, but not the latest"
    candidates.sort(key=lambda c: c["kimg"])
    if chosen is not None:
        message = (f"release: the checkpoint at {_fmt(chosen['kimg'])} kimg ({metric} {_fmt(chosen['leakage'])}"
                   f" <= {budget}" + (f", {quality_metric} {_fmt(chosen['quality'])}" if quality_metric else "")
                   + ")")
    elif not audits:
        message = "nothing released: no successful audit was recorded"
    elif not any(c["kimg"] >= min_kimg for c in candidates if not c["reason"].startswith("audit failed")):
        message = f"nothing released: no successful audit at or after min_kimg={min_kimg:g}"
    else:
        considered = [c["leakage"] for c in candidates if c["kimg"] >= min_kimg and math.isfinite(c["leakage"])]
        message = (f"nothing released: no audited checkpoint has {metric} <= {budget} "
                   f"(lowest: {_fmt(min(considered, default=math.nan))})")
    return {"released": chosen is not None, "chosen": chosen, "budget": budget, "metric": metric,
            "quality_metric": quality_metric, "min_kimg": min_kimg, "rule": rule, "message": message,
            "candidates": candidates}
