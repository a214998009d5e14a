"""Test-wide settings: offline W&B, a private cache, and shared fixtures.

Each area keeps its shared fixtures in ``tests/_fixtures_<area>.py``; they are imported here so any
test file can use them.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")
# Caches (converted weights, trained embedders) go to a throwaway folder, never the user's home.
os.environ.setdefault("GMIA_CACHE", tempfile.mkdtemp(prefix="gmia-test-cache-"))

_HERE = Path(__file__).parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

for _path in sorted(_HERE.glob("_fixtures_*.py")):
    _module = importlib.import_module(_path.stem)
    globals().update({k: v for k, v in vars(_module).items() if not k.startswith("_")})
