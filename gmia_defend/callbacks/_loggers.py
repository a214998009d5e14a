"""Send one audit to the trainer's loggers: scalars to every logger; tables, charts and evidence to W&B.

Identity names leave the machine only as keyed pseudonyms (``AuditLog.pseudonym``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from gmia_defend.audit.record import DEFAULT_METRIC, LEAKAGE_PREFIX, PUBLIC_PREFIX, QUALITY_PREFIX, AuditRecord


def scalars_of(record: AuditRecord) -> dict[str, float]:
    """The finite ``leakage/*``, ``quality/*``, ``progress/*``, per-half and public-canary figures (privacy/* is
    the privacy monitor's to log)."""
    return {k: v for k, v in record.metrics.items() if math.isfinite(v)
            and k.split("/", 1)[0] + "/" in (LEAKAGE_PREFIX, QUALITY_PREFIX, PUBLIC_PREFIX, "progress/", "selection/",
                                             "confirmation/")}


def log_to_loggers(trainer: Any, record: AuditRecord, history: Sequence[AuditRecord], log: Any, result: Any,
                   wandb_logs: dict[int, Any], quality_key: str | None) -> None:
    from gmia_defend.report.wandb import WandbAuditLog, wandb_loggers

    scalars = scalars_of(record)
    wandb_ids = {id(lg) for lg in wandb_loggers(trainer)}
    evidence = None
    for logger in trainer.loggers:
        try:
            if id(logger) not in wandb_ids:
                logger.log_metrics(scalars, step=int(trainer.global_step))
                continue
            if evidence is None:
                evidence = log.pseudonymous_evidence(result, record) or False
            wlog = wandb_logs.get(id(logger))
            if wlog is None:
                wlog = wandb_logs[id(logger)] = WandbAuditLog(logger.experiment)
            wlog.define_axes(list(scalars))
            logger.log_metrics(scalars, step=int(record.step or 0))
            wlog.log_audit(record.to_json(), log.pseudonym, evidence or None, [r.to_json() for r in history],
                           DEFAULT_METRIC, quality_key)
        except Exception as err:  # noqa: BLE001 - a logger failure must not stop training
            rank_zero_warn(f"could not log the audit to {type(logger).__name__}: {err}")


def keep_split_out_of_remote_loggers(trainer: Any, pseudonymize: bool) -> None:
    """The datamodule's hyper-parameters name the dataset and the split seed: not for remote services."""
    from gmia_defend.report.wandb import wandb_loggers

    dm = getattr(trainer, "datamodule", None)
    if pseudonymize and dm is not None and wandb_loggers(trainer) and getattr(dm, "hparams", None):
        dm._log_hyperparams = False  # noqa: SLF001 - Lightning's switch for logging datamodule hparams
        rank_zero_info("IdentityLeakageMonitor: the datamodule's hyper-parameters (dataset, split seed) are not "
                       "sent to W&B; they stay in the run folder's config (pseudonymize=False sends them)")
