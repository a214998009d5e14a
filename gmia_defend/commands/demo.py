"""``gmia-defend demo``: the main job end to end on the embedded synthetic faces, on a CPU.

Trains StyleGAN2 with ``configs/demo.yaml`` (the same LightningCLI as ``gmia-defend fit``) with three
callbacks attached: ``IdentityLeakageMonitor`` (attack + Fréchet distance on the same samples, with
the ``synthetic`` embedder), ``LeakageEarlyStopping`` and ``ReleaseCheckpointSelector``; then prints
the report and the release decision. Everything lands in ``--out`` (default ``runs/demo``).

What it shows: member identities are over-represented in the small training set, so as training goes
on the generator starts to reproduce them and the identity AUC climbs from chance while the Fréchet
distance falls. The release selector keeps the best-quality checkpoint whose leakage is within the
release budget (usually an intermediate one, not the last); early stopping is set to stop only when
leakage is beyond doubt (the lower end of the 95 % interval above its budget at two audits in a row),
so it rarely cuts the demo short but would stop a run that memorises its members.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from gmia_defend.errors import UserError

# What the demo's callbacks use (the training itself is configs/demo.yaml).
DEMO_EVERY_N_KIMG = 4.0
DEMO_NUM_SAMPLES = 1000
DEMO_RELEASE_BUDGET = 0.8           # leakage/auc_ci_high must be <= this to be released
DEMO_RELEASE_METRIC = "leakage/auc_ci_high"
DEMO_STOP_BUDGET = 0.9              # stop when leakage/auc_ci_low > this at 2 audits in a row
DEMO_STOP_METRIC = "leakage/auc_ci_low"
DEMO_MIN_RELEASE_KIMG = 0.5         # never "release" the untrained generator


def default_config() -> Path:
    """The shipped ``demo`` config (inside the package, so a regular install has it too)."""
    from gmia_defend.config_files import resolve_config

    return resolve_config("demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    parser.add_argument("--config", default=None, help="LightningCLI config: a shipped name or a path (default: demo)")
    parser.add_argument("--overwrite", action="store_true", help="delete --out first if it holds a previous run")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="override trainer.max_steps (2 per batch) for a shorter or longer run")
    parser.add_argument("--every-n-kimg", type=float, default=DEMO_EVERY_N_KIMG, help="audit cadence")
    parser.add_argument("--num-samples", type=int, default=DEMO_NUM_SAMPLES, help="generated samples per audit")
    parser.add_argument("--embedder", default="synthetic", help="embedder spec (default: synthetic)")
    parser.add_argument("--budget", type=float, default=DEMO_RELEASE_BUDGET,
                        help=f"release budget on {DEMO_RELEASE_METRIC}")
    parser.add_argument("--stop-budget", type=float, default=DEMO_STOP_BUDGET,
                        help=f"early-stopping budget on {DEMO_STOP_METRIC}")
    parser.add_argument("--wandb", action="store_true",
                        help="also log to Weights & Biases (offline unless WANDB_MODE says otherwise)")
    parser.add_argument("--no-monitor", action="store_true", help=argparse.SUPPRESS)  # for benchmarks


@dataclass
class DemoRun:
    """The pieces of a demo run, built but not yet trained."""

    trainer: Any
    model: Any
    datamodule: Any
    monitor: Any
    stopper: Any
    selector: Any
    out: Path


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} already holds a run; pass --overwrite to replace it or --out to use another folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def build_demo(out: str | Path, config: str | Path | None = None, embedder: Any = "synthetic",
               monitor: bool = True, max_steps: int | None = None, every_n_kimg: float = DEMO_EVERY_N_KIMG,
               num_samples: int = DEMO_NUM_SAMPLES, budget: float = DEMO_RELEASE_BUDGET,
               stop_budget: float = DEMO_STOP_BUDGET, wandb: bool = False, progress: bool = False,
               extra_args: Sequence[str] = ()) -> DemoRun:
    """Parse the demo config with ``gmia-defend fit``'s LightningCLI and attach the leakage callbacks."""
    from gmia_defend.callbacks import IdentityLeakageMonitor, LeakageEarlyStopping, ReleaseCheckpointSelector
    from gmia_defend.commands.fit import _cli_classes
    from gmia_defend.data import IdentityDataModule
    from gmia_defend.models import StyleGAN2

    out = Path(out)
    from gmia_defend.config_files import resolve_config

    config = resolve_config(config) if config is not None else default_config()
    args = ["--config", str(config), f"--trainer.default_root_dir={out}", "--trainer.enable_progress_bar=false"]
    if max_steps is not None:
        args.append(f"--trainer.max_steps={int(max_steps)}")
    args += list(extra_args)
    FitCLI, RunFolderConfig = _cli_classes()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
        try:
            cli = FitCLI(StyleGAN2, IdentityDataModule, run=False, args=args, save_config_callback=RunFolderConfig,
                         save_config_kwargs={"overwrite": True}, seed_everything_default=0)
        except SystemExit as exit_:  # jsonargparse printed the config error
            raise UserError(f"the demo config {config} does not parse (see the message above)") from exit_
    trainer = cli.trainer
    found = {type(cb).__name__: cb for cb in trainer.callbacks}
    mon = stop = sel = None
    if monitor:
        mon = found.get("IdentityLeakageMonitor") or IdentityLeakageMonitor(
            embedder=embedder, generator="G_ema", every_n_kimg=every_n_kimg, num_samples=num_samples,
            batch_size=250, seed=0, progress=progress, audit_at_start=True)
        stop = found.get("LeakageEarlyStopping") or LeakageEarlyStopping(
            budget=stop_budget, metric=DEMO_STOP_METRIC, patience=2, min_kimg=DEMO_MIN_RELEASE_KIMG)
        sel = found.get("ReleaseCheckpointSelector") or ReleaseCheckpointSelector(
            budget=budget, metric=DEMO_RELEASE_METRIC, min_kimg=DEMO_MIN_RELEASE_KIMG)
        for cb in (mon, stop, sel):
            if cb not in trainer.callbacks:
                trainer.callbacks.append(cb)
    if wandb:
        from pytorch_lightning.loggers import WandbLogger

        offline = os.environ.get("WANDB_MODE", "offline") != "online"
        trainer.loggers = [*trainer.loggers, WandbLogger(save_dir=str(out), project="gmia-defend-demo",
                                                         offline=offline)]
    return DemoRun(trainer, cli.model, cli.datamodule, mon, stop, sel, out)


