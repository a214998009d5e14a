"""Find a training run's generator snapshots, in training order, and tell finished files from ones being written.

A snapshot is a file matching one of the run's patterns (default: NVIDIA's ``network-snapshot-*.pkl``
and Lightning's ``*.ckpt`` anywhere below the run folder). Its kimg comes from its name
(``network-snapshot-000200.pkl`` -> 200, ``...kimg=12.5...`` -> 12.5); files without one sort after
those by modification time and get their kimg when loaded (a StyleGAN2 checkpoint knows its own).
Training loops write snapshots in place, so a file is only *ready* once its size and modification
time have stayed the same for ``settle_s`` seconds.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

DEFAULT_PATTERNS = ("network-snapshot-*.pkl", "**/*.ckpt")
#: Files the patterns may match that are not training snapshots.
_NOT_SNAPSHOTS = re.compile(r"^(last(-v\d+)?\.ckpt|release.*)$")
_KIMG_PATTERNS = (re.compile(r"snapshot-(\d+)"), re.compile(r"kimg[=_-]?(\d+(?:\.\d+)?)"))
_STEP_PATTERN = re.compile(r"step[=_-]?(\d+)")


@dataclass(frozen=True)
class Snapshot:
    """One snapshot file: its path, the name it is recorded under and its kimg (None: read when loaded).

    >>> s = Snapshot.of(Path("/run/network-snapshot-000200.pkl"), Path("/run"))
    >>> s.name, s.kimg
    ('network-snapshot-000200.pkl', 200.0)
    """

    path: Path
    name: str
    kimg: float | None
    step: int | None
    mtime: float

    @classmethod
    def of(cls, path: Path, run_dir: Path) -> "Snapshot":
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = math.inf
        try:
            name = path.relative_to(run_dir).as_posix()
        except ValueError:
            name = path.name
        return cls(path=path, name=name, kimg=kimg_from_name(path.name), step=step_from_name(path.name), mtime=mtime)

    @property
    def order(self) -> tuple:
        """Sort key: named kimg first (in kimg order), then the rest by step and modification time."""
        known = self.kimg is not None
        return (0 if known else 1, self.kimg if known else 0.0, self.step if self.step is not None else -1,
                self.mtime, self.name)


def kimg_from_name(name: str) -> float | None:
    """The kimg a file name states (``network-snapshot-000200.pkl`` -> 200.0), else None."""
    for pattern in _KIMG_PATTERNS:
        match = pattern.search(name)
        if match:
            return float(match.group(1))
    return None


def step_from_name(name: str) -> int | None:
    match = _STEP_PATTERN.search(name)
    return int(match.group(1)) if match else None


def find_snapshots(run_dir: str | Path, patterns: Sequence[str] = DEFAULT_PATTERNS) -> list[Snapshot]:
    """Every snapshot below ``run_dir`` matching ``patterns``, in training order."""
    run = Path(run_dir)
    seen: dict[Path, Snapshot] = {}
    for pattern in patterns:
        for path in run.glob(pattern):
            if path.is_file() and not path.is_symlink() and not _NOT_SNAPSHOTS.match(path.name) \
                    and not path.name.startswith("."):
                seen.setdefault(path, Snapshot.of(path, run))
    return sorted(seen.values(), key=lambda s: s.order)


def describe_patterns(patterns: Iterable[str]) -> str:
    return ", ".join(repr(p) for p in patterns)


class StabilityTracker:
    """Says when a file has stopped changing: same size and mtime for ``settle_s`` seconds.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "f"
    >>> _ = p.write_bytes(b"x")
    >>> tracker = StabilityTracker(settle_s=0.0)
    >>> tracker.ready(p), tracker.ready(p)
    (False, True)
    """

    def __init__(self, settle_s: float = 2.0, clock=time.monotonic) -> None:
        self.settle_s = float(settle_s)
        self.clock = clock
        self._seen: dict[Path, tuple[tuple[int, int], float]] = {}

    @staticmethod
    def signature(path: Path) -> tuple[int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns)

    def ready(self, path: Path) -> bool:
        """True when ``path`` looked the same at an earlier call at least ``settle_s`` seconds ago."""
        sig = self.signature(path)
        now = self.clock()
        if sig is None:
            self._seen.pop(path, None)
            return False
        previous = self._seen.get(path)
        if previous is None or previous[0] != sig:
            self._seen[path] = (sig, now)
            return False
        return now - previous[1] >= self.settle_s

    def waiting(self) -> int:
        """How many files were seen but are not ready yet (or not checked again)."""
        now = self.clock()
        return sum(1 for _, t in self._seen.values() if now - t < self.settle_s)
