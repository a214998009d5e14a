"""Weight files: cache directory, SHA-256 checksums and atomic, weights-only torch saves."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from gmia_defend.errors import WeightsError


def cache_dir() -> Path:
    """``$GMIA_CACHE`` if set, else ``~/.cache/gmia_defend`` (created on demand by writers)."""
    env = os.environ.get("GMIA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gmia_defend"


def torch_home() -> Path:
    """Where torch (and facenet-pytorch) keep downloads: ``$TORCH_HOME`` or ``$XDG_CACHE_HOME/torch``."""
    env = os.environ.get("TORCH_HOME")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "torch"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_torch_weights_only(path: str | os.PathLike, what: str) -> Any:
    """``torch.load(weights_only=True)`` on the CPU; a corrupt or truncated file -> WeightsError."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} not found: {path}; check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors differ by torch version
        raise WeightsError(
            f"cannot read {what} {path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "the file is corrupt, truncated or not a weights-only torch checkpoint: replace it"
        ) from exc
