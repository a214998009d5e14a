"""IdentityLeakageMonitor: audit the training generator for identity leakage, next to quality, on a schedule.

A thin Lightning adapter over ``gmia_defend.audit``: it decides when to audit (every
``every_n_kimg`` thousand real images, ``every_n_steps`` batches or ``every_n_epochs`` epochs, and
once at the end), hands the generator to an ``Auditor`` (one generation pass feeds the attack and the
quality metric), glues the shards together under DDP, logs ``leakage/*`` and ``quality/*`` with
``pl_module.log`` (so ``EarlyStopping``/``ModelCheckpoint`` can monitor them) and to every logger
(W&B: identity names as keyed pseudonyms), and appends each record to ``<run_dir>/audits.jsonl``
through an ``AuditLog``. Listeners are told about each record (see ``callbacks._state``).

Its ``state_dict`` keeps the audit history without identity tables, so a resumed run continues it. A
failing audit is recorded and warned about; training goes on unless ``fail_on_error``. Auditing never
changes training: every random state and every module buffer is left as it was.

Example (attached to any GAN LightningModule; only the generator's attribute name is needed):

    >>> monitor = IdentityLeakageMonitor(embedder="synthetic", generator="G_ema", every_n_kimg=4.0,
    ...                                  num_samples=1000)
    >>> monitor.every_n_kimg, monitor.history
    (4.0, [])

Slightly over 350 lines: the constructor's documented options take a third of it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from gmia_defend.audit.auditor import Auditor, load_embedders
from gmia_defend.audit.log import AuditLog, audit_records
from gmia_defend.audit.record import KIMG, LEAKAGE_PREFIX, PRIVACY_PREFIX, PUBLIC_PREFIX, QUALITY_PREFIX, AuditRecord
from gmia_defend.callbacks._ddp import PeerAuditFailed, ddp_reducers
from gmia_defend.callbacks._loggers import keep_split_out_of_remote_loggers, log_to_loggers
from gmia_defend.callbacks._real_images import QUALITY_REFERENCES, real_images_for
from gmia_defend.callbacks._state import (audit_listeners, images_in_batch, module_kimg, resolve_generator,
                                          resolve_run_dir)
from gmia_defend.errors import UserError
from gmia_defend.rng import preserved_rng

DEFAULT_EVERY_N_KIMG = 100.0


class IdentityLeakageMonitor(pl.Callback):
    """Audit identity leakage (and quality) of the generator while it trains.

    Args:
        embedder: an ``Embedder``, a spec (``"synthetic"``, ``"facenet"``, a saved ``.pt``) or a list
            (worst case over embedders). A spec is loaded without touching any global RNG.
        audit: an ``AuditSet``; None takes ``trainer.datamodule.audit_set`` (``IdentityDataModule``).
        generator: attribute name of the generator on the LightningModule (``"G_ema"``), a callable
            ``pl_module -> generator``, or an ``nn.Module``.
        every_n_kimg / every_n_steps / every_n_epochs: the cadence (one of them; default
            ``every_n_kimg=100``). kimg comes from ``pl_module.kimg`` / ``images_seen`` when the module
            has them, else from counting training images.
        num_samples, batch_size, seed: generated samples per audit (the same latents every time).
        fid: also measure quality. ``fid_weights_path`` (local Inception FID weights) gives
            ``quality/fid``; else the Fréchet distance in the first embedder's space.
        quality_reference: the real images quality is measured against: ``"train"`` (a sample of the
            training set; private data), ``"population"`` (the audit set's population identities, never
            trained on: public), a folder of public images, or a tensor / callable ``trainer -> tensor``
            you give (``real_images`` is the same as a tensor here).
        halves: split the audited identities into a selection and a confirmation half (the release
            rule selects on one, the reported figures come from the other).
        run_dir: where ``audits.jsonl``, evidence and plots go (default ``trainer.default_root_dir``).
        fail_on_error: re-raise a failed audit instead of recording it and training on.
        pseudonymize, pseudonym_key: keyed pseudonyms for identity names sent to remote loggers.
        progress: progress bar during the attack.
        audit_at_start / audit_on_train_end: also audit when training starts / ends.
        evidence: write the evidence grid (reference photo beside the nearest generated faces).
        attack_options: extra keyword arguments for ``IdentityMembershipAttack``.
        public_audit: an ``AuditSet`` of public identities (canaries trained on on purpose vs public
            people never trained on), scored on the same samples as ``public/leakage/*``; None takes
            ``trainer.datamodule.public_audit_set`` when the datamodule has one
            (``IdentityDataModule(public_canaries=...)``); False turns it off.
    """

    emits_leakage_audits = True  # how the other callbacks find a monitor without importing this module

    def __init__(self, embedder: Any = "synthetic", audit: Any = None, generator: Any = "G_ema",
                 every_n_kimg: float | None = None, every_n_steps: int | None = None,
                 every_n_epochs: int | None = None, num_samples: int = 5000, batch_size: int = 256,
                 seed: int = 0, fid: bool = True, fid_weights_path: str | None = None, real_images: Any = None,
                 num_real_images: int | None = None, quality_reference: Any = "train", halves: bool = True,
                 run_dir: str | None = None, fail_on_error: bool = False, pseudonymize: bool = True,
                 pseudonym_key: str | None = None, progress: bool = True, audit_at_start: bool = False,
                 audit_on_train_end: bool = True, evidence: bool = True, attack_options: dict | None = None,
                 public_audit: Any = None) -> None:
        super().__init__()
        given = [v is not None for v in (every_n_kimg, every_n_steps, every_n_epochs)]
        if sum(given) > 1:
            raise UserError("give only one cadence: every_n_kimg, every_n_steps or every_n_epochs")
        if not any(given):
            every_n_kimg = DEFAULT_EVERY_N_KIMG
        for name, value in (("every_n_kimg", every_n_kimg), ("every_n_steps", every_n_steps),
                            ("every_n_epochs", every_n_epochs)):
            if value is not None and not value > 0:
                raise UserError(f"{name} must be > 0; got {value}")
        if int(num_samples) < 2:
            raise UserError(f"num_samples must be >= 2; got {num_samples}")
        if isinstance(quality_reference, str) and quality_reference not in QUALITY_REFERENCES \
                and not Path(quality_reference).expanduser().is_dir():
            raise UserError(f"quality_reference must be one of {', '.join(QUALITY_REFERENCES)}, a folder of public "
                            f"images, a tensor or a callable; got {quality_reference!r}")
        self.embedder_spec, self.audit, self.generator = embedder, audit, generator
        self.public_audit = public_audit
        self.every_n_kimg = float(every_n_kimg) if every_n_kimg is not None else None
        self.every_n_steps = int(every_n_steps) if every_n_steps is not None else None
        self.every_n_epochs = int(every_n_epochs) if every_n_epochs is not None else None
        self.num_samples, self.batch_size, self.seed = int(num_samples), int(batch_size), int(seed)
        self.fid, self.fid_weights_path = bool(fid), fid_weights_path
        self.quality_reference = real_images if real_images is not None else quality_reference
        self.num_real_images, self.halves = num_real_images, bool(halves)
        self.run_dir_arg = run_dir
        self.fail_on_error, self.pseudonymize, self.pseudonym_key = fail_on_error, pseudonymize, pseudonym_key
        self.progress, self.audit_at_start, self.audit_on_train_end = progress, audit_at_start, audit_on_train_end
        self.evidence = evidence
        self.attack_options = dict(attack_options or {})
        self.history: list[AuditRecord] = []  # resumable state
        self._images, self._batches, self._cadence_index = 0, 0, 0
        self.run_dir: Path | None = None
        self.auditor: Auditor | None = None
        self.log: AuditLog | None = None
        self._wandb: dict[int, Any] = {}
        self._finished, self._reduced, self._warned_dp = False, False, False
        self._fit_start = time.time()
        self.seconds_spent = 0.0  # wall time in audits, their preparation, listeners and outputs (this process)

    # ------------------------------------------------------------------------------- public helpers
    @property
    def latest(self) -> AuditRecord | None:
        """The latest successful audit record (None before the first)."""
        return next((r for r in reversed(self.history) if r.ok), None)

    @property
    def quality_key(self) -> str | None:
        quality = self.auditor.quality if self.auditor is not None else None
        return quality.key if quality is not None else None

    def kimg(self, pl_module: pl.LightningModule) -> float:
        """Thousands of real images shown so far (module's own count, else counted images)."""
        value = module_kimg(pl_module)
        return value if value is not None else self._images / 1000.0

    # ------------------------------------------------------------------------------- setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.run_dir = resolve_run_dir(trainer, self.run_dir_arg)
        self.log = AuditLog(self.run_dir, self.pseudonymize, self.pseudonym_key, self.evidence,
                            write=trainer.is_global_zero)
        if self.auditor is None:
            self.auditor = Auditor(
                load_embedders(self.embedder_spec), lambda: self._resolve_audit(trainer), self.num_samples,
                self.batch_size, self.seed, quality=self.fid, fid_weights_path=self.fid_weights_path,
                real_images=lambda: self._real_images(trainer), halves=self.halves, progress=self.progress,
                attack_options=self.attack_options, public_audit=lambda: self.resolve_public_audit(trainer))
        keep_split_out_of_remote_loggers(trainer, self.pseudonymize)

    def _resolve_audit(self, trainer: pl.Trainer) -> Any:
        if self.audit is not None:
            return self.audit
        dm = getattr(trainer, "datamodule", None)
        audit = getattr(dm, "audit_set", None) if dm is not None else None
        if audit is None:
            raise UserError("IdentityLeakageMonitor has no audit set: pass audit=AuditSet.from_split(dataset, "
                            "split), or train with an IdentityDataModule (its .audit_set is used)")
        return audit

    def resolve_public_audit(self, trainer: pl.Trainer) -> Any:
        """The public canaries' audit set: the one given, else the datamodule's (None when there is none)."""
        if self.public_audit is False:
            return None
        if self.public_audit is not None:
            return self.public_audit
        dm = getattr(trainer, "datamodule", None)
        return getattr(dm, "public_audit_set", None) if dm is not None else None

    def _real_images(self, trainer: pl.Trainer) -> torch.Tensor:
        n = int(self.num_real_images or self.num_samples)
        return real_images_for(self.quality_reference, trainer, n, self.seed,
                               lambda: self._resolve_audit(trainer))

    # ------------------------------------------------------------------------------- cadence hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finished, self._fit_start = False, time.time()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.log is not None:
            self.history = self.log.sync(self.history)
        t0 = time.perf_counter()
        self.auditor.prepare(pl_module.device)  # references and real statistics now, not in the first audit
        self.seconds_spent += time.perf_counter() - t0
        if self.audit_at_start and not self._audited_at(self.kimg(pl_module)):
            self._audit(trainer, pl_module, "on_train_start")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if module_kimg(pl_module) is None:  # count only when the module does not; never realised DP batch sizes
            counted = images_in_batch(trainer, pl_module, batch)
            if counted is None and not self._warned_dp:
                self._warned_dp = True
                rank_zero_warn("IdentityLeakageMonitor: under DP the realised batch sizes are not counted and the "
                               "loader has no nominal batch size; give the module a kimg property, or audit by "
                               "every_n_steps (kimg stays 0)")
            self._images += counted or 0
        self._batches += 1
        due = False
        if self.every_n_kimg is not None:
            index = math.floor(self.kimg(pl_module) / self.every_n_kimg + 1e-9)
            if index > self._cadence_index:
                self._cadence_index, due = index, True
        elif self.every_n_steps is not None:
            due = self._batches % self.every_n_steps == 0
        if due:
            self._audit(trainer, pl_module, "on_train_batch_end")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            if not self._audited_at(self.kimg(pl_module)):
                self._audit(trainer, pl_module, "on_train_epoch_end")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """End-of-training audit, then listeners' ``on_leakage_audits_end`` (e.g. the release decision)."""
        if self._finished:
            return
        self._finished = True
        if self.audit_on_train_end and not self._audited_at(self.kimg(pl_module)):
            self._audit(trainer, pl_module, "on_train_end")
        listeners = audit_listeners(trainer, "on_leakage_audits_end")
        for listener in listeners:
            listener.on_leakage_audits_end(trainer, pl_module, list(self.history))
        if trainer.is_global_zero and not any(getattr(cb, "writes_report", False) for cb in listeners):
            self._write_plots()

    def _audited_at(self, kimg: float) -> bool:
        return any(abs(r.kimg - round(kimg, 6)) < 1e-9 for r in self.history)

    # ------------------------------------------------------------------------------- the audit
    def _audit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, hook: str) -> AuditRecord:
        kimg, world = self.kimg(pl_module), trainer.world_size
        t0 = time.perf_counter()
        error: BaseException | None = None
        record = None
        self._reduced = False
        generator = resolve_generator(pl_module, self.generator)  # configuration errors raise here, on every rank
        self.auditor.prepare(pl_module.device)
        try:
            record = self._measure(trainer, generator, kimg)
        except Exception as err:  # noqa: BLE001 - reported, and re-raised if fail_on_error
            error = err
            if world > 1 and not self._reduced:
                trainer.strategy.reduce_boolean_decision(False, all=True)  # release peers waiting in reduce
        if world > 1:
            all_ok = trainer.strategy.reduce_boolean_decision(error is None, all=True)
            if error is None and not all_ok:
                error = PeerAuditFailed("the audit failed on another process")
        if error is not None:
            record = AuditRecord.failed(kimg, error)
        assert record is not None
        self._annotate(record, trainer, hook, time.perf_counter() - t0)
        self.history.append(record)
        if error is not None:
            rank_zero_warn(f"identity leakage audit at {kimg:g} kimg failed: {record.error}"
                           + ("" if self.fail_on_error else "; training continues (fail_on_error=False)"))
        # the listener channel: the record, plus where it is written and which generator it audited
        record.run_dir, record.generator, record.generator_attr = (  # type: ignore[attr-defined]
            self.run_dir, generator, self.generator if isinstance(self.generator, str) else None)
        for listener in audit_listeners(trainer):
            listener.on_leakage_audit(trainer, pl_module, record)
        if error is None and hook != "on_train_end":
            self._log_to_module(pl_module, record, hook)
        if trainer.is_global_zero:
            self._publish(trainer, record, None if error is not None else self.auditor.result)
        self.seconds_spent += time.perf_counter() - t0
        if error is not None and self.fail_on_error:
            raise error
        return record

    def _measure(self, trainer: pl.Trainer, generator: Any, kimg: float) -> AuditRecord:
        world, rank = trainer.world_size, trainer.global_rank
        reduce = reduce_sum = None
        if world > 1:
            reduce, reduce_sum = ddp_reducers(trainer, self._mark_reduced)
        with preserved_rng():
            record = self.auditor.audit(generator, kimg=kimg, step=int(trainer.global_step), shard=(rank, world),
                                        reduce=reduce, reduce_sum=reduce_sum)
        if world > 1 and not self._reduced:
            raise RuntimeError("the attack did not merge its shards (reduce was not called)")
        return record

    def _mark_reduced(self) -> None:
        self._reduced = True

    def _annotate(self, record: AuditRecord, trainer: pl.Trainer, hook: str, seconds: float) -> None:
        record.audit, record.step, record.batches = len(self.history), int(trainer.global_step), int(self._batches)
        record.epoch, record.hook, record.world_size = int(trainer.current_epoch), hook, int(trainer.world_size)
        record.final, record.time, record.audit_s = hook == "on_train_end", time.time(), round(seconds, 3)
        record.wall_s = round(time.time() - self._fit_start, 3)
        if not record.ok:
            return
        for key, value in trainer.callback_metrics.items():  # e.g. PrivacyBudgetMonitor's epsilon and delta
            if key.startswith(PRIVACY_PREFIX):
                record.metrics[key] = float(value)
        ref = self.quality_reference  # "train" is private; "population", a folder or your tensor are not
        record.extra["quality_reference"] = ref if isinstance(ref, str) and ref in QUALITY_REFERENCES else "user"

    def _log_to_module(self, pl_module: pl.LightningModule, record: AuditRecord, hook: str) -> None:
        if hook == "on_train_start":
            return  # self.log is not allowed there; the loggers still get the values
        on_step = hook == "on_train_batch_end"
        own_kimg = module_kimg(pl_module) is None  # a module tracking kimg logs progress/kimg itself
        for key, value in record.metrics.items():
            if (key.startswith((LEAKAGE_PREFIX, QUALITY_PREFIX, PUBLIC_PREFIX)) or (own_kimg and key == KIMG)) \
                    and math.isfinite(value):
                pl_module.log(key, value, on_step=on_step, on_epoch=not on_step, logger=False, prog_bar=False,
                              batch_size=1, sync_dist=False)

    # ------------------------------------------------------------------------------- outputs (rank 0)
    def _publish(self, trainer: pl.Trainer, record: AuditRecord, result: Any) -> None:
        assert self.log is not None
        self.log.append(record, result)
        if not record.ok:
            return
        log_to_loggers(trainer, record, self.history, self.log, result, self._wandb, self.quality_key)
        self.log.save_pseudonyms()

    def _write_plots(self) -> None:
        from gmia_defend.report.plots import write_report_plots

        if self.run_dir is None or not self.history:
            return
        try:
            write_report_plots(self.history, self.run_dir / "report")
        except Exception as err:  # noqa: BLE001
            rank_zero_warn(f"could not write the report plots: {err}")

    # ------------------------------------------------------------------------------- checkpointing
    def _settings(self) -> dict[str, Any]:
        return {"num_samples": self.num_samples, "seed": self.seed, "every_n_kimg": self.every_n_kimg,
                "every_n_steps": self.every_n_steps, "every_n_epochs": self.every_n_epochs}

    def state_dict(self) -> dict[str, Any]:
        """Audit summaries (no per-identity tables: no identity names in checkpoints) and the cadence."""
        state = {"history": [r.summary().to_json() for r in self.history], "batches": int(self._batches),
                 "cadence_index": int(self._cadence_index), "settings": self._settings()}
        if self._images:
            state["images"] = float(self._images)  # counted here (no module kimg); nominal sizes under DP
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("settings") or {}
        changed = {k: (saved[k], v) for k, v in self._settings().items() if k in saved and saved[k] != v}
        if changed:
            rank_zero_warn(f"IdentityLeakageMonitor resumed with other settings {changed} (checkpoint, now): audits "
                           "before and after the resume are not directly comparable")
        self.history = [AuditRecord.from_json(r) for r in state_dict.get("history", [])]
        self._images = float(state_dict.get("images", 0))
        self._batches = int(state_dict.get("batches", 0))
        self._cadence_index = int(state_dict.get("cadence_index", 0))


__all__ = ["IdentityLeakageMonitor", "audit_records"]
