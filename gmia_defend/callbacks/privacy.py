"""PrivacyBudgetMonitor: log epsilon as a DP discriminator trains, stop before the budget is exceeded.

Reads the ``PrivateDiscriminator`` that ``make_discriminator_private`` attached to the module
(``pl_module.private_d``). After each batch it logs ``privacy/epsilon`` (so the leakage monitor and the
release selector can record it beside each audit; it moves itself first among the callbacks so they
never read the previous step's value) and, with a ``target_epsilon``, stops training
when one more D step would take epsilon above the target (the accountant is deterministic, so this
is known before the step). Its checkpoint state holds the accountant, so a resumed run continues
the same budget. ``summary()`` and ``<run>/privacy.json`` give epsilon, delta, unit and how.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from gmia_defend.callbacks._state import resolve_run_dir
from gmia_defend.errors import UserError
from gmia_defend.io import write_json_atomic


class PrivacyBudgetMonitor(pl.Callback):
    """Track (epsilon, delta)-DP of a private discriminator; stop at ``target_epsilon``.

    Args:
        target_epsilon: stop before epsilon would exceed it (None: the private discriminator's own
            target, if any; with both, the smaller).
        private_d: the PrivateDiscriminator (None: ``pl_module.private_d`` at fit start).
        log_every_n_steps: evaluate epsilon every N D steps (None: 1 with RDP, 25 with the slower PRV
            accountant); in between, ``privacy/epsilon`` is the value at the end of the current block
            of N steps, an upper bound (never under-reported). The stop decision is exact either way.
        run_dir: where ``privacy.json`` is written at the end (None: ``trainer.default_root_dir``).
        make_private: if given (and the module has no ``private_d`` yet), these keyword arguments of
            ``make_discriminator_private`` are applied at setup, with the trainer's datamodule and this
            ``target_epsilon``: DP from a LightningCLI YAML, e.g.
            ``make_private: {unit: identity, noise_multiplier: 1.0, max_images_per_identity: 4}``.
    """

    def __init__(self, target_epsilon: float | None = None, private_d: Any = None,
                 log_every_n_steps: int | None = None, run_dir: str | Path | None = None,
                 make_private: dict[str, Any] | None = None) -> None:
        if target_epsilon is not None and not target_epsilon > 0:
            raise UserError(f"PrivacyBudgetMonitor target_epsilon must be > 0, got {target_epsilon}")
        self.target_epsilon = target_epsilon
        self.private_d = private_d
        self.log_every_n_steps = log_every_n_steps
        self.run_dir = run_dir
        self.make_private = dict(make_private) if make_private is not None else None
        self.stopping_reason: str | None = None
        self.stopping_reason_message: str | None = None
        self._pending: dict[str, Any] | None = None
        self._last_logged = -1

    # ------------------------------------------------------------------ what others read

    @property
    def epsilon(self) -> float | None:
        return None if self.private_d is None else float(self.private_d.epsilon)

    @property
    def delta(self) -> float | None:
        return None if self.private_d is None else float(self.private_d.delta)

    @property
    def unit(self) -> str | None:
        return None if self.private_d is None else str(self.private_d.unit)

    @property
    def steps(self) -> int:
        return 0 if self.private_d is None else int(self.private_d.steps)

    def summary(self) -> dict[str, Any]:
        """``{"epsilon", "delta", "unit", "steps", "noise_multiplier", "accountant", ...}`` for release.json."""
        out: dict[str, Any] = dict(self.private_d.summary()) if self.private_d is not None else {
            "epsilon": None, "delta": None, "unit": None, "steps": 0, "noise_multiplier": None, "accountant": None}
        out["target_epsilon"] = self._effective_target()
        out["stopping_reason"] = self.stopping_reason
        out["stopping_reason_message"] = self.stopping_reason_message
        return out

    # ------------------------------------------------------------------ hooks

    def _effective_target(self) -> float | None:
        targets = [t for t in (self.target_epsilon, getattr(self.private_d, "target_epsilon", None)) if t is not None]
        return min(targets) if targets else None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        callbacks = getattr(trainer, "callbacks", None)
        if isinstance(callbacks, list) and self in callbacks and callbacks[0] is not self:
            # first in line, so callbacks that read privacy/epsilon at batch end (leakage audits,
            # release selection) see this step's value, not the previous one
            callbacks.remove(self)
            callbacks.insert(0, self)
        if stage != "fit" or self.make_private is None or getattr(pl_module, "private_d", None) is not None:
            return
        from gmia_defend.mitigations.dp import make_discriminator_private

        kwargs = dict(self.make_private)
        if self.target_epsilon is not None:
            kwargs.setdefault("target_epsilon", self.target_epsilon)
        if getattr(trainer, "datamodule", None) is not None and "targets" not in kwargs:
            kwargs.setdefault("datamodule", trainer.datamodule)
        self.private_d = make_discriminator_private(pl_module, **kwargs)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.private_d is None:
            self.private_d = getattr(pl_module, "private_d", None)
        if self.private_d is None:
            raise UserError("PrivacyBudgetMonitor found no private discriminator: call "
                            "gmia_defend.mitigations.make_discriminator_private(model, ...) before fitting")
        if self._pending is not None:
            self.private_d.load_state_dict(self._pending)
            self._pending = None
        target = self._effective_target()
        if target is not None and target != self.private_d.target_epsilon:
            self.private_d.set_target_epsilon(target)
        if not self.private_d.budget_exhausted:
            self.stopping_reason = self.stopping_reason_message = None  # e.g. resumed with a larger budget
        self._check_budget(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        pd = self.private_d
        if pd is None or pd.steps == self._last_logged:
            return
        value = pd.epsilon if self._check_budget(trainer) else pd.reported_epsilon(self.log_every_n_steps)
        pl_module.log("privacy/epsilon", value, on_step=True, on_epoch=False, batch_size=1)
        pl_module.log("privacy/delta", pd.delta, on_step=True, on_epoch=False, batch_size=1)
        self._last_logged = pd.steps

    def _check_budget(self, trainer: pl.Trainer) -> bool:
        pd = self.private_d
        if pd is None or not pd.budget_exhausted:
            return False
        trainer.should_stop = True
        if self.stopping_reason is None:
            self.stopping_reason = "privacy_budget"
            self.stopping_reason_message = (
                f"privacy budget reached: epsilon={pd.epsilon:.4g} (delta={pd.delta:.3g}, per {pd.unit}) after "
                f"{pd.steps} D steps; one more step would exceed target_epsilon={pd.target_epsilon}")
        return True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.private_d is None or not trainer.is_global_zero:
            return
        root = resolve_run_dir(trainer, self.run_dir)
        write_json_atomic(root / "privacy.json", self.summary())

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"stopping_reason": self.stopping_reason,
                                 "stopping_reason_message": self.stopping_reason_message,
                                 "target_epsilon": self.target_epsilon}
        if self.private_d is not None:
            state["private_d"] = self.private_d.state_dict()
            state["unit"] = self.private_d.unit
        elif self._pending is not None:
            state["private_d"] = self._pending
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stopping_reason = state_dict.get("stopping_reason")
        self.stopping_reason_message = state_dict.get("stopping_reason_message")
        private_state = state_dict.get("private_d")
        if private_state is None:
            return
        if self.private_d is not None:
            self.private_d.load_state_dict(private_state)
        else:
            self._pending = private_state
