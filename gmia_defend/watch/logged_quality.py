"""The quality figure a training loop already logged for a snapshot (e.g. NVIDIA's FID), so watch need not compute one.

Sources:

- NVIDIA's ``metric-<name>.jsonl`` lines, ``{"results": {"fid50k_full": 12.3}, "metric": "fid50k_full",
  "snapshot_pkl": "network-snapshot-000200.pkl", ...}``, matched to a snapshot by file name;
- any CSV or JSONL file with a column the user names (``--quality-log FILE --quality-column fid``),
  matched by a ``snapshot``/``checkpoint``/``snapshot_pkl`` column holding the file name, else by a
  ``kimg`` (or ``progress/kimg``) column.

A FID-like name (containing ``fid``) is recorded as ``quality/fid``, anything else as ``quality/<name>``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from gmia_defend.errors import UserError

NVIDIA_PREFERRED = ("fid50k_full", "fid50k", "fid10k_full", "fid10k", "fid5k_full")
_NAME_COLUMNS = ("snapshot_pkl", "snapshot", "checkpoint", "ckpt", "file")
_KIMG_COLUMNS = ("kimg", "progress/kimg", "cur_kimg")


def quality_key_for(name: str) -> str:
    """The record key of a logged metric: FID-like names -> ``quality/fid``."""
    return "quality/fid" if "fid" in name.lower() else f"quality/{name}"


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class LoggedQuality:
    """Looks up the quality figure logged for a snapshot; ``None`` when the loop has not logged it (yet).

    >>> import json, tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> line = {"results": {"fid50k_full": 12.3}, "metric": "fid50k_full", "snapshot_pkl": "network-snapshot-000200.pkl"}
    >>> _ = (run / "metric-fid50k_full.jsonl").write_text(json.dumps(line) + "\\n")
    >>> q = LoggedQuality(run)
    >>> q.lookup("network-snapshot-000200.pkl", 200.0), q.key, q.expects_values
    (12.3, 'quality/fid', True)
    """

    def __init__(self, run_dir: str | Path, log_file: str | Path | None = None, column: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.log_file = Path(log_file).expanduser() if log_file else None
        if self.log_file is not None and not self.log_file.is_absolute() and not self.log_file.exists():
            self.log_file = self.run_dir / self.log_file
        self.column = column
        if self.log_file is not None and not column:
            raise UserError("--quality-log needs --quality-column (the column holding the quality figure)")
        self.key = quality_key_for(column) if column else "quality/fid"

    # --------------------------------------------------------------------------- sources
    def _nvidia_files(self) -> list[Path]:
        files = sorted(self.run_dir.glob("metric-*.jsonl"))
        if self.column:
            files = [f for f in files if f.stem == f"metric-{self.column}"] or files
        else:
            rank = {name: i for i, name in enumerate(NVIDIA_PREFERRED)}
            files = sorted([f for f in files if "fid" in f.stem], key=lambda f: rank.get(f.stem[7:], 99))[:1]
        return files

    @property
    def expects_values(self) -> bool:
        """True when the run logs a quality figure (so a missing one is worth waiting for)."""
        return bool(self.log_file is not None and self.log_file.is_file()) or bool(self._nvidia_files())

    def _rows(self) -> list[dict]:
        if self.log_file is not None:
            if not self.log_file.is_file():
                return []
            if self.log_file.suffix.lower() == ".csv":
                with open(self.log_file, newline="") as fh:
                    return list(csv.DictReader(fh))
            return _read_jsonl(self.log_file)
        rows = []
        for path in self._nvidia_files():
            for row in _read_jsonl(path):
                results = row.get("results") or {}
                names = [self.column] if self.column else [k for k in NVIDIA_PREFERRED if k in results] or \
                    [k for k in results if "fid" in k.lower()]
                if names and names[0] in results:
                    self.key = quality_key_for(names[0])
                    rows.append({"value": results[names[0]], "snapshot_pkl": row.get("snapshot_pkl")})
        return rows

    # --------------------------------------------------------------------------- lookup
    def lookup(self, snapshot_name: str, kimg: float | None) -> float | None:
        """The figure logged for this snapshot (by file name, else by kimg), or None."""
        base = Path(snapshot_name).name
        found: float | None = None
        for row in self._rows():
            value = _number(row.get("value") if self.log_file is None else row.get(self.column))
            if value is None:
                continue
            names = [str(row[c]) for c in _NAME_COLUMNS if row.get(c)]
            if names:
                if any(Path(n).name == base for n in names):
                    found = value
                continue
            row_kimg = next((_number(row.get(c)) for c in _KIMG_COLUMNS if _number(row.get(c)) is not None), None)
            if kimg is not None and row_kimg is not None and abs(row_kimg - kimg) < 1e-6:
                found = value
        return found


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        text = path.read_text()
    except OSError:
        return rows
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue  # the loop may be writing its last line right now
        if isinstance(obj, dict):
            rows.append(obj)
    return rows
