"""The identity membership attack (Webster et al., arXiv 2107.06018), streaming and constant-memory."""

from gmia_defend._lazy import lazy_exports

_EXPORTS = {
    "IdentityMembershipAttack": "engine",
    "AttackResult": "result",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
