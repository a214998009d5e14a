"""Release rule, pseudonyms and ``gmia-defend report`` from an audits.jsonl alone."""

from __future__ import annotations

import json
import math
import os
import stat

from gmia_defend.cli import main as cli_main
from gmia_defend.io import append_jsonl
from gmia_defend.report.pseudonyms import Pseudonymizer, pseudonym, resolve_key
from gmia_defend.audit import select_release


def _rec(kimg, auc, fd, hi=None, ckpt=True, **extra):
    m = {"leakage/auc": auc, "leakage/auc_ci_low": auc - 0.1, "leakage/auc_ci_high": hi if hi is not None else auc + 0.1,
         "quality/fd_toy": fd}
    r = {"kimg": kimg, "step": int(kimg * 100), "metrics": m,
         "checkpoint": f"audits/kimg={kimg}.ckpt" if ckpt else None,
         "identities": [{"identity": f"syn-{i:06d}", "member": i < 3, "score": 0.1 * i, "train_count": 10 * i if i < 3 else 0}
                        for i in range(6)]}
    r.update(extra)
    return r


def test_best_quality_within_budget_is_released():
    records = [_rec(1, 0.52, 9.0), _rec(2, 0.55, 5.0), _rec(3, 0.7, 2.0), _rec(4, 0.58, 4.0)]
    d = select_release(records, budget=0.6)
    assert d["released"] and d["chosen"]["kimg"] == 4
    reasons = {c["kimg"]: c["reason"] for c in d["candidates"]}
    assert "> budget" in reasons[3] and reasons[4].startswith("chosen") and "quality/fd_toy" in reasons[1]
    # the conservative metric (upper end of the interval) excludes 4 (0.68) and 2 (0.65)
    d_hi = select_release(records, budget=0.63, metric="leakage/auc_ci_high")
    assert d_hi["chosen"]["kimg"] == 1


def test_ties_go_to_lower_leakage_then_earlier_kimg():
    d = select_release([_rec(1, 0.55, 3.0), _rec(2, 0.50, 3.0), _rec(3, 0.50, 3.0)], budget=0.6)
    assert d["chosen"]["kimg"] == 2
    assert "ties" in d["rule"]
    assert "later kimg" in next(c for c in d["candidates"] if c["kimg"] == 3)["reason"]


def test_nothing_released_when_all_exceed_and_failures_are_listed():
    records = [_rec(1, 0.8, 3.0), {"kimg": 2, "step": 200, "error": "GeneratorError: NaN"}, _rec(3, 0.9, 2.0)]
    d = select_release(records, budget=0.6)
    assert not d["released"] and d["chosen"] is None
    assert "nothing released" in d["message"] and "0.8" in d["message"]
    assert any("audit failed" in c["reason"] for c in d["candidates"])


def test_min_kimg_missing_checkpoint_nan_and_no_quality():
    records = [_rec(0.25, 0.5, 50.0), _rec(1, math.nan, 1.0), _rec(2, 0.55, 6.0, ckpt=False), _rec(3, 0.58, 7.0)]
    d = select_release(records, budget=0.6, min_kimg=0.5, require_checkpoint=True)
    assert d["chosen"]["kimg"] == 3
    reasons = {c["kimg"]: c["reason"] for c in d["candidates"]}
    assert "min_kimg" in reasons[0.25] and "not measured" in reasons[1] and "checkpoint" in reasons[2]
    assert [c["excluded_by"] for c in d["candidates"]] == ["min_kimg", "not_measured", "no_checkpoint", None]
    plain = [{"kimg": k, "metrics": {"leakage/auc": a}} for k, a in ((1, 0.5), (2, 0.55), (3, 0.7))]
    d2 = select_release(plain, budget=0.6)
    assert d2["quality_metric"] is None and d2["chosen"]["kimg"] == 2 and "latest" in d2["rule"]


def test_pseudonyms_are_keyed_stable_and_mapped_locally(tmp_path, monkeypatch):
    monkeypatch.delenv("GMIA_PSEUDONYM_KEY", raising=False)
    p = Pseudonymizer(run_dir=tmp_path)
    assert not (tmp_path / "pseudonym_key").exists()  # created only when first used
    a = p("alice")
    assert a.startswith("id-") and "alice" not in a and a == p("alice") and a != p("bob")
    key_file = tmp_path / "pseudonym_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert Pseudonymizer(run_dir=tmp_path)("alice") == a  # same run folder, same key
    p.save()
    assert json.loads((tmp_path / "pseudonyms.json").read_text())[a] == "alice"
    assert pseudonym("alice", b"k1") != pseudonym("alice", b"k2")
    monkeypatch.setenv("GMIA_PSEUDONYM_KEY", "from-env")
    assert resolve_key(None, tmp_path) == b"from-env"
    assert Pseudonymizer(enabled=False)("alice") == "alice"


def test_report_command_writes_figures_and_prints_release(tmp_path, capsys):
    run = tmp_path / "run" / "version_0"
    for r in [_rec(0.5, 0.51, 9.0), {"kimg": 1.0, "step": 100, "error": "GeneratorError: NaN"},
              _rec(1.5, 0.56, 4.0), _rec(2.0, 0.66, 3.0)]:
        append_jsonl(run / "audits.jsonl", r)
    assert cli_main(["report", str(tmp_path / "run"), "--budget", "0.6"]) == 0
    out = capsys.readouterr().out
    assert "release: the checkpoint at 1.5 kimg" in out and "1 failed" in out
    figures = sorted(p.name for p in (run / "report").glob("*.png"))
    assert figures == ["identities.png", "leakage_vs_kimg.png", "leakage_vs_quality.png", "quality_vs_kimg.png"]
    for f in figures:
        assert (run / "report" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((run / "report" / "release_decision.json").read_text())
    assert saved["chosen"]["kimg"] == 1.5 and saved["budget"] == 0.6
    assert cli_main(["report", str(tmp_path / "run"), "--budget", "0.5"]) == 0
    assert "nothing released" in capsys.readouterr().out


def test_report_command_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path / "nowhere")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    os.makedirs(tmp_path / "empty")
    assert cli_main(["report", str(tmp_path / "empty")]) == 2
    assert "no audits.jsonl" in capsys.readouterr().err
