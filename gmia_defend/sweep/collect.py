"""Collect every run's audits (``audits.jsonl``) and release into one sweep table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gmia_defend.errors import UserError
from gmia_defend.io import read_jsonl, write_json_atomic, write_jsonl_atomic, write_text_atomic
from gmia_defend.sweep.summary import format_table


def find_run_file(run_dir: Path, name: str) -> Path | None:
    """The newest ``name`` below ``run_dir`` (loggers may nest run folders, e.g. version_0/)."""
    hits = sorted(run_dir.rglob(name), key=lambda p: p.stat().st_mtime)
    return hits[-1] if hits else None


def collect_sweep(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per audit of every successful run: the run's parameters + the audit's metrics.

    Writes ``sweep_audits.jsonl``, ``sweep_summary.json`` (last audit and release per run) and
    ``sweep_table.md`` (the summary as a Markdown table).
    """
    sweep_dir = Path(sweep_dir)
    runs_file = sweep_dir / "runs.jsonl"
    if not runs_file.exists():
        raise UserError(f"{sweep_dir} is not a sweep folder (no runs.jsonl); run "
                        "`gmia-defend sweep <config> --out DIR` first")
    latest: dict[str, dict] = {}
    for record in read_jsonl(runs_file):
        latest[record["name"]] = record
    rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for name, record in latest.items():
        entry = {"name": name, "params": record.get("params", {}),
                 "returncode": record.get("returncode"), "seconds": record.get("seconds"),
                 "error_tail": record.get("error_tail") or []}
        audits_path = find_run_file(Path(record["run_dir"]), "audits.jsonl")
        audits = read_jsonl(audits_path) if audits_path else []
        for audit in audits:
            if audit.get("error"):
                continue
            rows.append({"run": name, **{f"param/{k}": v for k, v in entry["params"].items()},
                         "kimg": audit.get("kimg"), **audit.get("metrics", {})})
        entry["num_audits"] = len(audits)
        last = next((a for a in reversed(audits) if not a.get("error")), None)
        entry["last_audit"] = last.get("metrics") if last else None
        entry["last_kimg"] = last.get("kimg") if last else None
        release_path = find_run_file(Path(record["run_dir"]), "release.json")
        entry["release"] = json.loads(release_path.read_text()) if release_path else None
        summary.append(entry)

    write_jsonl_atomic(sweep_dir / "sweep_audits.jsonl", rows)
    write_json_atomic(sweep_dir / "sweep_summary.json", summary)
    write_text_atomic(sweep_dir / "sweep_table.md", format_table(summary, markdown=True) + "\n")
    return rows


def read_summary(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """The per-run entries ``collect_sweep`` wrote (empty before the first collection)."""
    path = Path(sweep_dir) / "sweep_summary.json"
    return json.loads(path.read_text()) if path.is_file() else []
