"""Identity-labelled image sets: folders, the synthetic default, splits, audit sets, sampling."""

from gmia_defend._lazy import lazy_exports

_EXPORTS = {
    "SyntheticFaces": "synthetic",
    "IdentityImageFolder": "folder",
    "IdentitySplit": "split",
    "AuditSet": "audit",
    "IdentityDataModule": "datamodule",
    "open_dataset": "specs",
    "render_faces": "synthetic",
    "IdentityBalancedSampler": "sampling",
    "cap_per_identity": "sampling",
    "fixed_budget_split": "sampling",
    "overrepresented_split": "sampling",
    "synthetic_split": "sampling",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
