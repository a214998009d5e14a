"""Shared fixtures of the attack tests: a toy linear "face" world with an exact linear embedder.

Identity i is a random unit vector v_i in R^16; an image of i is ``A (v_i + noise)`` reshaped to
3x8x8, with A a fixed 192x16 matrix of orthonormal columns scaled into [-1, 1]. The embedder
projects back with A^T, so identity is recoverable exactly up to the image noise. Cheap enough to
run the full attack in milliseconds; the real-data sanity tests use SyntheticFaces instead.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gmia_defend.embedders.base import Embedder

TOY_DIM = 16
TOY_RES = 8
_SCALE = 0.25


def _basis(seed: int = 123) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3 * TOY_RES * TOY_RES, TOY_DIM, generator=g))
    return q


class ToyEmbedder(Embedder):
    """Fixed linear projection onto the toy identity space (or onto its first ``dims`` axes)."""

    def __init__(self, name: str = "toy", dims: int = TOY_DIM, threshold: float | None = 0.6) -> None:
        super().__init__(input_size=TOY_RES, dim=dims, name=name)
        self.register_buffer("proj", _basis()[:, :dims].contiguous())
        self.threshold = threshold
        self.calls = 0

    def embed_preprocessed(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += x.shape[0]
        return x.flatten(1) @ self.proj


def toy_identity_vectors(num: int, offset: int = 0, seed: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(offset + num, TOY_DIM, generator=g)[offset:]
    return torch.nn.functional.normalize(v, dim=1)


def toy_render(vectors: torch.Tensor, noise: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = vectors + noise * torch.randn(vectors.shape, generator=g)
    v = torch.nn.functional.normalize(v, dim=1)
    return (_SCALE * 4 * (v @ _basis().T)).reshape(-1, 3, TOY_RES, TOY_RES).clamp(-1, 1)


def make_toy_audit(num_members: int = 12, num_nonmembers: int = 20, refs: int = 3, population: int = 0,
                   noise: float = 0.3, seed: int = 0) -> SimpleNamespace:
    """An object with AuditSet's fields (members first, then non-members, then population ids)."""
    vec = toy_identity_vectors(num_members + num_nonmembers + population)
    mem_labels = torch.arange(num_members).repeat_interleave(refs)
    non_labels = torch.arange(num_nonmembers).repeat_interleave(refs)
    audit = SimpleNamespace(
        member_identities=[f"m{i:03d}" for i in range(num_members)],
        nonmember_identities=[f"n{i:03d}" for i in range(num_nonmembers)],
        member_labels=mem_labels, nonmember_labels=non_labels,
        member_images=toy_render(vec[mem_labels], noise, seed + 1),
        nonmember_images=toy_render(vec[num_members + non_labels], noise, seed + 2),
        population_images=(toy_render(vec[num_members + num_nonmembers:].repeat_interleave(2, 0), noise, seed + 3)
                           if population else None),
        train_counts={f"m{i:03d}": 10 + i for i in range(num_members)},
    )
    audit.vectors = vec
    return audit


class ToyMemoriser(nn.Module):
    """Returns noisy images of member identities, chosen by the latent (deterministic in z)."""

    z_dim = 8

    def __init__(self, member_vectors: torch.Tensor, noise: float = 0.3) -> None:
        super().__init__()
        self.register_buffer("vectors", member_vectors)
        self.noise = noise
        self.lin = nn.Linear(1, 1)  # a parameter, so device/eval handling is exercised

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        idx = (z[:, 0].abs() * 1e4).long() % self.vectors.shape[0]
        v = self.vectors[idx] + self.noise * z[:, 1:2] * torch.roll(self.vectors[idx], 1, dims=1)
        v = torch.nn.functional.normalize(v, dim=1)
        return (_SCALE * 4 * (v @ _basis().to(z.device).T)).reshape(-1, 3, TOY_RES, TOY_RES).clamp(-1, 1)


class ToyRandom(nn.Module):
    """Images of random fresh identities: no member signal at all."""

    z_dim = TOY_DIM

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        v = torch.nn.functional.normalize(z, dim=1)
        return (_SCALE * 4 * (v @ _basis().to(z.device).T)).reshape(-1, 3, TOY_RES, TOY_RES).clamp(-1, 1)


@pytest.fixture
def attack_toy_audit() -> SimpleNamespace:
    return make_toy_audit()


@pytest.fixture
def attack_toy_embedder() -> ToyEmbedder:
    return ToyEmbedder()


# ------------------------------------------------------------------ SyntheticFaces sanity world


@pytest.fixture(scope="session")
def attack_world(trained_embedder, tmp_path_factory):
    """SyntheticFaces audit: 32 members (10 training + 5 reference images), 64 non-members x 5."""
    from gmia_defend.data import AuditSet, IdentitySplit, SyntheticFaces

    ds = SyntheticFaces(num_identities=96, images_per_identity=15, resolution=trained_embedder.input_size, seed=0)
    split = IdentitySplit.create(ds, 32, 64, references_per_identity=5, seed=0)
    path = split.save(tmp_path_factory.mktemp("attack_split") / "split.json")
    return SimpleNamespace(dataset=ds, split=split, split_path=path, audit=AuditSet.from_split(ds, split),
                           train_images=ds.load(split.train_indices(ds)))


def _z_index(z: torch.Tensor, column: int, modulo: int) -> torch.Tensor:
    return (z[:, column].abs() * 1e6).long() % modulo


class TrainingSetMemoriser(nn.Module):
    """A perfect memoriser: returns training images of member identities, picked by z."""

    z_dim = 16

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("images", images)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.images[_z_index(z, 0, self.images.shape[0])]


class FreshIdentityGenerator(nn.Module):
    """Renders identities that are neither members nor non-members (same renderer, far offset)."""

    z_dim = 16

    def __init__(self, dataset, offset: int = 500_000, identities: int = 1000) -> None:
        super().__init__()
        self.dataset, self.offset, self.identities = dataset, offset, identities

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.dataset.render(self.offset + _z_index(z, 0, self.identities), _z_index(z, 1, 50))


class UntrainedConvGenerator(nn.Module):
    """A randomly initialised small DCGAN-style generator (tanh output), seeded."""

    z_dim = 32

    def __init__(self, resolution: int = 32, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.fc = nn.Linear(self.z_dim, 32 * 4 * 4)
            layers: list[nn.Module] = []
            size, ch = 4, 32
            while size < resolution:
                layers += [nn.Upsample(scale_factor=2), nn.Conv2d(ch, 16, 3, padding=1), nn.LeakyReLU(0.2)]
                size, ch = size * 2, 16
            self.net = nn.Sequential(*layers, nn.Conv2d(ch, 3, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, 32, 4, 4))


def cli_untrained_generator() -> nn.Module:
    """``module:function`` target for CLI tests (``_fixtures_attack:cli_untrained_generator``)."""
    return UntrainedConvGenerator()


def cli_bad_range_generator():
    """Returns [0, 255] images while the CLI default says [-1, 1]."""
    g = UntrainedConvGenerator()

    def generate(z: torch.Tensor) -> torch.Tensor:
        return (g(z) + 1) * 127.5

    generate.z_dim = g.z_dim
    return generate
