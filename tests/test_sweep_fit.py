"""A real sweep: the shipped DP sweep's command line, shortened, through `gmia-defend fit` twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gmia_defend.cli import main

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_dp_sweep_runs_real_fits_and_collects_epsilon(tmp_path, capsys):
    import yaml

    shipped = yaml.safe_load((ROOT / "configs" / "sweeps" / "dp.yaml").read_text())
    command = [str(ROOT / c) if c.startswith("configs/") else c for c in shipped["command"]]
    args_at = command.index("${args}")
    command[args_at:args_at] = ["--trainer.max_steps=40", "--data.member_images=20", "--data.num_nonmembers=16",
                                "--data.num_population_identities=4"]
    values = shipped["parameters"]["trainer.callbacks.init_args.make_private"]["values"]
    tiny = {"name": "tiny_dp", "method": "grid", "command": command,
            "parameters": {"trainer.callbacks.init_args.make_private": {"values": [values[1], values[3]]}}}
    config = tmp_path / "tiny_dp.yaml"
    config.write_text(yaml.safe_dump(tiny))
    assert main(["sweep", str(config), "--out", str(tmp_path / "sweep")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["runs"] == 2 and summary["failed"] == []
    rows = [json.loads(line) for line in (tmp_path / "sweep" / "sweep_audits.jsonl").read_text().splitlines()]
    assert {r["param/trainer.callbacks.init_args.make_private"]["unit"] for r in rows} == {"image", "identity"}
    assert all(r["privacy/epsilon"] > 0 for r in rows if r["kimg"] > 0)
    assert (tmp_path / "sweep" / "sweep_leakage_vs_epsilon.png").is_file()
