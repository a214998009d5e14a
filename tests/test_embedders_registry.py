"""The embedder registry is one table; loaders leave every global RNG as it was; docstring examples run."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
import torch

from gmia_defend.embedders import registry
from gmia_defend.embedders.pixels import PixelEmbedder
from gmia_defend.embedders.trained import TrainedEmbedder
from gmia_defend.errors import UserError
from gmia_defend.rng import rng_fingerprint


def test_registered_kinds_are_the_valid_specs():
    specs = registry.valid_specs()
    for kind in ("synthetic", "facenet", "dlib", "pixels"):
        assert f"'{kind}'" in specs
    assert "'<path/to/embedder.pt>'" in specs

    @registry.register_embedder("Tiny", ["tiny", "tiny:<size>"])
    def _tiny(spec, arg):
        return PixelEmbedder(int(arg or 4))

    try:
        assert "'tiny:<size>'" in registry.valid_specs()
        assert load("tiny:6").input_size == 6 and load("TINY").input_size == 4
    finally:
        registry.unregister_embedder("tiny")
    assert "'tiny'" not in registry.valid_specs()
    with pytest.raises(UserError, match="unknown embedder spec 'tiny'.*'pixels'"):
        load("tiny")


def load(spec):
    return registry.load_embedder(spec)


def _draw_everything():
    torch.rand(1), np.random.rand(), __import__("random").random()


def test_loaders_leave_global_rng_unchanged(tmp_path):
    path = TrainedEmbedder(input_size=16, dim=8, width=4).save(tmp_path / "e.pt")
    torch.manual_seed(3)
    np.random.seed(3)
    before = rng_fingerprint()
    # Sanity: building the network itself draws from the global RNG, so the check below can fail.
    TrainedEmbedder(input_size=16, dim=8, width=4)
    assert rng_fingerprint() != before
    torch.manual_seed(3)
    np.random.seed(3)
    before = rng_fingerprint()
    loaded = registry.load_embedder(str(path))
    registry.load_embedder("pixels:8")
    registry.load_embedders([str(path), "pixels"])
    assert rng_fingerprint() == before
    assert loaded.dim == 8


def test_a_failing_builder_still_restores_rng():
    @registry.register_embedder("boom", ["boom"])
    def _boom(spec, arg):
        _draw_everything()
        raise UserError("boom")

    try:
        before = rng_fingerprint()
        with pytest.raises(UserError, match="boom"):
            registry.load_embedder("boom")
        assert rng_fingerprint() == before
    finally:
        registry.unregister_embedder("boom")


@pytest.mark.parametrize("module", ["gmia_defend.embedders.base", "gmia_defend.embedders.trained",
                                    "gmia_defend.embedders.pixels", "gmia_defend.embedders.registry",
                                    "gmia_defend.embedders.facenet", "gmia_defend.embedders.dlib",
                                    "gmia_defend.attack.generators", "gmia_defend.attack.generator_loading",
                                    "gmia_defend.watch.snapshots", "gmia_defend.watch.logged_quality",
                                    "gmia_defend.watch.runner", "gmia_defend.watch.signals"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
