"""SyntheticFaces: shapes, determinism, batch independence, identity structure, interface."""

from __future__ import annotations

import pytest
import torch

from gmia_defend.data import SyntheticFaces, open_dataset
from gmia_defend.data.synthetic import render_faces
from gmia_defend.errors import DataError


def _auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Rank-based ROC AUC (Mann-Whitney U); float similarities have no ties in practice."""
    ranks = torch.empty_like(scores, dtype=torch.float64)
    ranks[torch.argsort(scores)] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    pos = labels.bool()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("nuisance", ["mild", "strong"])
def test_shape_range_dtype(resolution: int, nuisance: str) -> None:
    ds = SyntheticFaces(num_identities=3, images_per_identity=4, resolution=resolution, nuisance=nuisance)
    x = ds.load(range(len(ds)))
    assert x.shape == (12, 3, resolution, resolution)
    assert x.dtype == torch.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert torch.isfinite(x).all()
    assert float(x.std()) > 0.1  # not blank


def test_batch_composition_does_not_change_pixels() -> None:
    ids = torch.tensor([3, 17, 3, 250])
    imgs = torch.tensor([0, 5, 9, 1])
    alone = render_faces(ids, imgs, 32, seed=1)
    # the same items inside a bigger batch that spans several internal chunks, in another order
    big_ids = torch.cat([torch.arange(150) % 37, ids.flip(0)])
    big_imgs = torch.cat([torch.arange(150) // 37, imgs.flip(0)])
    big = render_faces(big_ids, big_imgs, 32, seed=1)
    assert torch.equal(alone, big[-4:].flip(0))
    for i in range(4):
        assert torch.equal(alone[i : i + 1], render_faces(ids[i : i + 1], imgs[i : i + 1], 32, seed=1))


def test_same_person_whatever_num_identities_and_offset() -> None:
    small = SyntheticFaces(num_identities=3, images_per_identity=5, seed=4)
    large = SyntheticFaces(num_identities=40, images_per_identity=5, seed=4)
    assert torch.equal(small.load(range(15)), large.load(range(15)))
    shifted = SyntheticFaces(num_identities=2, images_per_identity=5, seed=4, identity_offset=1)
    # identity 0 of `shifted` is absolute identity 1 == identity 1 of `small`
    assert torch.equal(shifted.load(range(5)), small.load(small.indices_of("syn-000001")))
    assert shifted.identities == ["syn-000001", "syn-000002"]
    assert torch.equal(small.render(torch.tensor([2]), torch.tensor([3])), small.load([13]))


def test_seed_changes_images() -> None:
    a = SyntheticFaces(num_identities=2, images_per_identity=2, seed=0).load(range(4))
    b = SyntheticFaces(num_identities=2, images_per_identity=2, seed=1).load(range(4))
    assert (a - b).abs().mean() > 0.05


def _within_between(ds: SyntheticFaces, crop: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x = ds.load(range(len(ds)))
    if crop:
        x = x[:, :, crop:-crop, crop:-crop]
    d = torch.cdist(x.flatten(1), x.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
    same = ds.targets[:, None] == ds.targets[None, :]
    off = ~torch.eye(len(ds), dtype=torch.bool)
    return d[same & off], d[~same]


def test_identities_differ_more_than_images_within() -> None:
    mild = SyntheticFaces(num_identities=40, images_per_identity=6, seed=2)
    within, between = _within_between(mild, crop=6)  # the face region
    assert float(within.mean()) < 0.8 * float(between.mean())
    within, between = _within_between(mild)
    assert float(within.mean()) < 0.95 * float(between.mean())
    assert float(within.min()) > 0.5  # images of one identity really vary (nuisance)
    plain = SyntheticFaces(num_identities=10, images_per_identity=3, seed=2, nuisance="none")
    within, between = _within_between(plain, crop=6)
    assert float(within.max()) < 1e-3 < float(between.min()) and float(between.mean()) > 5.0  # without nuisance: the face is the identity


def test_raw_pixels_do_not_trivially_verify_identity() -> None:
    """Raw-pixel cosine verification is better than chance but far from perfect (~0.65 AUC)."""
    ds = SyntheticFaces(num_identities=60, images_per_identity=6, seed=3, identity_offset=500)
    f = torch.nn.functional.normalize(ds.load(range(len(ds))).flatten(1), dim=1)
    sim = f @ f.T
    iu = torch.triu_indices(len(ds), len(ds), 1)
    labels = (ds.targets[:, None] == ds.targets[None, :])[iu[0], iu[1]]
    auc = _auc(sim[iu[0], iu[1]], labels)
    assert 0.55 < auc < 0.8, auc


def test_interface_keys_targets_getitem_spec() -> None:
    ds = SyntheticFaces(num_identities=3, images_per_identity=[2, 4, 1], seed=5, identity_offset=10)
    assert len(ds) == 7
    assert ds.identities == ["syn-000010", "syn-000011", "syn-000012"]
    assert ds.keys[:3] == ["syn-000010/0000", "syn-000010/0001", "syn-000011/0000"]
    assert ds.targets.tolist() == [0, 0, 1, 1, 1, 1, 2]
    assert ds.targets.dtype == torch.int64
    assert ds.indices_of("syn-000011") == [2, 3, 4, 5]
    image, target = ds[3]
    assert target == 1 and torch.equal(image, ds.load([3])[0])
    assert torch.equal(ds[-1][0], ds.load([6])[0])
    with pytest.raises(IndexError):
        ds[7]
    with pytest.raises(DataError):
        ds.indices_of("nobody")
    again = open_dataset(ds.spec())
    assert again.fingerprint() == ds.fingerprint()
    assert torch.equal(again.load(range(7)), ds.load(range(7)))
    assert SyntheticFaces(3, [2, 4, 1], seed=6, identity_offset=10).fingerprint() != ds.fingerprint()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(nuisance="extreme"),
        dict(num_identities=2, images_per_identity=[3]),
        dict(num_identities=2, images_per_identity=[3, 0]),
        dict(num_identities=0),
        dict(resolution=4),
    ],
)
def test_bad_arguments_raise_data_error(kwargs: dict) -> None:
    with pytest.raises(DataError):
        SyntheticFaces(**kwargs)
