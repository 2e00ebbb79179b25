"""Speculative decoding: lossless when strict, honest statistics, caches cropped to the accepted prefix."""

from __future__ import annotations

import pytest
import torch

import reference_impls.decoding.speculative as speculative
from reference_impls.common.random_pruning import RandomPruning
from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl
from reference_impls.decoding._speculative_prompt import PRUNE_RULES, encode_prompt, keep_visual, prune_prompt
from reference_impls.decoding.speculative import (
    SpeculativeDecoding,
    accept_draft,
    accepted_prefix,
    greedy_decode,
    verify_step,
)
from reference_impls.registry import get_method

torch.set_num_threads(1)
MAX_NEW = 24


@pytest.fixture(scope="module")
def target():
    return tiny_qwen25vl(seed=0, num_layers=3)


@pytest.fixture(scope="module")
def other_draft():
    """A different random model: it almost never agrees with the target."""
    return tiny_qwen25vl(seed=7, num_layers=2)


@pytest.fixture(scope="module", params=[0, 1])
def inputs(request, target):
    return tiny_inputs(target, grids=((8, 8), (4, 6)), seed=request.param)


@pytest.fixture(scope="module")
def reference(target, inputs):
    return greedy_decode(target, inputs, MAX_NEW).tokens


def test_registered():
    spec = get_method("speculative")
    assert spec.family == "speculative-training-free" and spec.kind == "decoding"


def test_greedy_baseline_matches_generate(target, inputs, reference):
    out = target.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
    assert reference == out[0, inputs["input_ids"].shape[1] :].tolist()


DRAFTS = {
    "self-specvlm": dict(),
    "self-specvlm-renumbered": dict(draft_visual_keep=0.25, draft_positions="renumbered"),
    "self-uniform": dict(draft_visual_keep=0.25, prune="uniform"),
    "self-norm": dict(draft_visual_keep=0.1, prune="norm"),
    "self-random": dict(draft_visual_keep=0.5, prune="random"),
    "self-early-exit": dict(draft_visual_keep=0.25, draft_layers=1),
    "other-model": dict(draft_visual_keep=0.5),
    "self-adaptive-length": dict(draft_visual_keep=0.25, draft_min_confidence=0.03),
}


@pytest.mark.parametrize("num_draft", [1, 3, 6])
@pytest.mark.parametrize("draft", sorted(DRAFTS))
def test_strict_equals_greedy(target, other_draft, inputs, reference, draft, num_draft):
    method = SpeculativeDecoding(num_draft=num_draft, **DRAFTS[draft])
    if draft == "other-model":
        method.draft_model = other_draft
    result = method(target, inputs, MAX_NEW)
    assert result.tokens == reference
    assert result.stats["relaxed_accepts"] == 0


def test_adaptive_draft_length_proposes_fewer(target, inputs):
    fixed = SpeculativeDecoding(num_draft=6)(target, inputs, MAX_NEW).stats
    adaptive = SpeculativeDecoding(num_draft=6, draft_min_confidence=0.03)(target, inputs, MAX_NEW).stats
    assert adaptive["draft_forwards"] < fixed["draft_forwards"]
    _check_stats(adaptive, 6)


def test_disagreeing_draft_is_really_rejected(target, other_draft, inputs):
    stats = SpeculativeDecoding(draft_model=other_draft, num_draft=4)(target, inputs, MAX_NEW).stats
    assert stats["mean_accepted_length"] < 1.5  # the test above then exercises rejections


def _check_stats(stats, num_draft):
    lengths = stats["accepted_lengths"]
    assert all(1 <= n <= num_draft + 1 for n in lengths)
    assert stats["target_forwards"] == len(lengths)
    assert stats["draft_accepted"] == sum(n - 1 for n in lengths) <= stats["draft_proposed"]
    assert stats["mean_accepted_length"] == pytest.approx(sum(lengths) / len(lengths))
    # one token comes from the prefill, every verification adds 1 + accepted drafts
    assert stats["new_tokens"] == 1 + sum(lengths)


@pytest.mark.parametrize("num_draft", [2, 5])
def test_stats_consistent(target, other_draft, inputs, num_draft):
    for method in (
        SpeculativeDecoding(num_draft=num_draft),
        SpeculativeDecoding(draft_model=other_draft, num_draft=num_draft),
    ):
        stats = method(target, inputs, MAX_NEW).stats
        assert stats["new_tokens"] == MAX_NEW  # the tiny model does not emit end-of-sequence here
        _check_stats(stats, num_draft)
        assert stats["target_cache_length"] == stats["prompt_length"] + MAX_NEW - 1


