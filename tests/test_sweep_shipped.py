"""Every shipped sweep can start: each of its runs' configs is valid, and one run per sweep trains.

Sweeps are the YAML files in ``gmia_defend/configs/sweeps/`` that have ``method``/``parameters``
(``audited.yaml`` is a fit config the sweeps include, not a sweep); a sweep file added later is
picked up automatically. Every run (grid point) of every sweep goes through the same check
``gmia-defend sweep`` does before it starts anything (the fit parser plus instantiating model,
datamodule and callbacks: ~0.3 s a run). One run per sweep (its first grid point) then goes through
a real, shortened fit in this process (3 batches, one audit at the start with 64 samples), because a
real fit of every grid point would take minutes (the first point because it is the cheapest in the
shipped sweeps: e.g. the last point of dp_identity spends ~1 min calibrating its noise).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from gmia_defend.config_files import resolve_config
from gmia_defend.sweep.config import SweepConfig, is_sweep
from gmia_defend.sweep.validate import check_runs, fit_arguments

SWEEP_DIR = Path(resolve_config("demo")).parent / "sweeps"
SHIPPED = sorted(p for p in SWEEP_DIR.glob("*.yaml") if is_sweep(yaml.safe_load(p.read_text())))

# Shortening: a few batches, one small audit. Data sizes only where the sweep does not set them.
SHORT = ["--trainer.max_steps=6", "--trainer.enable_progress_bar=false", "--trainer.logger=false"]
SMALL_DATA = {"data.num_nonmembers": 16, "data.num_population_identities": 8, "data.member_images": 12}
# Sizes a sweep's command may set for a big machine (e.g. 2,000 members): shrunk only where the command sets them.
SMALL_IF_SET = {"data.num_members": 24, "data.public_identities": 24, "data.public_images_per_identity": 4,
                "data.batch_size": 16}


def test_shipped_sweeps_are_found():
    names = {p.stem for p in SHIPPED}
    assert {"diversity", "duration", "dp"} <= names
    assert "audited" not in names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_run_of_a_shipped_sweep_has_a_valid_config(path):
    config = SweepConfig.load(path)
    runs = config.runs()
    assert runs, path
    checks = check_runs(runs)  # raises UserError naming every bad run
    assert all(c.ok and c.checked for c in checks)


def short_audited(tmp_path: Path) -> Path:
    """The shipped ``sweeps/audited`` config with a 64-sample audit at the start and none after."""
    raw = yaml.safe_load(resolve_config("sweeps/audited").read_text())
    for callback in raw["trainer"]["callbacks"]:
        if callback["class_path"].endswith("IdentityLeakageMonitor"):
            callback["init_args"].update(num_samples=64, batch_size=64, every_n_kimg=1000.0,
                                         audit_at_start=True)
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"].update(every_n_train_steps=None, save_last=False)
    out = tmp_path / "audited_short.yaml"
    out.write_text(yaml.safe_dump(raw))
    return out


def shortened_fit_args(command: list[str], params: dict, audited: Path, run_dir: Path) -> list[str]:
    args = fit_arguments(command)
    assert args is not None, f"not a gmia-defend fit command: {command}"
    args = [str(audited) if a in ("sweeps/audited", "sweeps/audited.yaml", "configs/sweeps/audited.yaml") else a
            for a in args]
    set_by_sweep = set(params) | ({"data.member_images"} if "data.member_image_budget" in params else set())
    small = [f"--{k}={v}" for k, v in SMALL_DATA.items() if k not in set_by_sweep]
    small += [f"--{k}={v}" for k, v in SMALL_IF_SET.items()
              if k not in set_by_sweep and any(a.startswith(f"--{k}=") for a in args)]
    return args + small + SHORT + [f"--trainer.default_root_dir={run_dir}"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_one_run_of_each_shipped_sweep_trains_and_audits(path, tmp_path):
    import torch

    from gmia_defend.commands.fit import main as fit_main
    from gmia_defend.rng import preserved_rng

    run = SweepConfig.load(path).runs()[0]
    run_dir = tmp_path / "run"
    args = shortened_fit_args(run.command, run.params, short_audited(tmp_path), run_dir)
    threads = torch.get_num_threads()
    try:
        with preserved_rng():
            assert fit_main(args) == 0
    finally:
        torch.set_num_threads(threads)
    audits = [json.loads(line) for line in (run_dir / "audits.jsonl").read_text().splitlines()]
    good = [a for a in audits if not a.get("error")]
    assert good, audits[0].get("error")
    assert math.isfinite(good[0]["metrics"]["leakage/auc"])
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    for key, value in run.params.items():  # the sweep's value reached the fit (unless shortened here)
        if any(a.startswith(f"--{key}=") for a in SHORT):
            continue
        node = resolved
        for part in key.split("."):
            node = node[-1] if isinstance(node, list) else node
            node = node.get(part)  # a null value may be left out of the dump
        assert node == value, key


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_runs_parse_as_the_wandb_agent_writes_them(path, monkeypatch):
    """``wandb agent`` writes ``--key=value`` with Python's ``str`` (``None``, ``True``, ``{'a': 1}``): the same
    file must work there, so runs whose values it writes differently are checked in that form too."""
    import gmia_defend.sweep.config as sweep_config

    local = sweep_config.format_value
    differing = [p for p in SweepConfig.load(path).runs()
                 if any(str(v) != local(v) for v in p.params.values())]
    monkeypatch.setattr(sweep_config, "format_value", str)
    runs = [r for r in SweepConfig.load(path).runs() if any(str(v) != local(v) for v in r.params.values())]
    assert len(runs) == len(differing)
    assert all(c.ok for c in check_runs(runs))
