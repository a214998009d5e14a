"""`gmia-defend fit` (LightningCLI): help lists every option; a tiny config runs end to end."""

from __future__ import annotations

import pytest
import torch
import yaml

from gmia_defend.commands.fit import main
from gmia_defend.errors import UserError

TINY_FIT = {
    "seed_everything": 0,
    "torch_threads": 1,
    "trainer": {"accelerator": "cpu", "max_steps": 4, "enable_progress_bar": False,
                "enable_model_summary": False, "log_every_n_steps": 1},
    "model": {"z_dim": 16, "w_dim": 16, "mapping_layers": 2, "channel_base": 128, "channel_max": 16,
              "sample_every_n_batches": 1, "sample_grid": 2, "r1_interval": 2},
    "data": {"dataset": "synthetic", "resolution": 16, "num_members": 2, "num_nonmembers": 2,
             "num_population_identities": 0, "member_images": 8, "images_per_identity": 2,
             "references_per_identity": 1, "batch_size": 4},
}


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """`fit` sets the process's torch thread count (torch_threads); give it back to later tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_help_lists_model_data_and_trainer_options(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--config", "--ckpt_path", "--torch_threads", "--model.r1_gamma", "--model.dp_compatible", "--model.augment_p",
                   "--model.ema_kimg", "--data.num_members", "--data.batch_size", "--trainer.max_steps",
                   "--trainer.precision", "--trainer.default_root_dir", "--model.init_from", "--model.rng_seed",
                   "--model.d_steps_per_g_step", "--data.train_on", "--data.public_identities", "--data.public_folder"):
        assert option in out, option


def test_fit_runs_a_tiny_config_end_to_end(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_FIT))
    run = tmp_path / "run"
    assert main(["--config", str(config), "--trainer.default_root_dir", str(run),
                 "--model.lr_g", "0.001"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["lr_g"] == 0.001 and saved["data"]["resolution"] == 16
    assert "resolution" not in saved["model"]  # linked from data.resolution, so the file re-parses
    assert saved["trainer"]["default_root_dir"] == str(run) and saved["torch_threads"] == 1
    assert torch.get_num_threads() == 1
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in (run / "samples").glob("fakes_*.png")) == ["fakes_0000001.png",
                                                                               "fakes_0000002.png"]
    assert (run / "metrics.csv").is_file()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert int(ckpt["state_dict"]["images_seen"]) == 8 and ckpt["global_step"] == 4

    # the run folder holds its split, so its checkpoints can be audited as they are
    import json

    from gmia_defend.cli import main as cli_main

    assert (run / "split.json").is_file()
    assert cli_main(["attack", "--generator", str(run / "checkpoints" / "last.ckpt"), "--audit",
                     str(run / "split.json"), "--embedder", "pixels", "--num-samples", "40", "--batch-size", "20",
                     "--n-bootstrap", "10", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "att")]) == 0
    assert json.loads((tmp_path / "att" / "attack.json").read_text())["num_samples"] == 40

    # resume from the run's last checkpoint for one more batch
    assert main(["--config", str(config), "--trainer.default_root_dir", str(run), "--ckpt_path", "last",
                 "--trainer.max_steps", "6"]) == 0
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert int(ckpt["state_dict"]["images_seen"]) == 12
    assert (run / "metrics.1.csv").is_file() and (run / "metrics.csv").is_file()  # history kept


def test_fit_reports_a_missing_checkpoint(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_FIT))
    with pytest.raises(UserError, match="ckpt_path"):
        main(["--config", str(config), "--trainer.default_root_dir", str(tmp_path / "r"), "--ckpt_path", "last"])


def test_last_ckpt_holds_the_end_of_training_without_lightning_advice(tmp_path, recwarn):
    config = dict(TINY_FIT, trainer={**TINY_FIT["trainer"], "max_steps": 6, "callbacks": [
        {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
         "init_args": {"filename": "{step:06d}", "every_n_train_steps": 4, "save_top_k": -1, "save_last": True}}]})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert main(["--config", str(path), "--trainer.default_root_dir", str(run)]) == 0
    assert (run / "checkpoints" / "step=000004.ckpt").is_file()
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 6 and int(last["state_dict"]["batches_seen"]) == 3  # not the batch-2 state
    assert not [w for w in recwarn if "manual optimization" in str(w.message)]
