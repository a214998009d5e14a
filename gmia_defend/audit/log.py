"""AuditLog: a run folder's ``audits.jsonl``, evidence images and identity pseudonyms.

``append`` writes one JSON line per audit (fsync'd append: a killed run keeps every completed line)
and the evidence grid; ``records`` reads the file back and warns, naming the line, about a torn last
line (a run killed mid-write) instead of dropping it in silence; ``sync`` makes the file agree with
a history restored from a checkpoint. Identity names stay in the local folder: ``pseudonym(name)``
gives the keyed pseudonym that goes to remote loggers (``<run_dir>/pseudonyms.json`` maps back).

Example:
    >>> import tempfile
    >>> from gmia_defend.audit import AuditLog, AuditRecord
    >>> log = AuditLog(tempfile.mkdtemp(), pseudonym_key="k")
    >>> _ = log.append(AuditRecord(kimg=1.0, metrics={"leakage/auc": 0.6}))
    >>> [r.kimg for r in log.records()], log.audited_kimgs()
    ([1.0], [1.0])
    >>> log.pseudonym("alice").startswith("id-")
    True
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

from gmia_defend.audit.record import AuditRecord, as_records
from gmia_defend.io import append_jsonl, write_jsonl_atomic

AUDITS_FILE = "audits.jsonl"


def kimg_tag(kimg: float) -> str:
    """File-name form of a kimg value that sorts in order: ``000012.288``."""
    return f"{float(kimg):010.3f}"


def read_audits(path: str | Path, warn: bool = True) -> list[AuditRecord]:
    """The records of an ``audits.jsonl``; a line that does not parse is skipped with a warning naming it."""
    path = Path(path)
    records: list[AuditRecord] = []
    with open(path) as fh:
        lines = fh.read().split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(AuditRecord.from_json(json.loads(line)))
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            if warn:
                where = "its last line, torn (a run killed while writing it?)" if i == last else "a corrupt line"
                warnings.warn(f"{path}: line {i + 1} is {where}; skipped ({type(err).__name__}: "
                              f"{line[:60]!r}{'...' if len(line) > 60 else ''})", UserWarning, stacklevel=2)
    return records


class AuditLog:
    """The audit outputs of one run folder (see the module docstring).

    Args:
        run_dir: the run folder (``audits.jsonl``, ``evidence/``, ``pseudonyms.json``).
        pseudonymize: replace identity names by keyed pseudonyms in what goes to remote services.
        pseudonym_key: the key (default: ``$GMIA_PSEUDONYM_KEY``, else ``<run_dir>/pseudonym_key``).
        evidence: write the evidence grid of each audit to ``evidence/kimg=<kimg>.png``.
        write: False on processes that must not write (DDP ranks other than 0).

    >>> import tempfile
    >>> log = AuditLog(tempfile.mkdtemp(), pseudonymize=False)
    >>> log.append(AuditRecord(kimg=2.0, metrics={"leakage/auc": 0.5})).kimg, log.pseudonym("bob")
    (2.0, 'bob')
    """

    def __init__(self, run_dir: str | Path, pseudonymize: bool = True, pseudonym_key: str | bytes | None = None,
                 evidence: bool = True, write: bool = True) -> None:
        from gmia_defend.report.pseudonyms import Pseudonymizer

        self.run_dir = Path(run_dir)
        self.pseudonymize, self.evidence, self.write = pseudonymize, evidence, write
        self.pseudonyms = Pseudonymizer(pseudonym_key, self.run_dir if write else None, enabled=pseudonymize)

    @property
    def path(self) -> Path:
        return self.run_dir / AUDITS_FILE

    # ------------------------------------------------------------------------------- reading
    def records(self) -> list[AuditRecord]:
        """Every record in ``audits.jsonl`` (empty when there is none yet)."""
        return read_audits(self.path) if self.path.is_file() else []

    def audited_kimgs(self) -> list[float]:
        """kimg of every audit already recorded (failed ones too), in file order."""
        return [r.kimg for r in self.records()]

    # ------------------------------------------------------------------------------- writing
    def append(self, record: AuditRecord, result: Any = None) -> AuditRecord:
        """Write ``result``'s evidence grid (if any), then append ``record`` as one line; returns it."""
        if not self.write:
            return record
        if result is not None and self.evidence and getattr(result, "evidence", None):
            try:
                local = self.run_dir / "evidence" / f"kimg={kimg_tag(record.kimg)}.png"
                result.save_evidence_png(local)
                record.evidence = str(local.relative_to(self.run_dir))
            except Exception as err:  # noqa: BLE001 - a figure must not stop training
                warnings.warn(f"could not write the evidence grid: {err}", UserWarning, stacklevel=2)
        append_jsonl(self.path, record.to_json())
        return record

    def sync(self, history: Sequence[AuditRecord]) -> list[AuditRecord]:
        """Make ``audits.jsonl`` agree with ``history`` (restored from a checkpoint); returns the full records.

        Lines after the restored history (audits of an interrupted run, redone after the resume) are
        moved aside to ``audits.jsonl.<time>.bak``; restored records keep their per-identity tables
        from the file when the checkpoint held only summaries.
        """
        existing = self.records() if self.path.is_file() else []
        if not self.write or (not existing and not history):
            return list(history)
        by_kimg = {round(r.kimg, 6): r for r in existing}
        merged = []
        for r in history:
            full = by_kimg.get(round(r.kimg, 6))
            merged.append(full if full is not None and not r.identities and full.identities else r)
        if [r.to_json() for r in existing] == [r.to_json() for r in merged]:
            return merged
        if existing and (len(existing) > len(merged) or not merged):
            stamp = time.strftime("%Y%m%d-%H%M%S")
            write_jsonl_atomic(self.path.with_name(f"{self.path.name}.{stamp}.bak"), [r.to_json() for r in existing])
        write_jsonl_atomic(self.path, [r.to_json() for r in merged])
        return merged

    # ------------------------------------------------------------------------------- pseudonyms
    def pseudonym(self, name: str) -> str:
        """The name remote services see (the name itself when ``pseudonymize=False``)."""
        return self.pseudonyms(str(name))

    def pseudonymous_identities(self, record: AuditRecord) -> list[dict]:
        """The per-identity table with pseudonyms (what a remote table may show)."""
        return [{**row, "identity": self.pseudonym(row.get("identity"))} for row in record.identities]

    def pseudonymous_evidence(self, result: Any, record: AuditRecord) -> Path | None:
        """The evidence grid with pseudonyms in its captions (for remote loggers), or None."""
        if not self.write or result is None or not getattr(result, "evidence", None) or not record.evidence:
            return None
        local = self.run_dir / record.evidence
        if not self.pseudonymize:
            return local
        evidence = [{**e, "identity": self.pseudonym(e.get("identity"))} for e in result.evidence]
        path = local.with_name(local.stem + ".pseudonymised.png")
        dataclasses.replace(result, evidence=evidence).save_evidence_png(path)
        return path

    def save_pseudonyms(self) -> None:
        """Keep the pseudonym -> name map in the run folder (local only)."""
        if self.write:
            self.pseudonyms.save()


def audit_records(run_dir: str | Path) -> list[AuditRecord]:
    """The audit records of a run (``<run_dir>/audits.jsonl``), torn lines reported."""
    return read_audits(Path(run_dir) / AUDITS_FILE)


def records_as_json(records: Iterable[Any]) -> list[dict]:
    return [r.to_json() for r in as_records(records)]
