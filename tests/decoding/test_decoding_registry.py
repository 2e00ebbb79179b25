"""Properties every registered ``kind="decoding"`` method has (parametrised over the registry)."""

from __future__ import annotations

import pytest
import torch

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl
from reference_impls.decoding.speculative import DecodeResult
from reference_impls.registry import all_methods

torch.set_num_threads(1)


@pytest.mark.parametrize("spec", all_methods(kind="decoding"), ids=lambda spec: spec.name)
def test_decoding_method_contract(spec):
    """Default-configured, ``method(model, inputs, max_new_tokens)`` decodes batch 1 within the limit."""
    model = tiny_qwen25vl(seed=0)
    inputs = tiny_inputs(model, grids=((4, 4), (4, 8)))
    method = spec.target()
    result = method(model, inputs, max_new_tokens=5)
    assert isinstance(result, DecodeResult)
    assert 1 <= len(result.tokens) <= 5 and all(0 <= t < model.config.text_config.vocab_size for t in result.tokens)
    assert result.stats == method.stats and {"visual_in", "visual_kept"} <= result.stats.keys()
    assert 0 < result.stats["visual_kept"] <= result.stats["visual_in"] == 4 + 8
