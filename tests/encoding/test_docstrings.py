"""The runnable examples of the encoding modules' paper cards stay correct."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["adaptive_resolution", "encoder_cost", "keyframes", "pooling", "prumerge", "tome", "visionzip"]


@pytest.mark.parametrize("name", MODULES)
def test_paper_card_examples_run(name):
    module = importlib.import_module(f"reference_impls.encoding.{name}")
    assert module.__doc__ and "Deviations / guesses:" in module.__doc__ and "arXiv" in module.__doc__
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
