"""The tiny model and prompt that the KV-cache tests share: 3 layers, two images, text on both sides."""

import pytest
import torch

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return tiny_qwen25vl(seed=0, num_layers=3)


@pytest.fixture(scope="module")
def inputs(model):
    return tiny_inputs(model, grids=((8, 8), (4, 4)), prompt_before=10, prompt_after=12, seed=1)
