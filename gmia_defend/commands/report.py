"""``gmia-defend report RUN_DIR``: figures and the release decision from a run's ``audits.jsonl`` alone.

Writes ``leakage_vs_kimg.png`` (with the bootstrap band), ``quality_vs_kimg.png``,
``leakage_vs_quality.png`` (release marked) and ``identities.png`` (per-identity score vs
training-image count) to ``RUN_DIR/report`` (or ``--out``), plus ``release_decision.json``, and
prints the release decision. Budget and metric default to the run's ``release.json`` when present.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from gmia_defend.errors import UserError
from gmia_defend.io import write_json_atomic

DEFAULT_BUDGET, DEFAULT_METRIC = 0.6, "leakage/auc"  # = gmia_defend.audit.record's (no torch import for --help)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="?", default=None,
                        help="the run folder (holding audits.jsonl, possibly in a subfolder)")
    parser.add_argument("--sweep", default=None, metavar="DIR",
                        help="report a whole sweep folder instead (leakage vs identities, vs kimg per setting, "
                             "the leakage-quality Pareto front, leakage vs epsilon)")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"largest acceptable leakage (default: the run's release.json, else {DEFAULT_BUDGET})")
    parser.add_argument("--metric", default=None,
                        help=f"leakage metric compared with the budget (default: release.json's, else {DEFAULT_METRIC}; "
                             "leakage/auc_ci_high is the conservative choice)")
    parser.add_argument("--quality-metric", default=None, help="quality key to minimise (default: found in the audits)")
    parser.add_argument("--min-kimg", type=float, default=None, help="never release audits before this kimg")
    parser.add_argument("--min-quality-gain", type=float, default=None,
                        help="a release must have a quality this much (relative) better than the untrained "
                             "generator's, when it was audited (default: the run's, else 0.05)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="also exclude audits whose leakage is significant (leakage/p_value < alpha)")
    parser.add_argument("--out", default=None, help="folder for the figures (default: RUN_DIR/report)")


def find_audits(run_dir: Path) -> Path:
    """``run_dir/audits.jsonl``, else the newest one below it (loggers may nest run folders)."""
    if run_dir.is_file() and run_dir.name.endswith(".jsonl"):
        return run_dir
    if not run_dir.is_dir():
        raise UserError(f"run folder not found: {run_dir}; pass the folder a training run wrote "
                        "(its trainer.default_root_dir or the monitor's run_dir)")
    direct = run_dir / "audits.jsonl"
    if direct.is_file():
        return direct
    hits = sorted(run_dir.rglob("audits.jsonl"), key=lambda p: p.stat().st_mtime)
    if not hits:
        raise UserError(f"no audits.jsonl under {run_dir}; train with IdentityLeakageMonitor attached "
                        "(or run `gmia-defend demo`) to create one")
    return hits[-1]


def _fmt(x: object) -> str:
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "-"
    return "nan" if not math.isfinite(v) else f"{v:.4g}"


def run_sweep_report(sweep_dir: str, out: str | None = None) -> int:
    """Collect a sweep's audits into one table and draw its trade-off figures."""
    from gmia_defend.sweep.collect import collect_sweep
    from gmia_defend.sweep.plots import plot_sweep

    rows = collect_sweep(sweep_dir)
    if not rows:
        raise UserError(f"no successful audit in any run of {sweep_dir}; check the runs' stdout.log files")
    paths = plot_sweep(rows, out or sweep_dir)
    print(f"sweep: {sweep_dir} ({len({r['run'] for r in rows})} runs, {len(rows)} audits)")
    try:
        from gmia_defend.sweep.collect import read_summary
        from gmia_defend.sweep.summary import format_table

        print(format_table(read_summary(sweep_dir)))
        table = Path(sweep_dir) / "sweep_table.md"
        if table.is_file():
            print(f"  table: {table}")
    except ImportError:  # an older sweep package without the summary table
        pass
    for path in paths:
        print(f"  figure: {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    from gmia_defend.audit.log import read_audits
    from gmia_defend.audit.policies import ReleaseRule, select_release
    from gmia_defend.audit.record import AUC, AUC_CI_HIGH, AUC_CI_LOW, successful_audits
    from gmia_defend.report.plots import write_report_plots

    if args.sweep:
        return run_sweep_report(args.sweep, args.out)
    if not args.run_dir:
        raise UserError("give a run folder (gmia-defend report RUN_DIR) or a sweep (gmia-defend report --sweep DIR)")

    path = find_audits(Path(args.run_dir))
    folder = path.parent
    records = read_audits(path)  # a torn last line is reported as a warning naming it
    if not records:
        raise UserError(f"{path} holds no audit records yet; wait for the first audit or check the run's log")
    previous: dict = {}
    if (folder / "release.json").is_file():
        try:
            previous = json.loads((folder / "release.json").read_text())
        except (OSError, json.JSONDecodeError):
            previous = {}
    options = dict(previous.get("options") or {})
    rule = ReleaseRule(
        budget=args.budget if args.budget is not None else float(previous.get("budget", DEFAULT_BUDGET)),
        metric=args.metric or previous.get("metric") or DEFAULT_METRIC,
        quality_metric=args.quality_metric or previous.get("quality_metric"),
        min_kimg=args.min_kimg if args.min_kimg is not None else float(previous.get("min_kimg", 0.0) or 0.0),
        min_quality_gain=args.min_quality_gain if args.min_quality_gain is not None
        else options.get("min_quality_gain", 0.05),
        alpha=args.alpha if args.alpha is not None else options.get("alpha"),
        halves=bool(options.get("halves", True)), use_leakage=bool(options.get("use_leakage", True)))
    decision = select_release(records, rule)
    metric, budget = rule.metric, rule.budget
    out = Path(args.out) if args.out else folder / "report"
    paths = write_report_plots(records, out, metric, budget, decision, decision["quality_metric"])
    write_json_atomic(out / "release_decision.json", decision)

    audits = successful_audits(records)
    failed = [r for r in records if r.error]
    span = f"{audits[0].kimg:g}-{audits[-1].kimg:g} kimg" if audits else "no successful audit"
    print(f"run: {folder} ({len(audits)} audits, {len(failed)} failed; {span})")
    qkey = decision["quality_metric"]
    auc_col = metric != AUC
    rule_col = metric + (" (sel.)" if decision["selected_on"].startswith("selection") else "")
    print(f"{'kimg':>10}  " + (f"{AUC:>12}  " if auc_col else "") +
          f"{rule_col:>20}  {'AUC 95% CI':>16}  {'p-value':>8}  {(qkey or 'quality'):>18}  decision")
    for c in decision["candidates"]:
        m = c.get("metrics") or {}
        ci = f"[{_fmt(m.get(AUC_CI_LOW))}, {_fmt(m.get(AUC_CI_HIGH))}]"
        print(f"{c['kimg']:>10g}  " + (f"{_fmt(m.get(AUC)):>12}  " if auc_col else "") +
              f"{_fmt(c['leakage']):>20}  {ci:>16}  {_fmt(m.get('leakage/p_value')):>8}  {_fmt(c['quality']):>18}  "
              f"{c['reason']}")
    for name, p in paths.items():
        print(f"figure ({name}): {p}")
    print(f"rule: {decision['rule']}")
    chosen = decision.get("chosen")
    ckpt = f" -> {folder / chosen['checkpoint']}" if chosen and chosen.get("checkpoint") else ""
    print(f"{decision['message']}{ckpt}")
    if decision.get("reported"):
        rep, sel = decision["reported"], decision.get("selection_figures") or {}
        print(f"reported for the release ({decision['selected_on']} chose it): AUC {_fmt(rep.get(AUC))} "
              f"[{_fmt(rep.get(AUC_CI_LOW))}, {_fmt(rep.get(AUC_CI_HIGH))}]"
              + (f" on the confirmation half; selection half {_fmt(sel.get(AUC))}" if sel else ""))
    privacy = previous.get("privacy") or {}
    if previous.get("epsilon") is not None or privacy:
        meaning = privacy.get("epsilon_meaning") or f"epsilon {_fmt(previous.get('epsilon'))}"
        bound = previous.get("epsilon_lower_bound")
        print(f"privacy (from the run's release.json): {meaning}"
              + (f"; the attack proves at least epsilon {_fmt(bound)}" if bound is not None else "")
              + ("" if privacy.get("epsilon_valid", True) else f"; NOT a valid bound: {privacy.get('epsilon_note')}"))
        if "epsilon_covers_selection" in previous:
            print(f"epsilon covers the choice of checkpoint: {str(previous['epsilon_covers_selection']).lower()} "
                  f"({previous.get('epsilon_covers_selection_reason')})")
    if previous and previous.get("released") is not None:
        same = (previous.get("chosen") or {}).get("kimg") == (chosen or {}).get("kimg")
        if not same:
            print(f"note: the run's release.json chose differently ({previous.get('message')}); "
                  "the budget or metric given here differs from the run's")
    return 0
