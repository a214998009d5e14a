"""A shortened benchmarks/null_calibration.py: nulls land near 0.5, a memoriser is caught, keys complete."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def null_bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "null_calibration.py"
    spec = importlib.util.spec_from_file_location("null_calibration", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shortened_null_calibration(null_bench, trained_embedder):
    out = null_bench.run(trained_embedder, splits=2, num_samples=300, members=8, nonmembers=24, population=8,
                         refs=3, memoriser_splits=1, n_bootstrap=100, n_permutations=100, batch_size=150)
    assert out["null_audits"] == 4 and out["memoriser_audits"] == 1
    assert out["memoriser_auc_min"] >= 0.9
    assert 0.25 < out["null_auc_mean"] < 0.75  # 4 audits of 8 vs 24 identities: null sd ~0.12
    assert out["null_epsilon_lb_max"] == 0.0
    for key in ("null_ci_coverage", "null_pvalue_type1", "null_band_width", "relative_null_auc_mean"):
        assert 0.0 <= out[key] <= 1.0, key
