"""A StyleGAN2 fit killed with SIGKILL after a checkpoint and resumed from it ends exactly where the
uninterrupted fit ends: every tensor of the final checkpoint and every audit line, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from gmia_defend.commands.fit import main

TESTS = Path(__file__).parent
BATCHES, CKPT_AT, KILL_AT = 8, 4, 6  # 6 batches an epoch: the resumed part crosses an epoch boundary

CONFIG = {
    "seed_everything": 0,
    "torch_threads": 1,
    "trainer": {
        "accelerator": "cpu", "devices": 1, "max_steps": 2 * BATCHES, "log_every_n_steps": 1,
        "enable_model_summary": False, "enable_progress_bar": False,
        "callbacks": [
            {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
             "init_args": {"filename": "{step:06d}", "every_n_train_steps": 2 * CKPT_AT, "save_top_k": -1,
                           "save_last": True}},
            {"class_path": "gmia_defend.callbacks.IdentityLeakageMonitor",
             "init_args": {"embedder": "pixels", "every_n_kimg": 0.024, "num_samples": 48, "batch_size": 48,
                           "fid": False, "evidence": False, "progress": False}},
        ]},
    # every random feature on: style mixing, noise, augmentation, R1 and path-length regularisation
    "model": {"z_dim": 16, "w_dim": 16, "mapping_layers": 1, "channel_base": 128, "channel_max": 16,
              "r1_gamma": 0.1, "r1_interval": 3, "pl_weight": 1.0, "pl_interval": 3, "style_mixing_prob": 0.5,
              "ema_kimg": 0.05, "augment_p": 0.5, "sample_every_n_batches": 0, "sample_grid": 2},
    "data": {"dataset": "synthetic", "resolution": 16, "num_members": 4, "member_images": 12, "num_nonmembers": 8,
             "num_population_identities": 4, "images_per_identity": 3, "references_per_identity": 2,
             "batch_size": 8},
}


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _config(root: Path) -> Path:
    config = json.loads(json.dumps(CONFIG))
    config["trainer"]["default_root_dir"] = str(root)
    path = root.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    return path


def _audits(root: Path) -> list[dict]:
    lines = (root / "audits.jsonl").read_text().splitlines()
    return [{k: r.get(k) for k in ("kimg", "step", "metrics")} for r in map(json.loads, lines)]


def _final_state(root: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 * BATCHES
    return ckpt["state_dict"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run."""
    root = tmp_path_factory.mktemp("runs") / "straight"
    threads = torch.get_num_threads()
    try:
        assert main(["--config", str(_config(root))]) == 0
    finally:
        torch.set_num_threads(threads)
    return root


def _assert_same_run(a_root: Path, b_root: Path) -> None:
    a, b = _final_state(a_root), _final_state(b_root)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ after resuming, e.g. {differ[:5]}"
    assert _audits(b_root) == _audits(a_root)
    assert len(_audits(a_root)) >= 3


def test_killed_and_resumed_fit_equals_the_uninterrupted_one(tmp_path: Path, straight: Path, recwarn) -> None:

    crashed = tmp_path / "crashed"
    config = _config(crashed)
    marker = tmp_path / "killed-here"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gmia_defend.cli", "fit", "--config", str(config),
         "--trainer.callbacks+=_fixtures_model.HangAfterBatch", f"--trainer.callbacks.batches={KILL_AT}",
         f"--trainer.callbacks.marker={marker}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the run to kill never reached its batch"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    checkpoint = crashed / "checkpoints" / f"step={2 * CKPT_AT:06d}.ckpt"
    assert checkpoint.is_file()
    assert max(r["kimg"] for r in _audits(crashed)) > CKPT_AT * 8 / 1000  # it audited past the checkpoint

    assert main(["--config", str(config), "--ckpt_path", str(checkpoint)]) == 0

    _assert_same_run(straight, crashed)
    assert not [w for w in recwarn if "dataloader is not resumable" in str(w.message)]  # it is
    # resuming overwrote last.ckpt instead of writing last-v1.ckpt beside a stale one
    assert not list((crashed / "checkpoints").glob("last-v*.ckpt"))


def test_a_finished_run_trained_further_from_last_equals_one_long_run(tmp_path: Path, straight: Path) -> None:
    """A fit that ended mid-epoch (max_steps), continued with --ckpt_path last and a larger max_steps."""
    short = tmp_path / "short"
    config = _config(short)
    assert main(["--config", str(config), "--trainer.max_steps", "10"]) == 0  # 5 of the epoch's 6 batches
    assert main(["--config", str(config), "--ckpt_path", "last"]) == 0
    _assert_same_run(straight, short)
