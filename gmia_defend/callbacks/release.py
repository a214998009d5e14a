"""ReleaseCheckpointSelector: keep a checkpoint of every audit and, at the end, pick the one to release.

Release rule (``gmia_defend.report.release.select_release``): the best quality (lowest FID / Fréchet
distance) among audited checkpoints whose leakage metric is within ``budget``; ties: lowest leakage,
then earliest kimg. ``release.json`` (written atomically) records the choice, its metrics, the rule,
every candidate with why it was or was not chosen and epsilon when a privacy monitor recorded one;
the chosen checkpoint is copied to ``release.ckpt``. If no audit is within the budget, nothing is
released and ``release.json`` says so. With a WandbLogger the release is logged as a model artifact
with the alias ``release``. The report figures are written to ``<run_dir>/report/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from gmia_defend.callbacks._state import current_epsilon, find_monitor, kimg_tag, resolve_run_dir
from gmia_defend.errors import UserError
from gmia_defend.io import atomic_write, write_json_atomic
from gmia_defend.report.release import DEFAULT_BUDGET, DEFAULT_METRIC, select_release

RELEASE_JSON = "release.json"
RELEASE_CKPT = "release.ckpt"


class ReleaseCheckpointSelector(pl.Callback):
    """Save ``<run_dir>/audits/kimg=XXXXXX.XXX.ckpt`` at every audit; choose and copy the release at the end.

    Args:
        budget: largest acceptable value of ``metric``.
        metric: leakage key compared with the budget: ``"leakage/auc"`` (default) or, conservatively,
            ``"leakage/auc_ci_high"`` (the upper end of the 95 % bootstrap interval).
        quality_metric: quality key to minimise (default: ``quality/fid`` if logged, else ``quality/fd_*``).
        min_kimg: audits before this point are never released (e.g. to skip the untrained generator).
        run_dir: default: the monitor's run folder (``trainer.default_root_dir``).
        save_weights_only: audit checkpoints without optimizer states (smaller; cannot resume from them).
        log_artifact: log the release checkpoint to W&B (when a WandbLogger is attached).
        write_report: write the report figures to ``<run_dir>/report/`` at the end.
    """

    audit_order = 20  # after LeakageEarlyStopping, so its updated state is in the audit checkpoint

    def __init__(self, budget: float = DEFAULT_BUDGET, metric: str = DEFAULT_METRIC,
                 quality_metric: str | None = None, min_kimg: float = 0.0, run_dir: str | None = None,
                 save_weights_only: bool = False, log_artifact: bool = True, write_report: bool = True) -> None:
        super().__init__()
        self.budget, self.metric, self.quality_metric = float(budget), metric, quality_metric
        self.min_kimg, self.run_dir_arg = float(min_kimg), run_dir
        self.save_weights_only, self.log_artifact, self.write_report = save_weights_only, log_artifact, write_report
        self.release: dict | None = None
        self.run_dir: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        monitor = find_monitor(trainer)
        if monitor is None:
            raise UserError("ReleaseCheckpointSelector needs an IdentityLeakageMonitor among the trainer's "
                            "callbacks (it releases audited checkpoints); add one")
        self.run_dir = resolve_run_dir(trainer, self.run_dir_arg or monitor.run_dir_arg)

    # ----------------------------------------------------------------------------- every audit
    def on_leakage_audit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: dict) -> None:
        """Save this audit's checkpoint (all processes call save_checkpoint; rank 0 writes)."""
        if record.get("error"):
            return
        assert self.run_dir is not None
        path = self.run_dir / "audits" / f"kimg={kimg_tag(record['kimg'])}.ckpt"
        record["checkpoint"] = str(path.relative_to(self.run_dir))
        trainer.save_checkpoint(path, weights_only=self.save_weights_only)

    # ----------------------------------------------------------------------------- the end
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        monitor = find_monitor(trainer)
        if monitor is None:
            return
        monitor.finish(trainer, pl_module)  # the final audit must be a candidate
        if not trainer.is_global_zero:
            return
        self.release = self.decide(monitor.history, trainer)
        self._write(self.release, monitor.history, trainer)

    def decide(self, history: list[dict], trainer: pl.Trainer | None = None) -> dict:
        """The release decision for these audit records (``select_release`` plus epsilon)."""
        present = [r if not r.get("checkpoint") or self._exists(r["checkpoint"]) else {**r, "checkpoint": None}
                   for r in history]  # e.g. resumed in another folder: only files that exist can be released
        decision = select_release(present, self.budget, self.metric, self.quality_metric, self.min_kimg,
                                  require_checkpoint=True)
        chosen = decision.get("chosen")
        at_end = current_epsilon(trainer) if trainer is not None else None
        epsilon = (chosen or {}).get("metrics", {}).get("privacy/epsilon")
        if epsilon is None and chosen is not None and chosen["kimg"] == max(float(r["kimg"]) for r in history):
            epsilon = at_end  # the release is the last audit: the final epsilon is its epsilon
        decision["epsilon"], decision["epsilon_at_end"] = epsilon, at_end
        decision["run_dir"] = str(self.run_dir) if self.run_dir is not None else None
        decision["release_checkpoint"] = RELEASE_CKPT if chosen is not None else None
        return decision

    def _exists(self, checkpoint: str) -> bool:
        path = Path(checkpoint)
        return (path if path.is_absolute() or self.run_dir is None else self.run_dir / path).is_file()

    def _write(self, release: dict, history: list[dict], trainer: pl.Trainer) -> None:
        assert self.run_dir is not None
        target = self.run_dir / RELEASE_CKPT
        if release["chosen"] is not None:
            source = self.run_dir / release["chosen"]["checkpoint"]
            atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))
        else:
            target.unlink(missing_ok=True)  # a stale release from an earlier run must not look current
        write_json_atomic(self.run_dir / RELEASE_JSON, release)
        rank_zero_info(f"ReleaseCheckpointSelector: {release['message']}")
        tradeoff = None
        if self.write_report:
            try:
                from gmia_defend.report.plots import write_report_plots

                paths = write_report_plots(history, self.run_dir / "report", self.metric, self.budget, release)
                tradeoff = paths.get("tradeoff")
            except Exception as err:  # noqa: BLE001 - figures must not fail the run
                rank_zero_warn(f"could not write the report figures: {err}")
        if self.log_artifact:
            self._log_wandb(trainer, release, history, target if release["chosen"] else None, tradeoff)

    def _log_wandb(self, trainer: pl.Trainer, release: dict, history: list[dict], checkpoint: Path | None,
                   tradeoff: Path | None) -> None:
        from gmia_defend.report.wandb import WandbAuditLog, wandb_loggers

        for logger in wandb_loggers(trainer):
            try:
                WandbAuditLog(logger.experiment).log_release(release, history, checkpoint, tradeoff)
            except Exception as err:  # noqa: BLE001
                rank_zero_warn(f"could not log the release to W&B: {err}")

    def state_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "metric": self.metric}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # the candidates live in the monitor's audit history