def test_cache_holds_exactly_the_accepted_prefix(target, other_draft, inputs, monkeypatch):
    """Before every forward, a cache holds its prompt plus the generated tokens before the new ones.

    After a rejection that means: the accepted prefix only (positions are explicit, so a cache
    that kept rejected entries would show up as a length mismatch here).
    """
    prompt_length, checks = {}, []
    real_prefill, real_forward = speculative.prefill, speculative.forward
    real_scored_prefill = speculative.prefill_with_attention

    def recorded_prefill(model, prompt, layers=None):
        cache, logits = real_prefill(model, prompt, layers)
        prompt_length[id(cache)] = prompt.length
        return cache, logits

    def recorded_scored_prefill(model, prompt):  # the target's prefill under the default "specvlm" pruning
        cache, logits, attention = real_scored_prefill(model, prompt)
        prompt_length[id(cache)] = prompt.length
        return cache, logits, attention

    def checked_forward(model, cache, positions, **kwargs):
        checks.append((cache.get_seq_length(), prompt_length[id(cache)], int(positions[0, 0, 0])))
        return real_forward(model, cache, positions, **kwargs)

    monkeypatch.setattr(speculative, "prefill", recorded_prefill)
    monkeypatch.setattr(speculative, "prefill_with_attention", recorded_scored_prefill)
    monkeypatch.setattr(speculative, "forward", checked_forward)
    next_position = encode_prompt(target, inputs).next_position
    for draft_model in (None, other_draft):
        checks.clear()
        stats = SpeculativeDecoding(draft_model=draft_model, num_draft=4)(target, inputs, MAX_NEW).stats
        assert len(checks) > stats["target_forwards"] >= 4
        for length, prompt, first_position in checks:
            assert length == prompt + first_position - next_position
        if draft_model is other_draft:  # every proposal rejected: only generated tokens stay
            # (the last step verifies a single token without drafting, so the draft may lag by one)
            assert 0 <= stats["draft_prompt_length"] + MAX_NEW - 1 - stats["draft_cache_length"] <= 1
            assert stats["target_cache_length"] == stats["prompt_length"] + MAX_NEW - 1


def test_end_of_sequence_stops_like_greedy(inputs, reference):
    """With the 6th greedy token declared <eos>, output and statistics stop right after it."""
    model = tiny_qwen25vl(seed=0, num_layers=3)
    model.generation_config.eos_token_id = reference[5]
    expected = reference[: reference.index(reference[5]) + 1]
    assert greedy_decode(model, inputs, MAX_NEW).tokens == expected
    for num_draft in (2, 6):
        result = SpeculativeDecoding(num_draft=num_draft)(model, inputs, MAX_NEW)
        stats = result.stats
        assert result.tokens == expected
        assert stats["new_tokens"] == len(expected) == 1 + sum(stats["accepted_lengths"])
        assert stats["draft_accepted"] <= sum(stats["accepted_lengths"])
        assert stats["target_cache_length"] <= stats["prompt_length"] + len(expected)


def test_relax_rate_zero_equals_strict(target, inputs, reference):
    result = SpeculativeDecoding(relax_rate=0.0, relax_top_k=50, draft_visual_keep=0.1)(target, inputs, MAX_NEW)
    assert result.tokens == reference and result.stats["relaxed_accepts"] == 0


def test_full_relaxation_accepts_every_draft(target, other_draft, inputs):
    vocab = target.config.text_config.vocab_size
    method = SpeculativeDecoding(draft_model=other_draft, num_draft=3, relax_rate=1.0, relax_top_k=vocab)
    stats = method(target, inputs, MAX_NEW).stats
    assert stats["accepted_lengths"][:-1] == [4] * (len(stats["accepted_lengths"]) - 1)
    assert stats["relaxed_accepts"] > 0


def test_empty_relax_set_equals_strict(target, other_draft, inputs, reference):
    vocab = target.config.text_config.vocab_size
    method = SpeculativeDecoding(draft_model=other_draft, relax_rate=1.0, relax_top_k=vocab, relax_ids=frozenset())
    assert method(target, inputs, MAX_NEW).tokens == reference


