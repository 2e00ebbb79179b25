"""Invariants of the shared "drop visual tokens before the LLM" mechanism."""

import pytest
import torch

from reference_impls.common.harness import decode_steps, prefill
from reference_impls.common.random_pruning import RandomPruning
from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl
from reference_impls.common.visual_tokens import (
    Selection,
    VisualTokenMethod,
    apply_visual_token_selection,
    build_context,
    keep_count,
    reduce_inputs,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return tiny_qwen25vl(seed=0)


@pytest.fixture(scope="module")
def inputs(model):
    return tiny_inputs(model, grids=((4, 4), (4, 8)))


def _every_other(ctx):
    return [torch.arange(0, n, 2) for n in ctx.visual_counts]


def test_budget_one_is_bit_exact(model, inputs):
    with torch.no_grad():
        reference = model(**inputs).logits
        method = RandomPruning(budget=1.0)
        with method(model):
            patched = model(**inputs).logits
        kwargs, _, _ = apply_visual_token_selection(
            model, inputs, lambda ctx: [torch.arange(n) for n in ctx.visual_counts]
        )
        one_shot = model(**kwargs).logits
    assert torch.equal(reference, patched)
    assert torch.equal(reference, one_shot)
    assert method.stats == {"visual_in": 12, "visual_kept": 12}


def test_patch_is_removed_on_exit(model, inputs):
    with RandomPruning(budget=0.5)(model):
        assert "forward" in model.model.__dict__
    assert "forward" not in model.model.__dict__


def test_kept_tokens_keep_their_positions(model, inputs):
    ctx = build_context(model, inputs)
    selection = Selection(keep=_every_other(ctx))
    kwargs, kept_index = reduce_inputs(ctx, selection)
    visual = ctx.visual_positions(0)
    expected = torch.cat([(~ctx.visual_mask[0]).nonzero().squeeze(-1), visual[selection.keep[0]]]).sort().values
    assert torch.equal(kept_index[0], expected)
    assert torch.equal(kwargs["position_ids"][:, 0], ctx.position_ids[:, 0, expected])
    assert torch.equal(kwargs["inputs_embeds"][0], ctx.inputs_embeds[0, expected])
    # the 2-D layout of the second image survives: its kept tokens have h/w positions of a 2x4 grid
    assert ctx.items[0] == [(0, 1, 2, 2), (4, 1, 2, 4)]
    assert kwargs["inputs_embeds"].shape[1] == inputs["input_ids"].shape[1] - 6


def test_pruned_prefill_equals_manual_reduction(model, inputs):
    """The patched model runs the language model on exactly the reduced inputs."""

    class EveryOther(VisualTokenMethod):
        def select(self, ctx):
            return _every_other(ctx)

    with torch.no_grad():
        kwargs, _, _ = apply_visual_token_selection(model, inputs, _every_other)
        manual = model(**kwargs).logits
        with EveryOther(budget=0.5)(model):
            patched = model(**inputs).logits
        full = model(**inputs).logits
    assert torch.equal(manual, patched)
    assert not torch.allclose(full[:, -1], patched[:, -1])


def test_merged_features_replace_kept_tokens(model, inputs):
    ctx = build_context(model, inputs)
    keep = [torch.tensor([0, 5])]
    embeds = [torch.zeros(2, ctx.inputs_embeds.shape[-1])]
    kwargs, kept_index = reduce_inputs(ctx, Selection(keep=keep, embeds=embeds))
    visual_rows = (kept_index[0][:, None] == ctx.visual_positions(0)[keep[0]][None]).any(-1)
    assert torch.equal(kwargs["inputs_embeds"][0, visual_rows], embeds[0])


@pytest.mark.parametrize("budget", [1.0, 0.5, 0.25])
def test_generate_matches_explicit_decoding(model, inputs, budget):
    """generate() (vision precomputed, grids consumed) and our explicit-position loop agree."""
    with torch.no_grad():
        method = RandomPruning(budget=budget, seed=3)
        with method(model):
            logits, cache, next_position, _ = prefill(model, inputs)
            tokens, _ = decode_steps(model, logits.argmax(-1), cache, next_position, 5)
        explicit = [int(logits.argmax(-1))] + tokens
        method = RandomPruning(budget=budget, seed=3)
        with method(model):
            generated = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert generated[0, inputs["input_ids"].shape[1] :].tolist() == explicit
    assert method.stats["visual_kept"] == keep_count(12, budget)


def test_batch_with_unequal_keeps_is_left_padded(model):
    inputs = tiny_inputs(model, grids=((4, 4),), batch_size=2)
    with torch.no_grad():
        kwargs, _, _ = apply_visual_token_selection(model, inputs, lambda ctx: [torch.arange(4), torch.arange(2)])
        batch = model(**kwargs).logits[:, -1]
        single, _, _ = apply_visual_token_selection(
            model,
            {k: v[1:] if k != "pixel_values" else v[16:] for k, v in inputs.items() if k != "image_grid_thw"}
            | {"image_grid_thw": inputs["image_grid_thw"][1:]},
            lambda ctx: [torch.arange(2)],
        )
        alone = model(**single).logits[:, -1]
    assert kwargs["attention_mask"][1, :2].sum() == 0
    assert torch.allclose(batch[1], alone[0], atol=1e-5)


def test_keep_count():
    assert keep_count(256, 1.0) == 256
    assert keep_count(256, 0.1) == 26
    assert keep_count(3, 0.01) == 1
    with pytest.raises(ValueError):
        keep_count(10, 0.0)


def test_keeping_every_video_token_decodes_like_the_unpatched_model():
    """Text after a video restarts below the video's temporal M-RoPE ids, so the reply continues
    from the prompt's last position (as generate does), not from its largest one."""
    from reference_impls.common.chat_scenes import VIDEO_SHORT_KINDS, ChatSceneSpec, make_chat_samples
    from reference_impls.common.toyvlm_v2 import tiny_toyvlm_v2

    class KeepAll(VisualTokenMethod):
        def select(self, ctx):
            return [torch.arange(n) for n in ctx.visual_counts]

    bundle = tiny_toyvlm_v2()
    spec = ChatSceneSpec(video_frames=(16, 16), cells=(4, 8))  # 8 temporal slices of 4 x 8 tokens
    inputs = bundle.collate(make_chat_samples(spec, VIDEO_SHORT_KINDS, 1, seed=4))
    options = dict(
        max_new_tokens=4, min_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    with torch.no_grad():
        reference = bundle.model.generate(**inputs, **options).logits
        with KeepAll(budget=0.5)(bundle.model):
            patched = bundle.model.generate(**inputs, **options).logits
    # bit-exact: a tiny random model barely reads positions (the old largest-position rule moved
    # its logits by ~3e-5 only)
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(patched, reference))
