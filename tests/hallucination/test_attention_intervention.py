"""PAI-style attention amplification: strength 0 is bit-exact, more image attention otherwise."""

from __future__ import annotations

import contextlib
import math

import torch
from transformers import DynamicCache

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl
from reference_impls.hallucination.attention_intervention import (
    ATTENTION_NAME,
    VisualAttentionAmplification,
    amplified_attention,
)


def _inputs(model):
    inputs = tiny_inputs(model, grids=((4, 4),), batch_size=2, seed=5)
    inputs["attention_mask"][1, :3] = 0
    return inputs


def test_strength_zero_is_bit_exact():
    model = tiny_qwen25vl(seed=3)
    inputs = _inputs(model)
    plain_ids = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    with torch.no_grad():
        plain_logits = model(**inputs).logits
    with VisualAttentionAmplification(alpha=0.0)(model):
        ids = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        with torch.no_grad():
            logits = model(**inputs).logits
    assert torch.equal(plain_ids, ids) and torch.equal(plain_logits, logits)
    assert model.config.text_config._attn_implementation == "sdpa"
    assert not any(hasattr(layer.self_attn, "_atlas_pai") for layer in model.model.language_model.layers)


def test_amplification_changes_only_the_last_row_and_raises_image_mass():
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=generator) for _ in range(3))
    allowed = torch.ones(5, 5, dtype=torch.bool).tril()[None, None].expand(2, 1, 5, 5)
    visual = torch.tensor([[False, True, True, False, False]] * 2)
    _, plain = amplified_attention(q, k, v, allowed, visual, 0.0, 8**-0.5)
    _, boosted = amplified_attention(q, k, v, allowed, visual, 1.0, 8**-0.5)
    assert torch.equal(plain[..., :-1, :], boosted[..., :-1, :])
    mass = lambda probs: probs[..., -1, :][..., visual[0]].sum(-1)
    assert (mass(boosted) > mass(plain)).all()
    reference = torch.softmax((q @ k.transpose(-1, -2) * 8**-0.5).masked_fill(~allowed, float("-inf")), -1)
    assert torch.allclose(plain, reference, atol=1e-6)


def test_amplification_changes_the_model_output_on_chosen_layers_only():
    model = tiny_qwen25vl(seed=3)
    inputs = _inputs(model)
    with torch.no_grad():
        plain = model(**inputs).logits
        with VisualAttentionAmplification(alpha=2.0)(model):
            boosted = model(**inputs).logits
        with VisualAttentionAmplification(alpha=2.0, layers=())(model):
            untouched = model(**inputs).logits
    assert not torch.allclose(plain[:, -1], boosted[:, -1])
    assert torch.allclose(plain[:, :-1], boosted[:, :-1], atol=1e-5)  # earlier rows untouched
    assert torch.equal(plain, untouched)


@contextlib.contextmanager
def _sdpa(model):
    """Plain attention for one call inside the amplification context."""
    model.config.text_config._attn_implementation = "sdpa"
    try:
        yield
    finally:
        model.config.text_config._attn_implementation = ATTENTION_NAME


def _two_stream_greedy(model, inputs, method, steps):
    """PAI with guidance decoded by hand: a cached image stream and an uncached text-only stream.

    The image stream is amplified from the second generated token on (upstream's ``use_cfg`` flag
    starts set, so its prefill is plain); it keeps its own M-RoPE positions (prompt positions
    from ``get_rope_index``, then text positions plus the prompt's offset). The text-only stream
    drops the image and marker tokens, has plain 1-D positions and no amplification.
    """
    config, ids, mask = model.config, inputs["input_ids"], inputs["attention_mask"]
    drop = (ids == config.image_token_id) | (ids == config.vision_start_token_id) | (ids == config.vision_end_token_id)
    rows = [row[(~d) & m.bool()] for row, d, m in zip(ids, drop, mask)]
    width = max(len(r) for r in rows)
    text = torch.stack([torch.cat([r.new_zeros(width - len(r)), r]) for r in rows])
    text_mask = torch.stack([torch.cat([torch.zeros(width - len(r)).long(), torch.ones_like(r)]) for r in rows])
    prompt_positions, offset = model.model.get_rope_index(
        ids, inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"], attention_mask=mask
    )
    cache, new, all_scores = DynamicCache(config=config), ids.new_zeros(ids.shape[0], 0), []
    with torch.no_grad(), VisualAttentionAmplification(alpha=method.alpha, start_layer=method.start_layer)(model):
        for step in range(steps):
            full_mask = torch.cat([mask, torch.ones_like(new)], dim=1)
            if step == 0:
                with _sdpa(model):
                    s = model(**inputs, position_ids=prompt_positions, cache=cache, use_cache=True).logits[:, -1]
            else:
                positions = ((full_mask.cumsum(-1) - 1)[:, -1:] + offset)[None].expand(3, -1, -1)
                s = model(
                    input_ids=new[:, -1:], attention_mask=full_mask, position_ids=positions, cache=cache, use_cache=True
                ).logits[:, -1]
            u_mask = torch.cat([text_mask, torch.ones_like(new)], dim=1)
            with _sdpa(model):  # model.forward: no hooks, so the image mask the context captured stays
                u = model.forward(
                    input_ids=torch.cat([text, new], 1), attention_mask=u_mask, position_ids=u_mask.cumsum(-1) - 1
                ).logits[:, -1]
            s, u = torch.log_softmax(s, -1), torch.log_softmax(u, -1)
            cutoff = s.max(-1, keepdim=True).values + math.log(0.1)
            all_scores.append((method.guidance * (s - u) + u).masked_fill(s < cutoff, float("-inf")))
            new = torch.cat([new, all_scores[-1].argmax(-1, keepdim=True)], dim=1)
    return new, all_scores


def test_guidance_matches_a_hand_rolled_two_stream_decode():
    model = tiny_qwen25vl(seed=3)
    inputs = _inputs(model)
    for guidance in (1.1, 3.0):
        method = VisualAttentionAmplification(alpha=4.0, start_layer=0, guidance=guidance)
        with method(model):
            out = model.generate(
                **inputs, max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True
            )
        ids = out.sequences
        expected, expected_scores = _two_stream_greedy(model, inputs, method, 6)
        assert torch.equal(ids[:, inputs["input_ids"].shape[1] :], expected)
        for ours, theirs in zip(out.scores, expected_scores, strict=True):  # the tiny model's logits are flat:
            assert torch.equal(torch.isinf(ours), torch.isinf(theirs))  # compare scores, not only argmaxes
            assert torch.allclose(ours[~torch.isinf(ours)], theirs[~torch.isinf(theirs)], atol=1e-4)
    plain = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert not torch.equal(plain, ids)  # guidance 3 changes the caption of this seed
    assert "forward" not in model.__dict__


def test_guidance_off_leaves_the_amplified_decode_unchanged():
    model = tiny_qwen25vl(seed=3)
    inputs = _inputs(model)
    outputs = []
    for guidance in (None, 1.0):
        with VisualAttentionAmplification(alpha=1.0, start_layer=0, guidance=guidance)(model):
            outputs.append(model.generate(**inputs, max_new_tokens=5, do_sample=False))
            with torch.no_grad():
                outputs.append(model(**inputs).logits)
    assert torch.equal(outputs[0], outputs[2]) and torch.equal(outputs[1], outputs[3])
