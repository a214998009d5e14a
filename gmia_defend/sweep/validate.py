"""Check every run of a sweep before any of them starts: a config clash fails in seconds, not after hours.

A run whose command is ``gmia-defend fit`` (or ``python -m gmia_defend.cli fit``) is parsed with the
fit command's own LightningCLI parser, and its model, datamodule and callbacks are instantiated
from their arguments (cheap: nothing is generated, loaded or trained). Commands of other programs
are not checked. Problems of all runs are reported together, each naming the options involved and
where their values come from (the run's sweep parameters or its config files).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

from gmia_defend.errors import UserError
from gmia_defend.sweep.config import SweepRun


@dataclass
class RunCheck:
    """The outcome of checking one run: its error (None when valid) and the fit's torch threads.

    >>> RunCheck("n=2", error=None, torch_threads=1).ok
    True
    """

    name: str
    error: str | None = None
    torch_threads: int | None = None
    checked: bool = True

    @property
    def ok(self) -> bool:
        return self.error is None


def fit_arguments(command: Sequence[str]) -> list[str] | None:
    """The arguments after ``fit`` when ``command`` runs gmia-defend's fit command, else None.

    >>> fit_arguments(["python", "-m", "gmia_defend.cli", "fit", "--config", "demo"])
    ['--config', 'demo']
    >>> fit_arguments(["python", "train.py", "--lr=1"]) is None
    True
    """
    for i, token in enumerate(command[:-1]):
        if command[i + 1] == "fit" and (token == "gmia_defend.cli" or token.endswith("gmia-defend")):
            return list(command[i + 2:])
    return None


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    items = config.items() if hasattr(config, "items") else []
    for key, value in items:
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def options_in_message(message: str, config: Any, params: dict[str, Any]) -> list[str]:
    """``option=value (from ...)`` for each resolved option whose name the error message mentions."""
    found = []
    for key, value in _flatten(config).items():
        leaf = key.split(".")[-1]
        if leaf in ("init_args", "class_path") or not re.search(rf"(?<![\w.]){re.escape(leaf)}(?![\w])", message):
            continue
        origin = "the sweep" if key in params else "the config"
        found.append(f"{key}={value!r} (from {origin})")
    return found


MAX_ERROR_CHARS = 400
_NOISE = (" Subclass types expect", " Given value", " Subtypes: [")


def short_error(message: str) -> str:
    """One line of an error: whitespace collapsed, jsonargparse's lists of accepted types cut off."""
    message = " ".join(str(message).split())
    for marker in _NOISE:
        message = message.split(marker)[0]
    return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 3] + "..."


@contextlib.contextmanager
def _quiet():
    """No output, warnings or global RNG change from building a fit CLI (it seeds and logs 'Seed set')."""
    from gmia_defend.rng import preserved_rng

    seed_log = logging.getLogger("lightning_fabric.utilities.seed")
    level = seed_log.level
    seed_log.setLevel(logging.WARNING)
    try:
        with preserved_rng(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        seed_log.setLevel(level)


def _fit_cli_class():
    from gmia_defend.commands.fit import _cli_classes

    FitCLI, RunFolderConfig = _cli_classes()

    class CheckCLI(FitCLI):
        """The fit CLI up to instantiating model, data and callbacks: no trainer, no global side effects."""

        def before_instantiate_classes(self) -> None:  # the fit CLI sets torch's threads here
            threads = self.config.get("torch_threads")
            if threads is not None and int(threads) < 1:
                raise UserError(f"--torch_threads must be >= 1, got {threads}")

        def instantiate_classes(self) -> None:
            instantiate = getattr(self.parser, "instantiate", None) or self.parser.instantiate_classes
            self.config_init = instantiate(self.config)

    return CheckCLI, RunFolderConfig


def check_run(run: SweepRun) -> RunCheck:
    """Parse and instantiate one run's fit config; other programs are returned unchecked."""
    args = fit_arguments(run.command)
    if args is None:
        return RunCheck(run.name, checked=False)
    from gmia_defend.config_files import resolve_config_args
    from gmia_defend.data import IdentityDataModule
    from gmia_defend.models import StyleGAN2

    CheckCLI, RunFolderConfig = _fit_cli_class()
    stderr = io.StringIO()
    cli = None
    try:
        with _quiet(), contextlib.redirect_stderr(stderr):
            cli = CheckCLI(StyleGAN2, IdentityDataModule, run=False, args=resolve_config_args(args),
                           save_config_callback=RunFolderConfig, seed_everything_default=0,
                           parser_kwargs={"exit_on_error": False})
    except SystemExit:
        lines = [ln.strip() for ln in stderr.getvalue().splitlines() if ln.strip()]
        return RunCheck(run.name, error=short_error(lines[-1]) if lines else "the fit command refused its arguments")
    except Exception as err:  # noqa: BLE001 - any failure to build the run is what we report
        message = short_error(str(err)) or type(err).__name__
        config = getattr(cli, "config", None)
        if config is None:
            config = _resolved_config(args)
        involved = options_in_message(message, config, run.params) if config else []
        if involved:
            message += f" [{'; '.join(involved)}]"
        return RunCheck(run.name, error=message)
    threads = cli.config.get("torch_threads")
    return RunCheck(run.name, torch_threads=int(threads) if threads is not None else None)


def _resolved_config(args: list[str]) -> Any:
    """The parsed (not instantiated) config of a fit command, or None when it does not parse."""
    from gmia_defend.config_files import resolve_config_args
    from gmia_defend.data import IdentityDataModule
    from gmia_defend.models import StyleGAN2

    CheckCLI, RunFolderConfig = _fit_cli_class()

    class ParseOnly(CheckCLI):
        def instantiate_classes(self) -> None:
            pass

    try:
        with _quiet(), contextlib.redirect_stderr(io.StringIO()):
            cli = ParseOnly(StyleGAN2, IdentityDataModule, run=False, args=resolve_config_args(args),
                            save_config_callback=RunFolderConfig, seed_everything_default=0,
                            parser_kwargs={"exit_on_error": False})
    except (SystemExit, Exception):  # noqa: BLE001
        return None
    return cli.config


def check_runs(runs: Sequence[SweepRun]) -> list[RunCheck]:
    """Check every run; raise one ``UserError`` listing every bad run (grouped by problem) if any."""
    checks = [check_run(run) for run in runs]
    bad = [c for c in checks if not c.ok]
    if bad:
        by_error: dict[str, list[str]] = {}
        for check in bad:
            by_error.setdefault(check.error or "", []).append(check.name)
        lines = [f"{len(bad)} of {len(checks)} sweep runs have an invalid config; nothing was run. Fix the "
                 "sweep's parameters or command:"]
        lines += [f"  {error} -- runs: {', '.join(names)}" for error, names in by_error.items()]
        raise UserError("\n".join(lines))
    return checks
