"""Parity of SpecVLM's default draft pruning with the authors' code.

zju-jiyicheng/SpecVLM @ 632ef27aa65a07d574d21c0e13ccf336c1d14e08:
  utils/utils.py ``convert_attention_to_score``: per layer, the attention maps of the verifier's
    second prefill stage (the text rows after the last video token, all keys) averaged over heads,
    then over rows; summed over layers and divided by their number; read at the video tokens.
  utils/utils.py ``drop_visual_tokens_specvlm`` with ``percentage`` (``get_attention_token_from_percentage``):
    budget ``int(n * (1 - drop_rate))``; stage I takes tokens in descending score order until their
    running sum reaches ``percentage`` of the total (the crossing token included), at most the budget;
    stage II picks ``torch.linspace(0, m - 1, budget - stage_I, dtype=torch.long)`` among the m
    tokens left, in sequence order.
  inference.py: ``percentage=0.4``; run_qwenvl.sh and inference.py: ``drop_rate`` 0.9.
Both sides use torch's integer ``linspace``: exact arithmetic differs from it by one in places
(e.g. 39 of 43 tokens: index 20 against 21), and upstream's indices are torch's.
"""

from __future__ import annotations

import torch

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl
from reference_impls.decoding._speculative_prompt import (
    SPECVLM_MASS,
    encode_prompt,
    prefill,
    prefill_with_attention,
    specvlm_keep,
)
from reference_impls.decoding.speculative import SpeculativeDecoding

torch.set_num_threads(1)


def _upstream_scores(attentions: list[torch.Tensor], visual: torch.Tensor) -> torch.Tensor:
    """attentions: per layer (1, H, rows, N), the rows after the last visual token; visual: (N,) bool."""
    per_layer = [layer.mean(dim=1)[0].mean(dim=0) for layer in attentions]  # heads, then rows
    return (torch.stack(per_layer).sum(0) / len(per_layer))[visual]


def _upstream_keep(scores: torch.Tensor, keep: float, mass: float) -> list[int]:
    n = len(scores)
    budget = int(n * keep)
    ranked = sorted(range(n), key=lambda i: -float(scores[i]))
    target, running, stage_one = float(scores.sum()) * mass, 0.0, 0
    for i in ranked:
        running, stage_one = running + float(scores[i]), stage_one + 1
        if running >= target:
            break
    stage_one = min(stage_one, budget)
    left = [i for i in range(n) if i not in ranked[:stage_one]]
    fill = [left[j] for j in torch.linspace(0, len(left) - 1, budget - stage_one, dtype=torch.long).tolist()]
    return sorted(ranked[:stage_one] + fill)


def test_defaults_match_upstream():
    method = SpeculativeDecoding()
    assert (method.prune, method.draft_visual_keep, method.draft_positions) == ("specvlm", 0.1, "original")
    assert SPECVLM_MASS == 0.4


def test_selection_matches_upstream_on_random_attention_maps():
    generator = torch.Generator().manual_seed(0)
    keep = SpeculativeDecoding().draft_visual_keep
    for trial in range(60):
        n_text, n_visual, rows = 5, int(torch.randint(12, 200, (1,), generator=generator)), 7
        length = n_text + n_visual + rows
        visual = torch.zeros(length, dtype=torch.bool)
        visual[n_text : n_text + n_visual] = True
        sharpness = 1 + 4 * torch.rand(1, generator=generator)  # from diffuse to peaked maps
        maps = [
            torch.softmax(torch.randn(1, 4, rows, length, generator=generator) * sharpness, dim=-1) for _ in range(3)
        ]
        scores = _upstream_scores(maps, visual)
        for fraction in (keep, 0.25, 0.5):
            expected = _upstream_keep(scores, fraction, SPECVLM_MASS)
            assert specvlm_keep(scores, fraction).tolist() == expected, (trial, fraction)


def test_verifier_scores_match_eager_attention_maps():
    """Our sdpa prefill's score equals upstream's reduction of the eager attention maps."""
    model = tiny_qwen25vl(seed=0, num_layers=3)
    inputs = tiny_inputs(model, grids=((8, 8), (4, 6)), seed=2)
    prompt = encode_prompt(model, inputs)
    cache, logits, ours = prefill_with_attention(model, prompt)
    assert torch.equal(logits, prefill(model, prompt)[1])  # the prefill itself is unchanged
    first_row = int(prompt.visual.nonzero().max()) + 1
    model.config.get_text_config()._attn_implementation = "eager"
    try:
        with torch.no_grad():
            out = model(
                inputs_embeds=prompt.embeds, position_ids=prompt.positions, output_attentions=True, use_cache=False
            )
    finally:
        model.config.get_text_config()._attn_implementation = "sdpa"
    maps = [layer[:, :, first_row:].float() for layer in out.attentions]  # (1, H, rows, N)
    expected = _upstream_scores(maps, prompt.visual)
    assert torch.allclose(ours, expected, atol=1e-6)
    method = SpeculativeDecoding()
    _, draft = method._draft_prompt(model, inputs, prompt, ours)
    visual_index = prompt.visual.nonzero().squeeze(-1)
    kept = visual_index[_upstream_keep(expected, method.draft_visual_keep, SPECVLM_MASS)]
    rows = torch.cat([(~prompt.visual).nonzero().squeeze(-1), kept]).sort().values
    assert torch.equal(draft.embeds, prompt.embeds[:, rows]) and draft.visual_kept == len(kept)
    assert torch.equal(draft.positions, prompt.positions[:, :, rows])  # original positions by default
    # draft_first_token has no target prefill at hand: it runs one to get the same scores
    assert method.draft_first_token(model, inputs) == int(prefill(model, draft)[1].argmax())
