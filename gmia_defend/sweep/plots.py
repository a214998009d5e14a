"""Sweep figures from ``sweep_audits.jsonl``: what each setting buys in leakage and costs in quality.

- leakage vs number of member identities (diversity at a fixed image budget),
- leakage vs kimg, one line per setting (overfitting with training length),
- the leakage-quality Pareto front across settings (last audit of each run),
- leakage vs privacy budget epsilon (DP sweeps).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gmia_defend.report.plots import save_figure  # noqa: E402
from gmia_defend.audit.record import quality_key_of  # noqa: E402

LEAKAGE_KEY = "leakage/auc"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")


def last_audit_per_run(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    last: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["run"] not in last or (row.get("kimg") or 0) >= (last[row["run"]].get("kimg") or 0):
            last[row["run"]] = row
    return last


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated when both coordinates are minimised (leakage, FID)."""
    front = []
    for i, (a, b) in enumerate(points):
        dominated = any((c <= a and d <= b) and (c < a or d < b) for j, (c, d) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _param_order(row: dict[str, Any]) -> tuple:
    """Sort key of a run by its parameter values, numbers numerically (32 before 96 before 320)."""
    return tuple((0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, repr(v))
                 for k, v in sorted(row.items()) if k.startswith("param/"))


def constant_param_keys(rows: list[dict[str, Any]]) -> set[str]:
    """``param/...`` keys with one value over all rows (left out of labels); none for a single run."""
    if len({r["run"] for r in rows}) < 2:
        return set()
    keys = {k for r in rows for k in r if k.startswith("param/")}
    return {k for k in keys if len({repr(r.get(k)) for r in rows}) == 1}


def setting_label(row: dict[str, Any], constant: set[str] | frozenset[str] = frozenset()) -> str:
    """``num_members=32, budget=0.8``: the run's parameters that vary across the sweep, short names."""
    params = {k[len("param/"):].split(".")[-1]: v for k, v in row.items()
              if k.startswith("param/") and k not in constant}
    # a leakage budget above 1 can never be exceeded: that setting is "off"
    return ", ".join(f"{k}={'off' if k == 'budget' and _finite(v) and v > 1 else v}"
                     for k, v in params.items()) or row["run"]


def plot_sweep(rows: list[dict[str, Any]], out_dir: str | Path, leakage_key: str = LEAKAGE_KEY) -> list[Path]:
    """Draw every figure the rows support into ``out_dir``; return the paths written."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    rows = [r for r in rows if _finite(r.get(leakage_key))]
    if not rows:
        return written
    last = last_audit_per_run(rows)
    qkey = quality_key_of({"metrics": r} for r in rows)

    # Leakage vs kimg, one line per setting, with the 95 % interval as a band.
    fig, ax = plt.subplots(figsize=(6.5, 4))
    by_run: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_run[row["run"]].append(row)
    constant = constant_param_keys(rows)
    longest = max((r.get("kimg") or 0) for r in rows)
    for run, items in sorted(by_run.items(), key=lambda kv: _param_order(kv[1][0])):
        items.sort(key=lambda r: r.get("kimg") or 0)
        xs = [r.get("kimg") or 0 for r in items]
        stopped = xs[-1] < longest  # this run ended before the others (e.g. early stopping)
        line, = ax.plot(xs, [r[leakage_key] for r in items], marker="o", ms=3, ls="--" if stopped else "-",
                        lw=2 if stopped else 1.5, zorder=3 if stopped else 2,
                        label=setting_label(items[0], constant))
        lows = [r.get(f"{leakage_key}_ci_low") for r in items]
        highs = [r.get(f"{leakage_key}_ci_high") for r in items]
        if all(_finite(v) for v in lows + highs):
            ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.15, lw=0)
        if stopped:
            ax.plot([xs[-1]], [items[-1][leakage_key]], marker="X", ms=10, color=line.get_color(), ls="none")
            ax.annotate(f"stopped at {xs[-1]:g} kimg", (xs[-1], items[-1][leakage_key]), fontsize=7,
                        xytext=(6, -12), textcoords="offset points")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="kimg (thousands of real images shown)", ylabel=f"{leakage_key} (band: 95 % interval)",
           title="Leakage over training, per setting")
    ax.legend(fontsize=7)
    written.append(save_figure(fig, out_dir / "sweep_leakage_vs_kimg.png"))

    # Leakage vs number of member identities (when the sweep varies it).
    id_key = next((k for k in rows[0] if k.startswith("param/") and k.endswith("num_members")), None)
    if id_key and len({r.get(id_key) for r in last.values()}) > 1:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        pts = sorted((r[id_key], r[leakage_key], r.get(f"{leakage_key}_ci_low"), r.get(f"{leakage_key}_ci_high"),
                      r.get("kimg")) for r in last.values() if r.get(id_key) is not None)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        lows = [p[1] - p[2] if _finite(p[2]) else 0 for p in pts]
        highs = [p[3] - p[1] if _finite(p[3]) else 0 for p in pts]
        ax.errorbar(xs, ys, yerr=[lows, highs], marker="o", capsize=3)
        ax.set_xscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        budget_key = next((k for k in rows[0] if k.startswith("param/") and k.endswith("member_image_budget")), None)
        budget = rows[0].get(budget_key) if budget_key else None
        if budget:
            for x, y, *_ in pts:
                ax.annotate(f"{int(budget) // int(x)} img/id", (x, y), fontsize=7, xytext=(5, 5),
                            textcoords="offset points")
        kimgs = sorted({p[4] for p in pts if p[4] is not None})
        at = f" at {kimgs[0]:g} kimg" if len(kimgs) == 1 else " (last audit)"
        ax.set(xlabel="member identities" + (f" (same budget: {int(budget):,} images)" if budget else ""),
               ylabel=f"{leakage_key} (95 % interval)", title=f"Leakage vs diversity{at}")
        written.append(save_figure(fig, out_dir / "sweep_leakage_vs_identities.png"))

    # Pareto front leakage vs quality.
    if qkey:
        cand = [r for r in last.values() if _finite(r.get(qkey))]
        if cand:
            pts = [(r[leakage_key], r[qkey]) for r in cand]
            front = pareto_front(pts)
            fig, ax = plt.subplots(figsize=(6, 4.5))
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], c="tab:blue", label="settings (last audit)")
            for r, p in zip(cand, pts):
                ax.annotate(setting_label(r, constant), p, fontsize=6, alpha=0.8)
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "r-o", label="Pareto front")
            ax.set(xlabel=leakage_key, ylabel=qkey, title="Leakage-quality trade-off across settings")
            ax.legend(fontsize=7)
            written.append(save_figure(fig, out_dir / "sweep_pareto.png"))

    # Leakage vs epsilon.
    eps = [r for r in last.values() if _finite(r.get("privacy/epsilon"))]
    if eps:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in eps:
            unit = next((str(v) for k, v in r.items() if k.startswith("param/") and k.endswith("unit")), "dp")
            groups[unit].append(r)
        for unit, items in groups.items():
            items.sort(key=lambda r: r["privacy/epsilon"])
            ax.plot([r["privacy/epsilon"] for r in items], [r[leakage_key] for r in items], marker="o",
                    label=f"unit={unit}")
        ax.set_xscale("log")
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set(xlabel="epsilon (lower is more private)", ylabel=leakage_key, title="Leakage vs privacy budget")
        ax.legend(fontsize=7)
        written.append(save_figure(fig, out_dir / "sweep_leakage_vs_epsilon.png"))
    return written
