"""Weights & Biases extras for the leakage callbacks: kimg x-axis, tables, charts, evidence, release artifact.

Everything here receives identity names already pseudonymised by the caller (see ``pseudonyms``).
All functions take the ``wandb`` run (``WandbLogger.experiment``) and are called on rank 0 only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

from gmia_defend.audit.record import to_float

KIMG = "progress/kimg"
IDENTITY_COLUMNS = ["identity", "member", "train_count", "score", "max_sim", "topk_mean", "matches", "match_rate"]


def wandb_loggers(trainer: Any) -> list[Any]:
    """The trainer's WandbLogger instances (none if wandb is not used)."""
    try:
        from pytorch_lightning.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return []
    return [lg for lg in getattr(trainer, "loggers", []) if isinstance(lg, WandbLogger)]


class WandbAuditLog:
    """Logs audits to one wandb run; remembers which metrics already use kimg as their x-axis."""

    def __init__(self, experiment: Any) -> None:
        self.run = experiment
        self._defined: set[str] = set()

    def define_axes(self, keys: Sequence[str]) -> None:
        """Plot ``leakage/*``, ``quality/*`` (and given keys) against ``progress/kimg``."""
        new = [k for k in keys if k not in self._defined and k != KIMG]
        if not new and KIMG in self._defined:
            return
        if KIMG not in self._defined:
            self.run.define_metric(KIMG)
            self._defined.add(KIMG)
        for key in new:
            self.run.define_metric(key, step_metric=KIMG)
            self._defined.add(key)

    def log_audit(self, record: dict, name: Callable[[str], str], evidence_png: str | Path | None,
                  history: Sequence[dict], metric: str, quality_metric: str | None) -> None:
        """Per-identity table and chart, evidence image and the audit-history table for one audit."""
        import wandb

        kimg = float(record["kimg"])
        rows = []
        for r in record.get("identities") or []:
            rows.append([name(str(r.get("identity"))), bool(r.get("member")), int(r.get("train_count") or 0),
                         to_float(r.get("score")), to_float(r.get("max_sim")), to_float(r.get("topk_mean")),
                         int(r.get("matches") or 0), to_float(r.get("match_rate"))])
        payload: dict[str, Any] = {KIMG: kimg}
        if rows:
            table = wandb.Table(columns=IDENTITY_COLUMNS, data=rows)
            payload["audit/identities"] = table
            payload["audit/score_vs_train_count"] = wandb.plot.scatter(
                table, "train_count", "score", title=f"Identity score vs training images ({kimg:g} kimg)")
        if evidence_png is not None and Path(evidence_png).is_file():
            payload["audit/evidence"] = wandb.Image(str(evidence_png),
                                                    caption=f"most leaked identities at {kimg:g} kimg")
        history_table = audit_table(history, metric, quality_metric)
        payload["audit/history"] = history_table
        if quality_metric:
            payload["audit/leakage_vs_quality"] = wandb.plot.scatter(
                history_table, quality_metric, metric, title="Leakage vs quality (one point per audit)")
        self.run.log(payload)

    def log_release(self, release: dict, history: Sequence[dict], checkpoint: str | Path | None,
                    tradeoff_png: str | Path | None, name_prefix: str = "release") -> None:
        """Final audit table with the release marked, the trade-off figure and the model artifact."""
        import wandb

        metric, quality_metric = release["metric"], release.get("quality_metric")
        chosen_kimg = release["chosen"]["kimg"] if release.get("chosen") else None
        table = audit_table(history, metric, quality_metric, release_kimg=chosen_kimg)
        payload: dict[str, Any] = {"release/audits": table}
        if quality_metric:
            payload["release/leakage_vs_quality"] = wandb.plot.scatter(
                table, quality_metric, metric, title="Leakage vs quality (release: column 'release')")
        if tradeoff_png is not None and Path(tradeoff_png).is_file():
            payload["release/tradeoff"] = wandb.Image(str(tradeoff_png), caption=release.get("message", ""))
        self.run.log(payload)
        summary = {"release/released": bool(release.get("released")), "release/budget": release.get("budget"),
                   "release/epsilon_covers_selection": bool(release.get("epsilon_covers_selection")),
                   "release/correction": release.get("correction")}
        if release.get("chosen"):
            summary["release/kimg"] = release["chosen"]["kimg"]
            # the figures reported for the release: the confirmation half (identities not used to choose it)
            reported = release.get("reported") or release["chosen"]["metrics"]
            summary.update({f"release/{k}": v for k, v in reported.items() if isinstance(v, (int, float))})
            summary.update({f"release/selection/{k}": v for k, v in (release.get("selection_figures") or {}).items()
                            if isinstance(v, (int, float))})
            for key in ("epsilon", "epsilon_person", "delta", "epsilon_lower_bound"):
                if isinstance(release.get(key), (int, float)):
                    summary[f"release/{key}"] = release[key]
        for k, v in summary.items():
            self.run.summary[k] = v
        if checkpoint is not None and Path(checkpoint).is_file():
            safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in f"{name_prefix}-{self.run.id}")
            metadata = {k: v for k, v in (release.get("chosen") or {}).items() if k in ("kimg", "step")}
            metadata.update({"metric": metric, "budget": release.get("budget"), "rule": release.get("rule"),
                             "quality_metric": quality_metric, "epsilon": release.get("epsilon")})
            artifact = wandb.Artifact(safe, type="model", metadata=_clean(metadata))
            artifact.add_file(str(checkpoint), name="release.ckpt")
            self.run.log_artifact(artifact, aliases=["release", "latest"])


def audit_table(history: Sequence[dict], metric: str, quality_metric: str | None,
                release_kimg: float | None = None) -> Any:
    """One row per audit: kimg, step, leakage metric, its CI, p-value and null band, quality, error, release flag."""
    import wandb

    columns = ["kimg", "step", metric, "leakage/auc_ci_low", "leakage/auc_ci_high", "leakage/p_value",
               "leakage/null_auc_low", "leakage/null_auc_high"]
    if quality_metric:
        columns.append(quality_metric)
    columns += ["error", "release"]
    columns = list(dict.fromkeys(columns))
    data = []
    for r in history:
        m = r.get("metrics") or {}
        row = [float(r.get("kimg", math.nan)), int(r.get("step") or 0)]
        for c in columns[2:-2]:
            row.append(to_float(m.get(c)))
        row += [str(r.get("error") or ""), release_kimg is not None and float(r.get("kimg", -1)) == release_kimg
                and not r.get("error")]
        data.append(row)
    return wandb.Table(columns=columns, data=data)


def _clean(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None and not (isinstance(v, float) and not math.isfinite(v))}
