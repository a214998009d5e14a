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


def test_leakage_plot_draws_the_figure_the_rule_read(tmp_path, monkeypatch):
    """With halves, the line compared with the budget is the selection half's, as the rule read it."""
    import matplotlib.axes

    from gmia_defend.report.plots import plot_leakage

    labels: list[str] = []
    original = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *a, **k: (labels.append(k.get("label")), original(self, *a, **k))[1])
    records = [_record(k, {"selection/leakage/auc_ci_high": 0.8}) for k in (1.0, 2.0)]
    plot_leakage(records, tmp_path / "a.png", "leakage/auc_ci_high", 0.8, {"options": {"halves": True}})
    assert "selection/leakage/auc_ci_high (vs budget)" in labels
    labels.clear()
    plot_leakage(records, tmp_path / "b.png", "leakage/auc_ci_high", 0.8, {"options": {"halves": False}})
    assert "leakage/auc_ci_high (vs budget)" in labels
