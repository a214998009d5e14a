"""Helpers shared by the callbacks: run folder, progress (kimg), audit listeners, epsilon.

The listener channel. The monitor calls, on every callback that defines them (ordered by their
``audit_order``, lower first; the trainer's callback list itself is never reordered):

- ``on_leakage_audit(trainer, pl_module, record)`` right after each audit, on every process, before
  the record is written: ``record`` is an ``AuditRecord`` (dict-style ``record["kimg"]`` works too)
  with three extra attributes, ``run_dir`` (the monitor's run folder), ``generator`` (the module that
  was audited) and ``generator_attr`` (its attribute name on the LightningModule, or None). A listener
  may set ``record.checkpoint`` (the release selector does).
- ``on_leakage_audits_end(trainer, pl_module, records)`` once at the end of training, after the final
  audit, with every record of the run. A listener with ``writes_report = True`` writes the report
  figures itself (the monitor then does not).

Other callbacks find a monitor by its ``emits_leakage_audits`` attribute and read figures such as
``privacy/epsilon`` from ``trainer.callback_metrics``: no callback imports another.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from gmia_defend.errors import UserError



def resolve_run_dir(trainer: pl.Trainer, run_dir: str | Path | None) -> Path:
    """``run_dir`` if given, else ``trainer.default_root_dir`` (stable across resumes, unlike log_dir)."""
    return Path(run_dir) if run_dir is not None else Path(trainer.default_root_dir)


def resolve_generator(pl_module: pl.LightningModule, spec: Any) -> Any:
    """The generator to audit: ``spec`` is an attribute name, an ``nn.Module`` or ``pl_module -> generator``."""
    from torch import nn

    from gmia_defend.errors import UserError

    if isinstance(spec, str):
        found = getattr(pl_module, spec, None)
        if found is None:
            children = [n for n, _ in pl_module.named_children()]
            raise UserError(f"{type(pl_module).__name__} has no attribute {spec!r} to audit; pass generator= the "
                            f"generator's attribute name (modules: {', '.join(children)}) or a callable "
                            "pl_module -> generator")
        return found
    if isinstance(spec, nn.Module):
        return spec
    if callable(spec):
        return spec(pl_module)
    raise UserError(f"generator must be an attribute name, a callable or an nn.Module; got {type(spec).__name__}")


def has_monitor(trainer: pl.Trainer) -> bool:
    return any(getattr(cb, "emits_leakage_audits", False) for cb in trainer.callbacks)


def check_public_metric(trainer: pl.Trainer, metric: str, who: str) -> None:
    """Refuse a rule on ``public/leakage/...`` when no monitor audits public canaries (it would never be measured)."""
    from gmia_defend.audit.record import is_public

    if not is_public(metric):
        return
    dm = getattr(trainer, "datamodule", None)
    for cb in trainer.callbacks:
        if not getattr(cb, "emits_leakage_audits", False):
            continue
        given = getattr(cb, "public_audit", None)
        if given is False:
            continue
        canaries = getattr(dm, "public_canaries", None)  # IdentityDataModule; another datamodule may expose the set
        if given is not None or (int(canaries or 0) > 0 if canaries is not None else _has_public_audit(dm)):
            return
    raise UserError(f"{who} reads {metric}, but nothing audits public canaries: set data.public_canaries=N (with "
                    "data.public_identities or data.public_folder), or give IdentityLeakageMonitor(public_audit=...)")


def _has_public_audit(dm: Any) -> bool:
    """Whether another datamodule exposes a public audit set (built without touching any RNG)."""
    from gmia_defend.rng import preserved_rng

    with preserved_rng():
        return getattr(dm, "public_audit_set", None) is not None


def audit_listeners(trainer: pl.Trainer, hook: str = "on_leakage_audit") -> list[Any]:
    found = [cb for cb in trainer.callbacks if callable(getattr(cb, hook, None))]
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


def is_private(trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
    """Training under DP: a private discriminator on the module or a privacy monitor among the callbacks."""
    return getattr(pl_module, "private_d", None) is not None or any(
        getattr(cb, "emits_privacy_summary", False) for cb in getattr(trainer, "callbacks", []) or [])


def nominal_batch_size(trainer: pl.Trainer) -> float | None:
    """The batch size the loader is configured for (the expected size under Poisson sampling), not a realised one."""
    loader = getattr(trainer, "train_dataloader", None)
    if isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    size = getattr(loader, "batch_size", None)
    if size:
        return float(size)
    sampler = getattr(loader, "batch_sampler", None)
    for attr in ("expected_batch_size", "batch_size"):
        if getattr(sampler, attr, None):
            return float(getattr(sampler, attr))
    rate, n = getattr(sampler, "sample_rate", None), getattr(sampler, "num_samples", None)
    return float(rate) * float(n) if rate and n else None


def images_in_batch(trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> float | None:
    """Images to count for this batch: the realised size, but under DP the nominal one (a realised Poisson
    batch size says who was sampled); None when under DP no nominal size is known."""
    if is_private(trainer, pl_module):
        nominal = nominal_batch_size(trainer)
        return None if nominal is None else nominal * trainer.world_size
    return float(batch_size_of(batch) * trainer.world_size)


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


def metric_of(trainer: pl.Trainer, key: str) -> float | None:
    """A finite float from ``trainer.callback_metrics`` (e.g. ``privacy/epsilon``), else None."""
    value = trainer.callback_metrics.get(key)
    try:
        value = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) else None


def current_epsilon(trainer: pl.Trainer) -> float | None:
    """Epsilon recorded by a privacy monitor (``privacy/epsilon`` in ``trainer.callback_metrics``)."""
    return metric_of(trainer, "privacy/epsilon")
