"""Public canaries: public identities trained on with the members, audited against public controls
never trained on, so a release rule can read a leakage figure computed from public people only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _fixtures_data import make_image_tree
from gmia_defend.data import IdentityDataModule, IdentitySplit
from gmia_defend.data.datamodule import ConcatImages, IndexedImages, PrerenderedImages
from gmia_defend.errors import DataError, UserError

SMALL = dict(num_members=4, num_nonmembers=4, references_per_identity=2, num_population_identities=2,
             images_per_identity=4, batch_size=4, resolution=16)


def _quantized(images: torch.Tensor) -> set[bytes]:
    """Each image as the uint8 bytes PrerenderedImages stores."""
    q = ((images.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return {bytes(x.numpy().tobytes()) for x in q}


def _public_indices_of(dm: IdentityDataModule, names: list[str]) -> list[int]:
    public = dm.public_dataset
    return [i for n in names for i in public.indices_of(n)]


def test_synthetic_canaries_are_trained_their_references_and_controls_are_not() -> None:
    dm = IdentityDataModule(**SMALL, public_identities=12, public_canaries=2, public_canary_images=5)
    split, public = dm.split, dm.public_dataset
    canaries, controls = split.public_canaries, split.public_controls
    assert len(canaries) == 2 and len(controls) == 8  # default 4 per canary, 8 of the 10 left
    assert not set(canaries) & set(controls) and set(canaries) | set(controls) <= set(split.public)
    # members 4 x (4 - 2) training images, then 2 canaries x 5
    assert dm.num_train_images == 8 + 10 and len(dm.train_dataset) == 18
    assert dm.train_counts == split.train_counts and set(dm.train_counts) == set(split.members)
    assert dm.canary_train_counts == {n: 5 for n in canaries}
    data = dm.train_dataset
    assert isinstance(data, PrerenderedImages) and data.labels.dtype == torch.int64
    trained = {bytes(x.numpy().tobytes()) for x in data.images}
    canary_train = dm.canary_train_indices
    assert {public.identities[int(public.targets[i])] for i in canary_train} == set(canaries)
    assert _quantized(public.load(canary_train)) <= trained
    refs = [k for n in canaries for k in split.public_references[n]]
    assert len(refs) == 4 and not set(refs) & {public.keys[i] for i in canary_train}
    assert not _quantized(public.load(public.indices_of_keys(refs))) & trained
    assert not _quantized(public.load(_public_indices_of(dm, controls))) & trained
    # labels: members keep their dataset index, canaries come after every member's
    n = len(dm.dataset.identities)
    member_labels, canary_labels = set(data.labels[:8].tolist()), set(data.labels[8:].tolist())
    assert max(member_labels) < n and min(canary_labels) >= n and len(canary_labels) == 2
    assert canary_labels == {n + public.identities.index(c) for c in canaries}
    # balanced sampling (and identity-level DP) read .labels: one group per person
    balanced = IdentityDataModule(**SMALL, public_identities=12, public_canaries=2, public_canary_images=5,
                                  balanced=True)
    _, labels = next(iter(balanced.train_dataloader()))
    assert labels.shape == (4,)


def test_public_audit_set_has_equal_references_and_the_right_names() -> None:
    dm = IdentityDataModule(**SMALL, public_identities=12, public_canaries=3, public_controls=5)
    audit, split = dm.public_audit_set, dm.split
    assert audit.member_identities == split.public_canaries and len(audit.member_identities) == 3
    assert audit.nonmember_identities == split.public_controls and len(audit.nonmember_identities) == 5
    assert audit.reference_counts() == [2] * 8
    assert audit.population_images is None
    assert audit.train_counts == {n: 4 for n in split.public_canaries}  # public_images_per_identity default
    public = dm.public_dataset
    first = split.public_references[split.public_canaries[0]]
    assert torch.equal(audit.member_images[:2], public.load(public.indices_of_keys(first)))
    # the protected audit is unchanged, and there is no public audit without canaries
    plain = IdentityDataModule(**SMALL, public_identities=12)
    assert plain.public_audit_set is None
    assert torch.equal(plain.audit_set.member_images, dm.audit_set.member_images)
    # capped like the members
    capped = IdentityDataModule(**SMALL, public_identities=12, public_canaries=2, public_canary_images=6,
                                max_images_per_identity=3)
    assert capped.canary_train_counts == {n: 3 for n in capped.split.public_canaries}
    assert capped.public_audit_set.train_counts == capped.canary_train_counts


def test_pretraining_on_public_people_leaves_out_canaries_and_controls() -> None:
    args = dict(SMALL, public_identities=12, public_canaries=2, public_controls=4, public_images_per_identity=3)
    dm = IdentityDataModule(**args, train_on="public")
    split, public = dm.split, dm.public_dataset
    reserved = set(split.public_canaries) | set(split.public_controls)
    pretrained = {public.identities[int(public.targets[i])] for i in dm.train_indices}
    assert len(pretrained) == 6 and not pretrained & reserved
    assert dm.num_train_images == 6 * 3 and dm.canary_train_indices == []
    labels = dm.train_dataset.labels
    assert {public.identities[int(i)] for i in labels} == pretrained
    assert dm.public_audit_set.train_counts == {n: 0 for n in split.public_canaries}  # pretraining saw none
    # the same split as fine-tuning on the members with the canaries
    members = IdentityDataModule(**args)
    assert members.split_hash() == dm.split_hash()
    with pytest.raises(UserError, match="no public identity is left for pretraining"):
        IdentityDataModule(**dict(args, public_controls=10), train_on="public").split


def test_split_json_records_the_public_audit_and_the_hash_changes(tmp_path: Path) -> None:
    plain = IdentityDataModule(**SMALL, public_identities=12)
    dm = IdentityDataModule(**SMALL, public_identities=12, public_canaries=2)
    assert "public_canaries" not in plain.split.to_dict()  # splits without canaries: JSON unchanged
    assert plain.split_hash() != dm.split_hash()
    assert dm.split_hash() != IdentityDataModule(**SMALL, public_identities=12, public_canaries=3).split_hash()
    assert dm.split_hash() != IdentityDataModule(**SMALL, public_identities=12, public_canaries=2,
                                                 split_seed=1).split_hash()
    path = dm.save_split(tmp_path)
    saved = json.loads(path.read_text())
    assert saved["public_canaries"] == dm.split.public_canaries and len(saved["public_controls"]) == 8
    assert set(saved["public_references"]) == set(saved["public_canaries"]) | set(saved["public_controls"])
    again = IdentitySplit.load(path)
    assert (again.public_canaries, again.public_controls, again.public_references) == \
        (dm.split.public_canaries, dm.split.public_controls, dm.split.public_references)
    assert again.to_dict() == dm.split.to_dict()
    assert IdentitySplit.from_dict(plain.split.to_dict()).public_canaries == []  # old files load
    # a run restarted from its split.json with the same data arguments builds the same split
    reloaded = IdentityDataModule(**SMALL, public_identities=12, public_canaries=2, split_path=str(path))
    assert reloaded.split_hash() == dm.split_hash()
    with pytest.raises(DataError, match=r"(?s)bad public audit.*not a public identity"):
        plain.split.with_public_audit(["someone", plain.split.public[0]], plain.split.public[1:3],
                                      {n: ["x"] for n in ["someone", *plain.split.public[:3]]})


def test_refusals_are_one_clear_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="public_canaries needs public people: set data.public_identities"):
        IdentityDataModule(**SMALL, public_canaries=2)
    with pytest.raises(UserError, match="at least 2 canaries"):
        IdentityDataModule(**SMALL, public_identities=12, public_canaries=1)
    with pytest.raises(UserError, match="public_canaries=0"):
        IdentityDataModule(**SMALL, public_identities=12, public_controls=3)
    with pytest.raises(UserError, match=r"needs >= 2 control identities.*only 1 eligible"):
        IdentityDataModule(**SMALL, public_identities=3, public_canaries=2).split
    with pytest.raises(UserError, match=r"public_controls=11 asks for 11"):
        IdentityDataModule(**SMALL, public_identities=12, public_canaries=2, public_controls=11).split
    with pytest.raises(UserError, match="public controls need 2 reference images"):
        IdentityDataModule(**SMALL, public_identities=12, public_canaries=2, public_images_per_identity=1).split
    with pytest.raises(UserError, match="every canary needs >= 1 training image"):
        IdentityDataModule(**SMALL, public_identities=12, public_canaries=2, public_canary_images=0)
    # a public folder whose people have only references_per_identity images: no canary can train
    few = make_image_tree(tmp_path / "few", identities=6, images=2)
    for d in sorted(few.iterdir()):
        d.rename(few / f"pub-{d.name}")
    with pytest.raises(UserError, match=r"only 0 of the 6 public identities have >= 3 images"):
        IdentityDataModule(**SMALL, public_folder=str(few), public_canaries=2).split
    with pytest.raises(UserError, match="synthetic public people only"):
        IdentityDataModule(**SMALL, public_folder=str(few), public_canaries=2, public_canary_images=4).split


def test_canaries_from_a_folder_and_from_a_public_folder(tmp_path: Path) -> None:
    # 16 identities, 9 used by the split (4 members, 4 non-members, 1 population): 7 are free
    root = make_image_tree(tmp_path / "faces", identities=16, images=5)
    folder = dict(SMALL, dataset=str(root), num_population_identities=1)
    dm = IdentityDataModule(**folder, public_identities=7, public_canaries=2, public_controls=3)
    split, data = dm.split, dm.train_dataset
    assert dm.public_dataset is dm.dataset and isinstance(data, IndexedImages)
    assert dm.num_train_images == 4 * 3 + 2 * 3 == len(data)
    keys = {dm.dataset.keys[i] for i in data.indices}
    canary_refs = {k for n in split.public_canaries for k in split.public_references[n]}
    controls = {dm.dataset.keys[i] for i in _public_indices_of(dm, split.public_controls)}
    assert not keys & canary_refs and not keys & controls
    assert {dm.dataset.identity_of_key(k) for k in keys} == set(split.members) | set(split.public_canaries)
    # same dataset: labels are dataset indices, unique per person
    names = {int(label): dm.dataset.identities[int(label)] for label in data.labels}
    assert set(names.values()) == set(split.members) | set(split.public_canaries)
    assert dm.public_audit_set.reference_counts() == [2] * 5
    pretrain = IdentityDataModule(**folder, public_identities=7, public_canaries=2, public_controls=3,
                                  train_on="public")
    assert {pretrain.dataset.identities[int(i)] for i in pretrain.train_dataset.labels} == \
        set(split.public) - set(split.public_canaries) - set(split.public_controls)

    # a separate public folder (other names): labels offset past the dataset's identities
    pub = make_image_tree(tmp_path / "public", identities=8, images=4)
    for d in sorted(pub.iterdir()):
        d.rename(pub / f"pub-{d.name}")
    dm = IdentityDataModule(**folder, public_folder=str(pub), public_canaries=2)
    data = dm.train_dataset
    assert isinstance(data, ConcatImages) and len(data) == 4 * 3 + 2 * 2
    n = len(dm.dataset.identities)
    canary_labels = set(data.labels[12:].tolist())
    assert max(data.labels[:12].tolist()) < n and canary_labels == {
        n + dm.public_dataset.identities.index(c) for c in dm.split.public_canaries}
    image, label = data[13]
    assert image.shape == (3, 16, 16) and int(label) >= n
    assert len(dm.split.public_controls) == 6  # min(4 x 2, 8 - 2)
    batch, labels = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 3, 16, 16)
    # a synthetic dataset with a public folder: prerendered members, folder canaries
    mixed = IdentityDataModule(**SMALL, public_folder=str(pub), public_canaries=2, public_controls=2)
    assert isinstance(mixed.train_dataset, ConcatImages) and mixed.num_train_images == 8 + 4
    assert min(mixed.train_dataset.labels[8:].tolist()) >= len(mixed.dataset.identities)
    assert max(mixed.train_dataset.labels[:8].tolist()) < len(mixed.dataset.identities)
