"""``gmia-defend configs``: list the configs that ship with the package (or print one)."""

from __future__ import annotations

import argparse

from gmia_defend.config_files import resolve_config, shipped_configs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", default=None,
                        help="print this shipped config (e.g. demo, sweeps/diversity) instead of listing them")


def run(args: argparse.Namespace) -> int:
    if args.name:
        print(resolve_config(args.name).read_text(), end="")
        return 0
    for name in shipped_configs():
        print(f"{name:24s} {resolve_config(name)}")
    print("use one with: gmia-defend fit --config NAME  (or gmia-defend sweep NAME for sweeps/*)")
    return 0
