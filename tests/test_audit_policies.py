"""The pure audit layer: records, the release/stop policies, halves and worst case, the log, the release file."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from gmia_defend.audit import AuditLog, AuditRecord, ReleaseRule, load_release, save_release, select_release
from gmia_defend.audit import stop_decision
from gmia_defend.audit.halves import half_metrics, split_halves
from gmia_defend.audit.record import (AUC, AUC_CI_HIGH, AUC_CI_LOW, NULL_AUC_HIGH, NULL_AUC_LOW, P_VALUE,
                                      worst_case)
from gmia_defend.errors import UserError


def _rec(kimg, auc, fd, p=0.5, sel=None, conf=None, **extra):
    m = {AUC: auc, AUC_CI_LOW: auc - 0.1, AUC_CI_HIGH: auc + 0.1, P_VALUE: p, "quality/fd_x": fd}
    if sel is not None:
        m.update({"selection/leakage/auc": sel, "confirmation/leakage/auc": conf,
                  "selection/leakage/p_value": p, "confirmation/leakage/p_value": p})
    return {"kimg": kimg, "step": int(kimg * 10), "metrics": m, **extra}


def test_old_jsonl_lines_round_trip_and_unknown_fields_are_kept():
    old = {"audit": 0, "kimg": 1.5, "step": 3, "metrics": {AUC: 0.6, "quality/fd_x": None}, "identities": [],
           "checkpoint": None, "evidence": None, "hook": "on_train_batch_end", "custom": {"a": 1}}
    r = AuditRecord.from_json(old)
    assert r.schema == 1 and r.ok and math.isnan(r.metric("quality/fd_x")) and r.extra == {"custom": {"a": 1}}
    assert r["kimg"] == 1.5 and r.get("custom") == {"a": 1} and dict(r)["hook"] == "on_train_batch_end"
    again = AuditRecord.from_json(json.loads(json.dumps(r.to_json(), default=str)))
    assert again.extra == r.extra and again.kimg == r.kimg
    failed = AuditRecord.failed(2.0, ValueError("boom"))
    assert not failed.ok and "metrics" not in failed.to_json() and failed.error == "ValueError: boom"


def test_default_rule_never_releases_a_generator_that_learned_nothing():
    # the untrained generator "leaks" least (0.35) but must not be released; 1 kimg barely moved quality
    records = [_rec(0, 0.35, 10.0), _rec(1, 0.40, 9.8), _rec(4, 0.55, 5.0), _rec(8, 0.7, 3.0)]
    d = select_release(records, budget=0.6)
    assert d["chosen"]["kimg"] == 4
    assert [c["excluded_by"] for c in d["candidates"]] == ["untrained", "quality_bar", None, "budget"]
    assert "5% better than the untrained" in d["candidates"][1]["reason"]
    # nothing eligible: the message counts which rule excluded what
    d = select_release(records[:2], budget=0.6)
    assert not d["released"] and "untrained: 1" in d["message"] and "quality_bar: 1" in d["message"]


def test_p_value_option_in_release_and_stop():
    records = [_rec(2, 0.58, 4.0, p=0.01), _rec(4, 0.55, 5.0, p=0.3)]
    assert select_release(records, budget=0.6)["chosen"]["kimg"] == 2
    d = select_release(records, budget=0.6, alpha=0.05)
    assert d["chosen"]["kimg"] == 4 and d["candidates"][0]["excluded_by"] == "p_value"
    assert not stop_decision(records[:1], budget=0.6)["stop"]
    s = stop_decision(records[:1], budget=0.6, alpha=0.05)
    assert s["stop"] and "p-value 0.01 < alpha 0.05" in s["message"]
    with pytest.raises(UserError, match="alpha"):
        ReleaseRule(alpha=1.5)


def test_selection_half_chooses_and_confirmation_half_is_reported():
    records = [_rec(2, 0.5, 4.0, sel=0.65, conf=0.52), _rec(4, 0.5, 5.0, sel=0.55, conf=0.61)]
    d = select_release(records, budget=0.6)
    assert d["chosen"]["kimg"] == 4 and "selection half" in d["rule"] and "identity split" in d["correction"]
    assert d["reported"][AUC] == 0.61 and d["selection_figures"][AUC] == 0.55
    plain = select_release(records, budget=0.6, halves=False)
    assert plain["chosen"]["kimg"] == 2 and "winner's curse" in plain["correction"]


def test_split_halves_is_seeded_and_stratified_and_worst_case_takes_every_key():
    rows = [{"identity": f"m{i}", "member": True, "score": float(i), "match_rate": 0.1} for i in range(8)] + \
           [{"identity": f"n{i}", "member": False, "score": float(i) - 3, "match_rate": 0.0} for i in range(12)]
    a, b = split_halves(rows, 0), split_halves(rows, 1)
    assert a == split_halves(rows, 0) and a != b
    for half in ("selection", "confirmation"):
        assert sum(1 for r in rows if r["member"] and a[r["identity"]] == half) == 4
        assert sum(1 for r in rows if not r["member"] and a[r["identity"]] == half) == 6
    m = half_metrics({"e1": rows, "e2": [{**r, "score": -r["score"]} for r in rows]}, a, n_bootstrap=50)
    assert 0.0 <= m["confirmation/leakage/auc"] <= 1.0 and m["selection/leakage/leak_rate"] == pytest.approx(0.1)
    w = worst_case({"a": {AUC: 0.6, AUC_CI_HIGH: 0.7, P_VALUE: 0.2, NULL_AUC_LOW: 0.4, NULL_AUC_HIGH: 0.6},
                    "b": {AUC: 0.55, AUC_CI_HIGH: 0.8, P_VALUE: 0.01, NULL_AUC_LOW: 0.35, NULL_AUC_HIGH: 0.62}})
    assert w == {AUC: 0.6, AUC_CI_HIGH: 0.8, P_VALUE: 0.02, NULL_AUC_LOW: 0.35, NULL_AUC_HIGH: 0.62}  # Bonferroni


def test_audit_log_reports_a_torn_last_line_and_syncs_a_restored_history(tmp_path):
    log = AuditLog(tmp_path, pseudonym_key="k")
    for k in (1.0, 2.0, 3.0):
        log.append(AuditRecord(kimg=k, metrics={AUC: 0.5}, identities=[{"identity": "alice", "member": True}]))
    with open(log.path, "a") as fh:
        fh.write('{"kimg": 4.0, "metr')
    with pytest.warns(UserWarning, match=r"line 4 is its last line, torn"):
        assert log.audited_kimgs() == [1.0, 2.0, 3.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        restored = [AuditRecord(kimg=1.0, metrics={AUC: 0.5}), AuditRecord(kimg=2.0, metrics={AUC: 0.5})]
        merged = log.sync(restored)
    assert [r.kimg for r in merged] == [1.0, 2.0] and merged[0].identities  # names kept from the file
    assert [r.kimg for r in log.records()] == [1.0, 2.0] and list(tmp_path.glob("audits.jsonl.*.bak"))


def test_release_file_round_trip_and_bad_files(tmp_path):
    from dcgan_module import DCGAN

    model = DCGAN(z_dim=8, width=4)
    path = save_release(tmp_path / "release.ckpt", model, "generator")
    data = torch.load(path, weights_only=True)
    assert data["module_class"] == "dcgan_module:DCGAN" and data["z_dim"] == 8
    assert all(v.dtype == torch.float32 for v in data["state_dict"].values() if v.is_floating_point())
    g = load_release(path)
    z = torch.randn(3, 8)
    model.generator.eval()
    assert torch.equal(g(z), model.generator(z))
    torch.save({"state_dict": {}, "callbacks": {}}, tmp_path / "lightning.ckpt")
    with pytest.raises(UserError, match="not a gmia-defend release"):
        load_release(tmp_path / "lightning.ckpt")
    with pytest.raises(UserError, match="not found"):
        load_release(tmp_path / "missing.ckpt")
    import gmia_defend

    assert gmia_defend.load_release is load_release


def test_release_of_a_lightningcli_model_rebuilds(tmp_path):
    """LightningCLI adds a private ``_instantiator`` entry to a model's hparams: no constructor argument."""
    from gmia_defend.models import StyleGAN2

    model = StyleGAN2(resolution=8, z_dim=8, w_dim=8, mapping_layers=1, channel_base=64, channel_max=8)
    model.hparams["_instantiator"] = "pytorch_lightning.cli.instantiate_module"
    path = save_release(tmp_path / "release.ckpt", model, "G_ema")
    assert "_instantiator" not in torch.load(path, weights_only=True)["hparams"]
    data = torch.load(path, weights_only=True)
    data["hparams"]["_instantiator"] = "x"  # a file written before the entry was left out
    torch.save(data, tmp_path / "old.ckpt")
    z = torch.randn(2, 8)
    model.G_ema.eval()
    for p in (path, tmp_path / "old.ckpt"):
        assert torch.equal(load_release(p)(z), model.G_ema(z))


def test_auditor_shows_the_clamping_warning_once_per_run(cb_world):
    from _fixtures_callbacks import CbTinyEmbedder

    from gmia_defend.audit import Auditor

    class Overshooting(torch.nn.Module):  # an early StyleGAN: symmetric tails far beyond [-1, 1]
        z_dim = 8

        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 3 * 16 * 16)

        def forward(self, z):
            return (3 * torch.tanh(self.fc(z) * 4)).view(-1, 3, 16, 16)

    torch.manual_seed(0)
    auditor = Auditor(CbTinyEmbedder(), cb_world.audit, num_samples=64, batch_size=32, quality=False,
                      attack_options={"n_bootstrap": 20, "n_permutations": 50})
    g = Overshooting()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = [auditor.audit(g, kimg=k) for k in (1.0, 2.0, 3.0)]
    clamps = [w for w in caught if "clamping" in str(w.message)]
    assert all(r.ok for r in records) and len(clamps) == 1
