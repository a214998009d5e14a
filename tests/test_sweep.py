"""Sweeps: config expansion (wandb format), local runs with resume, collection and figures."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from gmia_defend.errors import UserError
from gmia_defend.sweep.collect import collect_sweep
from gmia_defend.sweep.config import SweepConfig, format_value
from gmia_defend.sweep.plots import pareto_front, plot_sweep
from gmia_defend.sweep.runner import run_sweep

# A stand-in for `gmia-defend fit`: writes two audits whose leakage depends on the parameters.
FAKE_FIT = textwrap.dedent("""
    import json, sys, pathlib
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    if args.get("fail") == "true":
        sys.exit(3)
    run = pathlib.Path(args["trainer.default_root_dir"]) / "version_0"
    run.mkdir(parents=True, exist_ok=True)
    n = int(args["data.num_members"]); noise = float(args.get("dp.noise", 0))
    with open(run / "audits.jsonl", "w") as fh:
        for kimg in (1.0, 2.0):
            auc = 0.5 + 0.4 / n * kimg / (1 + noise)
            metrics = {"leakage/auc": auc, "leakage/auc_ci_low": auc - 0.05, "leakage/auc_ci_high": auc + 0.05,
                       "quality/fd_trained": 10.0 / kimg + n / 10, "privacy/epsilon": 8.0 / (1 + noise)}
            fh.write(json.dumps({"kimg": kimg, "metrics": metrics}) + "\\n")
    print("counter", file=open(pathlib.Path(args["trainer.default_root_dir"]) / "count", "a"))
""")


def make_config(tmp_path: Path, extra: dict | None = None) -> SweepConfig:
    script = tmp_path / "fake_fit.py"
    script.write_text(FAKE_FIT)
    raw = {"method": "grid", "program": str(script),
           "command": ["${env}", "${interpreter}", "${program}", "${args}"],
           "parameters": {"data.num_members": {"values": [2, 8]}, "dp.noise": {"values": [0.0, 1.0]}}}
    raw.update(extra or {})
    return SweepConfig.from_dict(raw, name="fake")


def test_grid_expands_every_combination_with_wandb_macros(tmp_path):
    config = make_config(tmp_path)
    runs = config.runs()
    assert [r.params for r in runs] == [
        {"data.num_members": 2, "dp.noise": 0.0}, {"data.num_members": 2, "dp.noise": 1.0},
        {"data.num_members": 8, "dp.noise": 0.0}, {"data.num_members": 8, "dp.noise": 1.0}]
    assert runs[0].command[0] == sys.executable
    assert runs[0].command[-2:] == ["--data.num_members=2", "--dp.noise=0.0"]
    assert len({r.name for r in runs}) == 4


def test_format_value_matches_cli_syntax():
    assert format_value(True) == "true" and format_value(None) == "null" and format_value([1, 2]) == "[1, 2]"


def test_run_resume_collect_and_plot(tmp_path):
    config = make_config(tmp_path)
    out = tmp_path / "sweep"
    records = run_sweep(config, out)
    assert [r["returncode"] for r in records] == [0, 0, 0, 0]
    # Resuming runs nothing again.
    run_sweep(config, out)
    counts = [len((out / r["name"] / "count").read_text().splitlines()) for r in records]
    assert counts == [1, 1, 1, 1]
    rows = collect_sweep(out)
    assert len(rows) == 8
    assert {r["param/data.num_members"] for r in rows} == {2, 8}
    summary = json.loads((out / "sweep_summary.json").read_text())
    assert all(s["num_audits"] == 2 for s in summary)
    # Fewer identities at the same budget leak more in the fake; the table must preserve that.
    last = {(s["params"]["data.num_members"], s["params"]["dp.noise"]): s["last_audit"]["leakage/auc"] for s in summary}
    assert last[(2, 0.0)] > last[(8, 0.0)] and last[(2, 0.0)] > last[(2, 1.0)]
    paths = plot_sweep(rows, out)
    names = {p.name for p in paths}
    assert names == {"sweep_leakage_vs_kimg.png", "sweep_leakage_vs_identities.png", "sweep_pareto.png",
                     "sweep_leakage_vs_epsilon.png"}
    assert all(p.stat().st_size > 1000 for p in paths)


def test_failed_run_is_recorded_and_retried(tmp_path):
    config = make_config(tmp_path, {"parameters": {"data.num_members": {"values": [2]},
                                                   "fail": {"values": [True]}}})
    out = tmp_path / "sweep"
    first = run_sweep(config, out)
    assert first[0]["returncode"] == 3
    second = run_sweep(config, out)
    assert len(second) == 1 and second[0]["returncode"] == 3  # not treated as completed


def test_pareto_front_keeps_only_undominated_points():
    pts = [(0.9, 10.0), (0.6, 20.0), (0.7, 25.0), (0.5, 40.0), (0.95, 9.0)]
    assert pareto_front(pts) == [3, 1, 0, 4]


@pytest.mark.parametrize("raw, fragment", [
    ({"method": "bayes", "parameters": {"a": {"values": [1]}}}, "bayes"),
    ({"method": "grid"}, "parameters"),
    ({"method": "grid", "parameters": {"a": {"min": 0, "max": 1}}}, "grid search needs"),
    ({"method": "grid", "parameters": {"a": {"values": []}}}, "non-empty"),
    ({"method": "random", "parameters": {"a": {"values": [1]}}}, "run_cap"),
    ("nonsense", "mapping"),
])
def test_bad_sweep_configs_name_the_fix(raw, fragment):
    with pytest.raises(UserError, match=fragment):
        SweepConfig.from_dict(raw)


def test_missing_sweep_file_and_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        SweepConfig.load(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="not a sweep folder"):
        collect_sweep(tmp_path)


def test_report_sweep_command_draws_the_tradeoff_figures(tmp_path, capsys):
    from gmia_defend.cli import main

    config = make_config(tmp_path)
    out = tmp_path / "sweep"
    run_sweep(config, out)
    assert main(["report", "--sweep", str(out), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "sweep_pareto.png").is_file()
    assert "4 runs, 8 audits" in capsys.readouterr().out
    assert main(["report"]) == 2  # neither a run nor a sweep: one clear error
    assert "--sweep" in capsys.readouterr().err
