"""Poisson batch samplers over images and identities, and empty-batch collation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from gmia_defend.errors import DataError, UserError
from gmia_defend.mitigations.identity_sampling import (
    capped_images,
    identity_poisson_sampler,
    identity_sample_rate,
    identity_units,
    image_poisson_sampler,
    private_dataloader,
)

# 10 identities with 1..10 images each, in shuffled order
_COUNTS = np.arange(1, 11)
_TARGETS = np.random.default_rng(0).permutation(np.repeat(np.arange(10), _COUNTS))


def test_identity_units_group_images() -> None:
    units = identity_units(_TARGETS)
    assert [len(u) for u in units] == list(_COUNTS)
    for k, u in enumerate(units):
        assert (_TARGETS[u] == k).all()
    assert capped_images(_TARGETS, 3) == int(np.minimum(_COUNTS, 3).sum())
    assert identity_sample_rate(_TARGETS, 6, 3) == pytest.approx(6 / np.minimum(_COUNTS, 3).sum())


def test_identity_sampler_rate_cap_and_membership() -> None:
    q, m = 0.3, 3
    sampler = identity_poisson_sampler(_TARGETS, q, max_images_per_identity=m, seed=1, steps_per_epoch=400)
    hits = np.zeros(10)
    sizes = []
    for batch in sampler:
        ids, per_id = np.unique(_TARGETS[batch], return_counts=True)
        assert len(set(batch)) == len(batch)
        assert (per_id <= m).all()
        assert (per_id == np.minimum(_COUNTS[ids], m)).all()  # a sampled identity brings min(n_k, m)
        hits[ids] += 1
        sizes.append(len(batch))
    rate = hits / 400  # each identity's inclusion rate ~ Binomial(400, q) / 400: sd 0.023
    assert np.abs(rate - q).max() < 0.1
    assert abs(hits.sum() / 4000 - q) < 0.03
    assert abs(np.mean(sizes) - q * np.minimum(_COUNTS, m).sum()) < 0.6


def test_samplers_are_seeded_fresh_per_epoch_and_salted() -> None:
    a = identity_poisson_sampler(_TARGETS, 0.3, max_images_per_identity=2, seed=5)
    b = identity_poisson_sampler(_TARGETS, 0.3, max_images_per_identity=2, seed=5)
    first, again = list(a), list(b)
    assert first == again
    assert list(a) != first  # the next epoch draws new batches
    salted = identity_poisson_sampler(_TARGETS, 0.3, max_images_per_identity=2, seed=5, salt=lambda: 17)
    assert list(salted) != first
    assert len(a) == round(1 / 0.3)


def test_image_sampler_rate_and_ranks() -> None:
    sampler = image_poisson_sampler(200, 0.1, seed=0, steps_per_epoch=200)
    counts = np.bincount(np.concatenate([np.asarray(b, dtype=int) for b in sampler]), minlength=200)
    assert abs(counts.sum() / (200 * 200) - 0.1) < 0.01
    r0 = {i for b in image_poisson_sampler(20, 0.9, seed=0, rank=0, world_size=2) for i in b}
    r1 = {i for b in image_poisson_sampler(20, 0.9, seed=0, rank=1, world_size=2) for i in b}
    assert r0 and r1 and not (r0 & r1)


def test_fixed_size_shuffling_mode() -> None:
    sampler = image_poisson_sampler(40, 0.25, seed=0, poisson=False)
    batches = list(sampler)
    assert len(batches) == 4 and all(len(b) == 10 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(40))


def test_empty_batches_collate_to_zero_length() -> None:
    data = TensorDataset(torch.randn(30, 3, 4, 4), torch.arange(30) % 3)
    sampler = image_poisson_sampler(30, 0.02, seed=3, steps_per_epoch=30)
    batches = list(private_dataloader(data, sampler))
    sizes = [len(x) for x, _ in batches]
    assert 0 in sizes and len(batches) == 30
    empty = next(b for b in batches if len(b[0]) == 0)
    assert empty[0].shape == (0, 3, 4, 4) and empty[1].dtype == torch.long


def test_bad_sampler_arguments() -> None:
    with pytest.raises(UserError):
        image_poisson_sampler(10, 0.0)
    with pytest.raises(UserError):
        identity_poisson_sampler(_TARGETS, 0.5, max_images_per_identity=0)
    with pytest.raises(DataError):
        identity_units([])
    with pytest.raises(UserError):
        identity_sample_rate(_TARGETS, 1000, 2)


def test_ranks_keep_slices_of_one_global_poisson_draw() -> None:
    """Two simulated ranks with the same seed: their batches together are exactly the single-process
    Poisson draw, and a unit's inclusion on one rank is independent of another unit's on the other."""
    steps = 3000
    whole = image_poisson_sampler(2, 0.5, seed=11, steps_per_epoch=steps)
    r0 = image_poisson_sampler(2, 0.5, seed=11, rank=0, world_size=2, steps_per_epoch=steps)
    r1 = image_poisson_sampler(2, 0.5, seed=11, rank=1, world_size=2, steps_per_epoch=steps)
    a, b = np.zeros(steps), np.zeros(steps)
    for s, (x, y, both) in enumerate(zip(r0, r1, whole)):
        assert set(x) <= {0} and set(y) <= {1}
        assert sorted(x + y) == sorted(both)  # the union is the one global draw
        a[s], b[s] = len(x), len(y)
    assert abs(a.mean() - 0.5) < 0.05 and abs(b.mean() - 0.5) < 0.05
    # independent inclusion: P(both) ~ P(a) P(b); perfectly correlated draws would give corr 1
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.08
    assert abs((a * b).mean() - a.mean() * b.mean()) < 0.03


def test_ranks_stay_in_step_with_per_identity_subsets() -> None:
    """Per-unit image subsets draw from their own seeds, so ranks consume nothing from a shared
    stream and later steps still match the single-process draw."""
    kw = dict(max_images_per_identity=2, seed=4, steps_per_epoch=50)
    whole = list(identity_poisson_sampler(_TARGETS, 0.4, **kw))
    parts = [list(identity_poisson_sampler(_TARGETS, 0.4, rank=r, world_size=3, **kw)) for r in range(3)]
    for s in range(50):
        assert sorted(i for p in parts for i in p[s]) == sorted(whole[s])
