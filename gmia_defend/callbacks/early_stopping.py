"""LeakageEarlyStopping: stop training when identity leakage exceeds a budget (or is significant), or when
quality stalls while leakage keeps growing (training longer then only adds leakage; Webster et al. 2021).

A thin adapter over ``gmia_defend.audit.stop_decision``: it collects the records the monitor hands to
``on_leakage_audit`` (no extra attack is run), asks the policy after each, and reduces the decision
over processes like Lightning's ``EarlyStopping``. Its state (the record summaries) is saved in
checkpoints.

Example:
    >>> stopper = LeakageEarlyStopping(budget=0.7, metric="leakage/auc_ci_low", patience=2)
    >>> stopper.rule.patience, stopper.stopping_reason.name
    (2, 'NOT_STOPPED')
"""

from __future__ import annotations

from dataclasses import asdict
from enum import Enum
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info

from gmia_defend.audit.policies import StopRule, stop_decision
from gmia_defend.audit.record import DEFAULT_BUDGET, DEFAULT_METRIC, AuditRecord
from gmia_defend.callbacks._state import check_public_metric, has_monitor
from gmia_defend.errors import UserError


class LeakageStoppingReason(Enum):
    """Why ``LeakageEarlyStopping`` stopped training."""

    NOT_STOPPED = 0
    LEAKAGE_BUDGET = 1
    QUALITY_PLATEAU = 2


_REASONS = {"leakage_budget": LeakageStoppingReason.LEAKAGE_BUDGET,
            "quality_plateau": LeakageStoppingReason.QUALITY_PLATEAU}


class LeakageEarlyStopping(pl.Callback):
    """Stop when ``metric`` > ``budget`` (or, with ``alpha``, ``leakage/p_value`` < ``alpha``) at ``patience``
    consecutive audits, or (with ``fid_patience``) when quality has not improved for ``fid_patience``
    audits while leakage rose over that time.

    Args:
        budget: largest acceptable value of ``metric``.
        metric: a ``leakage/...`` key: ``"leakage/auc"`` (default), ``"leakage/auc_ci_low"`` (stop only
            when leakage is above the budget with 97.5 % confidence) or ``"leakage/auc_ci_high"``.
        patience: consecutive audits over the budget before stopping.
        fid_patience, fid_min_delta, leakage_min_delta, quality_metric: the quality-plateau rule.
        min_kimg: audits before this point never stop training.
        alpha: also count an audit as over budget when its permutation p-value is below ``alpha``.
        halves: read the selection half of the identities when the audits have one.
        verbose: log the decision at each audit.
    """

    audit_order = 10

    def __init__(self, budget: float = DEFAULT_BUDGET, metric: str = DEFAULT_METRIC, patience: int = 1,
                 fid_patience: int | None = None, fid_min_delta: float = 0.0, leakage_min_delta: float = 0.0,
                 quality_metric: str | None = None, min_kimg: float = 0.0, alpha: float | None = None,
                 halves: bool = True, verbose: bool = True) -> None:
        super().__init__()
        self.rule = StopRule(budget=float(budget), metric=metric, patience=int(patience),
                             fid_patience=int(fid_patience) if fid_patience is not None else None,
                             fid_min_delta=float(fid_min_delta), leakage_min_delta=float(leakage_min_delta),
                             quality_metric=quality_metric, min_kimg=float(min_kimg), alpha=alpha, halves=halves)
        self.budget, self.metric, self.patience, self.verbose = self.rule.budget, metric, self.rule.patience, verbose
        self.records: list[AuditRecord] = []
        self.decision: dict[str, Any] = stop_decision([], self.rule)
        self.stopped_kimg: float | None = None
        self.stopped_step: int | None = None
        self.stopping_reason = LeakageStoppingReason.NOT_STOPPED
        self.stopping_reason_message: str | None = None

    # the policy's counters, for inspection
    wait = property(lambda self: int(self.decision["wait"]))
    quality_wait = property(lambda self: int(self.decision["quality_wait"]))
    best_quality = property(lambda self: float(self.decision["best_quality"]))
    leakage_at_best_quality = property(lambda self: float(self.decision["leakage_at_best_quality"]))

    @property
    def state_key(self) -> str:
        return self._generate_state_key(metric=self.metric, budget=self.budget)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and not has_monitor(trainer):
            raise UserError("LeakageEarlyStopping needs an IdentityLeakageMonitor among the trainer's callbacks "
                            "(it reads the monitor's audits); add one")
        if stage == "fit":
            check_public_metric(trainer, self.rule.metric, "LeakageEarlyStopping")

    def on_leakage_audit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: Any) -> None:
        """Called by the monitor after each audit, on every process (the decision is reduced)."""
        record = AuditRecord.from_json(record if isinstance(record, AuditRecord) else dict(record))
        self.records.append(record.summary())
        self.decision = stop_decision(self.records, self.rule)
        should_stop = trainer.strategy.reduce_boolean_decision(bool(self.decision["stop"]), all=False)
        if should_stop and self.stopping_reason is LeakageStoppingReason.NOT_STOPPED:
            self.stopping_reason = _REASONS.get(self.decision["reason"], LeakageStoppingReason.LEAKAGE_BUDGET)
            self.stopping_reason_message = self.decision["message"] if self.decision["stop"] else \
                "another process decided to stop"
            self.stopped_kimg, self.stopped_step = float(record.kimg), int(record.step or 0)
        if should_stop and record.hook != "on_train_end":
            trainer.should_stop = True
        message = self.decision["message"]
        if message and trainer.is_global_zero and (self.verbose or self.decision["stop"]):
            rank_zero_info(message)

    def state_dict(self) -> dict[str, Any]:
        return {"records": [{"kimg": r.kimg, "step": r.step, "hook": r.hook, "error": r.error,
                             "metrics": dict(r.metrics)} for r in self.records],
                "rule": asdict(self.rule), "stopped_kimg": self.stopped_kimg, "stopped_step": self.stopped_step,
                "stopping_reason": self.stopping_reason.value, "stopping_reason_message": self.stopping_reason_message}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = [AuditRecord.from_json(r) for r in state_dict.get("records", [])]
        self.decision = stop_decision(self.records, self.rule)
        self.stopped_kimg = state_dict.get("stopped_kimg")
        self.stopped_step = state_dict.get("stopped_step")
        self.stopping_reason = LeakageStoppingReason(state_dict.get("stopping_reason", 0))
        self.stopping_reason_message = state_dict.get("stopping_reason_message")


__all__ = ["LeakageEarlyStopping", "LeakageStoppingReason"]
