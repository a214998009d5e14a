"""``gmia-defend sweep CONFIG``: run a grid of fits locally and collect their audits into one table.

    gmia-defend sweep sweeps/diversity [--out DIR] [--jobs N] [--dry-run] [--overwrite]

CONFIG is a sweep YAML in the wandb sweep format, a path or a shipped name (``sweeps/diversity``).
Every run's config is checked before the first run starts; then each run prints a progress line
(elapsed time, estimated time left), and the end prints a summary table (status, last leakage AUC
with its interval, quality, release; failed runs' last error lines). Exit status 1 if any run failed.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import threading
from pathlib import Path

from gmia_defend.config_files import resolve_config
from gmia_defend.sweep.collect import collect_sweep, read_summary
from gmia_defend.sweep.config import SweepConfig, SweepRun
from gmia_defend.sweep.plots import plot_sweep
from gmia_defend.sweep.runner import (RUN_DIR_ARG, Progress, check_sweep_folder, completed_runs, format_seconds,
                                      run_sweep, thread_plan)
from gmia_defend.sweep.summary import format_table
from gmia_defend.sweep.validate import check_runs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="sweep YAML (wandb sweep format): a path or a shipped name such as "
                                       "sweeps/diversity (`gmia-defend configs` lists them)")
    parser.add_argument("--out", default=None, help="sweep folder (default: runs/sweeps/<sweep name>)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once; lowered so that jobs x each fit's torch threads fits the cores")
    parser.add_argument("--run-dir-arg", default=RUN_DIR_ARG,
                        help="option that gives each run its folder ('' to pass none)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check every run's config and print the commands (shell-quoted), run nothing")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the runs of a different sweep found in the --out folder")


def _say(text: str) -> None:
    print(text, flush=True)


def run(args: argparse.Namespace) -> int:
    config = SweepConfig.load(resolve_config(args.config))
    out = Path(args.out or Path("runs") / "sweeps" / config.name)
    for note in config.wandb_notes():
        print(f"[sweep] note: {note}", file=sys.stderr)
    runs = config.runs()
    checks = check_runs(runs)  # every run's config, before anything starts: raises naming all bad runs
    plan = thread_plan(runs, {c.name: c for c in checks}, args.jobs)
    if args.dry_run:
        if plan.note:
            print(f"[sweep] {plan.note}", file=sys.stderr)
        for record in run_sweep(config, out, jobs=args.jobs, run_dir_arg=args.run_dir_arg or None, dry_run=True,
                                checks=checks):
            print(shlex.join(record["command"]))
        return 0

    check_sweep_folder(config, out, overwrite=args.overwrite)  # refuse another sweep's folder before any output
    if plan.note:
        _say(f"[sweep] {plan.note}")
    total = len(runs)
    order = {r.name: i + 1 for i, r in enumerate(runs)}
    lock = threading.Lock()
    before = len(completed_runs(out).keys() & set(order))
    progress = Progress(total=total - before, jobs=plan.jobs)
    _say(f"[sweep] {config.name}: {total} runs ({before} finished before, skipped), {plan.jobs} at a time -> {out}"
         if before else f"[sweep] {config.name}: {total} runs, {plan.jobs} at a time -> {out}")

    def _start(run: SweepRun) -> None:
        with lock:
            _say(f"[sweep {order[run.name]}/{total}] start {run.name}")

    def _done(record: dict) -> None:
        done, elapsed, left = progress.finished(record["seconds"])
        status = "ok" if record["returncode"] == 0 else f"FAILED (exit {record['returncode']})"
        with lock:
            _say(f"[sweep {order[record['name']]}/{total}] {record['name']}: {status} in "
                 f"{format_seconds(record['seconds'])}; {done} finished this session, elapsed "
                 f"{format_seconds(elapsed)}, ~{format_seconds(left)} left")
            for line in record.get("error_tail") or []:
                _say(f"    {line}")

    try:
        records = run_sweep(config, out, jobs=args.jobs, run_dir_arg=args.run_dir_arg or None, on_start=_start,
                            on_done=_done, checks=checks, overwrite=args.overwrite)
    except KeyboardInterrupt:
        print(f"\n[sweep] interrupted; the same command resumes it (finished runs in {out} are skipped)",
              file=sys.stderr)
        return 130
    rows = collect_sweep(out)
    plots = plot_sweep(rows, out)
    _say("")
    _say(format_table(read_summary(out)))
    failed = [r["name"] for r in records if r.get("returncode") != 0]
    _say(f"\n[sweep] {len(records)} runs ({len(failed)} failed), "
         f"{len(rows)} audits; table: {out / 'sweep_table.md'}")
    for path in plots:
        _say(f"  figure: {path}")
    if failed:
        print(f"[sweep] failed runs: {', '.join(failed)} (their stdout.log files hold the full output)",
              file=sys.stderr)
    return 1 if failed else 0
