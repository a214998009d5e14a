"""gmia-defend: measure and mitigate identity leakage of GAN generators while they train.

Public API lives in the subpackages: ``gmia_defend.data``, ``.embedders``, ``.attack``, ``.audit``,
``.callbacks``, ``.models``, ``.mitigations``; ``gmia_defend.load_release(path)`` loads a released
generator (no pickle).
"""

from gmia_defend._lazy import lazy_exports

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(__name__, {"load_release": "audit.artifact", "save_release": "audit.artifact"})
