"""The library facts that ``docs/notes/transformers5.md`` states and our code relies on, checked on the
pinned transformers with the tiny model (the page's §9 list). A failure here after a version bump
means the page, and the code that cites it, must be revisited."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface, DynamicCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl

NAME = "atlas_facts_probe"


@pytest.fixture(scope="module")
def model():
    return tiny_qwen25vl(seed=0, num_layers=2)


@pytest.fixture(scope="module")
def inputs(model):
    return tiny_inputs(model, grids=((4, 4),))


def test_eager_is_not_in_the_attention_registry():  # §3
    assert "sdpa" in ALL_ATTENTION_FUNCTIONS and "eager" not in ALL_ATTENTION_FUNCTIONS


@torch.no_grad()
def test_attention_hook_sees_no_cache_position(model, inputs):  # §5, check 1
    seen = {}

    def hook(module, args, kwargs, output):
        seen.setdefault("kwargs", set(kwargs))
        seen.setdefault("prefill", kwargs["hidden_states"].shape[1] > 1)

    handle = model.model.language_model.layers[0].self_attn.register_forward_hook(hook, with_kwargs=True)
    try:
        model(**inputs)
    finally:
        handle.remove()
    assert "cache_position" not in seen["kwargs"]
    assert {"hidden_states", "cache", "position_embeddings"} <= seen["kwargs"]
    assert seen["prefill"]


@torch.no_grad()
def test_leaving_out_mm_token_type_ids_changes_the_logits(model, inputs):  # §7, check 2
    without = {key: value for key, value in inputs.items() if key != "mm_token_type_ids"}
    assert (model(**inputs).logits - model(**without).logits).abs().max() > 1e-5


@torch.no_grad()
def test_custom_attention_gets_no_mask_without_a_mask_function(model, inputs):  # §4, check 3
    seen = []
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def probe(module, query, key, value, attention_mask, **kwargs):
        seen.append((attention_mask, query.shape[1], key.shape[1]))
        return sdpa(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(NAME, probe)
    model.set_attn_implementation({"text_config": NAME, "vision_config": "sdpa"})
    try:
        model(**inputs)
    finally:
        model.set_attn_implementation("sdpa")
    mask, query_heads, key_heads = seen[0]
    assert mask is None
    assert key_heads < query_heads  # keys arrive without the GQA repeat


@torch.no_grad()
def test_dynamic_layer_length_is_physical_and_eager_fails_on_unequal_layers(inputs):  # §2, §3, checks 4-5
    eager = tiny_qwen25vl(seed=0, num_layers=2, attn_implementation="eager")
    cache = DynamicCache(config=eager.config)
    out = eager(**inputs, cache=cache, use_cache=True)
    full = cache.layers[1].get_seq_length()
    layer = cache.layers[1]
    layer.keys, layer.values = layer.keys[:, :, 2:], layer.values[:, :, 2:]
    assert layer.get_seq_length() == full - 2
    step = out.logits[:, -1:].argmax(-1)
    with pytest.raises(RuntimeError, match="must match"):
        eager(input_ids=step, cache=cache, use_cache=True)
    eager.set_attn_implementation("sdpa")
    eager(input_ids=step, cache=cache, use_cache=True)  # one query, batch 1: no mask, works
