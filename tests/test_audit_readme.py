"""The README's plain-loop recipe (Auditor + AuditLog) runs exactly as written, and the audit modules'
docstring examples run (doctest)."""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest
import torch
from _fixtures_callbacks import CbTinyEmbedder
from dcgan_module import DCGenerator

ROOT = Path(__file__).resolve().parents[1]
HEADING = "A loop without Lightning"
FALLBACK = Path("/work/readme_parts/audit.md")  # the text the README section is pasted from


def _recipe() -> str:
    for source in (ROOT / "README.md", FALLBACK):
        if not source.is_file():
            continue
        text = source.read_text()
        at = text.find(HEADING)
        if at < 0:
            continue
        block = re.search(r"```python\n(.*?)```", text[at:], re.S)
        if block and "Auditor(" in block.group(1) and "AuditLog(" in block.group(1):
            return block.group(1)
    pytest.fail(f"README.md's '{HEADING}' section must show the Auditor + AuditLog recipe in a python block")


def test_readme_plain_loop_recipe_runs(cb_world, tmp_path, monkeypatch):
    import gmia_defend.embedders as embedders
    import gmia_defend.embedders.registry as registry

    fake = lambda spec, device=None: CbTinyEmbedder()  # noqa: E731 - no FaceNet weights offline
    monkeypatch.setattr(registry, "load_embedder", fake)
    monkeypatch.setattr(embedders, "load_embedder", fake, raising=False)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    G_ema = DCGenerator()
    state = {"images_seen": 0}

    def train_step():
        state["images_seen"] += 640
        namespace["images_seen"] = state["images_seen"]

    namespace = {"audit": cb_world.audit, "real_images": cb_world.train_images, "G_ema": G_ema, "num_steps": 3,
                 "audit_every": 1, "train_step": train_step, "images_seen": 0}
    exec(compile(_recipe(), "README.md", "exec"), namespace)  # noqa: S102 - the documented code, verbatim
    lines = (tmp_path / "runs" / "x" / "audits.jsonl").read_text().splitlines()
    assert len(lines) == 3 and '"leakage/auc"' in lines[0] and '"quality/fd_tiny"' in lines[0]
    assert sorted(p.name for p in (tmp_path / "runs" / "x" / "audits").iterdir()) == [
        "step=000000.ckpt", "step=000001.ckpt", "step=000002.ckpt"]
    assert list((tmp_path / "runs" / "x" / "evidence").glob("*.png"))


@pytest.mark.parametrize("module", ["gmia_defend.audit.record", "gmia_defend.audit.policies",
                                    "gmia_defend.audit.log", "gmia_defend.audit.auditor",
                                    "gmia_defend.audit.artifact", "gmia_defend.callbacks.leakage",
                                    "gmia_defend.callbacks.early_stopping", "gmia_defend.callbacks.release",
                                    "gmia_defend.report.pseudonyms"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
