"""What watch keeps current after every audit: ``release.json``, the report figures, and a W&B run.

All three are derived from ``audits.jsonl`` alone (the release through ``select_release``), so a
restarted watch, ``gmia-defend report`` and the in-training callbacks agree. A figure or a W&B call
that fails is a warning: it never ends the watch.
"""

from __future__ import annotations

import secrets
import warnings
from pathlib import Path
from typing import Any, Sequence

from gmia_defend.audit.policies import ReleaseRule, select_release
from gmia_defend.audit.record import AuditRecord
from gmia_defend.io import write_json_atomic, write_text_atomic

RELEASE_FILE = "release.json"
REPORT_DIR = "report"


def update_release(run_dir: Path, records: Sequence[AuditRecord], rule: ReleaseRule) -> dict[str, Any]:
    """Select the release from ``records`` and write ``<run_dir>/release.json`` atomically."""
    decision = select_release(records, rule)
    write_json_atomic(run_dir / RELEASE_FILE, decision)
    return decision


def update_figures(run_dir: Path, records: Sequence[AuditRecord], rule: ReleaseRule, decision: dict) -> dict:
    """Redraw the report figures into ``<run_dir>/report`` (warning, not error, when drawing fails)."""
    try:
        from gmia_defend.report.plots import write_report_plots

        return write_report_plots([r.to_json() for r in records], run_dir / REPORT_DIR, rule.metric, rule.budget,
                                  decision, decision.get("quality_metric"))
    except Exception as err:  # noqa: BLE001 - a figure must not end the watch
        warnings.warn(f"could not draw the report figures: {type(err).__name__}: {err}", UserWarning, stacklevel=2)
        return {}


class WandbSink:
    """Logs each audit to one W&B run (kimg as x-axis, identities pseudonymised); resumes it on restart.

    The run id is kept in ``<run_dir>/watch_wandb_id`` so a restarted watch continues the same run.
    """

    def __init__(self, project: str, run_dir: Path, name: str | None = None, entity: str | None = None) -> None:
        import wandb

        from gmia_defend.report.wandb import WandbAuditLog

        id_file = run_dir / "watch_wandb_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(6)
        write_text_atomic(id_file, run_id + "\n")
        self.run = wandb.init(project=project, entity=entity, dir=str(run_dir), id=run_id, resume="allow",
                              name=name or f"watch-{run_dir.name}", job_type="watch",
                              config={"run_dir_name": run_dir.name})
        self.log = WandbAuditLog(self.run)

    def audit(self, record: AuditRecord, history: Sequence[AuditRecord], pseudonym: Any, evidence: Path | None,
              metric: str, quality_metric: str | None) -> None:
        try:
            scalars = {k: v for k, v in record.metrics.items() if isinstance(v, float)}
            self.log.define_axes(list(scalars))
            self.run.log({**scalars, "progress/kimg": record.kimg})
            self.log.log_audit(record.to_json(), pseudonym, evidence, [r.to_json() for r in history], metric,
                               quality_metric)
        except Exception as err:  # noqa: BLE001
            warnings.warn(f"W&B logging failed: {type(err).__name__}: {err}", UserWarning, stacklevel=2)

    def release(self, decision: dict) -> None:
        try:
            for key in ("released", "budget", "metric"):
                self.run.summary[f"release/{key}"] = decision.get(key)
            if decision.get("chosen"):
                self.run.summary["release/kimg"] = decision["chosen"]["kimg"]
        except Exception as err:  # noqa: BLE001
            warnings.warn(f"W&B logging failed: {type(err).__name__}: {err}", UserWarning, stacklevel=2)

    def finish(self) -> None:
        try:
            self.run.finish()
        except Exception:  # noqa: BLE001
            pass
