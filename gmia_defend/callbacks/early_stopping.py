"""LeakageEarlyStopping: stop training when identity leakage exceeds a budget, or when quality stalls
while leakage keeps growing (training longer then only adds leakage; Webster et al. 2021).

It reads each audit of the ``IdentityLeakageMonitor`` (called by it through ``on_leakage_audit``; no
extra attack is run), so it needs a monitor among the trainer's callbacks. The stop decision is
reduced over processes like Lightning's ``EarlyStopping``; ``stopping_reason`` and
``stopping_reason_message`` say why training stopped. Its state is saved in checkpoints.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info

from gmia_defend.callbacks._state import find_monitor
from gmia_defend.errors import UserError
from gmia_defend.report.release import DEFAULT_BUDGET, DEFAULT_METRIC, quality_key_of


class LeakageStoppingReason(Enum):
    """Why ``LeakageEarlyStopping`` stopped training."""

    NOT_STOPPED = 0
    LEAKAGE_BUDGET = 1
    QUALITY_PLATEAU = 2


class LeakageEarlyStopping(pl.Callback):
    """Stop when ``metric`` > ``budget`` at ``patience`` consecutive audits, or (with ``fid_patience``)
    when quality has not improved for ``fid_patience`` audits while leakage rose over that time.

    Args:
        budget: largest acceptable value of ``metric``.
        metric: a ``leakage/...`` key; ``"leakage/auc"`` (default), ``"leakage/auc_ci_low"`` (stop only
            when leakage is above the budget with 97.5 % confidence) or ``"leakage/auc_ci_high"``
            (stop as soon as the budget cannot be ruled out).
        patience: consecutive audits over the budget before stopping.
        fid_patience: audits without quality improvement (by more than ``fid_min_delta``) while
            ``metric`` grew by more than ``leakage_min_delta`` since the best-quality audit; None: off.
        min_kimg: audits before this point never stop training.
        verbose: log the decision at each audit.
    """

    audit_order = 10  # before the release selector saves the audit's checkpoint (state is included)

    def __init__(self, budget: float = DEFAULT_BUDGET, metric: str = DEFAULT_METRIC, patience: int = 1,
                 fid_patience: int | None = None, fid_min_delta: float = 0.0, leakage_min_delta: float = 0.0,
                 quality_metric: str | None = None, min_kimg: float = 0.0, verbose: bool = True) -> None:
        super().__init__()
        if not metric.startswith("leakage/"):
            raise UserError(f"metric must be a leakage/... key (e.g. leakage/auc); got {metric!r}")
        if int(patience) < 1 or (fid_patience is not None and int(fid_patience) < 1):
            raise UserError("patience and fid_patience must be >= 1")
        self.budget, self.metric, self.patience = float(budget), metric, int(patience)
        self.fid_patience = int(fid_patience) if fid_patience is not None else None
        self.fid_min_delta, self.leakage_min_delta = float(fid_min_delta), float(leakage_min_delta)
        self.quality_metric, self.min_kimg, self.verbose = quality_metric, float(min_kimg), verbose
        self.wait = 0
        self.quality_wait = 0
        self.best_quality = math.inf
        self.leakage_at_best_quality = math.nan
        self.stopped_kimg: float | None = None
        self.stopped_step: int | None = None
        self.stopping_reason = LeakageStoppingReason.NOT_STOPPED
        self.stopping_reason_message: str | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(metric=self.metric, budget=self.budget)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and find_monitor(trainer) is None:
            raise UserError("LeakageEarlyStopping needs an IdentityLeakageMonitor among the trainer's callbacks "
                            "(it reads the monitor's audits); add one")

    # ----------------------------------------------------------------------------- decision
    def on_leakage_audit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: dict) -> None:
        """Called by the monitor after each audit, on every process (the decision is reduced)."""
        should_stop, reason, message = self._evaluate(record)
        should_stop = trainer.strategy.reduce_boolean_decision(should_stop, all=False)
        if should_stop and self.stopping_reason is LeakageStoppingReason.NOT_STOPPED:
            self.stopping_reason = reason or LeakageStoppingReason.LEAKAGE_BUDGET
            self.stopping_reason_message = message or "another process decided to stop"
            self.stopped_kimg, self.stopped_step = float(record["kimg"]), int(record.get("step") or 0)
        if should_stop and record.get("hook") != "on_train_end":
            trainer.should_stop = True
        if self.verbose and message and trainer.is_global_zero:
            rank_zero_info(message)

    def _evaluate(self, record: dict) -> tuple[bool, LeakageStoppingReason | None, str | None]:
        if record.get("error") or not record.get("metrics"):
            return False, None, None
        metrics = record["metrics"]
        kimg = float(record["kimg"])
        value = float(metrics.get(self.metric, math.nan))
        if not math.isfinite(value):
            return False, None, f"LeakageEarlyStopping: {self.metric} not measured at {kimg:g} kimg; not counted"
        self.wait = self.wait + 1 if value > self.budget else 0
        quality_key = self.quality_metric or quality_key_of([record])
        stalled, quality = False, math.nan
        if self.fid_patience is not None and quality_key is not None:
            quality = float(metrics.get(quality_key, math.nan))
            if math.isfinite(quality) and quality < self.best_quality - self.fid_min_delta:
                self.best_quality, self.leakage_at_best_quality, self.quality_wait = quality, value, 0
            elif math.isfinite(quality):
                self.quality_wait += 1
                grew = value > self.leakage_at_best_quality + self.leakage_min_delta
                stalled = self.quality_wait >= self.fid_patience and grew
        if kimg < self.min_kimg:
            return False, None, None
        if self.wait >= self.patience:
            return True, LeakageStoppingReason.LEAKAGE_BUDGET, (
                f"LeakageEarlyStopping: {self.metric} = {value:.4g} > budget {self.budget:g} at "
                f"{self.wait} consecutive audit(s) (patience {self.patience}); stopping at {kimg:g} kimg")
        if stalled:
            return True, LeakageStoppingReason.QUALITY_PLATEAU, (
                f"LeakageEarlyStopping: {quality_key} has not improved on {self.best_quality:.4g} for "
                f"{self.quality_wait} audits while {self.metric} rose from {self.leakage_at_best_quality:.4g} "
                f"to {value:.4g}; stopping at {kimg:g} kimg")
        if self.verbose:
            return False, None, (f"LeakageEarlyStopping: {self.metric} = {value:.4g} at {kimg:g} kimg "
                                 f"(budget {self.budget:g}, {self.wait}/{self.patience} over)")
        return False, None, None

    # ----------------------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {"wait": self.wait, "quality_wait": self.quality_wait, "best_quality": self.best_quality,
                "leakage_at_best_quality": self.leakage_at_best_quality, "stopped_kimg": self.stopped_kimg,
                "stopped_step": self.stopped_step, "stopping_reason": self.stopping_reason.value,
                "stopping_reason_message": self.stopping_reason_message}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait = int(state_dict.get("wait", 0))
        self.quality_wait = int(state_dict.get("quality_wait", 0))
        self.best_quality = float(state_dict.get("best_quality", math.inf))
        self.leakage_at_best_quality = float(state_dict.get("leakage_at_best_quality", math.nan))
        self.stopped_kimg = state_dict.get("stopped_kimg")
        self.stopped_step = state_dict.get("stopped_step")
        self.stopping_reason = LeakageStoppingReason(state_dict.get("stopping_reason", 0))
        self.stopping_reason_message = state_dict.get("stopping_reason_message")
