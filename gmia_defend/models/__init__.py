"""Generators to train and audit: StyleGAN2 as a LightningModule."""

from gmia_defend._lazy import lazy_exports

_EXPORTS = {"StyleGAN2": "stylegan2.module"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
