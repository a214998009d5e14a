"""PublicPretraining: pretrain without privacy on public people, then fine-tune (privately) on the members.

DP generators reach a usable quality mainly by starting from a model pretrained on public data
(DPImageBench; Bie et al. 2023, "Private GANs, revisited"). This callback makes that one fit: at
setup it trains a copy of the model, without privacy, on the datamodule's public identities
(``IdentityDataModule(public_identities=N)`` or ``public_folder=PATH``: disjoint from members,
non-members and population by construction, recorded in split.json), saves G, D and G_ema to
``checkpoint`` and loads them into the model before its first step. A checkpoint already there is
reused, so every run of a sweep shares one pretraining (a file lock makes the first run write it
and the others wait). Public data is outside the guarantee: the fine-tuning's accountant starts at
zero. The same two phases by hand: fit with ``--data.train_on=public``, then
``--model.init_from=<its checkpoint>``.

>>> PublicPretraining("runs/pretrained.ckpt", batches=500).batches
500
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from gmia_defend.errors import UserError
from gmia_defend.io import save_torch_atomic

_NETWORKS = ("G", "D", "G_ema")


class PublicPretraining(pl.Callback):
    """Start the model from weights pretrained on the datamodule's public people (trained once, cached).

    Args:
        checkpoint: where the pretrained weights live (created if missing, reused if present; None:
            ``pretrained_public.ckpt`` beside the run folder, i.e. shared by the runs of one sweep).
        batches: pretraining batches (None: as many batches as the fine-tuning's ``trainer.max_steps``).
    """

    def __init__(self, checkpoint: str | os.PathLike | None = None, batches: int | None = None) -> None:
        if batches is not None and int(batches) < 1:
            raise UserError(f"PublicPretraining batches must be >= 1, got {batches}")
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.batches = None if batches is None else int(batches)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        from gmia_defend.models.stylegan2.pretrained import load_pretrained

        path = (Path(self.checkpoint).expanduser() if self.checkpoint is not None
                else Path(trainer.default_root_dir).resolve().parent / "pretrained_public.ckpt")
        public = self._public_datamodule(trainer)
        people = _people_key(public)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            with _locked(path.with_name(path.name + ".lock")):
                if not path.is_file():  # another run may have written it while we waited
                    self._pretrain(trainer, pl_module, path, public, people)
        import torch

        saved = torch.load(path, map_location="cpu", weights_only=True).get("public_people")
        if saved is not None and people is not None and saved != people:
            raise UserError(f"{path} was pretrained on other public people than this run's (e.g. another split_seed "
                            "drew other canaries and controls, which must stay out of pretraining); give each "
                            "such run its own PublicPretraining(checkpoint=...)")
        load_pretrained(pl_module, str(path))

    @staticmethod
    def _public_datamodule(trainer: pl.Trainer) -> Any:
        """The run's datamodule, rebuilt to train on its public people only."""
        dm = getattr(trainer, "datamodule", None)
        hparams = dict(getattr(dm, "hparams", {}) or {})
        if dm is None or not (hparams.get("public_identities") or hparams.get("public_folder")):
            raise UserError("PublicPretraining needs public people: set data.public_identities=N (synthetic "
                            "identities outside the split) or data.public_folder=PATH")
        return type(dm)(**{**_own_args(type(dm), hparams), "train_on": "public"})

    def _pretrain(self, trainer: pl.Trainer, pl_module: pl.LightningModule, path: Path, public: Any,
                  people: str | None) -> None:
        from gmia_defend.rng import preserved_rng

        batches = self.batches or _batches_of(trainer, pl_module)
        # plain non-private training: one D step per G step, whatever the private fine-tuning takes
        hparams = {**_own_args(type(pl_module), dict(pl_module.hparams)), "init_from": None}
        if "d_steps_per_g_step" in hparams:
            hparams["d_steps_per_g_step"] = 1
        model = type(pl_module)(**hparams)
        accelerator = "gpu" if trainer.strategy.root_device.type == "cuda" else "cpu"
        import tempfile

        # the inner fit's sample grids and split.json go to a throwaway folder, not beside the runs
        with tempfile.TemporaryDirectory(prefix="gmia-pretrain-") as root, preserved_rng():
            inner = pl.Trainer(accelerator=accelerator, devices=1, max_steps=2 * batches, max_epochs=-1,
                               logger=False, enable_checkpointing=False, enable_progress_bar=False,
                               enable_model_summary=False, num_sanity_val_steps=0, callbacks=[],
                               default_root_dir=root)
            inner.fit(model, datamodule=public)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k.split(".", 1)[0] in _NETWORKS}
        save_torch_atomic(path, {"state_dict": state, "pretrained_batches": batches, "public_people": people})


def _people_key(public: Any) -> str | None:
    """A short hash of who pretraining trains on (public people but the reserved canaries and controls)."""
    split = getattr(public, "split", None)
    if split is None:
        return None
    import hashlib

    from gmia_defend.rng import preserved_rng

    with preserved_rng():
        reserved = set(split.public_canaries) | set(split.public_controls)
        names = sorted(set(split.public) - reserved)
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def _own_args(cls: type, hparams: dict[str, Any]) -> dict[str, Any]:
    """The saved hyper-parameters that ``cls`` takes (LightningCLI adds bookkeeping keys)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return {k: v for k, v in hparams.items() if not k.startswith("_")}
    return {k: v for k, v in hparams.items() if k in params}


def _batches_of(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
    max_steps = int(getattr(trainer, "max_steps", -1) or -1)
    if max_steps <= 0:
        raise UserError("PublicPretraining(batches=None) takes the fine-tuning's length from trainer.max_steps; "
                        "set one of them")
    from gmia_defend.models.stylegan2.module import batches_for_max_steps

    return batches_for_max_steps(max_steps, int(dict(pl_module.hparams).get("d_steps_per_g_step", 1) or 1))


class _locked:
    """An exclusive file lock (fcntl) held for a ``with`` block; a no-op where fcntl is missing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: Any = None

    def __enter__(self) -> "_locked":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: runs of a local sweep are sequential anyway
            return self
        self.fd = open(self.path, "w")
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            self.fd.close()
