"""The report's epsilon figure: the attack's lower bound beside the DP upper bound, per kimg."""

from __future__ import annotations

from gmia_defend.report.plots import write_report_plots


def _record(kimg: float, metrics: dict) -> dict:
    base = {"leakage/auc": 0.6, "leakage/auc_ci_low": 0.5, "leakage/auc_ci_high": 0.7, "progress/kimg": kimg}
    return {"kimg": kimg, "step": int(kimg * 10), "metrics": {**base, **metrics}, "identities": []}


def test_epsilon_figure_drawn_when_the_bound_is_logged(tmp_path):
    records = [_record(k, {"leakage/epsilon_lower_bound": 0.1 * k, "privacy/epsilon": 0.5 * k,
                           "privacy/epsilon_person": 2.0 * k}) for k in (1.0, 2.0, 3.0)]
    paths = write_report_plots(records, tmp_path)
    assert paths["epsilon"] == tmp_path / "epsilon_vs_kimg.png"
    assert paths["epsilon"].stat().st_size > 1000


def test_no_epsilon_figure_for_records_without_the_bound(tmp_path):
    paths = write_report_plots([_record(1.0, {}), _record(2.0, {})], tmp_path)
    assert "epsilon" not in paths and not (tmp_path / "epsilon_vs_kimg.png").exists()
