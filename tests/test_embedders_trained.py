"""Training the identity embedder: quality of the shared fixture, caching, determinism, custom datasets."""

from __future__ import annotations

import time

import pytest
import torch

from gmia_defend.embedders.trained import TrainedEmbedder, train_identity_embedder
from gmia_defend.embedders.verification import verification_metrics

TINY = dict(num_identities=8, images_per_identity=4, holdout_identities=4, epochs=1, batch_size=16,
            width=4, dim=16, device="cpu", progress=False)


def test_fixture_embedder_verifies_held_out_and_audit_identities(trained_embedder):
    report = trained_embedder.report
    assert report["auc"] >= 0.98, report
    assert report["config"]["dataset"]["identity_offset"] == 1_000_000
    assert trained_embedder.name == "trained" and trained_embedder.threshold == report["threshold"]
    assert trained_embedder.threshold_far == 1e-3
    # Independent check on the identities audits use (offset 0), never seen in training.
    from gmia_defend.data import SyntheticFaces

    audit_like = SyntheticFaces(num_identities=40, images_per_identity=6, resolution=32, seed=0)
    images = audit_like.load(range(len(audit_like)))
    m = verification_metrics(trained_embedder.embed(images), audit_like.targets, far=1e-2)
    assert m["auc"] >= 0.97, m
    # The stored threshold still separates: most genuine pairs accepted, few impostors.
    g = trained_embedder.embed(images)
    sims = g @ g.T
    same = audit_like.targets[:, None] == audit_like.targets[None, :]
    off_diag = ~torch.eye(len(g), dtype=torch.bool)
    accepted = sims >= trained_embedder.threshold
    assert accepted[~same].double().mean() < 0.01
    assert accepted[same & off_diag].double().mean() > 0.3


def test_cache_hit_is_fast_and_identical(tmp_path):
    t0 = time.perf_counter()
    first = train_identity_embedder(**TINY, cache_dir=tmp_path)
    train_s = time.perf_counter() - t0
    files = list((tmp_path / "embedders").glob("trained-*.pt"))
    assert len(files) == 1 and first.report["cache_key"] in files[0].name
    t0 = time.perf_counter()
    second = train_identity_embedder(**TINY, cache_dir=tmp_path)
    load_s = time.perf_counter() - t0
    assert load_s < max(0.5, train_s / 2), (load_s, train_s)
    x = torch.rand(10, 3, 32, 32) * 2 - 1
    assert torch.equal(first.embed(x), second.embed(x))
    assert second.report == first.report and second.threshold == first.threshold
    # Another config is another cache entry.
    train_identity_embedder(**{**TINY, "seed": 1}, cache_dir=tmp_path)
    assert len(list((tmp_path / "embedders").glob("trained-*.pt"))) == 2


def test_corrupt_cache_entry_is_retrained(tmp_path):
    first = train_identity_embedder(**TINY, cache_dir=tmp_path)
    path = next((tmp_path / "embedders").glob("trained-*.pt"))
    path.write_bytes(b"truncated")
    again = train_identity_embedder(**TINY, cache_dir=tmp_path)
    assert again.report["auc"] == first.report["auc"]
    assert isinstance(TrainedEmbedder.load(path), TrainedEmbedder)


def test_training_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = train_identity_embedder(**TINY, cache=False)
    assert torch.equal(torch.rand(3), expected), "training must not consume the global RNG"
    b = train_identity_embedder(**TINY, cache=False)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_trains_on_a_given_dataset_with_identity_holdout():
    from gmia_defend.data import SyntheticFaces

    ds = SyntheticFaces(num_identities=16, images_per_identity=3, resolution=32, seed=5, identity_offset=500)
    model = train_identity_embedder(dataset=ds, **{**TINY, "holdout_identities": 4}, cache=False)
    r = model.report
    assert r["num_holdout_identities"] == 4 and r["num_train_identities"] == 12
    assert r["num_train_images"] + r["num_holdout_images"] == len(ds)
    assert r["config"]["dataset"]["fingerprint"] == ds.fingerprint()
    assert model.threshold is not None and model.input_size == 32


def test_bad_training_arguments_raise_user_error():
    from gmia_defend.errors import UserError

    with pytest.raises(UserError, match="epochs >= 1"):
        train_identity_embedder(**{**TINY, "epochs": 0}, cache=False)
    with pytest.raises(UserError, match=r"must be in \(0, 1\)"):
        train_identity_embedder(**{**TINY, "far": 1.5}, cache=False)
    with pytest.raises(UserError, match="holdout_identities >= 2"):
        train_identity_embedder(**{**TINY, "holdout_identities": 1}, cache=False)


def test_bundled_default_embedder_is_the_default_config_and_verifies_on_fresh_identities(tmp_path):
    """The shipped default embedder must be what the default recipe produces (same config hash) and
    still separate identities it never saw: re-measured here on freshly rendered people."""
    from gmia_defend.data import SyntheticFaces
    from gmia_defend.embedders.trained import BUNDLED_DIR, train_identity_embedder
    from gmia_defend.embedders.verification import verification_metrics

    model = train_identity_embedder(cache_dir=tmp_path, progress=False)  # empty cache: must not train
    assert (BUNDLED_DIR / f"trained-{model.report['cache_key']}.pt").is_file()
    assert not list(tmp_path.rglob("*.pt"))
    faces = SyntheticFaces(num_identities=60, images_per_identity=8, resolution=32, seed=0, identity_offset=3_000_000)
    emb = model.embed(faces.load(range(len(faces))))
    metrics = verification_metrics(emb, faces.targets, far=1e-3)
    assert metrics["auc"] >= 0.98
