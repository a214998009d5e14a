"""IdentityDataModule: batches, audit set, caps, balanced sampling, split files, folders, YAML args."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gmia_defend.data import IdentityDataModule
from gmia_defend.data.datamodule import IndexedImages, PrerenderedImages
from gmia_defend.errors import DataError

SMALL = dict(num_members=4, num_nonmembers=6, references_per_identity=2, num_population_identities=3,
             images_per_identity=8, batch_size=8)


def test_batches_and_audit_set() -> None:
    dm = IdentityDataModule(**SMALL)
    dm.setup("fit")
    assert isinstance(dm.train_dataset, PrerenderedImages)
    assert len(dm.dataset.identities) == 13 and dm.num_train_images == 4 * 6
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert float(images.min()) >= -1 and float(images.max()) <= 1
    members = {dm.dataset.identities.index(n) for n in dm.split.members}
    assert set(labels.tolist()) <= members
    # pre-rendered (uint8) training images match the dataset's own rendering to 8-bit precision
    first = dm.train_indices[0]
    assert torch.allclose(dm.train_dataset[0][0], dm.dataset.load([first])[0], atol=1 / 127.5 + 1e-6)
    a = dm.audit_set
    assert a is dm.audit_set  # cached
    assert a.member_images.shape == (8, 3, 32, 32) and a.nonmember_images.shape == (12, 3, 32, 32)
    assert a.population_images is not None and a.population_images.shape[0] == 6
    assert a.train_counts == {n: 6 for n in dm.split.members}
    assert len(dm.train_dataloader()) == 3  # 24 images, batch 8, drop_last


def test_member_images_cap_and_balanced(tmp_path: Path) -> None:
    dm = IdentityDataModule(**{**SMALL, "member_images": 20, "max_images_per_identity": 5, "balanced": True})
    assert dm.train_counts == {n: 5 for n in dm.split.members}
    assert dm.audit_set.train_counts == dm.train_counts
    assert len(dm.dataset.indices_of(dm.split.member_identities[0])) == 22
    loader = dm.train_dataloader()
    assert loader.batch_sampler.balanced is not None  # identity-balanced order
    images, labels = next(iter(loader))
    assert images.shape == (8, 3, 32, 32)
    path = dm.save_split(tmp_path)
    assert path == tmp_path / "split.json"
    again = IdentityDataModule(split_path=str(path), batch_size=8)
    assert again.split.to_dict() == dm.split.to_dict()
    assert again.split_hash() == dm.split_hash()
    assert torch.equal(again.audit_set.member_images, dm.audit_set.member_images)
    again.load_state_dict(dm.state_dict())
    other = IdentityDataModule(**{**SMALL, "split_seed": 1})
    with pytest.raises(DataError, match="another identity split"):
        other.load_state_dict(dm.state_dict())


def test_too_few_images_for_a_batch() -> None:
    dm = IdentityDataModule(**{**SMALL, "batch_size": 64})
    with pytest.raises(DataError, match="batch_size"):
        dm.train_dataloader()
    with pytest.raises(DataError, match="max_images_per_identity"):
        _ = IdentityDataModule(**{**SMALL, "max_images_per_identity": 0}).split


def test_folder_dataset(identity_folder: Path) -> None:
    dm = IdentityDataModule(dataset=str(identity_folder), resolution=16, num_members=3, num_nonmembers=4,
                            references_per_identity=2, num_population_identities=2, batch_size=4)
    assert isinstance(dm.train_dataset, IndexedImages) and len(dm.train_dataset) == 18
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 16, 16) and labels.dtype == torch.int64
    assert dm.audit_set.member_images.shape == (6, 3, 16, 16)
    assert dm.split.dataset["type"] == "folder"


def test_arguments_parse_from_yaml_like_config() -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(IdentityDataModule, "data")
    cfg = parser.parse_args(["--data.num_members=4", "--data.member_images=30", "--data.balanced=true",
                             "--data.split_path=null"])
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    dm = instantiate(cfg).data
    assert isinstance(dm, IdentityDataModule) and dm.member_images == 30 and dm.balanced is True
    assert dm.split.train_counts == {n: 30 for n in dm.split.members}


def test_member_image_budget_holds_the_total_fixed():
    import pytest

    from gmia_defend.data import IdentityDataModule
    from gmia_defend.errors import DataError

    few = IdentityDataModule(num_members=4, member_image_budget=120, num_nonmembers=4, num_population_identities=0,
                             images_per_identity=6, references_per_identity=2)
    many = IdentityDataModule(num_members=12, member_image_budget=120, num_nonmembers=4,
                              num_population_identities=0, images_per_identity=6, references_per_identity=2)
    assert few.num_train_images == many.num_train_images == 120
    assert set(few.train_counts.values()) == {30} and set(many.train_counts.values()) == {10}
    with pytest.raises(DataError, match="either member_images or member_image_budget"):
        IdentityDataModule(num_members=4, member_images=10, member_image_budget=40)
    with pytest.raises(DataError, match="smaller than num_members"):
        IdentityDataModule(num_members=8, member_image_budget=4)
