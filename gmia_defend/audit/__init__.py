"""The audit, free of Lightning: records, the auditor, the run folder's log, and the release/stop policies.

``Auditor`` runs one audit of a generator; ``AuditLog`` keeps ``audits.jsonl``; ``select_release`` and
``stop_decision`` decide from records alone; ``save_release``/``load_release`` write and read the
released generator (weights and the model's own hyper-parameters only).
"""

from gmia_defend._lazy import lazy_exports

_EXPORTS = {
    "AuditRecord": "record",
    "Auditor": "auditor",
    "AuditLog": "log",
    "select_release": "policies",
    "stop_decision": "policies",
    "ReleaseRule": "policies",
    "StopRule": "policies",
    "save_release": "artifact",
    "load_release": "artifact",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
