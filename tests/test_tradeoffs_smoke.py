"""benchmarks/tradeoffs.py: its early-stopping figure comes from the real policy; audit matching; run configs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "tradeoffs.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("tradeoffs_bench", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def audits(pairs):
    return [{"kimg": k, "metrics": {"leakage/auc": a, "leakage/auc_ci_low": a - 0.1, "leakage/auc_ci_high": a + 0.1,
                                    "quality/fd_trained": 1.0}} for k, a in pairs]


def test_early_stop_figure_uses_the_policy_of_leakage_early_stopping(bench, monkeypatch):
    # budget 0.75, patience 1, min_kimg 0.5: the first audit past 0.5 kimg with AUC > 0.75
    recorded = audits([(0.0, 0.9), (4.0, 0.6), (8.0, 0.75), (12.0, 0.8), (16.0, 0.9)])
    assert bench.early_stop_audit(recorded)["kimg"] == 12.0
    assert bench.early_stop_audit(audits([(0.0, 0.5), (4.0, 0.7)])) is None
    # the callback, fed the same records, stops at the same audit
    from types import SimpleNamespace

    from gmia_defend.callbacks import LeakageEarlyStopping

    rule = {k: v for k, v in bench.STOP_RULE.items()}
    stopper = LeakageEarlyStopping(verbose=False, **rule)
    trainer = SimpleNamespace(strategy=SimpleNamespace(reduce_boolean_decision=lambda d, all=True: d),
                              should_stop=False, is_global_zero=True)
    for r in recorded:
        stopper.on_leakage_audit(trainer, None, {**r, "hook": "on_train_batch_end"})
        if trainer.should_stop:
            break
    assert stopper.stopped_kimg == 12.0
    # no copy of the rule is left in the benchmark: changing the policy changes its figure
    import gmia_defend.audit as audit_pkg

    monkeypatch.setattr(audit_pkg, "stop_decision", lambda records, rule: {"stop": True})
    assert bench.early_stop_audit(recorded)["kimg"] == 0.0


def test_at_kimg_and_summary(bench):
    recorded = audits([(0.0, 0.5), (8.0, 0.7), (16.0, 0.8)])
    assert bench.at_kimg(recorded, 15.9)["kimg"] == 16.0
    assert bench.summary(recorded[1]) == {"auc": 0.7, "ci": [0.6, 0.8], "fd": 1.0, "kimg": 8.0}


def test_callbacks_yaml_attaches_privacy_only_for_dp(bench):
    plain = yaml.safe_load(bench.callbacks_yaml(4.0, 3000, None))["trainer"]["callbacks"]
    assert [c["class_path"].rsplit(".", 1)[1] for c in plain] == ["ModelCheckpoint", "IdentityLeakageMonitor"]
    dp = {"unit": "identity", "noise_multiplier": 1.0, "max_grad_norm": 1.0, "max_images_per_identity": 4}
    private = yaml.safe_load(bench.callbacks_yaml(4.0, 3000, dp))["trainer"]["callbacks"]
    assert private[-1]["init_args"]["make_private"] == dp
    assert private[1]["init_args"]["num_samples"] == 3000
