"""``gmia-defend sweep CONFIG``: run a grid of fits locally and collect their audits into one table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gmia_defend.config_files import resolve_config
from gmia_defend.sweep.collect import collect_sweep
from gmia_defend.sweep.config import SweepConfig
from gmia_defend.sweep.plots import plot_sweep
from gmia_defend.sweep.runner import RUN_DIR_ARG, run_sweep


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="sweep YAML (wandb sweep format), e.g. configs/sweeps/diversity.yaml")
    parser.add_argument("--out", default=None, help="sweep folder (default: runs/sweeps/<config name>)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each fit uses its own cores)")
    parser.add_argument("--run-dir-arg", default=RUN_DIR_ARG,
                        help="option that gives each run its folder ('' to pass none)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")


def run(args: argparse.Namespace) -> int:
    config = SweepConfig.load(resolve_config(args.config))
    out = Path(args.out or Path("runs") / "sweeps" / config.name)
    if args.dry_run:
        for record in run_sweep(config, out, dry_run=True):
            print(" ".join(record["command"]))
        return 0

    def _progress(record: dict) -> None:
        status = "ok" if record["returncode"] == 0 else f"FAILED (exit {record['returncode']})"
        print(f"[sweep] {record['name']}: {status} in {record['seconds']:.0f}s -> {record['run_dir']}", flush=True)

    records = run_sweep(config, out, jobs=args.jobs, run_dir_arg=args.run_dir_arg or None, on_done=_progress)
    rows = collect_sweep(out)
    plots = plot_sweep(rows, out)
    failed = [r["name"] for r in records if r.get("returncode") != 0]
    print(json.dumps({"sweep": str(out), "runs": len(records), "failed": failed, "audit_rows": len(rows),
                      "plots": [str(p) for p in plots]}))
    return 1 if failed else 0
