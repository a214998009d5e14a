"""Run a sweep's runs one after the other (or a few at a time) and record each outcome.

Every run gets its own folder ``<sweep_dir>/<run name>``, passed to the command as
``--trainer.default_root_dir`` (configurable), with its parameters in ``sweep_params.json`` and
its output in ``stdout.log``. Finished runs are appended to ``<sweep_dir>/runs.jsonl``; running
the same sweep again skips runs that already succeeded, so a sweep can be resumed. A folder that
holds runs of a different sweep is refused unless ``overwrite`` is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from gmia_defend.errors import UserError
from gmia_defend.io import append_jsonl, read_jsonl, write_json_atomic
from gmia_defend.sweep.config import SweepConfig, SweepRun
from gmia_defend.sweep.validate import RunCheck, fit_arguments

RUN_DIR_ARG = "--trainer.default_root_dir"
THREADS_ARG = "--torch_threads"
ERROR_TAIL_LINES = 6


def completed_runs(sweep_dir: Path) -> dict[str, dict]:
    """Runs recorded as finished successfully in ``runs.jsonl`` (by name)."""
    path = sweep_dir / "runs.jsonl"
    if not path.exists():
        return {}
    return {r["name"]: r for r in read_jsonl(path) if r.get("returncode") == 0}


def error_tail(log_path: Path, lines: int = ERROR_TAIL_LINES) -> list[str]:
    """The last non-empty lines of a run's log, from its last traceback or error line when there is one."""
    try:
        text = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    text = [ln.rstrip() for ln in text if ln.strip()]
    starts = [i for i, ln in enumerate(text) if ln.startswith("Traceback") or ln.lstrip().startswith("error:")
              or "Error:" in ln]
    tail = text[starts[-1]:] if starts else text
    return tail[-lines:]


def check_sweep_folder(config: SweepConfig, sweep_dir: Path, overwrite: bool = False) -> None:
    """Refuse a folder that holds runs of another sweep; with ``overwrite``, remove those runs first."""
    meta_path = sweep_dir / "sweep.json"
    runs_file = sweep_dir / "runs.jsonl"
    if not meta_path.exists() and not runs_file.exists():
        return
    import json

    try:
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    except (OSError, json.JSONDecodeError):
        meta = {}
    mine = config.identity()
    differs = [k for k in ("method", "parameters", "command", "program", "run_cap", "seed")
               if (k in meta or k in ("method", "parameters", "command")) and meta.get(k) != mine.get(k)]
    if not differs:
        return
    if not overwrite:
        raise UserError(f"{sweep_dir} holds runs of a different sweep (source {meta.get('source', '?')}; its "
                        f"{', '.join(differs)} differ); give another --out folder, or --overwrite to delete them")
    for record in read_jsonl(runs_file) if runs_file.exists() else []:
        run_dir = Path(record.get("run_dir", ""))
        if run_dir.is_dir() and run_dir.resolve().parent == sweep_dir.resolve():
            shutil.rmtree(run_dir)
    for name in ("runs.jsonl", "sweep.json", "sweep_audits.jsonl", "sweep_summary.json", "sweep_table.md"):
        (sweep_dir / name).unlink(missing_ok=True)


