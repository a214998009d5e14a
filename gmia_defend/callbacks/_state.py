"""Helpers shared by the leakage callbacks: run folder, progress (kimg), finding the monitor, logging.

Private: the public classes are ``IdentityLeakageMonitor``, ``LeakageEarlyStopping`` and
``ReleaseCheckpointSelector``. The monitor calls ``on_leakage_audit(trainer, pl_module, record)`` on
every callback that defines it (ordered by their ``audit_order``), right after each audit and before
the record is written, so a listener can stop training or save a checkpoint for that audit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch

if TYPE_CHECKING:  # pragma: no cover
    from gmia_defend.callbacks.leakage import IdentityLeakageMonitor


def resolve_run_dir(trainer: pl.Trainer, run_dir: str | Path | None) -> Path:
    """``run_dir`` if given, else ``trainer.default_root_dir`` (stable across resumes, unlike log_dir)."""
    return Path(run_dir) if run_dir is not None else Path(trainer.default_root_dir)


def find_monitor(trainer: pl.Trainer) -> "IdentityLeakageMonitor | None":
    from gmia_defend.callbacks.leakage import IdentityLeakageMonitor

    for cb in trainer.callbacks:
        if isinstance(cb, IdentityLeakageMonitor):
            return cb
    return None


def audit_listeners(trainer: pl.Trainer) -> list[Any]:
    found = [cb for cb in trainer.callbacks if callable(getattr(cb, "on_leakage_audit", None))]
    return sorted(found, key=lambda cb: getattr(cb, "audit_order", 50))


def batch_size_of(batch: Any) -> int:
    """Number of samples in a batch: first tensor found in a tensor / sequence / mapping."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, (list, tuple)) and batch:
        return batch_size_of(batch[0])
    if isinstance(batch, dict) and batch:
        return batch_size_of(next(iter(batch.values())))
    return 0


def module_kimg(pl_module: pl.LightningModule) -> float | None:
    """The module's own progress: ``kimg`` property or ``images_seen`` buffer, if it has one."""
    value = getattr(pl_module, "kimg", None)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    seen = getattr(pl_module, "images_seen", None)
    if isinstance(seen, torch.Tensor) and seen.numel() == 1:
        return float(seen.item()) / 1000.0
    if isinstance(seen, (int, float)) and not isinstance(seen, bool):
        return float(seen) / 1000.0
    return None


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Only float-convertible values (loggers reject strings)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            continue
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def current_epsilon(trainer: pl.Trainer) -> float | None:
    """Epsilon recorded by a privacy monitor: ``privacy/epsilon`` in callback_metrics or an attribute."""
    value = trainer.callback_metrics.get("privacy/epsilon")
    if value is None:
        for cb in trainer.callbacks:
            for attr in ("epsilon", "last_epsilon", "current_epsilon"):
                v = getattr(cb, attr, None)
                if v is not None and not callable(v):
                    value = v
                    break
            if value is not None:
                break
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def kimg_tag(kimg: float) -> str:
    """File-name form of a kimg value that sorts in order: ``000012.288``."""
    return f"{float(kimg):010.3f}"
