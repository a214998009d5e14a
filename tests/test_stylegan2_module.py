"""StyleGAN2 LightningModule: updates, EMA, lazy R1, kimg bookkeeping, checkpoints, reproducibility."""

from __future__ import annotations

import copy

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from _fixtures_model import tiny_image_loader, tiny_trainer
from gmia_defend.models import StyleGAN2


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_one_training_step_changes_g_d_and_g_ema(tmp_path, tiny_stylegan2_kwargs):
    pl.seed_everything(0)
    model = StyleGAN2(**tiny_stylegan2_kwargs)
    before = {name: _flat(getattr(model, name)).clone() for name in ("G", "D", "G_ema")}
    trainer = tiny_trainer(tmp_path, max_batches=1)
    trainer.fit(model, tiny_image_loader())
    for name in ("G", "D", "G_ema"):
        assert not torch.equal(before[name], _flat(getattr(model, name))), f"{name} did not change"
    assert trainer.global_step == 2  # manual optimization: both optimizers count
    assert int(model.batches_seen) == 1
    # G_ema tracks G (early in training the rampup makes it follow closely), never the optimizer's target
    assert not any(p.requires_grad for p in model.G_ema.parameters())
    metrics = trainer.callback_metrics
    for key in ("loss/d", "loss/g", "loss/r1_penalty", "progress/kimg"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert float(metrics["loss/r1_penalty"]) > 0  # batch 0 is an R1 batch (lazy interval 2)


def test_kimg_counts_images_not_optimizer_steps(tmp_path, tiny_stylegan2_kwargs):
    pl.seed_everything(0)
    model = StyleGAN2(**tiny_stylegan2_kwargs)
    trainer = tiny_trainer(tmp_path, max_batches=3)
    trainer.fit(model, tiny_image_loader(n=16, batch_size=4))
    assert int(model.images_seen) == 12
    assert abs(model.kimg - 0.012) < 1e-9
    assert trainer.global_step == 6
    assert abs(float(trainer.callback_metrics["progress/kimg"]) - 0.012) < 1e-6


def test_ema_half_life_follows_images():
    model = StyleGAN2(resolution=16, z_dim=8, w_dim=8, mapping_layers=1, channel_base=64, channel_max=8,
                      ema_kimg=0.004, ema_rampup=None)
    with torch.no_grad():
        for p in model.G.parameters():
            p.add_(1.0)
    start = copy.deepcopy(model.G_ema)
    model.images_seen.fill_(1000)
    model._update_ema(4)  # 4 images = one half-life of 0.004 kimg
    p_g, p_start, p_ema = (next(m.parameters()) for m in (model.G, start, model.G_ema))
    assert torch.allclose(p_ema, (p_g + p_start) / 2, atol=1e-6)


def test_checkpoint_round_trip_gives_identical_samples(tmp_path, tiny_stylegan2_kwargs):
    pl.seed_everything(0)
    model = StyleGAN2(**{**tiny_stylegan2_kwargs, "sample_every_n_batches": 1})
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = tiny_trainer(tmp_path, max_batches=2, enable_checkpointing=True, callbacks=[ckpt])
    trainer.fit(model, tiny_image_loader())
    path = tmp_path / "ckpt" / "last.ckpt"
    assert path.is_file()
    loaded = StyleGAN2.load_from_checkpoint(path, map_location="cpu")
    assert loaded.hparams.channel_max == tiny_stylegan2_kwargs["channel_max"]
    assert int(loaded.images_seen) == int(model.images_seen) == 8
    assert torch.equal(loaded.generate(6, seed=5), model.generate(6, seed=5))
    assert torch.equal(loaded.generate(6, seed=5, truncation_psi=0.7), model.generate(6, seed=5, truncation_psi=0.7))
    # sample grids are written to the run folder
    grids = sorted((tmp_path / "samples").glob("fakes_*.png"))
    assert [g.name for g in grids] == ["fakes_0000001.png", "fakes_0000002.png"]
    assert (tmp_path / "samples" / "reals.png").is_file()


def test_seeded_runs_are_reproducible(tmp_path, tiny_stylegan2_kwargs):
    kw = {**tiny_stylegan2_kwargs, "style_mixing_prob": 0.5, "pl_weight": 1.0, "pl_interval": 2,
          "augment_p": 0.5}
    states = []
    for run in range(2):
        pl.seed_everything(123)
        model = StyleGAN2(**kw)
        tiny_trainer(tmp_path / str(run), max_batches=3).fit(model, tiny_image_loader())
        states.append(model.state_dict())
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    assert float(states[0]["pl_mean"]) > 0  # path-length regularisation ran


def test_private_d_hook_replaces_the_discriminator_update(tmp_path, tiny_stylegan2_kwargs):
    pl.seed_everything(0)
    model = StyleGAN2(**{**tiny_stylegan2_kwargs, "dp_compatible": True})
    calls = []

    class FakePrivateD:
        """Stands in for the DP step: per-sample losses, one step through the module's D optimizer."""

        expected_images_per_step = 4.0

        def step(self, module, real, labels, fake):
            calls.append((tuple(real.shape), None if labels is None else tuple(labels.shape), tuple(fake.shape)))
            loss = module.d_loss_per_sample(module.D, real, fake)
            assert loss.shape == (real.shape[0],)
            opt = module.optimizers()[1]
            opt.zero_grad()
            module.manual_backward(loss.mean())
            opt.step()
            return {"dp/loss": float(loss.detach().mean())}

    model.private_d = FakePrivateD()
    trainer = tiny_trainer(tmp_path, max_batches=2)
    trainer.fit(model, tiny_image_loader())
    assert calls == [((4, 3, 16, 16), (4,), (4, 3, 16, 16))] * 2
    assert trainer.global_step == 4 and int(model.batches_seen) == 2
    assert "dp/loss" in trainer.callback_metrics
    assert "loss/r1_penalty" not in trainer.callback_metrics  # the built-in D step did not run
    # The private batch size never reaches the image count: it advances by the expected size.
    assert int(model.images_seen) == 8
    assert not (tmp_path / "samples" / "reals.png").exists()  # no grid of private training images


def test_mixed_precision_step_is_finite(tmp_path, tiny_stylegan2_kwargs):
    """The bf16 autocast path the GPU configs use (here on the CPU): losses and weights stay finite."""
    pl.seed_everything(0)
    model = StyleGAN2(**tiny_stylegan2_kwargs)
    trainer = tiny_trainer(tmp_path, max_batches=2, precision="bf16-mixed")
    trainer.fit(model, tiny_image_loader())
    for key in ("loss/d", "loss/g", "loss/r1_penalty"):
        assert torch.isfinite(trainer.callback_metrics[key]), key
    assert torch.isfinite(_flat(model.G)).all() and torch.isfinite(_flat(model.D)).all()
    assert model.G_ema(torch.randn(2, model.G_ema.z_dim)).dtype == torch.float32
