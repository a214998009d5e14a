"""Test-wide settings: offline W&B, a private cache, and shared fixtures.

Each area keeps its shared fixtures in ``tests/_fixtures_<area>.py``; they are imported here so any
test file can use them.
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")
# Caches (converted weights, trained embedders) go to a throwaway folder, never the user's home.
if "GMIA_CACHE" not in os.environ:
    os.environ["GMIA_CACHE"] = tempfile.mkdtemp(prefix="gmia-test-cache-")
    atexit.register(shutil.rmtree, os.environ["GMIA_CACHE"], ignore_errors=True)

_HERE = Path(__file__).parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

_owner: dict[str, str] = {}
for _path in sorted(_HERE.glob("_fixtures_*.py")):
    _module = importlib.import_module(_path.stem)
    for _name, _value in vars(_module).items():
        if _name.startswith("_") or not hasattr(_value, "_fixture_function_marker"):
            continue
        if _name in _owner:
            raise RuntimeError(f"fixture {_name!r} is defined in both {_owner[_name]} and {_path.name}; "
                               "rename one")
        _owner[_name] = _path.name
        globals()[_name] = _value
