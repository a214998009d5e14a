"""The sweep's summary table: one row per run with its status, time, last audit and release.

Built from the entries ``collect_sweep`` writes to ``sweep_summary.json``; printed at the end of
``gmia-defend sweep`` and written as ``sweep_table.md`` beside it. A failed run's last error lines
are part of the summary, so nobody has to open its ``stdout.log`` to see why it failed.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

AUC, AUC_LOW, AUC_HIGH = "leakage/auc", "leakage/auc_ci_low", "leakage/auc_ci_high"


def _num(value: Any, digits: int = 3) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return "nan" if not math.isfinite(v) else f"{v:.{digits}f}"


def _quality(metrics: dict[str, Any]) -> tuple[str, str]:
    keys = [k for k in metrics if k.startswith("quality/")]
    key = "quality/fid" if "quality/fid" in keys else (keys[0] if keys else None)
    return (key or "quality", _num(metrics.get(key), 3) if key else "-")


def run_label(params: dict[str, Any], constant: set[str]) -> str:
    """The parameters that vary across the sweep, short names; a leakage budget above 1 reads "off".

    >>> run_label({"data.num_members": 32, "trainer.callbacks.init_args.budget": 1.01}, set())
    'num_members=32, budget=off'
    """
    parts = [f"{k.split('.')[-1]}={_value(v, k)}" for k, v in params.items() if k not in constant]
    return ", ".join(parts) or ", ".join(f"{k.split('.')[-1]}={_value(v, k)}" for k, v in params.items())


def _value(v: Any, key: str = "") -> str:
    if key.endswith("budget") and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 1:
        return "off"  # a leakage budget above 1 can never be exceeded
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {x}" for k, x in v.items()) + "}"
    return "null" if v is None else str(v)


def constant_params(entries: Sequence[dict[str, Any]]) -> set[str]:
    """Parameter names with one value across all runs (left out of run labels)."""
    if len(entries) < 2:
        return set()
    keys = set().union(*(e.get("params", {}).keys() for e in entries))
    return {k for k in keys if len({repr(e.get("params", {}).get(k)) for e in entries}) == 1}


def table_rows(entries: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Rows of strings: run, status, time, kimg, AUC [95 % interval], quality, release, error."""
    constant = constant_params(entries)
    rows = []
    for e in entries:
        code = e.get("returncode")
        status = "ok" if code == 0 else ("not run" if code is None else f"FAILED (exit {code})")
        metrics = e.get("last_audit") or {}
        qkey, qvalue = _quality(metrics)
        auc = (f"{_num(metrics.get(AUC))} [{_num(metrics.get(AUC_LOW))}, {_num(metrics.get(AUC_HIGH))}]"
               if metrics else "-")
        release = e.get("release") or {}
        chosen = release.get("chosen") or {}
        released = f"{_num(chosen.get('kimg'), 1)} kimg" if release.get("released") and chosen else (
            "none" if release else "-")
        seconds = e.get("seconds")
        rows.append({"run": run_label(e.get("params", {}), constant), "status": status,
                     "time": f"{float(seconds) / 60:.1f} min" if seconds is not None else "-",
                     "kimg": _num(e.get("last_kimg"), 1), "auc": auc, "quality_key": qkey, "quality": qvalue,
                     "release": released, "error": " | ".join(e.get("error_tail") or [])})
    return rows


def format_table(entries: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """The summary as aligned text (console) or a Markdown table; failed runs' error lines follow it.

    >>> entries = [{"name": "a", "params": {"n": 32}, "returncode": 0, "seconds": 120, "last_kimg": 40.0,
    ...             "last_audit": {"leakage/auc": 0.9, "leakage/auc_ci_low": 0.8, "leakage/auc_ci_high": 0.97,
    ...                            "quality/fd_trained": 0.12}},
    ...            {"name": "b", "params": {"n": 320}, "returncode": 1, "seconds": 3,
    ...             "error_tail": ["ValueError: bad"]}]
    >>> print(format_table(entries))
    run    status           time     last kimg  leakage AUC [95% CI]  quality/fd_trained  release
    n=32   ok               2.0 min  40.0       0.900 [0.800, 0.970]  0.120               -
    n=320  FAILED (exit 1)  0.1 min  -          -                     -                   -
    n=320: ValueError: bad
    """
    rows = table_rows(entries)
    qkeys = sorted({r["quality_key"] for r in rows if r["quality"] != "-"}) or ["quality"]
    header = ["run", "status", "time", "last kimg", "leakage AUC [95% CI]", " / ".join(qkeys), "release"]
    body = [[r["run"], r["status"], r["time"], r["kimg"], r["auc"], r["quality"], r["release"]] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
    else:
        widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in [header, *body]]
    errors = [f"{r['run']}: {r['error']}" for r in rows if r["error"]]
    if errors:
        lines += ([""] if markdown else []) + [f"{'- ' if markdown else ''}{e}" for e in errors]
    return "\n".join(lines)
