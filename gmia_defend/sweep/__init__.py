"""Sweeps: grids of fits run locally from wandb-format sweep files, checked first, collected into one table.

- ``config``: read and expand a sweep file (``SweepConfig``, ``SweepRun``),
- ``validate``: check every run's fit config before any run starts (``check_runs``),
- ``runner``: run them, resumable, within the machine's cores (``run_sweep``),
- ``collect`` / ``summary`` / ``plots``: the sweep's table and figures from the runs' audits.
"""
