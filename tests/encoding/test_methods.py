"""Model-level properties of every encoding-stage visual-token method on tiny random Qwen2.5-VLs."""

from __future__ import annotations

import pytest
import torch

from reference_impls.common.tiny import IDS, tiny_inputs, tiny_qwen25vl
from reference_impls.common.visual_tokens import keep_count
from reference_impls.encoding.adaptive_resolution import AdaptiveResolution
from reference_impls.encoding.keyframes import KeyframeSelection
from reference_impls.encoding.pooling import ProjectorPooling, pooled_grid
from reference_impls.encoding.prumerge import PruMerge
from reference_impls.encoding.tome import ToMe
from reference_impls.encoding.visionzip import VisionZip
from reference_impls.registry import all_methods

METHODS = [spec for spec in all_methods("visual-token") if spec.module.startswith("reference_impls.encoding.")]
GRIDS = ((8, 8), (4, 8))  # two images: 16 and 8 merged tokens
# No trained frame scorer fits the tiny models; test_learned_keyframes checks that warning itself.
pytestmark = pytest.mark.filterwarnings("ignore:no trained frame scorer fits this model")


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return tiny_qwen25vl()


@pytest.fixture(scope="module")
def inputs(model):
    return tiny_inputs(model, grids=GRIDS, batch_size=2)


def video_inputs(
    t: int = 6, h: int = 8, w: int = 8, duplicates=((3, 1), (5, 0)), seed: int = 0
) -> dict[str, torch.Tensor]:
    """One prompt with one video of ``t`` temporal slices; ``duplicates`` copies slice b into a."""
    frames = torch.randn(t, h * w, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(seed))
    for target, source in duplicates:
        frames[target] = frames[source]
    ids = [7, 8, 9, IDS.vision_start] + [IDS.video] * (t * h * w // 4) + [IDS.vision_end, 10, 11]
    input_ids = torch.tensor([ids])
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": 2 * (input_ids == IDS.video).long(),
        "pixel_values_videos": frames.reshape(t * h * w, -1),
        "video_grid_thw": torch.tensor([[t, h, w]]),
    }


def run_recording(model, method, inputs):
    """Logits under ``method`` plus what the language model received and what was selected."""
    seen, chosen = {}, {}
    select = method.select

    def recording_select(ctx):
        selection = select(ctx)
        chosen.update(ctx=ctx, selection=selection)
        return selection

    def hook(module, args, kwargs):
        seen.setdefault("position_ids", kwargs["position_ids"])

    method.select = recording_select
    handle = model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad(), method(model):
            logits = model(**inputs).logits
    finally:
        handle.remove()
        del method.select
    return logits, seen["position_ids"], chosen["ctx"], chosen["selection"]


@pytest.mark.parametrize("spec", METHODS, ids=lambda spec: spec.name)
def test_budget_one_is_bit_exact(model, inputs, spec):
    with torch.no_grad():
        reference = model(**inputs).logits
        method = spec.target(budget=1.0)
        with method(model):
            logits = model(**inputs).logits
    assert torch.equal(logits, reference)
    assert method.stats == {"visual_in": 24, "visual_kept": 24}