@dataclass
class ThreadPlan:
    """How many runs go at once and how many torch threads a fit without a setting gets.

    ``threads`` lists the torch threads of each checked fit (None: the fit does not set them). Jobs
    times any fit's threads stays within ``cpus``: jobs are lowered when a fit's own setting needs it,
    and fits without a setting get ``cpus // jobs`` (``add_threads``).

    >>> ThreadPlan.make(jobs=4, threads=[1, 1], cpus=2).jobs
    2
    >>> ThreadPlan.make(jobs=2, threads=[2, 2], cpus=2).note
    '--jobs 2 with 2 torch threads per fit would use 4 of 2 cores; running 1 at a time'
    >>> ThreadPlan.make(jobs=2, threads=[None], cpus=8).add_threads
    4
    """

    jobs: int
    add_threads: int
    note: str | None = None

    @classmethod
    def make(cls, jobs: int, threads: Sequence[int | None], cpus: int | None = None) -> "ThreadPlan":
        cpus = max(1, int(cpus or os.cpu_count() or 1))
        wanted = max(1, int(jobs))
        jobs = min(wanted, cpus)
        note = f"--jobs {wanted} is more than the {cpus} cores; running {jobs} at a time" if wanted > cpus else None
        given = [int(t) for t in threads if t is not None]
        if given and jobs > 1 and max(given) * jobs > cpus:
            widest, fit = max(given), max(1, cpus // max(given))
            note = (f"--jobs {wanted} with {widest} torch threads per fit would use {widest * jobs} of {cpus} "
                    f"cores; running {fit} at a time")
            jobs = fit
        return cls(jobs=jobs, add_threads=max(1, cpus // jobs), note=note)


def with_threads(command: list[str], threads: int | None) -> list[str]:
    """``command`` with ``--torch_threads=threads`` added (a fit command that sets none; None: unchanged).

    >>> with_threads(["gmia-defend", "fit", "--config", "demo"], 2)[-1]
    '--torch_threads=2'
    """
    if threads is None or fit_arguments(command) is None:
        return command
    if any(c == THREADS_ARG or c.startswith(THREADS_ARG + "=") for c in command):
        return command
    return command + [f"{THREADS_ARG}={threads}"]


def run_one(run: SweepRun, sweep_dir: Path, run_dir_arg: str | None = RUN_DIR_ARG,
            env: dict[str, str] | None = None, add_threads: int | None = None,
            omp_threads: int | None = None) -> dict:
    """Execute one run; return its record (also appended to runs.jsonl by the caller).

    ``add_threads`` is given to a fit as ``--torch_threads``; ``omp_threads`` bounds the child's
    OpenMP/BLAS pools (``OMP_NUM_THREADS``, unless the environment sets it).
    """
    run_dir = sweep_dir / run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "sweep_params.json", run.params)
    command = with_threads(list(run.command), add_threads)
    command += [f"{run_dir_arg}={run_dir}"] if run_dir_arg else []
    child_env = {**os.environ, **(env or {})}
    if omp_threads is not None:
        child_env.setdefault("OMP_NUM_THREADS", str(omp_threads))
    start = time.perf_counter()
    log_path = run_dir / "stdout.log"
    try:
        with open(log_path, "w") as log:
            proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=child_env, check=False)
        returncode = proc.returncode
    except OSError as err:  # the program itself cannot start
        log_path.write_text(f"error: cannot start {command[0]!r}: {err}\n")
        returncode = 127
    record = {"name": run.name, "params": run.params, "command": command, "run_dir": str(run_dir),
              "returncode": returncode, "seconds": round(time.perf_counter() - start, 2)}
    if returncode != 0:
        record["error_tail"] = error_tail(log_path)
    return record


class Progress:
    """Counts finished runs and estimates the time left from the mean duration of this session's runs.

    >>> p = Progress(total=3, jobs=1, clock=iter([0.0, 60.0]).__next__)
    >>> p.finished(seconds=60.0)
    (1, 60.0, 120.0)
    """

    def __init__(self, total: int, jobs: int = 1, clock: Callable[[], float] = time.perf_counter) -> None:
        self.total, self.jobs, self.clock = total, max(1, jobs), clock
        self.start = clock()
        self.durations: deque[float] = deque()
        self.lock = threading.Lock()

    def finished(self, seconds: float) -> tuple[int, float, float]:
        """Record one finished run; return (runs done, seconds elapsed, estimated seconds left)."""
        with self.lock:
            self.durations.append(seconds)
            done = len(self.durations)
            mean = sum(self.durations) / done
            left = max(0, self.total - done)
            return done, self.clock() - self.start, mean * -(-left // self.jobs)


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m``.

    >>> format_seconds(75), format_seconds(3700), format_seconds(9)
    ('1m15s', '1h01m', '9s')
    """
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def run_sweep(config: SweepConfig, sweep_dir: str | Path, jobs: int = 1,
              run_dir_arg: str | None = RUN_DIR_ARG, dry_run: bool = False,
              on_done: Callable[[dict], None] | None = None, on_start: Callable[[SweepRun], None] | None = None,
              checks: Sequence[RunCheck] | None = None, overwrite: bool = False,
              cpus: int | None = None) -> list[dict]:
    """Run every run of ``config`` not already completed in ``sweep_dir``; return all records.

    ``checks`` (from :func:`~gmia_defend.sweep.validate.check_runs`, one per run) give each fit's torch
    threads, so that ``jobs`` x threads stays within ``cpus`` (default: this machine's cores).
    """
    sweep_dir = Path(sweep_dir)
    runs = config.runs()
    by_name = {c.name: c for c in checks or []}
    plan = thread_plan(runs, by_name, jobs, cpus)

    def add_threads(run: SweepRun) -> int | None:
        check = by_name.get(run.name)
        return plan.add_threads if check is not None and check.checked and check.torch_threads is None else None

    if dry_run:  # the commands as run_one runs them
        return [{"name": r.name, "params": r.params, "returncode": None,
                 "command": with_threads(list(r.command), add_threads(r))
                 + ([f"{run_dir_arg}={sweep_dir / r.name}"] if run_dir_arg else [])} for r in runs]
    check_sweep_folder(config, sweep_dir, overwrite=overwrite)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(sweep_dir / "sweep.json", {"name": config.name, **config.identity(), "source": config.source})
    done = completed_runs(sweep_dir)
    todo = [r for r in runs if r.name not in done]
    records = [done[r.name] for r in runs if r.name in done]

    def _execute(run: SweepRun) -> dict:
        if on_start:
            on_start(run)
        check = by_name.get(run.name)
        own = check.torch_threads if check is not None else None
        record = run_one(run, sweep_dir, run_dir_arg, add_threads=add_threads(run),
                         omp_threads=own or plan.add_threads)
        append_jsonl(sweep_dir / "runs.jsonl", record)
        if on_done:
            on_done(record)
        return record

    if plan.jobs <= 1:
        records += [_execute(r) for r in todo]
        return records
    pool = ThreadPoolExecutor(max_workers=plan.jobs)
    try:
        futures = [pool.submit(_execute, r) for r in todo]
        records += [f.result() for f in futures]
    finally:  # on Ctrl-C: start no further run (the running ones got the same signal)
        pool.shutdown(wait=True, cancel_futures=True)
    return records


def thread_plan(runs: Sequence[SweepRun], checks: dict[str, RunCheck], jobs: int,
                cpus: int | None = None) -> ThreadPlan:
    """The :class:`ThreadPlan` for these runs given their checks (unchecked runs set no threads)."""
    threads = [checks[r.name].torch_threads for r in runs if r.name in checks and checks[r.name].checked]
    return ThreadPlan.make(jobs, threads, cpus)
