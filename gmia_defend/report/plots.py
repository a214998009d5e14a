"""Report figures from audit records (matplotlib, Agg, atomic PNG writes).

- ``leakage_vs_kimg.png``: leakage metric against kimg with the bootstrap 95 % band, the null band (where a
  generator that learned nobody lands on this split: 2.5-97.5 % permutation quantiles), chance and budget.
- ``quality_vs_kimg.png``: FID / Fréchet distance against kimg.
- ``leakage_vs_quality.png``: the trade-off, one point per audit, the release marked.
- ``identities.png``: per-identity score against training-image count (last audit).
- ``epsilon_vs_kimg.png``: the epsilon the attack proves at least (empirical lower bound) beside the DP
  epsilon the accountant guarantees at most (upper bound, per person and per the run's unit), when logged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402

from gmia_defend.io import atomic_write  # noqa: E402
from gmia_defend.audit.record import (DEFAULT_METRIC, EPSILON, EPSILON_LOWER_BOUND, EPSILON_PERSON,  # noqa: E402
                                      NULL_AUC_HIGH, NULL_AUC_LOW, PUBLIC_PREFIX, as_records, is_public,
                                      quality_key_of,
                                      successful_audits)


def save_figure(fig: Any, path: Path) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    def write(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")

    try:
        return atomic_write(path, write)
    finally:
        plt.close(fig)


def _series(audits: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for a in audits:
        v = (a.get("metrics") or {}).get(key)
        if v is None or not math.isfinite(float(v)):
            continue
        xs.append(float(a["kimg"]))
        ys.append(float(v))
    return xs, ys


def _mark_release(ax: Any, release: dict | None) -> None:
    if release and release.get("chosen"):
        ax.axvline(release["chosen"]["kimg"], color="tab:green", ls=":", lw=1.5, label="release")


def plot_leakage(audits: Sequence[dict], path: Path, metric: str = DEFAULT_METRIC, budget: float | None = None,
                 release: dict | None = None) -> Path:
    """AUC with its bootstrap band, the null band, chance, budget, release, and the figure the rule read
    (``metric``, or its selection-half value when the release rule selected on half of the identities, or
    the public canaries' figure beside the protected identities' AUC when the rule read that)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    shown = metric[len(PUBLIC_PREFIX):] if is_public(metric) else metric  # the protected identities, always
    base = shown.rsplit("/", 1)[0]
    auc_key = f"{base}/auc" if shown.rsplit("/", 1)[-1].startswith("auc") else shown
    xs, ys = _series(audits, auc_key)
    ax.plot(xs, ys, "o-", color="tab:red", label=auc_key)
    lo_x, lo = _series(audits, f"{base}/auc_ci_low")
    hi_x, hi = _series(audits, f"{base}/auc_ci_high")
    if auc_key.endswith("auc") and lo and lo_x == hi_x:
        ax.fill_between(lo_x, lo, hi, color="tab:red", alpha=0.18, label="95 % bootstrap interval")
    ruled = metric
    if ((release or {}).get("options") or {}).get("halves") and _series(audits, f"selection/{metric}")[0]:
        ruled = f"selection/{metric}"  # the figure the rule compared with the budget
    if ruled != auc_key:
        mx, my = _series(audits, ruled)
        ax.plot(mx, my, "v--", color="purple" if is_public(ruled) else "darkred", lw=1, ms=4,
                label=f"{ruled} (vs budget)")
    if auc_key.endswith("auc"):
        nlo_x, nlo = _series(audits, NULL_AUC_LOW)
        nhi_x, nhi = _series(audits, NULL_AUC_HIGH)
        if nlo and nlo_x == nhi_x:
            ax.fill_between(nlo_x, nlo, nhi, color="grey", alpha=0.15, step="mid",
                            label="null band (a generator that learned nobody)")
        ax.axhline(0.5, color="grey", ls="--", lw=1, label="chance")
    if budget is not None:
        ax.axhline(budget, color="black", ls="-.", lw=1, label=f"budget {budget:g}")
    _mark_release(ax, release)
    failed = [float(a.get("kimg", 0)) for a in audits if a.get("error")]
    for i, k in enumerate(failed):
        ax.axvline(k, color="orange", lw=1, alpha=0.8, label="failed audit" if i == 0 else None)
    ax.set_xlabel("kimg (thousands of real images shown)")
    ax.set_ylabel("identity membership leakage")
    ax.set_title("Identity leakage during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def plot_quality(audits: Sequence[dict], path: Path, quality_metric: str | None,
                 release: dict | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    if quality_metric:
        xs, ys = _series(audits, quality_metric)
        ax.plot(xs, ys, "s-", color="tab:blue", label=quality_metric)
    else:
        ax.text(0.5, 0.5, "no quality metric recorded", ha="center", va="center", transform=ax.transAxes)
    _mark_release(ax, release)
    ax.set_xlabel("kimg (thousands of real images shown)")
    ax.set_ylabel(f"{quality_metric or 'quality'} (lower is better)")
    ax.set_title("Sample quality during training")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def plot_tradeoff(audits: Sequence[dict], path: Path, metric: str, quality_metric: str | None,
                  budget: float | None = None, release: dict | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    pts = [(float(a["metrics"][quality_metric]), float(a["metrics"][metric]), float(a["kimg"]))
           for a in audits if quality_metric and a["metrics"].get(quality_metric) is not None
           and a["metrics"].get(metric) is not None
           and math.isfinite(float(a["metrics"][quality_metric])) and math.isfinite(float(a["metrics"][metric]))]
    if pts:
        qs, ls, ks = zip(*pts)
        ax.plot(qs, ls, "-", color="lightgrey", lw=1, zorder=1)
        sc = ax.scatter(qs, ls, c=ks, cmap="viridis", zorder=2, s=36)
        fig.colorbar(sc, ax=ax, label="kimg")
        if release and release.get("chosen"):
            c = release["chosen"]
            ax.scatter([c["quality"]], [c["leakage"]], marker="*", s=320, facecolor="none",
                       edgecolor="tab:green", lw=2, zorder=3, label=f"release ({c['kimg']:g} kimg)")
    else:
        ax.text(0.5, 0.5, "needs leakage and quality metrics", ha="center", va="center", transform=ax.transAxes)
    if budget is not None:
        ax.axhline(budget, color="black", ls="-.", lw=1, label=f"budget {budget:g}")
    ax.set_xlabel(f"{quality_metric or 'quality'} (lower is better)")
    ax.set_ylabel(f"{metric} (lower is safer)")
    ax.set_title("Leakage vs quality, one point per audit")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def plot_identities(audit: dict, path: Path, label_top: int = 5) -> Path:
    """Per-identity score vs training-image count (non-members at 0) for one audit."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    rows = [r for r in audit.get("identities") or [] if r.get("score") is not None]
    members = [r for r in rows if r.get("member")]
    others = [r for r in rows if not r.get("member")]
    if others:
        ax.scatter([0] * len(others), [r["score"] for r in others], s=14, alpha=0.5, color="tab:grey",
                   label="non-members (never trained on)")
    if members:
        counts = [float(r.get("train_count") or 0) for r in members]
        spread = 0.01 * (max(counts) or 1.0)  # a little horizontal jitter so equal counts stay readable
        xs = [c + spread * (((i * 7919) % 11) - 5) / 5 for i, c in enumerate(counts)]
        ax.scatter(xs, [r["score"] for r in members], s=18, color="tab:red", alpha=0.8, label="members")
        top = sorted(range(len(members)), key=lambda i: -float(members[i]["score"]))[:label_top]
        for rank, i in enumerate(top):
            ax.annotate(str(members[i].get("identity", "")), (xs[i], members[i]["score"]), fontsize=7,
                        xytext=(-8, -10 * rank), textcoords="offset points", ha="right",
                        arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "grey"})
    if not rows:
        ax.text(0.5, 0.5, "no per-identity results", ha="center", va="center", transform=ax.transAxes)
    ax.margins(x=0.15)
    ax.set_xlabel("training images of the identity")
    ax.set_ylabel("identity score (higher = more leaked)")
    ax.set_title(f"Per-identity leakage at {float(audit.get('kimg', 0)):g} kimg")
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def plot_epsilon(audits: Sequence[dict], path: Path, release: dict | None = None) -> Path:
    """Empirical epsilon lower bound (what the attack proves) and DP epsilon (what DP guarantees) vs kimg.

    A DP upper bound below the lower bound would be a contradiction; the gap between the two is what
    the audit cannot resolve. Without DP only the lower bound is drawn.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    xs, ys = _series(audits, EPSILON_LOWER_BOUND)
    ax.plot(xs, ys, "o-", color="tab:red", label="lower bound: proven by the attack (per person)")
    for key, style, label in ((EPSILON_PERSON, "s--", "upper bound: DP, per person"),
                              (EPSILON, "^:", "upper bound: DP, per the run's unit")):
        ux, uy = _series(audits, key)
        if ux and not (key == EPSILON and _series(audits, EPSILON_PERSON)[1] == uy):
            ax.plot(ux, uy, style, color="tab:blue", label=label)
    _mark_release(ax, release)
    ax.set_xlabel("kimg")
    ax.set_ylabel("epsilon")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_report_plots(records: Sequence[dict], out_dir: str | Path, metric: str = DEFAULT_METRIC,
                       budget: float | None = None, release: dict | None = None,
                       quality_metric: str | None = None) -> dict[str, Path]:
    """Write every report figure into ``out_dir``; return name -> path."""
    out = Path(out_dir)
    records = as_records(records)
    audits = [r.to_json() for r in successful_audits(records)]
    quality_metric = quality_metric or (release or {}).get("quality_metric") or quality_key_of(audits)
    failed = [r.to_json() for r in records if r.error]
    paths = {
        "leakage": plot_leakage(audits + failed, out / "leakage_vs_kimg.png", metric, budget, release),
        "quality": plot_quality(audits, out / "quality_vs_kimg.png", quality_metric, release),
        "tradeoff": plot_tradeoff(audits, out / "leakage_vs_quality.png", metric, quality_metric, budget, release),
    }
    if audits:
        paths["identities"] = plot_identities(audits[-1], out / "identities.png")
    if any(EPSILON_LOWER_BOUND in (a.get("metrics") or {}) for a in audits):
        paths["epsilon"] = plot_epsilon(audits, out / "epsilon_vs_kimg.png", release)
    return paths
