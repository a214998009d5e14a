"""IdentitySplit creation, JSON round trip, validation errors; AuditSet from a split."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from gmia_defend.data import AuditSet, IdentitySplit, SyntheticFaces
from gmia_defend.errors import DataError


def _clone(split: IdentitySplit) -> IdentitySplit:
    return IdentitySplit.from_dict(copy.deepcopy(split.to_dict()))


def test_create_structure(synthetic_dataset: SyntheticFaces, synthetic_split: IdentitySplit) -> None:
    s = synthetic_split
    assert len(s.members) == 8 and len(s.nonmembers) == 8 and len(s.population) == 4 * 3
    assert not set(s.members) & set(s.nonmembers)
    for name, train in s.members.items():
        refs = s.references[name]
        assert len(refs) == 3 and len(train) == 7
        assert not set(refs) & set(train)
        assert all(k.startswith(name + "/") for k in train + refs)
    assert all(len(v) == 3 for v in s.nonmembers.values())
    pop_ids = {k.split("/")[0] for k in s.population}
    assert len(pop_ids) == 4 and not pop_ids & (set(s.members) | set(s.nonmembers))
    assert s.dataset_fingerprint == synthetic_dataset.fingerprint()
    assert s.dataset == synthetic_dataset.spec()
    s.validate(synthetic_dataset)
    idx = s.train_indices(synthetic_dataset)
    assert len(idx) == 56 == s.num_train_images
    assert [synthetic_dataset.keys[i] for i in idx] == [k for v in s.members.values() for k in v]


def test_create_is_seeded(synthetic_dataset: SyntheticFaces) -> None:
    a = IdentitySplit.create(synthetic_dataset, 4, 4, seed=1)
    b = IdentitySplit.create(synthetic_dataset, 4, 4, seed=1)
    c = IdentitySplit.create(synthetic_dataset, 4, 4, seed=2)
    assert a.to_dict() == b.to_dict()
    assert a.to_dict() != c.to_dict()


def test_member_identities_fixed(synthetic_dataset: SyntheticFaces) -> None:
    names = synthetic_dataset.identities[:3]
    s = IdentitySplit.create(synthetic_dataset, None, 5, member_identities=names)
    assert sorted(s.members) == sorted(names) and not set(names) & set(s.nonmembers)
    with pytest.raises(DataError, match="not an identity"):
        IdentitySplit.create(synthetic_dataset, None, 5, member_identities=["syn-999999", names[0]])
    with pytest.raises(DataError, match="num_members"):
        IdentitySplit.create(synthetic_dataset, 2, 5, member_identities=names)


def test_json_round_trip(tmp_path: Path, synthetic_dataset: SyntheticFaces, synthetic_split: IdentitySplit) -> None:
    path = synthetic_split.save(tmp_path / "run" / "split.json")
    data = json.loads(path.read_text())
    assert data["format"] == "gmia-defend/identity-split" and data["dataset"]["type"] == "synthetic"
    loaded = IdentitySplit.load(path)
    assert loaded == synthetic_split
    loaded.validate(synthetic_dataset)
    reopened = loaded.open_dataset()
    assert reopened.fingerprint() == synthetic_dataset.fingerprint()
    assert loaded.open_dataset(resolution=64).resolution == 64


def test_create_errors(synthetic_dataset: SyntheticFaces) -> None:
    with pytest.raises(DataError, match="at least 2"):
        IdentitySplit.create(synthetic_dataset, 1, 5)
    with pytest.raises(DataError, match="at least 2"):
        IdentitySplit.create(synthetic_dataset, 5, 1)
    with pytest.raises(DataError, match="num_nonmembers"):
        IdentitySplit.create(synthetic_dataset, 20, 10)
    with pytest.raises(DataError, match="num_population_identities"):
        IdentitySplit.create(synthetic_dataset, 8, 8, num_population_identities=9)
    with pytest.raises(DataError, match="references_per_identity"):
        IdentitySplit.create(synthetic_dataset, 4, 4, references_per_identity=0)
    # members need references + 1 images: identities with 3 images cannot be members with 3 refs
    few = SyntheticFaces(num_identities=6, images_per_identity=[3, 3, 3, 3, 4, 4])
    with pytest.raises(DataError, match="only 2 of 6 identities have >= 4 images"):
        IdentitySplit.create(few, 3, 2, references_per_identity=3)
    with pytest.raises(DataError, match="needs >= 4"):
        IdentitySplit.create(few, None, 2, references_per_identity=3, member_identities=["syn-000000", "syn-000004"])


def test_validate_errors(synthetic_dataset: SyntheticFaces, synthetic_split: IdentitySplit) -> None:
    members = list(synthetic_split.members)
    nonmembers = list(synthetic_split.nonmembers)

    s = _clone(synthetic_split)  # overlapping member / non-member identities
    s.nonmembers[members[0]] = list(s.references[members[0]])
    with pytest.raises(DataError, match="both member and non-member"):
        s.validate(synthetic_dataset)

    s = _clone(synthetic_split)  # unknown keys
    s.nonmembers[nonmembers[0]] = ["syn-000999/0000"]
    with pytest.raises(DataError, match="not in this dataset"):
        s.validate(synthetic_dataset, check_fingerprint=False)

    other = SyntheticFaces(num_identities=24, images_per_identity=10, resolution=32, seed=1)
    with pytest.raises(DataError, match="fingerprint"):
        synthetic_split.validate(other)

    s = _clone(synthetic_split)  # fewer than 2 identities on a side
    for name in members[1:]:
        del s.members[name], s.references[name]
    with pytest.raises(DataError, match="at least 2 member"):
        s.validate(synthetic_dataset)

    s = _clone(synthetic_split)  # a member without training images
    s.members[members[0]] = []
    with pytest.raises(DataError, match="0 training"):
        s.validate(synthetic_dataset)

    s = _clone(synthetic_split)  # a reference also trained on
    s.members[members[0]].append(s.references[members[0]][0])
    with pytest.raises(DataError, match="also used for training"):
        s.validate(synthetic_dataset)

    s = _clone(synthetic_split)  # a key listed under the wrong identity
    s.members[members[0]].append(s.members[members[1]].pop())
    with pytest.raises(DataError, match="belongs to"):
        s.validate(synthetic_dataset)

    s = _clone(synthetic_split)  # population drawn from an audited identity
    s.population.append(synthetic_dataset.keys[synthetic_dataset.indices_of(nonmembers[0])[-1]])
    s.nonmembers[nonmembers[0]] = [k for k in s.nonmembers[nonmembers[0]] if k not in s.population]
    with pytest.raises(DataError, match="population image of audited identity"):
        s.validate(synthetic_dataset)

    s = _clone(synthetic_split)  # references without a member
    s.references["syn-000999"] = ["x"]
    with pytest.raises(DataError, match="not a member"):
        s.validate(synthetic_dataset)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        IdentitySplit.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        IdentitySplit.load(bad)
    bad.write_text(json.dumps({"members": {}}))
    with pytest.raises(DataError, match="lacks field"):
        IdentitySplit.load(bad)
    bad.write_text(json.dumps({"members": [], "references": {}, "nonmembers": {}}))
    with pytest.raises(DataError, match="must map identity"):
        IdentitySplit.load(bad)


def test_audit_set_from_split(audit_set: AuditSet, synthetic_split: IdentitySplit, synthetic_dataset: SyntheticFaces) -> None:
    a = audit_set
    assert a.member_images.shape == (24, 3, 32, 32) and a.nonmember_images.shape == (24, 3, 32, 32)
    assert a.member_identities == list(synthetic_split.members)
    assert a.nonmember_identities == list(synthetic_split.nonmembers)
    assert a.member_labels.dtype == torch.int64 and a.member_labels.bincount().tolist() == [3] * 8
    assert a.nonmember_labels.bincount().tolist() == [3] * 8
    assert a.train_counts == {n: 7 for n in synthetic_split.members}
    assert a.population_images is not None and a.population_images.shape == (12, 3, 32, 32)
    assert a.population_labels is not None and a.population_labels.bincount().tolist() == [3] * 4
    # the first member reference is exactly that dataset image
    first = synthetic_split.references[a.member_identities[0]][0]
    assert torch.equal(a.member_images[0], synthetic_dataset.load(synthetic_dataset.indices_of_keys([first]))[0])
    images, labels = a.references()
    assert images.shape[0] == 48 and int(labels.max()) == 15 and a.is_member.sum() == 8
    assert a.resolution == 32 and a.to("cpu").member_images.shape == a.member_images.shape


def test_audit_set_without_population(synthetic_dataset: SyntheticFaces) -> None:
    split = IdentitySplit.create(synthetic_dataset, 2, 2, references_per_identity=2)
    a = AuditSet.from_split(synthetic_dataset, split)
    assert a.population_images is None and a.member_images.shape[0] == 4
    with pytest.raises(DataError, match="at least 2"):
        AuditSet(a.member_images[:2], torch.zeros(2, dtype=torch.int64), a.member_identities[:1],
                 a.nonmember_images, a.nonmember_labels, a.nonmember_identities)


def test_members_and_nonmembers_meet_the_same_eligibility_rule() -> None:
    # Half the identities have 3 images, half 12: members need >= 4 (3 references + training), and so
    # do non-members now, so no non-member is a "rare" identity that members could never be.
    counts = [3, 12] * 20
    faces = SyntheticFaces(num_identities=40, images_per_identity=counts, resolution=16)
    split = IdentitySplit.create(faces, num_members=6, num_nonmembers=10, references_per_identity=3)
    have = faces.counts()
    assert all(have[n] >= 4 for n in list(split.members) + list(split.nonmembers))
    assert split.meta["min_images"] == 4
    assert {len(v) for v in split.nonmembers.values()} == {len(v) for v in split.references.values()} == {3}
    with pytest.raises(DataError, match="eligibility"):
        IdentitySplit.create(faces, num_members=6, num_nonmembers=15, references_per_identity=3)


def test_public_identities(synthetic_dataset: SyntheticFaces, synthetic_split: IdentitySplit, tmp_path: Path) -> None:
    s = synthetic_split
    assert s.public == []
    pop = {k.split("/")[0] for k in s.population}
    free = [n for n in synthetic_dataset.identities if n not in s.members and n not in s.nonmembers and n not in pop]
    pub = s.with_public(free[:3])
    assert pub.public == sorted(free[:3]) and s.public == []
    pub.validate(synthetic_dataset)
    again = IdentitySplit.load(pub.save(tmp_path / "split.json"))
    assert again.public == pub.public
    assert again.with_training(dict(again.members)).public == pub.public
    member, nonmember, popid = next(iter(s.members)), next(iter(s.nonmembers)), sorted(pop)[0]
    other = s.with_public(["elsewhere-1"], dataset={"dataset": "synthetic", "identity_offset": 10_000})
    other.validate(synthetic_dataset)  # names of another dataset: not looked up in this one
    assert IdentitySplit.from_dict(other.to_dict()).public_dataset["identity_offset"] == 10_000
    with pytest.raises(DataError, match="not in this dataset"):
        s.with_public(["elsewhere-1"]).validate(synthetic_dataset)
    with pytest.raises(DataError) as err:
        s.with_public([free[0], member, nonmember, popid])
    text = str(err.value)
    assert member in text and nonmember in text and popid in text and free[0] not in text


def test_reference_counts_equalised_or_refused(synthetic_dataset: SyntheticFaces, synthetic_split: IdentitySplit) -> None:
    from gmia_defend.attack import IdentityMembershipAttack

    uneven = _clone(synthetic_split)
    first = next(iter(uneven.nonmembers))
    uneven.nonmembers[first] = uneven.nonmembers[first][:1]  # one non-member with 1 reference, others 3
    audit = AuditSet.from_split(synthetic_dataset, uneven)
    assert set(audit.reference_counts()) == {1}
    assert AuditSet.from_split(synthetic_dataset, uneven).member_images.equal(audit.member_images)  # seeded
    raw = AuditSet.from_split(synthetic_dataset, uneven, equalize=False)
    assert sorted(set(raw.reference_counts())) == [1, 3]
    with pytest.raises(DataError, match="equalize_references"):
        IdentityMembershipAttack(lambda x: x.flatten(1), raw, num_samples=10, progress=False)
    with pytest.raises(DataError, match=first):
        raw.equalize_references(2)
