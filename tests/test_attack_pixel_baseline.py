"""The GAN-Leaks-style pixel baseline runs through the same attack, and misses identity re-creation."""

from __future__ import annotations

import torch
from torch import nn

from gmia_defend.attack import IdentityMembershipAttack
from gmia_defend.embedders import PixelEmbedder, load_embedder


def test_pixel_embedder_is_unit_norm_and_ignores_brightness_and_contrast():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32) * 1.2 - 0.6
    emb = PixelEmbedder(32)
    a, b = emb.embed(x), emb.embed(0.5 * x + 0.2)
    assert torch.allclose(a.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(a, b, atol=1e-4)
    assert load_embedder("pixels:16").dim == 3 * 16 * 16


class NewPosesOfMembers(nn.Module):
    """Re-creates member *people* in poses never trained on (fresh image indices), not training images."""

    z_dim = 8

    def __init__(self, dataset, member_ids: list[int]) -> None:
        super().__init__()
        self.dataset, self.ids = dataset, torch.tensor(member_ids)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        pick = (z[:, 0].abs() * 1e6).long()
        who = self.ids[pick % len(self.ids)]
        return self.dataset.render(who, 10_000 + (z[:, 1].abs() * 1e6).long() % 1000)


def test_identity_attack_sees_recreated_people_that_pixels_miss(attack_world, trained_embedder):
    ds, split = attack_world.dataset, attack_world.split
    member_ids = [ds.identities.index(name) + 0 for name in split.members]
    generator = NewPosesOfMembers(ds, [int(ds.identities[i].split("-")[1]) for i in member_ids])
    kwargs = dict(num_samples=1500, batch_size=250, seed=0, progress=False, n_bootstrap=200)
    faces = IdentityMembershipAttack(trained_embedder, attack_world.audit, **kwargs).run(generator)
    pixels = IdentityMembershipAttack(PixelEmbedder(ds.resolution), attack_world.audit, score="max_sim",
                                      reference_reduction="max", **kwargs).run(generator)
    assert faces.metrics["leakage/auc"] >= 0.9
    assert pixels.metrics["leakage/auc"] < faces.metrics["leakage/auc"] - 0.1
