"""Follow a training run written by any loop and audit each generator snapshot it writes.

``Watcher`` does the following and auditing; ``find_snapshots`` / ``StabilityTracker`` find finished
snapshot files in training order; ``LoggedQuality`` picks up the FID the loop already logged. The
command line is ``gmia-defend watch RUN_DIR``.
"""

from gmia_defend._lazy import lazy_exports

_EXPORTS = {
    "Watcher": "runner",
    "WatchOptions": "runner",
    "combine_classes": "classes",
    "find_snapshots": "snapshots",
    "Snapshot": "snapshots",
    "StabilityTracker": "snapshots",
    "LoggedQuality": "logged_quality",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
