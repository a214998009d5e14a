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
        print("Traceback (most recent call last):")
        print("RuntimeError: fake failure for num_members=" + args["data.num_members"])
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


# ----------------------------------------------------------------------------- bad input, with lines

@pytest.mark.parametrize("text, line, fragment", [
    ("name: x\nmethod: bayes\nparameters:\n  a:\n    values: [1]\n", 2, "bayes"),
    ("name: x\nmethod: grid\nparameters: {}\n", 3, "empty"),
    ("name: x\nmethod: grid\nparameters:\n  a:\n    values: [1]\n  b:\n    values: []\n", 6, "non-empty"),
    ("method: random\nparameters:\n  a:\n    values: [1]\n", 1, "run_cap"),
    ("method: grid\nparameters:\n  a:\n    values: [1]\nprogramm: x.py\n", 5, "unknown key 'programm'"),
    ("trainer:\n  max_steps: 3\n", 1, "not a sweep"),
    ("method: grid\nparameters:\n  a: [1, 2]\n", 3, "needs 'value', 'values'"),
    ("method: grid\nparameters:\n  a:\n    values: [1\n", 5, "not valid YAML"),
])
def test_bad_sweep_file_names_the_problem_and_its_line(tmp_path, text, line, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        SweepConfig.load(path)
    message = str(err.value)
    assert f"{path}:{line}:" in message and fragment in message and "\n" not in message


# ----------------------------------------------------------------------------- config check before running

def test_config_clash_is_reported_for_every_run_before_any_starts():
    from gmia_defend.sweep.validate import check_runs

    # The shipped diversity sweep before its fix: the demo sets member_images, the sweep a budget.
    config = SweepConfig.from_dict({
        "method": "grid", "command": ["${env}", "${interpreter}", "-m", "gmia_defend.cli", "fit",
                                      "--config", "demo", "${args}"],
        "parameters": {"data.member_image_budget": {"value": 9600}, "data.num_members": {"values": [32, 96]}}})
    with pytest.raises(UserError) as err:
        check_runs(config.runs())
    message = str(err.value)
    assert "2 of 2" in message and "nothing was run" in message
    assert "data.member_images=300 (from the config)" in message
    assert "data.member_image_budget=9600 (from the sweep)" in message
    assert all(run.name in message for run in config.runs())


def test_unknown_option_is_reported():
    from gmia_defend.sweep.validate import check_run

    config = SweepConfig.from_dict({"method": "grid", "command": ["gmia-defend", "fit", "--config", "demo", "${args}"],
                                    "parameters": {"data.num_memberz": {"value": 3}}})
    check = check_run(config.runs()[0])
    assert not check.ok and "data.num_memberz" in check.error


def test_other_programs_are_not_checked(tmp_path):
    from gmia_defend.sweep.validate import check_runs

    checks = check_runs(make_config(tmp_path).runs())
    assert all(c.ok and not c.checked for c in checks)


# ----------------------------------------------------------------------------- runner behaviour

def write_sweep_file(tmp_path: Path, parameters: dict, name: str = "fake.yaml") -> Path:
    import yaml

    script = tmp_path / "fake_fit.py"
    script.write_text(FAKE_FIT)
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"name": "fake", "method": "grid", "program": str(script),
                                    "command": ["${env}", "${interpreter}", "${program}", "${args}"],
                                    "parameters": parameters}, sort_keys=False))
    return path


def test_dry_run_prints_commands_a_shell_reads_back(tmp_path, capsys):
    import shlex

    from gmia_defend.cli import main

    value = {"unit": "image", "noise_multiplier": 1.0}
    path = write_sweep_file(tmp_path, {"make_private": {"values": [value]}, "data.num_members": {"value": 2}})
    assert main(["sweep", str(path), "--dry-run", "--out", str(tmp_path / "s")]) == 0
    line = capsys.readouterr().out.strip()
    argv = shlex.split(line)
    assert f"--make_private={json.dumps(value)}" in argv and argv[0] == sys.executable
    assert not (tmp_path / "s").exists()  # nothing ran


