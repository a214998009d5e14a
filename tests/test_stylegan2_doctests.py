"""The usage examples in the docstrings of the model, data-module, sampling and DP modules run as written."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["gmia_defend.models.stylegan2.module", "gmia_defend.models.stylegan2.networks",
           "gmia_defend.models.stylegan2.augment", "gmia_defend.data.datamodule", "gmia_defend.data.sampling",
           "gmia_defend.data.synthetic", "gmia_defend.mitigations.dp", "gmia_defend.mitigations.identity_sampling"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0, f"{name} has no usage example"
