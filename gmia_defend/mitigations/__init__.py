"""Mitigations: DP-SGD on the discriminator (image- and identity-level), per-person accounting, public pretraining."""

from gmia_defend._lazy import lazy_exports

_EXPORTS = {"make_discriminator_private": "dp", "PrivateDiscriminator": "dp",
            "PublicPretraining": "pretraining", "person_guarantee": "user_level",
            "noise_for_person_target": "user_level", "els_epsilon": "user_level"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
