"""``gmia-defend fit``: train StyleGAN2 on an identity dataset with a LightningCLI.

    gmia-defend fit --config demo [--trainer.max_steps 200] [--ckpt_path last]

Everything a run writes lands in its run folder, ``trainer.default_root_dir``:
``config.yaml`` (the fully resolved config), ``checkpoints/`` (ModelCheckpoint with ``last.ckpt``),
``samples/`` (G_ema grids from fixed latents), ``metrics.csv`` (when no logger is configured, a
CSVLogger writing into the run folder) and whatever callbacks add (e.g. ``audits.jsonl``).
``trainer.global_step`` counts both optimizers (2 per batch): ``--trainer.max_steps 2000`` is 1000 batches.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

from gmia_defend.config_files import resolve_config_args
from gmia_defend.errors import UserError

DESCRIPTION = ("Train a StyleGAN2 generator on an identity-labelled dataset. Options come from StyleGAN2 "
               "(--model.*), IdentityDataModule (--data.*) and pytorch_lightning.Trainer (--trainer.*); "
               "start from a config: --config demo (a shipped config; `gmia-defend configs` lists them) or --config PATH.yaml. trainer.global_step counts both "
               "optimizers (2 per batch).")


def _cli_classes():
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.cli import LightningCLI, SaveConfigCallback
    from pytorch_lightning.loggers import CSVLogger

    from gmia_defend.io import write_text_atomic

    class RunFolderConfig(SaveConfigCallback):
        """Write the resolved config to ``<trainer.default_root_dir>/config.yaml`` (the run folder)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["save_to_log_dir"] = False
            super().__init__(*args, **kwargs)

        def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
            text = self.parser.dump(self.config)
            write_text_atomic(Path(trainer.default_root_dir) / self.config_filename, text)

    class FinalLastCheckpoint(pl.Callback):
        """Write ``last.ckpt`` after the batch that reaches ``max_steps`` when no checkpoint falls on it.

        Saved from the batch end, like ModelCheckpoint's own step checkpoints, so ``--ckpt_path last``
        with a larger ``max_steps`` continues exactly where this run stopped (a checkpoint written after
        fit() returns would count the unfinished epoch as done, and skip the rest of it). A pretraining
        run of any length can be handed to ``--model.init_from .../last.ckpt``.
        """

        def __init__(self, checkpoint: ModelCheckpoint) -> None:
            self.checkpoint = checkpoint

        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            every = getattr(self.checkpoint, "_every_n_train_steps", 0) or 0
            step = trainer.global_step
            if trainer.max_steps is None or trainer.max_steps < 0 or step < trainer.max_steps:
                return
            if every and step % every == 0:
                return  # ModelCheckpoint saves this step (last.ckpt included) right after this hook
            last = self.checkpoint.CHECKPOINT_NAME_LAST + self.checkpoint.FILE_EXTENSION
            trainer.save_checkpoint(str(Path(self.checkpoint.dirpath) / last), weights_only=False)

    class FitCLI(LightningCLI):
        """LightningCLI without subcommands (``fit`` is implied), defaults that keep a run in one folder."""

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                                help="resume training from this checkpoint; 'last' = "
                                     "<trainer.default_root_dir>/checkpoints/last.ckpt")
            parser.add_argument("--torch_threads", type=Optional[int], default=None,
                                help="torch intra-op CPU threads (default: torch's choice). 1 is the safe "
                                     "choice for small CPU models on a shared machine: with 2 threads and "
                                     "another busy process, a demo step ran ~100x slower")
            # IdentityDataModule and the DP batch sampler split the data by rank themselves (one seeded
            # order, one global Poisson draw); Lightning's DistributedSampler injection would break both
            parser.set_defaults({"trainer.use_distributed_sampler": False})
            try:
                parser.link_arguments("data.resolution", "model.resolution")
            except (ValueError, KeyError):  # a datamodule without a resolution argument
                pass

        def before_instantiate_classes(self) -> None:
            threads = self.config.get("torch_threads")
            if threads is not None:
                if int(threads) < 1:
                    raise UserError(f"--torch_threads must be >= 1, got {threads}")
                import torch

                torch.set_num_threads(int(threads))

        def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
            config = self._get(self.config_init, "trainer", default={})
            root = Path(config.get("default_root_dir") or os.getcwd())
            if config.get("logger") in (None, True):
                kwargs["logger"] = CSVLogger(save_dir=str(root), name="", version="")
            callbacks = config.get("callbacks") or []
            if not isinstance(callbacks, list):
                callbacks = [callbacks]
            if config.get("enable_checkpointing", True) is not False and not any(
                    isinstance(c, ModelCheckpoint) for c in callbacks):
                callbacks.append(ModelCheckpoint(save_last=True))
            resuming = bool(self.config.get("ckpt_path"))
            for cb in callbacks:
                if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                    cb.dirpath = str(root / "checkpoints")
                if isinstance(cb, ModelCheckpoint) and resuming and hasattr(cb, "_enable_version_counter"):
                    # a resumed run continues the same files: last.ckpt, not last-v1.ckpt beside a stale
                    # last.ckpt that the next --ckpt_path last would pick up
                    cb._enable_version_counter = False
            last = next((cb for cb in callbacks if isinstance(cb, ModelCheckpoint) and cb.save_last), None)
            if last is not None and not any(isinstance(cb, FinalLastCheckpoint) for cb in callbacks):
                callbacks.append(FinalLastCheckpoint(last))
            config["callbacks"] = callbacks
            return super().instantiate_trainer(**kwargs)

    return FitCLI, RunFolderConfig


def _resolve_ckpt(ckpt_path: str | None, root: str) -> str | None:
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        path = Path(root) / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise UserError(f"--ckpt_path last: {path} does not exist; train first or give a checkpoint path")
        return str(path)
    if not Path(ckpt_path).is_file():
        raise UserError(f"--ckpt_path {ckpt_path!r} does not exist; give an existing .ckpt file or 'last'")
    return ckpt_path


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (without the leading ``fit``), build model, data and trainer, train. Returns 0."""
    from gmia_defend.data import IdentityDataModule
    from gmia_defend.models import StyleGAN2

    from gmia_defend.commands.demo import quiet_console

    argv = resolve_config_args(list(sys.argv[1:] if argv is None else argv))
    quiet_console()  # no Lightning tips or warnings that this command's own configuration causes
    FitCLI, RunFolderConfig = _cli_classes()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
        try:
            cli = FitCLI(StyleGAN2, IdentityDataModule, run=False, args=argv,
                         save_config_callback=RunFolderConfig, save_config_kwargs={"overwrite": True},
                         seed_everything_default=0,
                         parser_kwargs={"prog": "gmia-defend fit", "description": DESCRIPTION})
        except SystemExit as exit_:  # --help, or a parse error jsonargparse already printed
            return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    ckpt = _resolve_ckpt(cli.config.get("ckpt_path"), cli.trainer.default_root_dir)
    if ckpt:
        _keep_previous_metrics(Path(cli.trainer.default_root_dir))
    with warnings.catch_warnings():
        # (quiet_console already silences the run folder's CSV note and the manual-optimisation advice)
        # IdentityDataModule saves its position in the data order and resumes from it mid-epoch
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
    return 0


def _keep_previous_metrics(root: Path) -> None:
    """A resumed run's CSVLogger would delete metrics.csv; keep it as metrics.<k>.csv instead."""
    metrics = root / "metrics.csv"
    if metrics.is_file():
        k = 1
        while (root / f"metrics.{k}.csv").exists():
            k += 1
        metrics.rename(root / f"metrics.{k}.csv")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
