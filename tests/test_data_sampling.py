"""Diversification tools: per-identity caps, identity-balanced sampler, split builders."""

from __future__ import annotations

import pytest
import torch

from gmia_defend.data import SyntheticFaces
from gmia_defend.data.sampling import (
    IdentityBalancedSampler,
    cap_per_identity,
    fixed_budget_split,
    overrepresented_split,
    synthetic_split,
)
from gmia_defend.errors import DataError


def test_cap_per_identity() -> None:
    targets = torch.tensor([0] * 10 + [1] * 3 + [2] * 6)
    indices = list(range(19))[::-1]  # any order in, same order out
    kept = cap_per_identity(indices, targets, 4, seed=0)
    counts = torch.bincount(targets[kept]).tolist()
    assert counts == [4, 3, 4]
    assert kept == [i for i in indices if i in set(kept)]
    assert kept == cap_per_identity(indices, targets, 4, seed=0)
    assert kept != cap_per_identity(indices, targets, 4, seed=1)
    assert cap_per_identity(indices, targets, 100) == indices
    with pytest.raises(DataError, match=">= 1"):
        cap_per_identity(indices, targets, 0)


def test_balanced_sampler_draws_identities_uniformly() -> None:
    labels = torch.tensor([7] * 200 + [3] * 2 + [5] * 20)
    sampler = IdentityBalancedSampler(labels, num_samples=6000, seed=0)
    assert len(sampler) == 6000
    sampler.set_epoch(0)
    drawn = list(sampler)
    assert len(drawn) == 6000 and min(drawn) >= 0 and max(drawn) < len(labels)
    share = torch.bincount(labels[drawn], minlength=8)[[7, 3, 5]].float() / 6000
    assert torch.allclose(share, torch.full((3,), 1 / 3), atol=0.03)
    rare = [i for i in drawn if labels[i] == 3]
    assert set(rare) == {200, 201}  # both images of the rare identity appear
    sampler.set_epoch(0)
    assert list(sampler) == drawn  # seeded per epoch
    sampler.set_epoch(1)
    assert list(sampler) != drawn
    assert len(IdentityBalancedSampler(labels)) == len(labels)
    with pytest.raises(DataError):
        IdentityBalancedSampler(torch.tensor([], dtype=torch.int64))


@pytest.fixture(scope="module")
def roomy() -> SyntheticFaces:
    return SyntheticFaces(num_identities=30, images_per_identity=25, seed=0)


@pytest.mark.parametrize("num_members", [2, 5, 8])
def test_fixed_budget_split_holds_total(roomy: SyntheticFaces, num_members: int) -> None:
    split = fixed_budget_split(roomy, 40, num_members, 6, references_per_identity=3, seed=0)
    counts = list(split.train_counts.values())
    assert sum(counts) == 40 and len(counts) == num_members
    assert max(counts) - min(counts) <= 1
    assert split.meta["builder"] == "fixed_budget"
    split.validate(roomy)


def test_fixed_budget_split_errors(roomy: SyntheticFaces) -> None:
    with pytest.raises(DataError, match="no training"):
        fixed_budget_split(roomy, 3, 4, 6)
    with pytest.raises(DataError, match="images"):
        fixed_budget_split(roomy, 400, 4, 6, references_per_identity=3)  # 100 each > 22 available


def test_overrepresented_split(roomy: SyntheticFaces) -> None:
    split = overrepresented_split(roomy, 6, 6, num_overrepresented=2, frequent_images=20, rare_images=2,
                                  references_per_identity=3, num_population_identities=2, seed=1)
    frequent = split.meta["overrepresented"]
    assert len(frequent) == 2
    assert {n: c for n, c in split.train_counts.items() if c == 20}.keys() == set(frequent)
    assert sorted(split.train_counts.values()) == [2, 2, 2, 2, 20, 20]
    split.validate(roomy)
    with pytest.raises(DataError, match="num_overrepresented"):
        overrepresented_split(roomy, 4, 4, num_overrepresented=5, frequent_images=5, rare_images=1)
    with pytest.raises(DataError, match="frequent_images"):
        overrepresented_split(roomy, 4, 4, num_overrepresented=2, frequent_images=50, rare_images=1)


def test_synthetic_split_overrepresents_members() -> None:
    ds, split = synthetic_split(4, 5, member_images=30, references_per_identity=2, num_population_identities=3,
                                split_seed=3)
    assert len(ds.identities) == 12
    assert split.train_counts == {n: 30 for n in split.members}
    assert all(len(ds.indices_of(n)) == 2 for n in split.nonmembers)
    assert len(ds) == 4 * 32 + 8 * 2
    split.validate(ds)
    with pytest.raises(DataError, match="num_identities"):
        synthetic_split(4, 5, member_images=3, num_identities=6)


def test_resumable_batch_sampler_order_skip_and_ranks() -> None:
    from gmia_defend.data.sampling import ResumableBatchSampler

    s = ResumableBatchSampler(20, 4, seed=7)
    e0, e1 = list(s), list(s)  # without set_epoch, each pass is the next epoch
    assert len(e0) == len(s) == 5 and e0 != e1
    assert sorted(i for b in e0 for i in b) == list(range(20))
    s.set_epoch(1)
    assert list(s) == e1  # the order is a function of (seed, epoch) only
    r = ResumableBatchSampler(20, 4, seed=7)
    r.resume(epoch=1, batches=3)
    assert list(r) == e1[3:]  # the epoch it was stopped in, from the next batch
    fresh = ResumableBatchSampler(20, 4, seed=7)
    fresh.set_epoch(2)
    assert list(r) == list(fresh)  # the skip applies once: the next epoch is whole
    # ranks: disjoint slices that together cover the epoch's items
    ranks = [list(ResumableBatchSampler(20, 2, seed=7, rank=k, world_size=2)) for k in range(2)]
    items = [i for part in ranks for b in part for i in b]
    assert sorted(items) == list(range(20)) and len(ranks[0]) == len(ranks[1]) == 5
    # identity-balanced order is reproducible and resumable too
    labels = torch.tensor([0] * 15 + [1] * 5)
    a = list(ResumableBatchSampler(20, 5, seed=1, labels=labels))
    b = ResumableBatchSampler(20, 5, seed=1, labels=labels)
    b.resume(0, 2)
    assert list(b) == a[2:]