def test_function_word_rule_never_relaxes_unlisted_tokens():
    generator = torch.Generator().manual_seed(0)
    listed = frozenset(range(0, 40, 3))
    for _ in range(50):
        logits = torch.randn(6, 40, generator=generator)
        draft = torch.randint(0, 40, (6,), generator=generator)
        accepted, relaxed = accept_draft(
            draft, logits, relax_rate=1.0, relax_top_k=40, relax_ids=listed, generator=generator
        )
        exact = draft == logits.argmax(-1)
        assert torch.equal(accepted, exact | torch.tensor([int(t) in listed for t in draft]))
        assert all(int(t) in listed for t in draft[relaxed])


def test_relaxation_respects_top_k():
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0]] * 4)
    draft = torch.tensor([0, 1, 2, 3])
    accepted, relaxed = accept_draft(draft, logits, relax_rate=1.0, relax_top_k=2)
    assert accepted.tolist() == [True, True, False, False] and relaxed.tolist() == [False, True, False, False]
    assert accepted_prefix(accepted) == 2 and accepted_prefix(torch.tensor([False, True])) == 0


def test_pruned_prompt_keeps_positions_and_budget(target, inputs):
    full = encode_prompt(target, inputs)
    items = full.context.items[0]
    for rule in PRUNE_RULES[1:]:  # the per-image rules
        chosen = keep_visual(items, full.context.features(0), 0.25, rule, torch.Generator().manual_seed(0))
        for start, t, h, w in items:  # every image keeps its own share
            n = t * h * w
            assert int(((chosen >= start) & (chosen < start + n)).sum()) == max(1, round(0.25 * n))
        assert (chosen.diff() > 0).all()
    pruned = prune_prompt(full, 0.25, "norm")
    visual_index = full.visual.nonzero().squeeze(-1)
    kept = (
        torch.cat(
            [
                (~full.visual).nonzero().squeeze(-1),
                visual_index[keep_visual(items, full.context.features(0), 0.25, "norm")],
            ]
        )
        .sort()
        .values
    )
    assert torch.equal(pruned.positions, full.positions[:, :, kept])  # original 3-D positions
    assert torch.equal(pruned.embeds, full.embeds[:, kept])
    assert pruned.next_position == full.next_position and pruned.visual_kept < full.visual_in


def test_visual_token_method_as_draft_pruning(target, inputs, reference):
    method = SpeculativeDecoding(prune=RandomPruning(budget=0.25, seed=3), num_draft=3)
    result = method(target, inputs, MAX_NEW)
    assert result.tokens == reference
    assert result.stats["visual_kept"] == max(1, round(0.25 * result.stats["visual_in"]))


def test_video_input_strict_equals_generate(target):
    """Videos take the same path: 3-D positions from get_rope_index, pruning per video run."""
    from reference_impls.common.tiny import IDS

    generator = torch.Generator().manual_seed(0)
    ids = torch.tensor([[10, 11, 12, IDS.vision_start] + [IDS.video] * 8 + [IDS.vision_end, 20, 21]])
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": 2 * (ids == IDS.video).long(),
        "pixel_values_videos": torch.randn(2 * 4 * 4, 3 * 2 * 14 * 14, generator=generator),
        "video_grid_thw": torch.tensor([[2, 4, 4]]),
    }
    expected = target.generate(**inputs, max_new_tokens=12, do_sample=False)[0, ids.shape[1] :].tolist()
    result = SpeculativeDecoding(draft_visual_keep=0.5, num_draft=3)(target, inputs, 12)
    assert result.tokens == expected and result.stats["visual_kept"] == 4


def test_draft_first_token(target, other_draft, inputs, reference):
    assert SpeculativeDecoding(draft_visual_keep=1.0).draft_first_token(target, inputs) == reference[0]
    other = SpeculativeDecoding(draft_model=other_draft, draft_visual_keep=1.0).draft_first_token(target, inputs)
    assert other == greedy_decode(other_draft, inputs, 1).tokens[0]


