"""The shipped ``dp_public_selection`` config: a DP run whose release is chosen on public data only, so
``release.json`` says epsilon covers the choice (shortened: a few batches, small audits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from gmia_defend.audit.record import PUBLIC_AUC
from gmia_defend.commands.fit import main
from gmia_defend.config_files import resolve_config

SMALL = ["--data.num_members=6", "--data.member_images=12", "--data.num_nonmembers=16",
         "--data.num_population_identities=8", "--data.public_identities=14", "--data.public_canaries=2",
         "--data.batch_size=8", "--trainer.max_steps=8",
         "--trainer.enable_progress_bar=false", "--trainer.logger=false"]


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def shortened(tmp_path: Path, **rule) -> Path:
    """The shipped file with 64-sample audits and a rule that a 4-batch run can pass (``rule``: more options)."""
    raw = yaml.safe_load(resolve_config("dp_public_selection").read_text())
    for callback in raw["trainer"]["callbacks"]:
        args = callback.setdefault("init_args", {})
        if callback["class_path"].endswith("IdentityLeakageMonitor"):
            args.update(num_samples=64, batch_size=64, every_n_kimg=1000.0, progress=False)
        if callback["class_path"].endswith("ReleaseCheckpointSelector"):
            args.update({"budget": 1.0, "min_kimg": 0.0, "min_quality_gain": None, **rule})
        if callback["class_path"].endswith("ModelCheckpoint"):
            args.update(every_n_train_steps=None, save_last=False)
    path = tmp_path / "dp_public_selection.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_dp_run_released_on_public_canaries_is_covered_by_epsilon(tmp_path):
    run = tmp_path / "run"
    assert main(["--config", "demo", "--config", str(shortened(tmp_path)), *SMALL,
                 f"--trainer.default_root_dir={run}"]) == 0
    release = json.loads((run / "release.json").read_text())
    assert release["metric"] == "public/leakage/auc_ci_high"
    assert release["selection_uses_private_data"] is False
    assert release["epsilon_covers_selection"] is True, release["epsilon_covers_selection_reason"]
    assert release["epsilon"] is not None and release["privacy"]["unit"] == "image"
    assert release["released"] and (run / "release.ckpt").is_file()
    audits = [json.loads(line) for line in (run / "audits.jsonl").read_text().splitlines()]
    assert all(PUBLIC_AUC in a["metrics"] for a in audits if not a.get("error"))
    split = json.loads((run / "split.json").read_text())
    assert len(split["public_canaries"]) == 2 and len(split["public_controls"]) == 8


def test_dp_public_selection_refuses_a_private_choice(tmp_path):
    """The same file with the rule back on the members' leakage is refused before training, saying why."""
    from gmia_defend.errors import UserError

    with pytest.raises(UserError, match="require_covered_epsilon=True.*members' own photos"):
        main(["--config", "demo", "--config", str(shortened(tmp_path, metric="leakage/auc")), *SMALL,
              f"--trainer.default_root_dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run" / "audits.jsonl").exists()


def test_nothing_released_under_dp_still_says_what_epsilon_covers(tmp_path):
    run = tmp_path / "run"
    assert main(["--config", "demo", "--config", str(shortened(tmp_path, budget=0.0)), *SMALL,
                 f"--trainer.default_root_dir={run}"]) == 0
    release = json.loads((run / "release.json").read_text())
    assert not release["released"] and not (run / "release.ckpt").exists()
    assert release["epsilon_at_end"] is not None
    assert release["epsilon_covers_selection"] is True, release["epsilon_covers_selection_reason"]
