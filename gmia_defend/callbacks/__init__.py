"""Lightning callbacks: audit leakage while training, stop on it, pick the release, track epsilon."""

from gmia_defend._lazy import lazy_exports

_EXPORTS = {
    "IdentityLeakageMonitor": "leakage",
    "LeakageEarlyStopping": "early_stopping",
    "ReleaseCheckpointSelector": "release",
    "PrivacyBudgetMonitor": "privacy",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
