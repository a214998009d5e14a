"""IdentityLeakageMonitor: audit the training generator for identity leakage, next to FID, on a schedule.

At each cadence point (every ``every_n_kimg`` thousand real images, ``every_n_steps`` batches or
``every_n_epochs`` epochs) and once at the end of training, the callback runs the identity membership
attack on the current generator and feeds the SAME generated batches to a Fréchet distance (one
generation pass; with the embedder's feature space the attack's embeddings are reused too). It

- logs ``leakage/*`` and ``quality/*`` with ``pl_module.log`` (so ``EarlyStopping`` /
  ``ModelCheckpoint`` can monitor them) and sends them, with ``progress/kimg``, to every logger;
- appends one JSON line per audit to ``<run_dir>/audits.jsonl`` (real identity names: local file)
  and writes the evidence grid of the most leaked identities to ``<run_dir>/evidence/``;
- with a WandbLogger: kimg as x-axis, per-identity table and chart, evidence image, audit table,
  identity names replaced by keyed pseudonyms unless ``pseudonymize=False``;
- tells ``LeakageEarlyStopping`` / ``ReleaseCheckpointSelector`` (``on_leakage_audit``).

Its ``state_dict`` holds the audit history, so a run resumed from a checkpoint continues it without
duplicates. Under DDP every process generates its shard of the fixed latents and the statistics are
all-gathered; the result equals one process's, and only rank 0 writes files. A failing audit (e.g.
a generator producing NaN) is recorded and warned about; training goes on unless ``fail_on_error``.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from gmia_defend.callbacks._state import (audit_listeners, batch_size_of, kimg_tag, module_kimg,
                                          resolve_run_dir, scalar_metrics)
from gmia_defend.errors import UserError
from gmia_defend.io import append_jsonl, read_jsonl, write_jsonl_atomic

AUDITS_FILE = "audits.jsonl"
IDENTITY_FIELDS = ("identity", "member", "train_count", "score", "max_sim", "topk_mean", "matches",
                   "match_rate", "calibrated")
DEFAULT_EVERY_N_KIMG = 100.0


class _PeerAuditFailed(RuntimeError):
    """Another process's share of the audit failed (raised on the healthy processes)."""


class _SharedEmbedding(nn.Module):
    """Wraps an embedder so the attack's embeddings of generated batches also feed the Fréchet distance.

    ``expect(images)`` marks a generated batch; when the attack embeds exactly that tensor the output
    goes to ``sink`` too. Anything else (references, evidence) passes through untouched.
    """

    def __init__(self, embedder: nn.Module) -> None:
        super().__init__()
        self.inner = embedder
        self.pending: torch.Tensor | None = None
        self.sink: Callable[[torch.Tensor], None] | None = None

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules")
            if name.startswith("__") or not modules or "inner" not in modules:
                raise
            return getattr(modules["inner"], name)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.inner(images)
        if self.pending is not None and images is self.pending and self.sink is not None:
            self.sink(out)
            self.pending = None
        return out


