"""Keyed pseudonyms for identity names sent to remote loggers (HMAC-SHA256).

The key comes from the argument, else ``$GMIA_PSEUDONYM_KEY``, else ``<run_dir>/pseudonym_key``
(a random key created once, readable by the owner only). The mapping pseudonym -> name is kept
locally in ``<run_dir>/pseudonyms.json`` so the local report can be read in clear; without the key
a pseudonym cannot be linked to a name.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Iterable

from gmia_defend.io import write_json_atomic

ENV_KEY = "GMIA_PSEUDONYM_KEY"
KEY_FILE = "pseudonym_key"
MAP_FILE = "pseudonyms.json"


def pseudonym(name: str, key: bytes, prefix: str = "id-", length: int = 12) -> str:
    """``prefix`` + the first ``length`` hex digits of HMAC-SHA256(key, name)."""
    digest = hmac.new(key, name.encode("utf-8"), hashlib.sha256).hexdigest()
    return prefix + digest[:length]


def _key_from_file(path: Path) -> bytes:
    if path.is_file():
        return path.read_text().strip().encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key.encode()


def resolve_key(key: str | bytes | None = None, run_dir: str | Path | None = None) -> bytes:
    """The pseudonym key: argument, else ``$GMIA_PSEUDONYM_KEY``, else ``run_dir/pseudonym_key``.

    With none of them (no run folder) a random key is used for this process only.
    """
    if key:
        return key if isinstance(key, bytes) else key.encode()
    env = os.environ.get(ENV_KEY)
    if env:
        return env.encode()
    if run_dir is not None:
        return _key_from_file(Path(run_dir) / KEY_FILE)
    return secrets.token_hex(32).encode()


class Pseudonymizer:
    """Maps identity names to stable keyed pseudonyms and remembers the mapping for the local report.

    >>> p = Pseudonymizer(key="secret")
    >>> alias = p("alice")
    >>> alias.startswith("id-") and alias == p("alice") and p.mapping[alias] == "alice"
    True
    """

    def __init__(self, key: str | bytes | None = None, run_dir: str | Path | None = None,
                 enabled: bool = True) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._key_arg = key
        self._key: bytes | None = None  # resolved on first use: no key file unless names are sent out
        self.mapping: dict[str, str] = {}
        self._saved = 0  # mapping entries already in the file: audits repeat the same identities

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = resolve_key(self._key_arg, self.run_dir)
        return self._key

    def __call__(self, name: str) -> str:
        if not self.enabled:
            return name
        alias = pseudonym(str(name), self.key)
        self.mapping[alias] = str(name)
        return alias

    def many(self, names: Iterable[str]) -> list[str]:
        return [self(n) for n in names]

    def save(self) -> Path | None:
        """Merge the mapping into ``<run_dir>/pseudonyms.json`` (atomic); local use only."""
        if not self.enabled or self.run_dir is None or not self.mapping:
            return None
        path = self.run_dir / MAP_FILE
        if len(self.mapping) == self._saved and path.is_file():
            return path
        merged: dict[str, str] = {}
        if path.is_file():
            try:
                merged = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                merged = {}
        merged.update(self.mapping)
        write_json_atomic(path, dict(sorted(merged.items())))
        self._saved = len(self.mapping)
        return path
