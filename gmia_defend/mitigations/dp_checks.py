"""Refusals before DP training starts: configurations under which the guarantee would not hold.

Per-unit clipping bounds a unit's influence only if D's output for one image depends on that image
alone (no minibatch std, no BatchNorm), and only if nothing else computed from the real data steers
training (adaptive augmentation tuned on D's real outputs is such a side channel).
"""

from __future__ import annotations

import torch
from torch import nn

from gmia_defend.errors import UserError

#: attribute / hyperparameter names of adaptive (ADA-style) augmentation, tuned on D(real).
_ADAPTIVE_NAMES = ("ada_target", "augment_target", "adaptive_augment", "ada_kimg", "ada")


def check_opacus_compatible(D: nn.Module) -> None:
    """Opacus's ModuleValidator (BatchNorm and other cross-sample or unsupported layers)."""
    from opacus.validators import ModuleValidator
    from opacus.validators.errors import IllegalModuleConfigurationError

    was_training = D.training
    D.train()
    try:
        errors = [e for e in ModuleValidator.validate(D, strict=False)
                  if not isinstance(e, IllegalModuleConfigurationError)]
    finally:
        D.train(was_training)
    if errors:
        listed = "; ".join(str(e).strip() for e in errors[:5])
        raise UserError(f"the discriminator has layers differential privacy cannot use ({listed}); build it without "
                        "BatchNorm (StyleGAN2(dp_compatible=True), or opacus.validators.ModuleValidator.fix(D) "
                        "to swap BatchNorm for GroupNorm)")


def check_no_minibatch_std(D: nn.Module) -> None:
    """Minibatch-std layers mix samples, so one image's influence is not bounded by its own clip."""
    named = [name or type(D).__name__ for name, m in D.named_modules()
             if "minibatchstd" in type(m).__name__.lower().replace("_", "")]
    if getattr(D, "has_cross_sample_ops", False) or named:
        where = f" ({', '.join(named)})" if named else ""
        raise UserError(f"the discriminator mixes samples with a minibatch-std layer{where}, which breaks "
                        "per-sample privacy; build it with StyleGAN2(dp_compatible=True) or mbstd_group_size=0")


def _resolution(D: nn.Module) -> int | None:
    for name in ("resolution", "img_resolution"):
        value = getattr(D, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@torch.no_grad()
def check_per_sample_outputs(D: nn.Module, channels: int = 3, resolution: int | None = None, atol: float = 1e-4) -> None:
    """D(batch)[i] must equal D(batch[i:i+1]): catches any cross-sample op the other checks miss."""
    resolution = resolution or _resolution(D)
    if resolution is None or any(isinstance(m, nn.modules.dropout._DropoutNd) for m in D.modules()):
        return  # shape unknown, or outputs random by design
    device = next(D.parameters()).device
    x = torch.randn(4, channels, resolution, resolution, generator=torch.Generator().manual_seed(0)).to(device)
    together = D(x).reshape(4).float()
    alone = torch.cat([D(x[i:i + 1]).reshape(1) for i in range(4)]).float()
    scale = together.abs().max().clamp(min=1.0)
    if not torch.allclose(together, alone, atol=atol * float(scale), rtol=1e-3):
        raise UserError("the discriminator's output for one image depends on the other images in the batch "
                        "(a cross-sample layer such as BatchNorm or minibatch std), which breaks per-sample "
                        "privacy; remove it (StyleGAN2(dp_compatible=True))")


def check_no_adaptive_augmentation(module: nn.Module) -> None:
    """Adaptive augmentation adjusts its strength from D(real): an unprotected channel from the data."""
    hparams = getattr(module, "hparams", None) or {}
    augment = getattr(module, "augment", None)
    flagged = bool(getattr(augment, "adaptive", False))
    for name in _ADAPTIVE_NAMES:
        flagged = flagged or (bool(hparams.get(name)) if hasattr(hparams, "get") else False)
        flagged = flagged or any(bool(getattr(s, name, None)) for s in (module, augment) if s is not None)
    if flagged:
        raise UserError("adaptive augmentation (strength tuned on the discriminator's outputs for real "
                        "images) leaks training data outside the DP guarantee; use a fixed augmentation "
                        "probability (StyleGAN2 augment_p) or none")


def check_discriminator(D: nn.Module) -> None:
    """All discriminator refusals (raise UserError naming the fix)."""
    check_no_minibatch_std(D)
    check_opacus_compatible(D)
    check_per_sample_outputs(D)
