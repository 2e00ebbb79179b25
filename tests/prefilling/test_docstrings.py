"""The runnable examples of the prefilling modules' paper cards stay correct, and each card names its upstream."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

torch.set_num_threads(1)
MODULES = ["fastv", "pyramiddrop", "sparsevlm", "divprune", "trim", "vision_selector", "block_sparse", "op_skip"]


@pytest.mark.parametrize("name", MODULES)
def test_paper_card_examples_run(name):
    module = importlib.import_module(f"reference_impls.prefilling.{name}")
    assert module.__doc__ and "Deviations:" in module.__doc__ and "Upstream:" in module.__doc__
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