class _DropLightningTip:
    """Drops Lightning's advertising tip about its cloud logger (not something the demo's user can act on)."""

    def filter(self, record: Any) -> bool:
        return "Tip: For seamless cloud logging" not in str(record.getMessage())


def quiet_console() -> None:
    """Silence what the demo's own configuration triggers: Lightning's logger tip, ModelCheckpoint's warning
    about manual optimisation (a GAN checkpoint after the step is what is wanted) and the CSV logger's
    note that the run folder is not empty (it holds the run's own outputs by design)."""
    import logging

    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropLightningTip())
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")


def run(args: argparse.Namespace) -> int:
    from gmia_defend.commands import report

    quiet_console()
    out = Path(args.out)
    _prepare_out(out, args.overwrite)
    start = time.perf_counter()
    embedder: Any = args.embedder
    if not args.no_monitor:
        from gmia_defend.embedders import load_embedder

        print(f"loading the {args.embedder!r} embedder (the synthetic one is trained once, then cached)", flush=True)
        embedder = load_embedder(args.embedder)
        print(f"embedder ready in {time.perf_counter() - start:.0f} s", flush=True)
    demo = build_demo(out, args.config, embedder, not args.no_monitor, args.max_steps, args.every_n_kimg,
                      args.num_samples, args.budget, args.stop_budget, args.wandb,
                      progress=sys.stderr.isatty())  # a progress bar for audits on a terminal only
    demo.trainer.fit(demo.model, datamodule=demo.datamodule)
    seconds = time.perf_counter() - start
    if demo.monitor is None:
        print(f"demo trained without the monitor in {seconds:.0f} s: {out}")
        return 0
    if demo.stopper is not None and demo.stopper.stopping_reason_message:
        print(f"early stopping: {demo.stopper.stopping_reason_message}")
    print(f"demo finished in {seconds:.0f} s ({len(demo.monitor.history)} audits); run folder: {out}")
    parser = argparse.ArgumentParser(prog="gmia-defend report")
    report.add_arguments(parser)
    report.run(parser.parse_args([str(out)]))  # the report command's own defaults
    return 0
