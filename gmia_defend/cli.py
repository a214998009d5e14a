"""The ``gmia-defend`` command line: fit | demo | attack | watch | train-embedder | sweep | report | configs.

Each subcommand lives in ``gmia_defend.commands.<name>`` and defines ``add_arguments(parser)`` and
``run(args) -> int``. ``fit`` is a LightningCLI and parses its own arguments (``main(argv)``).
Errors a user can cause (``UserError``) print one line naming the fix and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from gmia_defend.errors import UserError

SUBCOMMANDS = {
    "fit": ("fit", "train a StyleGAN2 generator (LightningCLI; see `gmia-defend fit --help`)"),
    "demo": ("demo", "the main job on the embedded default: train, audit, report, release"),
    "attack": ("attack", "run the identity membership attack on a generator"),
    "train-embedder": ("train_embedder", "train a small identity embedder on disjoint identities"),
    "sweep": ("sweep", "run a grid of fits and collect their audits"),
    "watch": ("watch", "follow a training run (any loop, NVIDIA snapshots too) and audit each new snapshot"),
    "report": ("report", "plots and the release decision from a run's audits.jsonl"),
    "configs": ("configs", "list the configs that ship with the package, or print one"),
}


def _command_module(name: str):
    return importlib.import_module(f"gmia_defend.commands.{SUBCOMMANDS[name][0]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gmia-defend", description="Audit GAN generators for identity leakage, and mitigate it."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name != "fit":
            _command_module(name).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "fit":
            return int(_command_module("fit").main(argv[1:]) or 0)
        if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
            if argv and argv[0] not in ("-h", "--help"):
                print(f"gmia-defend: unknown command {argv[0]!r}; choose one of: {', '.join(SUBCOMMANDS)}",
                      file=sys.stderr)
                return 2
            print(build_parser().format_help())
            return 0
        parser = argparse.ArgumentParser(prog="gmia-defend")
        sub = parser.add_subparsers(dest="command")
        p = sub.add_parser(argv[0], description=SUBCOMMANDS[argv[0]][1])
        module = _command_module(argv[0])
        module.add_arguments(p)
        args = parser.parse_args(argv)
        return int(module.run(args) or 0)
    except UserError as err:
        print(f"gmia-defend: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
