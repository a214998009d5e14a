"""ReleaseCheckpointSelector: keep the audited generators that could still be released; pick one at the end.

A thin adapter over ``gmia_defend.audit.select_release``. At each audit (``on_leakage_audit``) it keeps
the audited generator as a release file (fp32 weights and the model's own hyper-parameters, nothing
else) when the audit could still be released, keeping at most ``keep_candidates`` of them (like
``ModelCheckpoint(save_top_k=...)``): an audit outside the best ``keep_candidates`` eligible ones can
never become the release later. At the end (``on_leakage_audits_end``) it applies the rule, copies the
chosen file to ``release.ckpt`` (loadable with ``torch.load(..., weights_only=True)`` and
``gmia_defend.load_release``) and writes ``release.json``: the choice, every candidate with the rule
that excluded it, the figures reported for the release (from the confirmation half of the identities,
beside the selection half's), epsilon and the attack's epsilon lower bound, and whether the choice used
private data (``epsilon_covers_selection``). With a WandbLogger the same file is logged as a model
artifact with the alias ``release``.

Example:
    >>> selector = ReleaseCheckpointSelector(budget=0.8, metric="leakage/auc_ci_high", keep_candidates=2)
    >>> selector.rule.budget, selector.keep_candidates
    (0.8, 2)
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from gmia_defend.audit.artifact import save_release
from gmia_defend.audit.log import kimg_tag
from gmia_defend.audit.policies import ReleaseRule, kept_candidates, select_release
from gmia_defend.audit.record import DEFAULT_BUDGET, DEFAULT_METRIC, AuditRecord
from gmia_defend.audit.record import is_public
from gmia_defend.callbacks._state import check_public_metric, has_monitor, metric_of, resolve_run_dir
from gmia_defend.errors import UserError
from gmia_defend.io import atomic_write, write_json_atomic
from gmia_defend.report.release import covered_selection_problem, epsilon_figures, selection_privacy

RELEASE_JSON = "release.json"
RELEASE_CKPT = "release.ckpt"


class ReleaseCheckpointSelector(pl.Callback):
    """Keep ``<run_dir>/audits/kimg=XXXXXX.XXX.ckpt`` release files of candidates; choose the release at the end.

    Args:
        budget, metric: the leakage budget (``metric <= budget``); ``"leakage/auc_ci_high"`` is conservative.
        quality_metric: quality key to minimise (default: ``quality/fid`` if logged, else ``quality/fd_*``).
        min_kimg: audits before this point are never released (the untrained generator never is).
        min_quality_gain: when the untrained generator was audited, a release must have a quality at
            least this much (relative) better than it (None: off).
        alpha: exclude audits whose leakage is significant (``leakage/p_value < alpha``).
        halves: select on the selection half of the identities and report the confirmation half.
        use_leakage: False selects on quality alone (with a public quality reference, epsilon then covers
            the choice).
        require_covered_epsilon: refuse (at setup) a configuration whose choice would use private data.
        keep_candidates: release files kept at most (the best eligible audits so far).
        run_dir: default: the monitor's run folder.
        log_artifact: log the release file to W&B (when a WandbLogger is attached).
        write_report: write the report figures to ``<run_dir>/report/`` at the end.
    """

    audit_order = 20
    writes_report = True

    def __init__(self, budget: float = DEFAULT_BUDGET, metric: str = DEFAULT_METRIC,
                 quality_metric: str | None = None, min_kimg: float = 0.0, min_quality_gain: float | None = 0.05,
                 alpha: float | None = None, halves: bool = True, use_leakage: bool = True,
                 require_covered_epsilon: bool = False, keep_candidates: int = 3, run_dir: str | None = None,
                 log_artifact: bool = True, write_report: bool = True) -> None:
        super().__init__()
        self.rule = ReleaseRule(budget=float(budget), metric=metric, quality_metric=quality_metric,
                                min_kimg=float(min_kimg), min_quality_gain=min_quality_gain, alpha=alpha,
                                halves=halves, use_leakage=use_leakage, require_checkpoint=True)
        if int(keep_candidates) < 1:
            raise UserError(f"keep_candidates must be >= 1; got {keep_candidates}")
        self.budget, self.metric, self.keep_candidates = self.rule.budget, metric, int(keep_candidates)
        self.require_covered_epsilon = require_covered_epsilon
        self.run_dir_arg, self.log_artifact, self.write_report = run_dir, log_artifact, write_report
        self.records: list[AuditRecord] = []
        self.release: dict | None = None
        self.run_dir: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        monitors = [cb for cb in trainer.callbacks if getattr(cb, "emits_leakage_audits", False)]
        if not has_monitor(trainer):
            raise UserError("ReleaseCheckpointSelector needs an IdentityLeakageMonitor among the trainer's "
                            "callbacks (it releases audited generators); add one")
        check_public_metric(trainer, self.rule.metric, "ReleaseCheckpointSelector")
        if self.require_covered_epsilon:
            mon = monitors[0]
            problem = covered_selection_problem(self.rule, getattr(mon, "quality_reference", "train"),
                                                getattr(mon, "fid", True))
            if problem:
                raise UserError(f"require_covered_epsilon=True, but the release would be chosen with private data: "
                                f"{problem}")
        self.run_dir = resolve_run_dir(trainer, self.run_dir_arg or getattr(monitors[0], "run_dir_arg", None))

    # ----------------------------------------------------------------------------- every audit
    def on_leakage_audit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: Any) -> None:
        """Keep this audit's generator if it could still be released; drop candidates it pushed out."""
        if record.get("error"):
            self.records.append(AuditRecord.from_json(dict(record)).summary())
            return
        if self.run_dir_arg is None and getattr(record, "run_dir", None) is not None:
            self.run_dir = Path(record.run_dir)
        assert self.run_dir is not None
        summary = (record if isinstance(record, AuditRecord) else AuditRecord.from_json(dict(record))).summary()
        path = self.run_dir / "audits" / f"kimg={kimg_tag(summary.kimg)}.ckpt"
        summary.checkpoint = str(path.relative_to(self.run_dir))
        self.records.append(summary)
        keep = kept_candidates(self.records, self.rule, self.keep_candidates)
        if summary.kimg in keep:
            record.checkpoint = summary.checkpoint  # the monitor writes the record after the listeners
            if trainer.is_global_zero:
                self._save(pl_module, record, path)
        else:
            self.records[-1].checkpoint = None
            if trainer.is_global_zero:
                path.unlink(missing_ok=True)  # e.g. left by an interrupted run before a resume
        for r in self.records:
            if r.checkpoint and r.kimg not in keep:
                if trainer.is_global_zero:
                    (self.run_dir / r.checkpoint).unlink(missing_ok=True)
                r.checkpoint = None

    @staticmethod
    def _save(pl_module: pl.LightningModule, record: Any, path: Path) -> None:
        attr = getattr(record, "generator_attr", None)
        generator = getattr(record, "generator", None)
        if attr:
            save_release(path, pl_module, attr)
        elif generator is not None:
            save_release(path, generator)
        else:
            raise UserError("the audit record names no generator to keep; audit with IdentityLeakageMonitor")

    # ----------------------------------------------------------------------------- the end
    def on_leakage_audits_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, records: list) -> None:
        """Choose the release among the kept candidates and write release.json, release.ckpt, figures."""
        if not trainer.is_global_zero:
            return
        history = [AuditRecord.from_json(r if isinstance(r, AuditRecord) else dict(r)) for r in records]
        kept = {r.kimg: r.checkpoint for r in self.records}
        for r in history:  # the candidates' files as this selector kept them
            r.checkpoint = kept.get(r.kimg, r.checkpoint) if r.ok else None
        self.release = self.decide(history, trainer)
        self._write(self.release, history, trainer)

    def decide(self, history: list[AuditRecord], trainer: pl.Trainer | None = None) -> dict:
        """The release decision for these records (``select_release`` plus epsilon and what it covers)."""
        present = []
        for r in history:
            copy = r.summary()
            if copy.checkpoint and not self._exists(copy.checkpoint):
                copy.checkpoint = None  # only files that exist can be released
            present.append(copy)
        decision = select_release(present, self.rule)
        at_end = {k: metric_of(trainer, k) for k in ("privacy/epsilon", "privacy/epsilon_person", "privacy/delta")} \
            if trainer is not None else {}
        decision.update(epsilon_figures(decision["chosen"], history, at_end))
        reference = next((r.extra.get("quality_reference") for r in reversed(history) if r.ok), None)
        stoppers = [cb for cb in getattr(trainer, "callbacks", []) or [] if getattr(cb, "stopped_kimg", None) is not None]
        # the stop that read members' figures, if any did (one such stop makes the choice private)
        stopper = next((cb for cb in stoppers if not is_public(str(getattr(cb, "metric", "")))),
                       stoppers[0] if stoppers else None)
        # nothing released: whether the choice *would* be covered still depends on the run's DP (its final epsilon)
        epsilon = decision["epsilon"] if decision["chosen"] is not None else decision.get("epsilon_at_end")
        decision.update(selection_privacy(self.rule, decision["quality_metric"], reference, epsilon,
                                          type(stopper).__name__ if stopper is not None else None,
                                          getattr(stopper, "metric", None)))
        privacy = self._privacy_summary(trainer)
        if privacy is not None:
            decision["privacy"] = privacy  # per image or per person, the scheme, and whether epsilon is valid
            if privacy.get("epsilon_valid") is False:
                decision["epsilon_covers_selection"] = False
                decision["epsilon_covers_selection_reason"] = f"epsilon is not a valid bound: {privacy.get('epsilon_note')}"
        decision["options"] = {**asdict(self.rule), "keep_candidates": self.keep_candidates}
        decision["release_checkpoint"] = RELEASE_CKPT if decision["chosen"] is not None else None
        return decision

    @staticmethod
    def _privacy_summary(trainer: pl.Trainer | None) -> dict | None:
        """What a privacy monitor (found by its ``emits_privacy_summary`` attribute) says epsilon means."""
        for cb in getattr(trainer, "callbacks", None) or []:
            if getattr(cb, "emits_privacy_summary", False) and callable(getattr(cb, "summary", None)):
                try:
                    summary = cb.summary()
                except Exception as err:  # noqa: BLE001 - the release must still be written
                    rank_zero_warn(f"could not read the privacy summary: {err}")
                    return None
                keys = ("unit", "scheme", "epsilon_meaning", "epsilon_valid", "epsilon_note")
                return {k: summary.get(k) for k in keys}
        return None

    def _exists(self, checkpoint: str) -> bool:
        path = Path(checkpoint)
        return (path if path.is_absolute() or self.run_dir is None else self.run_dir / path).is_file()

    def _write(self, release: dict, history: list[AuditRecord], trainer: pl.Trainer) -> None:
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

    def _log_wandb(self, trainer: pl.Trainer, release: dict, history: list[AuditRecord], checkpoint: Path | None,
                   tradeoff: Path | None) -> None:
        from gmia_defend.report.wandb import WandbAuditLog, wandb_loggers

        for logger in wandb_loggers(trainer):
            try:
                WandbAuditLog(logger.experiment).log_release(release, [r.to_json() for r in history], checkpoint,
                                                             tradeoff)
            except Exception as err:  # noqa: BLE001
                rank_zero_warn(f"could not log the release to W&B: {err}")

    def state_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "metric": self.metric,
                "records": [{"kimg": r.kimg, "step": r.step, "error": r.error, "checkpoint": r.checkpoint,
                             "metrics": dict(r.metrics)} for r in self.records]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = [AuditRecord.from_json(r) for r in state_dict.get("records", [])]
