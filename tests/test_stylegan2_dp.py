"""StyleGAN2 under DP: the G step's randomness ignores the realised private batch, checkpoints hold
no noise state and only the nominal image count, and d_steps_per_g_step takes k private D steps per G step."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from _fixtures_model import TINY_STYLEGAN2, tiny_trainer
from gmia_defend.callbacks import PrivacyBudgetMonitor
from gmia_defend.data import IdentityDataModule
from gmia_defend.mitigations import make_discriminator_private
from gmia_defend.models import StyleGAN2

DP_MODEL = {**TINY_STYLEGAN2, "dp_compatible": True, "augment_p": 0.5, "style_mixing_prob": 0.5,
            "pl_weight": 1.0, "pl_interval": 1, "rng_seed": 3}
DATA = dict(num_members=4, num_nonmembers=2, references_per_identity=1, num_population_identities=0,
            images_per_identity=2, member_images=6, resolution=16, batch_size=4)


def _g_step_images(tmp_path, batch: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Images the synthesis network made in one DP training batch whose realised size is ``batch``."""
    pl.seed_everything(0)
    model = StyleGAN2(**DP_MODEL)
    pd = make_discriminator_private(model, noise_multiplier=1.0, batch_size=4, dataset_size=16)
    pd.sampler = pd.batch_sampler()  # the loader below stands in for the Poisson batches it would draw
    calls: list[torch.Tensor] = []
    model.G.synthesis.register_forward_hook(lambda m, i, out: calls.append(out.detach().clone()))
    images = torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch)) * 2 - 1
    loader = DataLoader(TensorDataset(images, torch.arange(batch)), batch_size=batch)
    tiny_trainer(tmp_path, max_batches=1).fit(model, loader)
    return calls, model.images_seen.clone()


def test_g_step_draws_do_not_depend_on_the_private_batch_size(tmp_path) -> None:
    small, seen_small = _g_step_images(tmp_path / "a", 3)
    large, seen_large = _g_step_images(tmp_path / "b", 7)
    # D step: fakes paired with the 3 or 7 real images; G step: the nominal batch (4), then path length
    assert [c.shape[0] for c in small] == [3, 4, 2] and [c.shape[0] for c in large] == [7, 4, 2]
    assert torch.equal(small[1], large[1]) and torch.equal(small[2], large[2])
    assert int(seen_small) == int(seen_large) == 4  # the image counter is nominal too


def test_dp_checkpoint_holds_no_noise_state_and_nominal_counts(tmp_path) -> None:
    pl.seed_everything(0)
    dm = IdentityDataModule(**DATA)
    model = StyleGAN2(**DP_MODEL)
    monitor = PrivacyBudgetMonitor(make_private={"noise_multiplier": 1.0, "unit": "identity",
                                                 "max_images_per_identity": 2, "seed": 1})
    trainer = tiny_trainer(tmp_path, max_batches=5, enable_checkpointing=True,
                           callbacks=[monitor, ModelCheckpoint(dirpath=str(tmp_path), save_last=True)])
    sizes: list[int] = []
    original = model.training_step

    def counting_step(batch, batch_idx):
        sizes.append(int(batch[0].shape[0]))
        return original(batch, batch_idx)

    model.training_step = counting_step
    trainer.fit(model, datamodule=dm)
    assert len(sizes) == 5 and len(set(sizes)) > 1  # Poisson: the realised sizes vary
    pd = model.private_d
    nominal = max(1, round(pd.expected_images_per_step))
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert int(ckpt["state_dict"]["images_seen"]) == 5 * nominal != sum(sizes)

    def keys(obj, path=""):
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield f"{path}/{k}"
                yield from keys(v, f"{path}/{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                yield from keys(v, f"{path}/{i}")

    found = [k for k in keys(ckpt) if any(w in k.lower() for w in ("noise_rng", "rng_state", "generator_state"))]
    assert not found, found
    assert "position" not in ckpt.get("IdentityDataModule", {})  # the private sampler's draws are not saved


def test_d_steps_per_g_step_counts_each_private_d_step(tmp_path) -> None:
    pl.seed_everything(0)
    dm = IdentityDataModule(**DATA)
    model = StyleGAN2(**{**DP_MODEL, "d_steps_per_g_step": 2, "pl_weight": 0.0})
    pd = make_discriminator_private(model, datamodule=dm, noise_multiplier=1.0)
    g_before = [p.detach().clone() for p in model.G.parameters()]
    updates: list[bool] = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            now = [p.detach() for p in pl_module.G.parameters()]
            updates.append(any(not torch.equal(a, b) for a, b in zip(g_before, now)))
            g_before[:] = [p.clone() for p in now]

    trainer = tiny_trainer(tmp_path, max_batches=4, max_steps=6, callbacks=[Watch()])
    trainer.fit(model, datamodule=dm)
    assert updates == [False, True, False, True]  # G steps after every 2nd D step
    assert pd.steps == model.d_steps == 4 and len(pd.history) >= 1
    assert trainer.global_step == 6  # 4 D + 2 G optimizer steps
    with pytest.raises(Exception, match="d_steps_per_g_step"):
        StyleGAN2(**{**DP_MODEL, "d_steps_per_g_step": 0})