@contextlib.contextmanager
def _preserve_rng(device: torch.device) -> Iterator[None]:
    """Leave torch / numpy / python RNG states as they were: auditing must not change training."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class IdentityLeakageMonitor(pl.Callback):
    """Audit identity leakage (and FID) of the generator while it trains.

    Args:
        embedder: an ``Embedder``, a spec for ``gmia_defend.embedders.load_embedder`` (``"synthetic"``,
            ``"facenet"``, a saved ``.pt``) or a list of them (worst case over embedders).
        audit: an ``AuditSet``; None takes ``trainer.datamodule.audit_set`` (``IdentityDataModule``).
        generator: attribute name of the generator on the LightningModule (``"G_ema"``), a callable
            ``pl_module -> generator``, or an ``nn.Module``.
        every_n_kimg / every_n_steps / every_n_epochs: the cadence (one of them; default
            ``every_n_kimg=100``). kimg comes from ``pl_module.kimg`` / ``images_seen`` when the
            module has them, else from counting training batches.
        num_samples, batch_size, seed: generated samples per audit (the same latents every time).
        fid: also measure quality. ``fid_weights_path`` (local InceptionV3 FID weights) gives
            ``quality/fid``; without it the Fréchet distance in the (first) embedder's space,
            ``quality/fd_<name>``, is used.
        real_images: real images for the quality reference (a tensor, or a callable ``trainer ->
            tensor``); None samples ``num_real_images`` (default ``num_samples``) from the training set.
        run_dir: where ``audits.jsonl``, evidence and plots go (default ``trainer.default_root_dir``).
        fail_on_error: re-raise a failed audit instead of recording it and training on.
        pseudonymize, pseudonym_key: keyed pseudonyms for identity names sent to loggers.
        progress: progress bar during the attack.
        audit_at_start: also audit when training starts (a baseline point at the starting kimg).
        audit_on_train_end: audit once more when training ends (if not already audited there).
        evidence: write the evidence grid (reference photo beside the nearest generated faces).
        attack_options: extra keyword arguments for ``IdentityMembershipAttack``.
    """

    def __init__(self, embedder: Any = "synthetic", audit: Any = None, generator: Any = "G_ema",
                 every_n_kimg: float | None = None, every_n_steps: int | None = None,
                 every_n_epochs: int | None = None, num_samples: int = 5000, batch_size: int = 256,
                 seed: int = 0, fid: bool = True, fid_weights_path: str | None = None,
                 real_images: Any = None, num_real_images: int | None = None, run_dir: str | None = None,
                 fail_on_error: bool = False, pseudonymize: bool = True, pseudonym_key: str | None = None,
                 progress: bool = True, audit_at_start: bool = False, audit_on_train_end: bool = True,
                 evidence: bool = True, attack_options: dict | None = None) -> None:
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
        self.embedder_spec = embedder
        self.audit = audit
        self.generator = generator
        self.every_n_kimg = float(every_n_kimg) if every_n_kimg is not None else None
        self.every_n_steps = int(every_n_steps) if every_n_steps is not None else None
        self.every_n_epochs = int(every_n_epochs) if every_n_epochs is not None else None
        self.num_samples, self.batch_size, self.seed = int(num_samples), int(batch_size), int(seed)
        self.fid, self.fid_weights_path = bool(fid), fid_weights_path
        self.real_images, self.num_real_images = real_images, num_real_images
        self.run_dir_arg = run_dir
        self.fail_on_error, self.pseudonymize, self.pseudonym_key = fail_on_error, pseudonymize, pseudonym_key
        self.progress, self.audit_at_start, self.audit_on_train_end = progress, audit_at_start, audit_on_train_end
        self.evidence = evidence
        self.attack_options = dict(attack_options or {})
        # resumable state
        self.history: list[dict] = []
        self._images = 0
        self._batches = 0
        self._cadence_index = 0
        # per-fit runtime
        self.run_dir: Path | None = None
        self.embedders: list[nn.Module] | None = None
        self.quality: Any = None
        self._attack: Any = None
        self._shared: _SharedEmbedding | None = None
        self._pseudo: Any = None
        self._wandb: dict[int, Any] = {}
        self._finished = False
        self._reduced = False
        self._fit_start = time.time()
        self.seconds_spent = 0.0  # wall time inside audits (incl. listeners' checkpoints and outputs), this process

    # ------------------------------------------------------------------------------- public helpers
    @property
    def latest(self) -> dict | None:
        """The latest successful audit record (None before the first)."""
        return next((r for r in reversed(self.history) if not r.get("error")), None)

    @property
    def quality_key(self) -> str | None:
        return self.quality.key if self.quality is not None else None

    def kimg(self, pl_module: pl.LightningModule) -> float:
        """Thousands of real images shown so far (module's own count, else counted batches)."""
        value = module_kimg(pl_module)
        return value if value is not None else self._images / 1000.0

    # ------------------------------------------------------------------------------- setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.run_dir = resolve_run_dir(trainer, self.run_dir_arg)
        if self.embedders is None:
            self.embedders = self._load_embedders()
        if self._pseudo is None:
            from gmia_defend.report.pseudonyms import Pseudonymizer

            self._pseudo = Pseudonymizer(self.pseudonym_key, self.run_dir if trainer.is_global_zero else None,
                                         enabled=self.pseudonymize)

    def _load_embedders(self) -> list[nn.Module]:
        specs = self.embedder_spec if isinstance(self.embedder_spec, (list, tuple)) else [self.embedder_spec]
        if not specs:
            raise UserError("IdentityLeakageMonitor needs at least one embedder")
        out = []
        for spec in specs:
            if isinstance(spec, nn.Module) or (callable(spec) and not isinstance(spec, (str, Path))):
                out.append(spec)
            else:
                from gmia_defend.embedders import load_embedder

                out.append(load_embedder(spec))
        return out

    def _resolve_audit(self, trainer: pl.Trainer) -> Any:
        if self.audit is not None:
            return self.audit
        dm = getattr(trainer, "datamodule", None)
        audit = getattr(dm, "audit_set", None) if dm is not None else None
        if audit is None:
            raise UserError("IdentityLeakageMonitor has no audit set: pass audit=AuditSet.from_split(dataset, "
                            "split), or train with an IdentityDataModule (its .audit_set is used)")
        return audit

    def _build(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Create the attack and the quality metric once (first audit)."""
        from gmia_defend.attack import IdentityMembershipAttack

        if self.embedders is None:
            self.embedders = self._load_embedders()
        for e in self.embedders:
            if isinstance(e, nn.Module):
                e.to(pl_module.device)
        attack_embedders: list[Any] = list(self.embedders)
        if self.fid:
            from gmia_defend.quality.fid import FrechetQuality

            if self.fid_weights_path:
                self.quality = FrechetQuality.inception(self.fid_weights_path).to(pl_module.device)
            else:
                self.quality = FrechetQuality.for_embedder(self.embedders[0], batch_size=self.batch_size)
                self._shared = _SharedEmbedding(self.embedders[0])
                attack_embedders[0] = self._shared
        options = {"progress": self.progress, **self.attack_options}
        self._attack = IdentityMembershipAttack(
            attack_embedders if len(attack_embedders) > 1 else attack_embedders[0], self._resolve_audit(trainer),
            num_samples=self.num_samples, batch_size=self.batch_size, seed=self.seed, **options)

    def _resolve_generator(self, pl_module: pl.LightningModule) -> Any:
        g = self.generator
        if isinstance(g, str):
            found = getattr(pl_module, g, None)
            if found is None:
                children = [n for n, _ in pl_module.named_children()]
                raise UserError(f"{type(pl_module).__name__} has no attribute {g!r} to audit; pass "
                                f"generator= the generator's attribute name (modules: {', '.join(children)}) "
                                "or a callable pl_module -> generator")
            return found
        if isinstance(g, nn.Module):
            return g
        if callable(g):
            return g(pl_module)
        raise UserError(f"generator must be an attribute name, a callable or an nn.Module; got {type(g).__name__}")

    # ------------------------------------------------------------------------------- real images
    def _real_images(self, trainer: pl.Trainer) -> torch.Tensor:
        n = int(self.num_real_images or self.num_samples)
        src = self.real_images
        if src is not None:
            images = src(trainer) if callable(src) else src
            return torch.as_tensor(images)[:n]
        dataset = self._train_dataset(trainer)
        if dataset is None:
            raise UserError("cannot find real training images for the quality metric: pass real_images= "
                            "(a tensor of images in [-1, 1]) or fid=False")
        return _sample_dataset(dataset, n, self.seed)

    @staticmethod
    def _train_dataset(trainer: pl.Trainer) -> Any:
        loader = getattr(trainer, "train_dataloader", None)
        if isinstance(loader, dict):
            loader = next(iter(loader.values()), None)
        elif isinstance(loader, (list, tuple)):
            loader = loader[0] if loader else None
        dataset = getattr(loader, "dataset", None)
        if dataset is None:
            dm = getattr(trainer, "datamodule", None)
            dataset = getattr(dm, "train_dataset", None)
        return dataset

    # ------------------------------------------------------------------------------- cadence hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finished = False
        self._fit_start = time.time()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self._sync_audits_file()
        if self.audit_at_start and not self._audited_at(self.kimg(pl_module)):
            self._audit(trainer, pl_module, "on_train_start")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._images += batch_size_of(batch) * trainer.world_size
        self._batches += 1
        due = False
        if self.every_n_kimg is not None:
            index = math.floor(self.kimg(pl_module) / self.every_n_kimg + 1e-9)
            if index > self._cadence_index:
                self._cadence_index = index
                due = True
        elif self.every_n_steps is not None:
            due = self._batches % self.every_n_steps == 0
        if due:
            self._audit(trainer, pl_module, "on_train_batch_end")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            if not self._audited_at(self.kimg(pl_module)):
                self._audit(trainer, pl_module, "on_train_epoch_end")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.finish(trainer, pl_module)

    def finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """End-of-training audit (once per fit; also called by the release selector)."""
        if self._finished:
            return
        self._finished = True
        if self.audit_on_train_end and not self._audited_at(self.kimg(pl_module)):
            self._audit(trainer, pl_module, "on_train_end")
        from gmia_defend.callbacks.release import ReleaseCheckpointSelector

        if trainer.is_global_zero and not any(isinstance(cb, ReleaseCheckpointSelector) for cb in trainer.callbacks):
            self._write_plots()

    def _audited_at(self, kimg: float) -> bool:
        """An audit (successful or failed) was already made at this point: do not repeat it."""
        return any(abs(float(r.get("kimg", -1)) - round(kimg, 6)) < 1e-9 for r in self.history)

    # ------------------------------------------------------------------------------- the audit
    def _audit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, hook: str) -> dict:
        kimg = self.kimg(pl_module)
        world = trainer.world_size
        t0 = time.perf_counter()
        error: BaseException | None = None
        result, quality = None, None
        self._reduced = False
        generator = self._prepare(trainer, pl_module)  # configuration errors raise here, on every rank
        try:
            with _preserve_rng(pl_module.device):
                result, quality = self._measure(trainer, generator)
        except Exception as err:  # noqa: BLE001 - reported, and re-raised if fail_on_error
            error = err
            if world > 1 and not self._reduced:
                trainer.strategy.reduce_boolean_decision(False, all=True)  # release peers waiting in reduce
        if world > 1:
            all_ok = trainer.strategy.reduce_boolean_decision(error is None, all=True)
            if error is None and not all_ok:
                error = _PeerAuditFailed("the audit failed on another process")
        record = self._record(trainer, pl_module, kimg, hook, time.perf_counter() - t0, result, quality, error)
        self.history.append(record)
        if error is not None:
            rank_zero_warn(f"identity leakage audit at {kimg:g} kimg failed: {record['error']}"
                           + ("" if self.fail_on_error else "; training continues (fail_on_error=False)"))
        for listener in audit_listeners(trainer):
            listener.on_leakage_audit(trainer, pl_module, record)
        if error is None and hook != "on_train_end":
            self._log_to_module(pl_module, record, hook)
        if trainer.is_global_zero:
            self._publish(trainer, record, result)
        self.seconds_spent += time.perf_counter() - t0
        if error is not None and self.fail_on_error:
            raise error
        return record

    def _prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        """Build the attack and the real-image statistics once; return the generator to audit."""
        if self._attack is None:
            self._build(trainer, pl_module)
        if self.quality is not None and not self.quality.has_real:
            with _preserve_rng(pl_module.device):
                self.quality.set_real_images(self._real_images(trainer))
        return self._resolve_generator(pl_module)

    def _measure(self, trainer: pl.Trainer, generator: Any) -> tuple[Any, float | None]:
        quality = self.quality
        on_batch: Callable[[torch.Tensor], None] | None = None
        if quality is not None:
            quality.reset_fake()
            if self._shared is not None:
                shared = self._shared
                shared.sink = quality.update_features

                def hand_over(images: torch.Tensor) -> None:
                    self._flush_pending()  # the previous batch was not embedded through the wrapper
                    shared.pending = images

                on_batch = hand_over
            else:
                on_batch = quality.update
        world, rank = trainer.world_size, trainer.global_rank
        reduce = self._make_reduce(trainer) if world > 1 else None
        try:
            result = self._attack.run(generator, on_batch=on_batch, shard=(rank, world), reduce=reduce)
        finally:
            self._flush_pending()
        if world > 1 and not self._reduced:
            raise RuntimeError("the attack did not merge its shards (reduce was not called)")
        value = quality.compute() if quality is not None else None
        return result, value

    def _flush_pending(self) -> None:
        """Feed a generated batch the shared embedder did not see to the quality metric directly."""
        shared = self._shared
        if shared is not None and shared.pending is not None:
            pending, shared.pending = shared.pending, None
            if self.quality is not None and not self._reduced:
                self.quality.update(pending)

    def _make_reduce(self, trainer: pl.Trainer) -> Callable[[dict], dict]:
        from gmia_defend.attack.scores import all_gather_reduce

        strategy = trainer.strategy
        gather = all_gather_reduce(lambda t: strategy.all_gather(t), trainer.world_size)

        def reduce_sum(t: torch.Tensor) -> torch.Tensor:
            return strategy.reduce(t.to(strategy.root_device), reduce_op="sum").cpu()

        def reduce(stats: dict) -> dict:
            self._flush_pending()
            self._reduced = True
            if not strategy.reduce_boolean_decision(True, all=True):
                raise _PeerAuditFailed("the audit failed on another process")
            merged = gather(stats)
            if self.quality is not None:
                self.quality.reduce(reduce_sum)
            return merged

        return reduce

    # ------------------------------------------------------------------------------- records
    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, kimg: float, hook: str, seconds: float,
                result: Any, quality: float | None, error: BaseException | None) -> dict:
        record: dict[str, Any] = {
            "audit": len(self.history), "kimg": round(float(kimg), 6), "step": int(trainer.global_step),
            "batches": int(self._batches), "epoch": int(trainer.current_epoch), "hook": hook,
            "world_size": int(trainer.world_size),
            "final": hook == "on_train_end", "time": time.time(),
            "wall_s": round(time.time() - self._fit_start, 3), "audit_s": round(seconds, 3),
            "checkpoint": None, "evidence": None,
        }
        if error is not None:
            record["error"] = f"{type(error).__name__}: {error}"
            return record
        metrics = {k: float(v) for k, v in scalar_metrics(result.metrics).items()}
        if quality is not None:
            metrics[self.quality.key] = float(quality)
        for key, value in trainer.callback_metrics.items():  # e.g. PrivacyBudgetMonitor's epsilon and delta
            if key.startswith("privacy/"):
                metrics[key] = float(value)
        metrics["progress/kimg"] = round(float(kimg), 6)
        record.update({
            "metrics": metrics, "num_samples": int(result.num_samples),
            "embedder": getattr(result, "worst_embedder", None) or getattr(result, "embedder_name", None),
            "identities": [{k: r.get(k) for k in IDENTITY_FIELDS if k in r} for r in result.identities],
        })
        return record

    def _log_to_module(self, pl_module: pl.LightningModule, record: dict, hook: str) -> None:
        on_step = hook in ("on_train_batch_end", "on_train_start")
        if hook == "on_train_start":
            return  # self.log is not allowed there; the loggers still get the values
        own_kimg = module_kimg(pl_module) is None  # a module tracking kimg logs progress/kimg itself
        for key, value in record["metrics"].items():
            if (key.startswith(("leakage/", "quality/")) or (own_kimg and key == "progress/kimg")) \
                    and math.isfinite(value):
                pl_module.log(key, value, on_step=on_step, on_epoch=not on_step, logger=False, prog_bar=False,
                              batch_size=1, sync_dist=False)

    # ------------------------------------------------------------------------------- outputs (rank 0)
    @property
    def audits_path(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / AUDITS_FILE

    def _sync_audits_file(self) -> None:
        """Make ``audits.jsonl`` equal the (possibly restored) history: a resumed run drops audits made
        after its checkpoint by the interrupted run (they will be redone); a fresh run in a folder with
        an older file moves that file aside."""
        if self.run_dir is None:
            return
        path = self.audits_path
        existing = read_jsonl(path) if path.is_file() else []
        if not existing and not self.history:
            return
        if existing and (len(existing) > len(self.history) or not self.history):
            stamp = time.strftime("%Y%m%d-%H%M%S")
            write_jsonl_atomic(path.with_name(f"{path.name}.{stamp}.bak"), existing)
        write_jsonl_atomic(path, self.history)

    def _publish(self, trainer: pl.Trainer, record: dict, result: Any) -> None:
        assert self.run_dir is not None
        wandb_evidence = None
        if result is not None and self.evidence and getattr(result, "evidence", None):
            try:
                local = self.run_dir / "evidence" / f"kimg={kimg_tag(record['kimg'])}.png"
                result.save_evidence_png(local)
                record["evidence"] = str(local.relative_to(self.run_dir))
                if self._wandb_loggers(trainer):
                    wandb_evidence = self._pseudonymous_evidence(result, local)
            except Exception as err:  # noqa: BLE001 - a figure must not stop training
                rank_zero_warn(f"could not write the evidence grid: {err}")
        append_jsonl(self.audits_path, record)
        if record.get("error"):
            return
        self._log_to_loggers(trainer, record, wandb_evidence)
        if self._pseudo is not None:
            self._pseudo.save()

    def _pseudonymous_evidence(self, result: Any, local: Path) -> Path:
        import dataclasses

        if not self.pseudonymize:
            return local
        evidence = [{**e, "identity": self._pseudo(str(e.get("identity")))} for e in result.evidence]
        path = local.with_name(local.stem + ".pseudonymised.png")
        dataclasses.replace(result, evidence=evidence).save_evidence_png(path)
        return path

    @staticmethod
    def _wandb_loggers(trainer: pl.Trainer) -> list[Any]:
        from gmia_defend.report.wandb import wandb_loggers

        return wandb_loggers(trainer)

    def _log_to_loggers(self, trainer: pl.Trainer, record: dict, evidence_png: Path | None) -> None:
        scalars = {k: v for k, v in record["metrics"].items()  # privacy/* is the privacy monitor's to log
                   if math.isfinite(v) and k.startswith(("leakage/", "quality/", "progress/"))}
        wandb_ids = {id(lg) for lg in self._wandb_loggers(trainer)}
        for logger in trainer.loggers:
            try:
                if id(logger) in wandb_ids:
                    self._wandb_log(logger, record, scalars, evidence_png)
                else:
                    logger.log_metrics(scalars, step=int(trainer.global_step))
            except Exception as err:  # noqa: BLE001 - a logger failure must not stop training
                rank_zero_warn(f"could not log the audit to {type(logger).__name__}: {err}")

    def _wandb_log(self, logger: Any, record: dict, scalars: dict[str, float], evidence_png: Path | None) -> None:
        from gmia_defend.report.release import DEFAULT_METRIC
        from gmia_defend.report.wandb import WandbAuditLog

        log = self._wandb.get(id(logger))
        if log is None:
            log = self._wandb[id(logger)] = WandbAuditLog(logger.experiment)
        log.define_axes(list(scalars))
        logger.log_metrics(scalars, step=int(record["step"]))
        log.log_audit(record, self._pseudo if self._pseudo is not None else str, evidence_png,
                      self.history, DEFAULT_METRIC, self.quality_key)

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
        return {"history": [dict(r) for r in self.history], "images": int(self._images),
                "batches": int(self._batches), "cadence_index": int(self._cadence_index),
                "settings": self._settings()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("settings") or {}
        changed = {k: (saved[k], v) for k, v in self._settings().items() if k in saved and saved[k] != v}
        if changed:
            rank_zero_warn(f"IdentityLeakageMonitor resumed with other settings {changed} (checkpoint, now): audits "
                           "before and after the resume are not directly comparable")
        self.history = [dict(r) for r in state_dict.get("history", [])]
        self._images = int(state_dict.get("images", 0))
        self._batches = int(state_dict.get("batches", 0))
        self._cadence_index = int(state_dict.get("cadence_index", 0))


def _sample_dataset(dataset: Any, n: int, seed: int) -> torch.Tensor:
    """``n`` images (or all, if fewer) from a map-style dataset, chosen by ``seed``; RNG-neutral."""
    from torch.utils.data import Subset

    try:
        size = len(dataset)
    except TypeError:
        raise UserError("the training set has no length (an IterableDataset): pass real_images= to "
                        "IdentityLeakageMonitor, or fid=False") from None
    g = torch.Generator().manual_seed(int(seed) + 7919)
    idx = torch.randperm(size, generator=g)[:min(n, size)].sort().values.tolist()
    base, mapped = dataset, idx
    if isinstance(dataset, Subset) and hasattr(dataset.dataset, "load"):
        base, mapped = dataset.dataset, [int(dataset.indices[i]) for i in idx]
    if hasattr(base, "load") and callable(base.load):
        return torch.as_tensor(base.load(mapped))
    items = [dataset[i] for i in idx]
    images = [it[0] if isinstance(it, (tuple, list)) else (next(iter(it.values())) if isinstance(it, dict) else it)
              for it in items]
    return torch.stack([torch.as_tensor(x) for x in images])


def audit_records(run_dir: str | Path) -> list[dict]:
    """The audit records of a run (``<run_dir>/audits.jsonl``)."""
    return read_jsonl(Path(run_dir) / AUDITS_FILE)


__all__ = ["IdentityLeakageMonitor", "audit_records"]