# Parity with the upstream verification rule. zju-jiyicheng/SpecVLM decoding/tree_decoding_qwen2_5.py
# @ 632ef27aa65a07d574d21c0e13ccf336c1d14e08, evaluate_posterior (greedy): matches = candidate[1:] ==
# argmax(logits[:-1]); accept_length = cumprod(matches).sum(); the next token is argmax(logits[accept_length]).
# For one draft chain this is also the temperature-0 case of Leviathan et al. 2023 / Chen et al. 2023.
def _upstream_greedy_step(proposal: list[int], logits: torch.Tensor) -> list[int]:
    matches = torch.tensor(proposal) == logits[:-1].argmax(-1)
    accept = int(torch.cumprod(matches.int(), 0).sum())
    return proposal[:accept] + [int(logits[accept].argmax())]


@pytest.mark.parametrize("seed", range(20))
def test_verify_step_matches_upstream_greedy_rule(seed):
    generator = torch.Generator().manual_seed(seed)
    k = 1 + seed % 5
    logits = torch.randn(k + 1, 7, generator=generator)
    # Drafts that agree with the target for a random number of leading positions, then guess.
    agree = int(torch.randint(0, k + 1, (1,), generator=generator))
    proposal = logits[:k].argmax(-1).tolist()
    proposal[agree:] = torch.randint(0, 7, (k - agree,), generator=generator).tolist()
    accepted, _ = accept_draft(torch.tensor(proposal), logits[:k])
    tokens, n = verify_step(proposal, logits, accepted)
    assert tokens == _upstream_greedy_step(proposal, logits)
    assert n == len(tokens) - 1


def test_prompt_continues_from_its_last_position_after_a_video():
    # a video's temporal M-RoPE ids run past the text after it: decoding continues from the
    # prompt's last position, as generate() and the harness's prefill do, not from its largest one
    from reference_impls.common.chat_scenes import VIDEO_SHORT_KINDS, ChatSceneSpec, make_chat_samples
    from reference_impls.common.harness import prefill
    from reference_impls.common.toyvlm_v2 import tiny_toyvlm_v2

    toy = tiny_toyvlm_v2()
    sample = make_chat_samples(ChatSceneSpec(video_frames=(16, 16), cells=(4, 8)), VIDEO_SHORT_KINDS, 1, 4)[0]
    inputs = toy.collate([sample])
    with torch.no_grad():
        _, _, position, _ = prefill(toy.model, inputs)
        prompt = encode_prompt(toy.model, inputs)
    assert int(prompt.positions.max()) + 1 > int(position)  # the case this test is about
    assert prompt.next_position == int(position)


@pytest.mark.parametrize("draft", ["target", "early-exit", "twig"])
def test_fast_forward_matches_the_plain_model_call(target, inputs, draft, monkeypatch):
    """``forward`` (text model and head called directly; a block of new tokens over a cache attends
    through GQA sdpa under the mask) gives the logits of the plain model call with transformers'
    sdpa, for one token and for a verification block, and restores every attention config."""
    from transformers import AttentionInterface

    from reference_impls.decoding import _speculative_prompt as plumbing
    from reference_impls.decoding.twig_draft import grow_twig

    net = grow_twig(target, 1, 1) if draft == "twig" else target
    layers = 2 if draft == "early-exit" else None
    blocks = []

    def spy(module, query, *args, **kwargs):
        blocks.append(query.shape[-2])
        return plumbing.gqa_block_attention(module, query, *args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, plumbing.GQA_BLOCK_NAME, spy)
    prompt = prune_prompt(encode_prompt(net, inputs), 0.5, "uniform")
    cache, _ = plumbing.prefill(net, prompt, layers)
    text = net.model.language_model
    for ids in ([5], [5, 9, 3, 7]):
        positions = plumbing.text_positions(prompt.next_position, len(ids))
        fast = plumbing.forward(net, cache, positions, ids=ids, layers=layers)
        plumbing.crop(cache, prompt.length)
        with torch.no_grad(), plumbing.truncated(net, layers):
            plain = net(input_ids=torch.tensor([ids]), position_ids=positions, cache=cache, use_cache=True).logits[0]
        plumbing.crop(cache, prompt.length)
        torch.testing.assert_close(fast, plain.float(), rtol=1e-5, atol=1e-5)
    n_layers = layers or len(text.layers)
    assert blocks == [4] * n_layers  # the verification block took the fast path in every layer, one token did not
    assert {layer.self_attn.config._attn_implementation for layer in text.layers} == {"sdpa"}
    assert text.config._attn_implementation == "sdpa"
