"""The evaluation harness on a tiny random ToyVLM bundle."""

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from reference_impls.common.harness import cache_bytes, evaluate
from reference_impls.common.random_pruning import RandomPruning
from reference_impls.common.scenes import SceneSpec
from reference_impls.common.toyvlm import ToyVLM, build_vocab, toyvlm_config
from reference_impls.registry import get_method

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bundle():
    vocab = build_vocab()
    config = toyvlm_config(vocab, hidden_size=32, num_layers=2, intermediate_size=64, vision_depth=1, vision_hidden=32)
    torch.manual_seed(0)
    return ToyVLM(Qwen2_5_VLForConditionalGeneration(config).eval(), vocab, spec=SceneSpec(n_images=2, image_size=112))


def test_evaluate_without_method(bundle):
    result = evaluate(bundle, None, n=6, decode_samples=2, decode_tokens=3)
    assert result["n"] == 6 and 0.0 <= result["accuracy"] <= 1.0
    assert result["visual_tokens"] == result["visual_tokens_full"] == 2 * 16
    config = bundle.model.config.text_config
    head_dim = config.hidden_size // config.num_attention_heads
    prompt = bundle.collate(bundle.samples(6, seed=1))["attention_mask"].sum(-1).float().mean()
    # plain DynamicCache: 2 (K, V) x layers x KV heads x head_dim x 4 bytes per prompt token
    assert result["kv_bytes"] == pytest.approx(
        float(prompt) * 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4
    )
    assert result["prefill_s"] > result["encode_s"] > 0 and result["decode_ms_per_token"] > 0


def test_evaluate_with_random_pruning(bundle):
    full = evaluate(bundle, None, n=4, decode_samples=1, decode_tokens=2)
    pruned = evaluate(bundle, RandomPruning(budget=0.25), n=4, decode_samples=1, decode_tokens=2)
    assert pruned["visual_tokens"] == 8 and pruned["visual_tokens_full"] == 32
    config = bundle.model.config.text_config
    per_token = (
        2
        * config.num_hidden_layers
        * config.num_key_value_heads
        * (config.hidden_size // config.num_attention_heads)
        * 4
    )
    assert full["kv_bytes"] - pruned["kv_bytes"] == pytest.approx(24 * per_token)  # 24 visual tokens dropped
    assert pruned["kv_bytes"] < full["kv_bytes"]


def test_random_pruning_is_registered():
    spec = get_method("random-pruning")
    assert spec.kind == "visual-token" and spec.family == "encoding-compression-attention-agnostic"
    assert spec.target is RandomPruning


def test_cache_bytes_protocol():
    class Reporting:
        def resident_bytes(self):
            return 123

        def offloaded_bytes(self):
            return 7

    assert cache_bytes(Reporting()) == (123, 7)
    assert cache_bytes(None) == (0, 0)


@pytest.fixture(scope="module")
def chat_bundle():
    from reference_impls.common.toyvlm_v2 import tiny_toyvlm_v2

    return tiny_toyvlm_v2()


def _chat_samples(n, video: bool = False):
    from reference_impls.common.chat_scenes import (
        IMAGE_LONG_KINDS,
        IMAGE_SHORT_KINDS,
        VIDEO_LONG_KINDS,
        VIDEO_SHORT_KINDS,
        ChatSceneSpec,
        make_chat_samples,
    )

    if video:  # 16 frames: 8 temporal slices of 4 x 8 tokens
        spec = ChatSceneSpec(video_frames=(16, 16), cells=(4, 8))
        return make_chat_samples(spec, VIDEO_SHORT_KINDS + VIDEO_LONG_KINDS, n, 4)
    return make_chat_samples(ChatSceneSpec(n_images=(2, 3), cells=(4, 4)), IMAGE_SHORT_KINDS + IMAGE_LONG_KINDS, n, 4)


@pytest.mark.parametrize("video", [False, True], ids=["images", "video"])
def test_chat_reply_decoding_matches_generate_and_stops_after_the_stop_token(chat_bundle, video):
    # a video's temporal M-RoPE ids run past the text after it, so the reply must continue from
    # the prompt's last position (as generate does), not from its largest one
    from reference_impls.common.harness import decode_steps, prefill

    model, sample = chat_bundle.model, _chat_samples(1, video)[0]
    inputs = chat_bundle.collate([sample])
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=None)
        expected = expected[0, inputs["input_ids"].shape[1] :].tolist()
        logits, cache, position, _ = prefill(model, inputs)
        rest, _ = decode_steps(model, logits.argmax(-1), cache, position, 5)
    assert [int(logits.argmax(-1)), *rest] == expected
    with torch.no_grad():
        logits, cache, position, _ = prefill(model, inputs)
        stopped, _ = decode_steps(model, logits.argmax(-1), cache, position, 5, stop=expected[2])
    assert stopped == expected[1 : expected.index(expected[2]) + 1]


def test_evaluate_chat_bundle_decodes_replies(chat_bundle):
    samples = _chat_samples(4)
    result = evaluate(chat_bundle, None, samples=samples, max_reply_tokens=5)
    assert result["n"] == 4 and 1 <= result["reply_tokens"] <= 5
    assert set(result["accuracy_by_scope"]) <= {"needle", "aggregation"} and result["decode_ms_per_token"] > 0
    pruned = evaluate(chat_bundle, RandomPruning(budget=0.25), samples=samples, max_reply_tokens=5)
    assert pruned["visual_tokens"] < result["visual_tokens"]
    default = evaluate(chat_bundle, None, n=2, seed=3, max_reply_tokens=2)  # the short suite, seed 3's streams
    assert default["n"] == 2 and default["visual_tokens_full"] == 1024


def test_chat_bundle_samples_are_disjoint_across_seeds(chat_bundle):
    first, second = chat_bundle.samples(3, seed=1), chat_bundle.samples(3, seed=2)
    assert not any((a.scene.images[0] == b.scene.images[0]).all() for a in first for b in second)
    assert [s.qa for s in chat_bundle.samples(3, seed=1)] == [s.qa for s in first]
    with pytest.raises(ValueError, match="seed >= 1"):
        chat_bundle.samples(3, seed=0)


@pytest.mark.parametrize("video", [False, True], ids=["images", "video"])
def test_forced_decode_steps_rebuild_the_prompt_cache(chat_bundle, video):
    """Feeding the question one forced token per step after prefilling the images (or the video)
    leaves the same keys and values (positions included, through RoPE) as prefilling the whole
    prompt."""
    from reference_impls.common.harness import decode_steps, prefill

    model, sample = chat_bundle.model, _chat_samples(1, video)[0]
    inputs = chat_bundle.collate([sample])
    ids = inputs["input_ids"]
    cut = int((ids[0] == model.config.vision_end_token_id).nonzero().max()) + 1
    images = {
        k: v[:, :cut] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v for k, v in inputs.items()
    }
    with torch.no_grad():
        logits, whole, position, _ = prefill(model, inputs)
        _, cache, image_position, _ = prefill(model, images)
        tokens, times = decode_steps(model, ids[0, cut], cache, image_position, 1, forced=ids[0, cut + 1 :].tolist())
    assert len(times) == 1 and tokens == [int(logits.argmax(-1))]  # the forced steps are not returned or timed
    assert cache.get_seq_length() == whole.get_seq_length() == ids.shape[1]
    for mine, reference in zip(cache.layers, whole.layers):
        torch.testing.assert_close(mine.keys, reference.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(mine.values, reference.values, atol=1e-5, rtol=1e-4)
