"""Mitigations: DP-SGD on the discriminator (image- and identity-level)."""

from gmia_defend._lazy import lazy_exports

_EXPORTS = {"make_discriminator_private": "dp", "PrivateDiscriminator": "dp"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
