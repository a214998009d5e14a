"""The usage examples in the docstrings of the attack, quality and data modules run as written."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["gmia_defend.attack.metrics", "gmia_defend.attack.scores", "gmia_defend.attack.result",
           "gmia_defend.attack.engine", "gmia_defend.quality.fid", "gmia_defend.quality.frechet",
           "gmia_defend.data.split", "gmia_defend.data.audit", "gmia_defend.data.folder"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0, f"{name} has no usage example"
