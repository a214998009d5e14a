"""What epsilon covers: a DP run whose release is chosen with private data says so; a choice on public data
only (quality against population images, leakage not used) is covered; asking for coverage while
choosing with private data is refused at setup."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
from _fixtures_callbacks import CB_RES, CbTinyEmbedder, cb_monitor_kwargs, cb_trainer
from dcgan_module import DCGAN

from gmia_defend.callbacks import IdentityLeakageMonitor, ReleaseCheckpointSelector
from gmia_defend.errors import UserError


class _Epsilon(pl.Callback):
    """Stands in for PrivacyBudgetMonitor: publishes privacy/epsilon through trainer.callback_metrics and says
    what it means through ``summary()`` (found by ``emits_privacy_summary``)."""

    emits_privacy_summary = True
    valid = True

    def summary(self):
        return {"unit": "identity", "scheme": "uls", "epsilon_meaning": "per person: ...",
                "epsilon_valid": self.valid, "epsilon_note": None if self.valid else "shuffled sampling"}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pl_module.log("privacy/epsilon", 0.1 * (trainer.global_step // 2), on_step=True, on_epoch=False,
                      batch_size=1)


@pytest.fixture(scope="module")
def world_with_population():
    from gmia_defend.data import AuditSet, IdentitySplit, SyntheticFaces

    ds = SyntheticFaces(num_identities=30, images_per_identity=13, resolution=CB_RES, seed=3)
    split = IdentitySplit.create(ds, num_members=8, num_nonmembers=8, references_per_identity=3,
                                 num_population_identities=6, seed=1)
    from types import SimpleNamespace
    from torch.utils.data import DataLoader, TensorDataset

    idx = split.train_indices(ds)
    data = TensorDataset(ds.load(idx), ds.targets[idx])
    return SimpleNamespace(audit=AuditSet.from_split(ds, split),
                           loader=lambda: DataLoader(data, batch_size=16, shuffle=False, drop_last=True))


def _fit(world, root, monitor_kw, selector):
    pl.seed_everything(0)
    monitor = IdentityLeakageMonitor(**cb_monitor_kwargs(world, CbTinyEmbedder(), audit_at_start=True, **monitor_kw))
    cb_trainer(root, [_Epsilon(), monitor, selector], max_steps=16).fit(DCGAN(), world.loader())
    return json.loads((root / "release.json").read_text())


def test_private_selection_is_not_covered_and_public_selection_is(world_with_population, tmp_path):
    private = _fit(world_with_population, tmp_path / "private", {},
                   ReleaseCheckpointSelector(budget=0.999, min_quality_gain=None))
    assert private["selection_uses_private_data"] is True and private["epsilon_covers_selection"] is False
    assert "held-out photos" in private["epsilon_covers_selection_reason"]
    assert "training images" in private["epsilon_covers_selection_reason"] and private["epsilon"] is not None

    selector = ReleaseCheckpointSelector(use_leakage=False, require_covered_epsilon=True, min_quality_gain=None)
    public = _fit(world_with_population, tmp_path / "public", {"quality_reference": "population"}, selector)
    assert public["released"] and public["quality_reference"] == "population"
    assert public["selection_uses_private_data"] is False and public["epsilon_covers_selection"] is True
    assert "leakage is reported but not used" in public["rule"]
    assert public["reported"]["leakage/auc"] is not None  # leakage still reported, from the confirmation half
    assert public["privacy"]["unit"] == "identity" and public["privacy"]["epsilon_meaning"] == "per person: ..."


def test_covered_epsilon_with_private_selection_is_refused(world_with_population, tmp_path):
    with pytest.raises(UserError, match="require_covered_epsilon=True.*use_leakage=False"):
        _fit(world_with_population, tmp_path / "a", {}, ReleaseCheckpointSelector(require_covered_epsilon=True))
    with pytest.raises(UserError, match="quality_reference='population'"):
        _fit(world_with_population, tmp_path / "b", {},
             ReleaseCheckpointSelector(require_covered_epsilon=True, use_leakage=False))


def test_quality_reference_from_a_folder_of_public_images(world_with_population, tmp_path):
    import numpy as np
    from PIL import Image

    from gmia_defend.callbacks._real_images import real_images_for

    rng = np.random.default_rng(0)
    for person in ("public-a", "public-b"):
        (tmp_path / "public" / person).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "public" / person / f"{i}.png")
    images = real_images_for(str(tmp_path / "public"), None, 4, 0, lambda: world_with_population.audit)
    assert images.shape == (4, 3, CB_RES, CB_RES) and images.min() >= -1 and images.max() <= 1
    with pytest.raises(UserError, match="quality_reference"):
        IdentityLeakageMonitor(quality_reference=str(tmp_path / "missing"))
