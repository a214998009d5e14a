"""Public pretraining, then private fine-tuning: init_from loads pretrained weights (or refuses a
mismatching architecture by key), and the public training set never shares a person with the split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _fixtures_data import make_image_tree
from _fixtures_model import TINY_STYLEGAN2, tiny_image_loader, tiny_trainer
from gmia_defend.data import IdentityDataModule
from gmia_defend.errors import UserError
from gmia_defend.models import StyleGAN2

SMALL = dict(num_members=4, num_nonmembers=4, references_per_identity=2, num_population_identities=2,
             images_per_identity=4, batch_size=4, resolution=16)


@pytest.fixture(scope="module")
def pretrained_ckpt(tmp_path_factory) -> Path:
    from pytorch_lightning.callbacks import ModelCheckpoint

    root = tmp_path_factory.mktemp("pretrain")
    model = StyleGAN2(**{**TINY_STYLEGAN2, "dp_compatible": True}, rng_seed=0)
    trainer = tiny_trainer(root, max_batches=2, enable_checkpointing=True,
                           callbacks=[ModelCheckpoint(dirpath=str(root), save_last=True)])
    trainer.fit(model, tiny_image_loader())
    return root / "last.ckpt"


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_init_from_checkpoint_loads_g_d_and_g_ema_only(pretrained_ckpt: Path) -> None:
    state = torch.load(pretrained_ckpt, weights_only=True)["state_dict"]
    fresh = StyleGAN2(**{**TINY_STYLEGAN2, "dp_compatible": True}, rng_seed=1)
    model = StyleGAN2(**{**TINY_STYLEGAN2, "dp_compatible": True}, rng_seed=1, init_from=str(pretrained_ckpt))
    assert not _same(fresh.G, model.G)
    for name in ("G", "D", "G_ema"):
        for key, value in getattr(model, name).state_dict().items():
            assert torch.equal(value, state[f"{name}.{key}"]), f"{name}.{key}"
    assert int(state["batches_seen"]) == 2
    assert int(model.batches_seen) == 0 and int(model.images_seen) == 0  # a new run: its own counters


def test_init_from_release_file_loads_the_generator(tmp_path: Path, pretrained_ckpt: Path) -> None:
    source = StyleGAN2(**{**TINY_STYLEGAN2, "dp_compatible": True}, rng_seed=0, init_from=str(pretrained_ckpt))
    release = tmp_path / "release.ckpt"
    torch.save({"format": "gmia-defend-release", "version": 1, "module_class": "gmia_defend.models:StyleGAN2",
                "hparams": {}, "generator_attr": "G_ema", "z_dim": 16,
                "state_dict": {k: v.float() for k, v in source.G_ema.state_dict().items()}}, release)
    model = StyleGAN2(**{**TINY_STYLEGAN2, "dp_compatible": True}, rng_seed=2, init_from=str(release))
    assert _same(model.G, source.G_ema) and _same(model.G_ema, source.G_ema)
    assert not _same(model.D, source.D)  # a release carries no discriminator


def test_init_from_refuses_another_architecture_naming_keys(pretrained_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"does not match.*G\.mapping\.layers\.0\.weight") as info:
        StyleGAN2(**{**TINY_STYLEGAN2, "dp_compatible": True, "z_dim": 8}, init_from=str(pretrained_ckpt))
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"D\.b4\.mbstd.*|missing|not in this model"):
        StyleGAN2(**{**TINY_STYLEGAN2, "mapping_layers": 3, "dp_compatible": True}, init_from=str(pretrained_ckpt))
    with pytest.raises(UserError, match="does not exist"):
        StyleGAN2(**TINY_STYLEGAN2, init_from=str(tmp_path / "nope.ckpt"))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="cannot read"):
        StyleGAN2(**TINY_STYLEGAN2, init_from=str(junk))


def test_public_synthetic_identities_are_disjoint_and_recorded(tmp_path: Path) -> None:
    dm = IdentityDataModule(**SMALL, public_identities=5, public_images_per_identity=6, train_on="public")
    public = set(dm.public_identity_names)
    split = dm.split
    population = {dm.dataset.identity_of_key(k) for k in split.population}
    assert len(public) == 5 and not public & (set(split.members) | set(split.nonmembers) | population)
    assert not public & set(dm.dataset.identities)  # a disjoint range: none of the dataset's people
    assert dm.num_train_images == 30
    _, labels = next(iter(dm.train_dataloader()))
    trained = {dm.public_dataset.identities[int(i)] for i in labels}
    assert trained <= public
    saved = json.loads(dm.save_split(tmp_path).read_text())
    assert saved["public"] == sorted(public)
    assert saved["public_dataset"]["identity_offset"] == len(dm.dataset.identities)
    # the same data arguments but training on members: the same split, audited the same way
    members = IdentityDataModule(**SMALL, public_identities=5, public_images_per_identity=6)
    assert members.split_hash() == dm.split_hash()
    assert torch.equal(members.audit_set.member_images, dm.audit_set.member_images)
    with pytest.raises(UserError, match="train_on=public needs"):
        IdentityDataModule(**SMALL, train_on="public")


def test_public_identities_of_a_folder_and_a_public_folder(tmp_path: Path) -> None:
    root = make_image_tree(tmp_path / "faces", identities=12, images=5)
    folder = dict(SMALL, dataset=str(root), num_population_identities=1)
    dm = IdentityDataModule(**folder, public_identities=3, train_on="public")
    assert len(dm.split.public) == 3
    assert not set(dm.split.public) & (set(dm.split.members) | set(dm.split.nonmembers))
    assert dm.num_train_images == 15
    with pytest.raises(UserError, match="only 3 identities"):
        IdentityDataModule(**folder, public_identities=4).split
    # a public folder whose people include an audited identity is refused, naming it
    other = make_image_tree(tmp_path / "public", identities=12, images=2)
    with pytest.raises(UserError, match=r"(?s)bad public identities.*: is a member"):
        IdentityDataModule(**folder, public_folder=str(other)).split
    with pytest.raises(UserError, match="the training dataset itself"):
        IdentityDataModule(**folder, public_folder=str(root)).split


def test_a_fine_tuned_checkpoint_loads_without_the_pretraining_file(tmp_path: Path, pretrained_ckpt: Path) -> None:
    import shutil

    from pytorch_lightning.callbacks import ModelCheckpoint

    start = tmp_path / "start.ckpt"
    shutil.copy(pretrained_ckpt, start)
    model = StyleGAN2(**{**TINY_STYLEGAN2, "dp_compatible": True}, rng_seed=5, init_from=str(start))
    trainer = tiny_trainer(tmp_path, max_batches=1, enable_checkpointing=True,
                           callbacks=[ModelCheckpoint(dirpath=str(tmp_path / "ft"), save_last=True)])
    trainer.fit(model, tiny_image_loader())
    start.unlink()  # the pretraining file is gone (another machine, cleaned up)
    again = StyleGAN2.load_from_checkpoint(str(tmp_path / "ft" / "last.ckpt"), weights_only=True)
    assert _same(again.G_ema, model.G_ema) and again.rng_seed == 5
    assert "init_from" not in again.hparams