@pytest.mark.parametrize("spec", METHODS, ids=lambda spec: spec.name)
@pytest.mark.parametrize("budget", [0.5, 0.25])
@pytest.mark.parametrize("kind", ["images", "video"])
def test_kept_tokens_keep_their_positions_and_generate_runs(model, inputs, spec, budget, kind):
    inputs = inputs if kind == "images" else video_inputs(t=4, duplicates=((3, 1),))
    batch, n_visual = inputs["input_ids"].shape[0], int(inputs["mm_token_type_ids"][0].bool().sum())
    method = spec.target(budget=budget)
    logits, position_ids, ctx, selection = run_recording(model, method, inputs)
    for b in range(batch):
        keep = selection.keep[b]
        assert torch.equal(keep, keep.unique())  # ascending, no repeats
        visual = ctx.visual_positions(b)[keep]
        text = (~ctx.visual_mask[b]).nonzero().flatten()
        expected = ctx.position_ids[:, b, torch.cat([text, visual]).sort().values]
        received = position_ids[:, b, -expected.shape[1] :]
        assert torch.equal(received, expected)  # the 3-D M-RoPE ids of the full sequence
    assert method.stats == {"visual_in": n_visual, "visual_kept": selection.keep[0].numel()}
    assert logits.shape[1] == inputs["input_ids"].shape[1] - n_visual + method.stats["visual_kept"]
    with torch.no_grad(), method(model):
        out = model.generate(
            **inputs,
            max_new_tokens=4,
            min_new_tokens=4,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    assert out.sequences.shape == (batch, inputs["input_ids"].shape[1] + 4)
    torch.testing.assert_close(out.logits[0], logits[:, -1])  # generate() prefills exactly like forward()


@pytest.mark.parametrize("cls", [ToMe, PruMerge, VisionZip, lambda budget: PruMerge(budget=budget, score="attention")])
@pytest.mark.parametrize("budget", [0.6, 0.3, 0.05])
def test_kept_count_is_keep_count_per_image(model, inputs, cls, budget):
    method = cls(budget=budget)
    _, _, _, selection = run_recording(model, method, inputs)
    expected = sum(keep_count(h * w // 4, budget) for h, w in GRIDS)  # round(n * budget), at least 1
    assert [keep.numel() for keep in selection.keep] == [expected, expected]


def test_pooling_count_and_centre_positions(model, inputs):
    method = ProjectorPooling(budget=0.25)
    _, _, ctx, selection = run_recording(model, method, inputs)
    expected = sum(a * b for a, b in (pooled_grid(h // 2, w // 2, 0.25) for h, w in GRIDS))
    assert selection.keep[0].numel() == expected == 4 + 2
    # first image: 4x4 merged grid pooled to 2x2; tokens take the upper-left-centre cell of each 2x2 window
    assert selection.keep[0][:4].tolist() == [0, 2, 8, 10]


def test_prumerge_adaptive_keeps_only_outliers(model, inputs):
    method = PruMerge(adaptive=True)
    _, _, ctx, selection = run_recording(model, method, inputs)
    assert 2 <= selection.keep[0].numel() < 24  # at least one per image, fewer than all


def test_keyframes_drop_duplicate_frames_and_encode_only_kept_frames(model):
    inputs = video_inputs()
    inner = model.model
    with torch.no_grad():
        full = inner.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"]).pooler_output[0]
    method = KeyframeSelection(budget=4 / 6)
    logits, _, ctx, selection = run_recording(model, method, inputs)
    assert method._video_frames[0].tolist() == [0, 1, 2, 4]  # slices 3 and 5 were copies of 1 and 0
    assert method.stats == {"visual_in": 96, "visual_kept": 64}
    kept = ctx.visual_positions(0)[selection.keep[0]] - ctx.visual_positions(0)[0]
    torch.testing.assert_close(
        ctx.inputs_embeds[0, ctx.visual_positions(0)[selection.keep[0]]], full[kept], rtol=0, atol=0
    )
    features_method = KeyframeSelection(budget=4 / 6, embed="features")
    _, _, _, same = run_recording(model, features_method, inputs)
    assert torch.equal(same.keep[0], selection.keep[0])


def test_keyframes_images_as_frames(model):
    inputs = tiny_inputs(model, grids=((4, 4),) * 4)
    inputs["pixel_values"][48:64] = inputs["pixel_values"][0:16]  # image 3 repeats image 0
    method = KeyframeSelection(budget=0.75, images_as_frames=True)
    _, _, _, selection = run_recording(model, method, inputs)
    assert selection.keep[0].tolist() == list(range(12))  # images 0, 1, 2 kept (4 tokens each)


def test_adaptive_resolution_spends_fewer_tokens_on_a_flat_image(model):
    inputs = tiny_inputs(model, grids=((8, 8), (8, 8)))
    inputs["pixel_values"][:64] = 0.5  # image 0 flat, image 1 random noise
    method = AdaptiveResolution(budget=0.25)
    _, _, _, selection = run_recording(model, method, inputs)
    assert method.grids == [(2, 2), (4, 4)]
    assert selection.keep[0].numel() == 4 + 16


def test_visionzip_recomputes_the_block_attention_exactly(model):
    """Our q/k/v recipe reproduces the last full-attention block's output, and the merged-token
    grouping reproduces the merger's (so the scores belong to the right tokens)."""
    from reference_impls.encoding.visionzip import rotated_qkv, window_to_raster

    visual = model.model.visual
    attention = visual.blocks[max(visual.config.fullatt_block_indexes)].attn
    seen = {}

    def pre(module, args, kwargs):
        seen.update(hidden=args[0], cu=kwargs["cu_seqlens"], pos=kwargs["position_embeddings"])

    def post(module, args, kwargs, output):
        seen["out"] = output

    handles = [
        attention.register_forward_pre_hook(pre, with_kwargs=True),
        attention.register_forward_hook(post, with_kwargs=True),
    ]
    inputs = tiny_inputs(model, grids=((16, 16), (8, 12)))
    try:
        with torch.no_grad():
            out = visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
            q, k, v = rotated_qkv(attention, seen["hidden"], seen["pos"])
            bounds = seen["cu"].tolist()
            parts = []
            for start, end in zip(bounds[:-1], bounds[1:]):
                qs, ks, vs = (x[start:end].transpose(0, 1) for x in (q, k, v))  # (H, n, d)
                probs = torch.softmax(qs @ ks.transpose(1, 2) * attention.scaling, dim=-1)
                parts.append((probs @ vs).transpose(0, 1).reshape(end - start, -1))
            torch.testing.assert_close(attention.proj(torch.cat(parts)), seen["out"], rtol=1e-4, atol=1e-5)
            grouped = window_to_raster(out.last_hidden_state, inputs["image_grid_thw"], visual.config)
            assert torch.equal(visual.merger(grouped.reshape(-1, grouped.shape[-1])), out.pooler_output)
    finally:
        for handle in handles:
            handle.remove()


def _left_pad_batch(model, parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    length = max(part["input_ids"].shape[1] for part in parts)

    def pad(x, value):
        return torch.cat([x.new_full((1, length - x.shape[1]), value), x], dim=1)

    batch = {
        key: torch.cat([pad(part[key], value) for part in parts])
        for key, value in (("input_ids", IDS.pad), ("attention_mask", 0), ("mm_token_type_ids", 0))
    }
    batch["pixel_values"] = torch.cat([part["pixel_values"] for part in parts])
    batch["image_grid_thw"] = torch.cat([part["image_grid_thw"] for part in parts])
    return batch


@pytest.mark.parametrize("spec", METHODS, ids=lambda spec: spec.name)
def test_left_padded_batch_matches_single_prompts(model, spec):
    """Items are looked up per sequence and per modality index: a batch of prompts with
    different images gives each prompt the answer it gets alone."""
    parts = [
        tiny_inputs(model, grids=((8, 8),), seed=1),
        tiny_inputs(model, grids=((4, 4), (4, 8)), seed=2, prompt_before=2),
    ]
    parts[1]["pixel_values"][:16] = 0.5  # a flat image, for adaptive resolution
    singles = []
    for part in parts:
        method = spec.target(budget=0.5)
        with torch.no_grad(), method(model):
            singles.append(model(**part).logits[0, -1])
    method = spec.target(budget=0.5)
    with torch.no_grad(), method(model):
        batched = model(**_left_pad_batch(model, parts)).logits[:, -1]
    torch.testing.assert_close(batched, torch.stack(singles), rtol=1e-4, atol=1e-4)
