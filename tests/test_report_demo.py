"""``gmia-defend demo`` end to end, shortened (a few batches, a fast stand-in embedder)."""

from __future__ import annotations

import json

import pytest
from _fixtures_callbacks import CbTinyEmbedder

from gmia_defend.cli import main as cli_main


@pytest.mark.slow
def test_demo_trains_audits_reports_and_decides(tmp_path, monkeypatch, capsys, caplog, recwarn):
    import gmia_defend.embedders.registry as registry

    monkeypatch.setattr(registry, "load_embedder", lambda spec, device=None: CbTinyEmbedder())
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    out = tmp_path / "demo"
    code = cli_main(["demo", "--out", str(out), "--max-steps", "24", "--every-n-kimg", "0.1",
                     "--num-samples", "200", "--budget", "0.99", "--wandb"])
    import wandb

    wandb.finish()
    assert code == 0
    text = capsys.readouterr().out
    # the console: no Lightning tip or warning caused by the demo's own configuration, clamping at most once
    assert "Tip: For seamless cloud logging" not in caplog.text + text
    shown = [str(w.message) for w in recwarn]
    assert not [m for m in shown if "ModelCheckpoint with manual optimization" in m or "is not empty" in m]
    assert sum("clamping" in m for m in shown) <= 1
    assert "demo finished" in text and "rule:" in text and ("release: the checkpoint" in text or "nothing released" in text)
    audits = [json.loads(line) for line in (out / "audits.jsonl").read_text().splitlines()]
    assert audits[0]["kimg"] == 0.0 and len(audits) >= 3 and all("metrics" in a for a in audits)
    release = json.loads((out / "release.json").read_text())
    assert release["metric"] == "leakage/auc_ci_high" and release["budget"] == 0.99
    assert (out / "config.yaml").is_file() and (out / "report" / "leakage_vs_quality.png").is_file()
    # every kept generator (the release and the candidates) rebuilds from its file alone, with no pickle,
    # although the fit's hyper-parameters went through LightningCLI (which adds private entries)
    import torch

    from gmia_defend import load_release

    kept = sorted((out / "audits").glob("*.ckpt")) + ([out / "release.ckpt"] if release["released"] else [])
    assert (out / "release.ckpt").is_file() == bool(release["released"])
    for path in kept:
        G = load_release(path)
        assert G(torch.randn(2, G.z_dim)).shape[1:] == (3, 32, 32)
    assert list((out / "wandb").glob("offline-run-*"))
    # a second demo into the same folder needs --overwrite
    assert cli_main(["demo", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