def test_sweep_command_reports_progress_summary_and_failures(tmp_path, capsys):
    from gmia_defend.cli import main

    path = write_sweep_file(tmp_path, {"data.num_members": {"values": [2, 8]}, "fail": {"values": [False, True]}})
    out = tmp_path / "s"
    assert main(["sweep", str(path), "--out", str(out)]) == 1  # a run failed
    text = capsys.readouterr().out
    progress = [ln for ln in text.splitlines() if ln.startswith("[sweep ") and " in " in ln]
    assert len(progress) == 4 and all("elapsed" in ln and "left" in ln for ln in progress)
    assert "FAILED (exit 3)" in text and "leakage AUC [95% CI]" in text
    assert "fake failure for num_members=8" in text  # the failed run's last lines, in the summary
    table = (out / "sweep_table.md").read_text()
    assert table.startswith("| run |") and "FAILED" in table and "[0.5" in table


def test_folder_of_another_sweep_is_refused_unless_overwrite(tmp_path, capsys):
    from gmia_defend.cli import main

    first = write_sweep_file(tmp_path, {"data.num_members": {"values": [2]}}, "a.yaml")
    out = tmp_path / "s"
    assert main(["sweep", str(first), "--out", str(out)]) == 0
    second = write_sweep_file(tmp_path, {"data.num_members": {"values": [4]}}, "b.yaml")
    assert main(["sweep", str(second), "--out", str(out)]) == 2
    assert "different sweep" in capsys.readouterr().err
    assert main(["sweep", str(second), "--out", str(out), "--overwrite"]) == 0
    assert len(read_names(out)) == 1 and "num_members=4" in read_names(out)[0]


def read_names(out: Path) -> list[str]:
    return [json.loads(line)["name"] for line in (out / "runs.jsonl").read_text().splitlines()]


def test_jobs_never_oversubscribe_the_cores(tmp_path):
    from gmia_defend.sweep.runner import ThreadPlan, with_threads

    assert ThreadPlan.make(jobs=3, threads=[1, 1, 1], cpus=2).jobs == 2
    assert ThreadPlan.make(jobs=2, threads=[2], cpus=4).jobs == 2
    plan = ThreadPlan.make(jobs=4, threads=[3, 1], cpus=8)
    assert plan.jobs == 2 and "running 2 at a time" in plan.note
    plan = ThreadPlan.make(jobs=2, threads=[None, None], cpus=8)
    assert plan.jobs * plan.add_threads <= 8
    fit = ["gmia-defend", "fit", "--config", "demo"]
    assert with_threads(fit, 4)[-1] == "--torch_threads=4"
    assert with_threads(fit + ["--torch_threads=1"], 4) == fit + ["--torch_threads=1"]
    assert with_threads(["python", "x.py"], 4) == ["python", "x.py"]


def test_time_left_estimate():
    from gmia_defend.sweep.runner import Progress

    clock = iter([0.0, 100.0, 200.0]).__next__
    progress = Progress(total=5, jobs=2, clock=clock)
    assert progress.finished(100.0) == (1, 100.0, 200.0)  # 4 left, 2 at a time, 100 s each
    assert progress.finished(300.0) == (2, 200.0, 400.0)


def test_parallel_jobs_run_every_run_once(tmp_path):
    config = make_config(tmp_path)
    out = tmp_path / "sweep"
    records = run_sweep(config, out, jobs=2, cpus=2)
    assert sorted(r["returncode"] for r in records) == [0, 0, 0, 0]
    assert [r["name"] for r in records] == [r.name for r in config.runs()]
    assert all((out / r["name"] / "count").read_text().count("counter") == 1 for r in records)


def test_random_search_draws_run_cap_runs_reproducibly():
    raw = {"method": "random", "run_cap": 5, "seed": 3,
           "parameters": {"a": {"distribution": "int_uniform", "min": 1, "max": 4}, "b": {"min": 0.0, "max": 1.0},
                          "c": {"values": ["x", "y"]}, "d": {"value": 7}}}
    runs = SweepConfig.from_dict(raw).runs()
    assert len(runs) == 5 and [r.params for r in runs] == [r.params for r in SweepConfig.from_dict(raw).runs()]
    assert all(1 <= r.params["a"] <= 4 and 0 <= r.params["b"] <= 1 and r.params["c"] in "xy" and r.params["d"] == 7
               for r in runs)
    with pytest.raises(UserError, match="random search here draws"):
        SweepConfig.from_dict({**raw, "parameters": {"a": {"distribution": "log_uniform", "min": 1, "max": 2}}})


def test_null_parameter_gets_a_wandb_note():
    config = SweepConfig.from_dict({"method": "grid", "parameters": {"data.x": {"values": [1, None]},
                                                                     "data.y": {"value": 2}}})
    notes = config.wandb_notes()
    assert len(notes) == 1 and "data.x" in notes[0] and "None" in notes[0]
