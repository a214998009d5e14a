"""The command line lists every subcommand (watch included) without importing torch, and refuses unknown ones."""

from __future__ import annotations

import subprocess
import sys

from gmia_defend.cli import SUBCOMMANDS, main


def test_help_lists_watch_and_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out
    assert "follow a training run" in out


def test_unknown_command_is_one_line(capsys):
    assert main(["wach"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'wach'" in err and "watch" in err and len(err.strip().splitlines()) == 1


def test_building_the_parser_does_not_import_torch():
    code = "import sys; from gmia_defend.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
