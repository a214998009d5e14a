"""EMBED fixtures shared by every test file: a small trained identity embedder.

``trained_embedder`` is session-scoped: treat it as read-only (``copy.deepcopy`` it before changing its
threshold, device or mode). It is trained on SyntheticFaces identities offset by 1,000,000, disjoint
from the identities tests audit (offset 0), and cached in ``$GMIA_CACHE`` when set (else a pytest tmp
dir), so a warm cache makes it instant.
"""

from __future__ import annotations

import os

import pytest

#: Smaller than the library default (300 x 20, 12 epochs) so it trains in ~20-40 s on 2 shared cores.
EMBED_FIXTURE_CONFIG = dict(
    num_identities=150,
    images_per_identity=10,
    holdout_identities=50,
    resolution=32,
    identity_offset=1_000_000,
    epochs=8,
    lr=6e-3,
    seed=0,
)


@pytest.fixture(scope="session")
def trained_embedder(tmp_path_factory):
    """A ``TrainedEmbedder`` (CPU, eval mode, calibrated at FAR 1e-3); ``.report['auc']`` >= 0.98."""
    from gmia_defend.embedders.trained import train_identity_embedder

    cache_dir = os.environ.get("GMIA_CACHE") or tmp_path_factory.mktemp("embed_cache")
    return train_identity_embedder(**EMBED_FIXTURE_CONFIG, cache_dir=cache_dir, device="cpu", progress=False).eval()
