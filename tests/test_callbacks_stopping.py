"""LeakageEarlyStopping decisions on audit records (no training): budget, patience, plateau, resume."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from gmia_defend.callbacks import LeakageEarlyStopping
from gmia_defend.callbacks.early_stopping import LeakageStoppingReason
from gmia_defend.errors import UserError


class _Strategy:
    def __init__(self) -> None:
        self.calls = 0

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002 - Lightning's name
        self.calls += 1
        return decision


def _trainer():
    return SimpleNamespace(strategy=_Strategy(), should_stop=False, is_global_zero=True)


def _audit(kimg, auc, fd=None, hook="on_train_batch_end", **metrics):
    m = {"leakage/auc": auc, "leakage/auc_ci_low": auc - 0.1, "leakage/auc_ci_high": auc + 0.1, **metrics}
    if fd is not None:
        m["quality/fd_x"] = fd
    return {"kimg": kimg, "step": int(kimg * 10), "hook": hook, "metrics": m}


def _feed(cb, trainer, records):
    for r in records:
        cb.on_leakage_audit(trainer, None, r)
        if trainer.should_stop:
            return r["kimg"]
    return None


def test_patience_counts_consecutive_audits_over_budget():
    cb, tr = LeakageEarlyStopping(budget=0.7, patience=2, verbose=False), _trainer()
    stopped = _feed(cb, tr, [_audit(1, 0.72), _audit(2, 0.65), _audit(3, 0.75), _audit(4, 0.8), _audit(5, 0.9)])
    assert stopped == 4 and cb.stopping_reason is LeakageStoppingReason.LEAKAGE_BUDGET
    assert cb.stopped_kimg == 4 and "0.8 > budget 0.7" in cb.stopping_reason_message
    assert tr.strategy.calls == 4  # every audit's decision is reduced over processes


def test_lower_ci_bound_stops_only_when_leakage_is_certain():
    cb, tr = LeakageEarlyStopping(budget=0.7, metric="leakage/auc_ci_low", verbose=False), _trainer()
    assert _feed(cb, tr, [_audit(1, 0.75), _audit(2, 0.79)]) is None  # lower bounds 0.65, 0.69
    assert _feed(cb, tr, [_audit(3, 0.85)]) == 3


def test_quality_plateau_while_leakage_grows():
    cb = LeakageEarlyStopping(budget=0.99, fid_patience=2, fid_min_delta=0.01, verbose=False)
    tr = _trainer()
    records = [_audit(1, 0.55, 5.0), _audit(2, 0.56, 3.0), _audit(3, 0.60, 3.1), _audit(4, 0.58, 2.995),
               _audit(5, 0.65, 3.2)]
    assert _feed(cb, tr, records) == 4
    assert cb.stopping_reason is LeakageStoppingReason.QUALITY_PLATEAU
    assert "rose from 0.56 to 0.58" in cb.stopping_reason_message
    # a plateau with falling leakage does not stop
    cb2, tr2 = LeakageEarlyStopping(budget=0.99, fid_patience=2, verbose=False), _trainer()
    assert _feed(cb2, tr2, [_audit(1, 0.6, 3.0), _audit(2, 0.58, 3.1), _audit(3, 0.57, 3.2)]) is None


def test_errors_nan_and_min_kimg_do_not_stop():
    cb, tr = LeakageEarlyStopping(budget=0.5, min_kimg=2.5, verbose=False), _trainer()
    records = [{"kimg": 1, "error": "GeneratorError: NaN", "hook": "on_train_batch_end"}, _audit(2, 0.9),
               _audit(2.2, math.nan)]
    assert _feed(cb, tr, records) is None and tr.strategy.calls == 3
    assert _feed(cb, tr, [_audit(3, 0.9)]) == 3


def test_state_dict_resumes_the_count():
    cb, tr = LeakageEarlyStopping(budget=0.7, patience=3, fid_patience=5, verbose=False), _trainer()
    _feed(cb, tr, [_audit(1, 0.8, 2.0), _audit(2, 0.9, 2.5)])
    state = cb.state_dict()
    fresh = LeakageEarlyStopping(budget=0.7, patience=3, fid_patience=5, verbose=False)
    fresh.load_state_dict(state)
    assert fresh.wait == 2 and fresh.best_quality == 2.0 and fresh.quality_wait == 1
    assert _feed(fresh, _trainer(), [_audit(3, 0.95, 2.6)]) == 3
    assert LeakageEarlyStopping(budget=0.7).state_key != LeakageEarlyStopping(budget=0.8).state_key


def test_end_of_training_audit_records_but_does_not_set_should_stop():
    cb, tr = LeakageEarlyStopping(budget=0.5, verbose=False), _trainer()
    cb.on_leakage_audit(tr, None, _audit(4, 0.9, hook="on_train_end"))
    assert cb.stopping_reason is LeakageStoppingReason.LEAKAGE_BUDGET and not tr.should_stop


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="leakage/"):
        LeakageEarlyStopping(metric="quality/fid")
    with pytest.raises(UserError, match="patience"):
        LeakageEarlyStopping(patience=0)
