"""Run a sweep's runs one after the other (or a few at a time) and record each outcome.

Every run gets its own folder ``<sweep_dir>/<run name>``, passed to the command as
``--trainer.default_root_dir`` (configurable), with its parameters in ``sweep_params.json`` and
its output in ``stdout.log``. Finished runs are appended to ``<sweep_dir>/runs.jsonl``; running
the same sweep again skips runs that already succeeded, so a sweep can be resumed.
"""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from gmia_defend.io import append_jsonl, read_jsonl, write_json_atomic
from gmia_defend.sweep.config import SweepConfig, SweepRun

RUN_DIR_ARG = "--trainer.default_root_dir"


def completed_runs(sweep_dir: Path) -> dict[str, dict]:
    """Runs recorded as finished successfully in ``runs.jsonl`` (by name)."""
    path = sweep_dir / "runs.jsonl"
    if not path.exists():
        return {}
    return {r["name"]: r for r in read_jsonl(path) if r.get("returncode") == 0}


def run_one(run: SweepRun, sweep_dir: Path, run_dir_arg: str | None = RUN_DIR_ARG,
            env: dict[str, str] | None = None) -> dict:
    """Execute one run; return its record (also appended to runs.jsonl by the caller)."""
    run_dir = sweep_dir / run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "sweep_params.json", run.params)
    command = list(run.command) + ([f"{run_dir_arg}={run_dir}"] if run_dir_arg else [])
    start = time.perf_counter()
    with open(run_dir / "stdout.log", "w") as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, **(env or {})}, check=False)
    return {"name": run.name, "params": run.params, "command": command, "run_dir": str(run_dir),
            "returncode": proc.returncode, "seconds": round(time.perf_counter() - start, 2)}


def run_sweep(config: SweepConfig, sweep_dir: str | Path, jobs: int = 1,
              run_dir_arg: str | None = RUN_DIR_ARG, dry_run: bool = False,
              on_done: Callable[[dict], None] | None = None) -> list[dict]:
    """Run every run of ``config`` not already completed in ``sweep_dir``; return all records."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(sweep_dir / "sweep.json", {
        "name": config.name, "method": config.method, "parameters": config.parameters,
        "command": config.command, "source": config.source})
    done = completed_runs(sweep_dir)
    todo = [r for r in config.runs() if r.name not in done]
    if dry_run:
        return [{"name": r.name, "params": r.params, "command": r.command, "returncode": None}
                for r in todo]
    records = list(done.values())

    def _execute(run: SweepRun) -> dict:
        record = run_one(run, sweep_dir, run_dir_arg)
        append_jsonl(sweep_dir / "runs.jsonl", record)
        if on_done:
            on_done(record)
        return record

    if jobs <= 1:
        records += [_execute(r) for r in todo]
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            records += list(pool.map(_execute, todo))
    return records
