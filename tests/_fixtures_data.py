"""Shared DATA fixtures: a small synthetic dataset, a split and audit set over it, a tiny image tree.

Identities here use offset 0; embedders trained for tests should use a large ``identity_offset``
(e.g. 100_000) so the audited identities are never seen in embedder training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gmia_defend.data.audit import AuditSet
from gmia_defend.data.split import IdentitySplit
from gmia_defend.data.synthetic import SyntheticFaces


@pytest.fixture(scope="session")
def synthetic_dataset() -> SyntheticFaces:
    """24 synthetic identities x 10 images, 32x32, mild nuisance, seed 0."""
    return SyntheticFaces(num_identities=24, images_per_identity=10, resolution=32, seed=0)


@pytest.fixture(scope="session")
def synthetic_split(synthetic_dataset: SyntheticFaces) -> IdentitySplit:
    """8 members (7 training + 3 reference images each), 8 non-members x 3, 4 population identities."""
    return IdentitySplit.create(
        synthetic_dataset, 8, 8, references_per_identity=3, num_population_identities=4, seed=0
    )


@pytest.fixture(scope="session")
def audit_set(synthetic_dataset: SyntheticFaces, synthetic_split: IdentitySplit) -> AuditSet:
    """The AuditSet of ``synthetic_split`` (24 member refs, 24 non-member refs, 12 population images)."""
    return AuditSet.from_split(synthetic_dataset, synthetic_split)


def make_image_tree(root: Path, identities: int = 4, images: int = 4, size: tuple[int, int] = (40, 48)) -> Path:
    """Write ``root/id<kk>/<jjj>.png`` RGB images (each identity a distinct colour, noise per image)."""
    rng = np.random.default_rng(0)
    for k in range(identities):
        folder = root / f"id{k:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.array([40 + 50 * k, 200 - 40 * k, 90 + 30 * (k % 3)], dtype=np.int16) % 256
        for j in range(images):
            arr = base + rng.integers(-20, 20, size=(size[1], size[0], 3))
            Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(folder / f"{j:03d}.png")
    return root


@pytest.fixture(scope="session")
def identity_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid root/<identity>/<image> tree: 12 identities x 8 PNG images (40x48)."""
    return make_image_tree(tmp_path_factory.mktemp("faces"), identities=12, images=8)
