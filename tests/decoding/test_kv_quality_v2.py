"""The KV-cache quality benchmark on ToyVLM v2: replies decoded through compressed caches until <eos>."""

import json

import pytest
import torch

from reference_impls.bench import kv_quality
from reference_impls.common.chat_scenes import (
    IMAGE_LONG_KINDS,
    IMAGE_SHORT_KINDS,
    ChatSceneSpec,
    answer_words,
    make_chat_samples,
)
from reference_impls.common.toyvlm_v2 import save_toyvlm_v2, tiny_toyvlm_v2
from reference_impls.decoding.snapkv import SnapKV
from reference_impls.decoding.streamingllm import StreamingLLM


@pytest.fixture(scope="module")
def bundle():
    torch.set_num_threads(1)
    return tiny_toyvlm_v2(seed=8)  # a seed whose random replies differ from sample to sample


@pytest.fixture(scope="module")
def samples():
    return make_chat_samples(ChatSceneSpec(n_images=(2, 3), cells=(4, 4)), IMAGE_SHORT_KINDS + IMAGE_LONG_KINDS, 3, 4)


@pytest.mark.parametrize("cut", kv_quality.CUTS)
def test_full_cache_replies_equal_generate(bundle, samples, cut):
    expected = bundle.generate(samples, max_new_tokens=6)
    assert len({tuple(reply) for reply in expected}) > 1  # the check can tell samples apart
    prepared = kv_quality.prepare_chat(bundle, samples)
    replies = [kv_quality.chat_reply(bundle, item, cut, max_reply_tokens=6) for item in prepared]
    assert [r["reply"] for r in replies] == expected
    steps = [len(r["seconds"]) for r in replies]  # decode steps that produced a reply token
    assert steps == [5 if cut == "after-question" else 6] * len(samples)
    assert all(r["resident_bytes"] == r["full_bytes"] > 0 for r in replies)


@pytest.mark.parametrize("cut", kv_quality.CUTS)
@pytest.mark.parametrize("method", [SnapKV(budget=0.25, window=4), StreamingLLM(budget=0.25)])
def test_compressed_cache_respects_its_budget(bundle, samples, cut, method):
    prepared = kv_quality.prepare_chat(bundle, samples)
    with method(bundle.model):
        replies = [kv_quality.chat_reply(bundle, item, cut, max_reply_tokens=4) for item in prepared]
    for item, reply in zip(prepared, replies):
        assert len(reply["reply"]) == 4
        prompt = item["inputs"]["input_ids"].shape[1]
        prefilled = prompt if cut == "after-question" else item["cut"]
        logical = prompt + len(reply["reply"]) - 1  # the last reply token is never fed back
        entry = reply["full_bytes"] / logical  # keys and values of one token, every layer and head
        kept = round(0.25 * prefilled)
        # 25% of the prefilled tokens plus every token fed after the compression (+ position metadata)
        assert entry * kept < reply["resident_bytes"] <= 1.1 * entry * (kept + logical - prefilled)
    quality = kv_quality.chat_quality(prepared, replies)
    assert quality["kv_smaller"] > 2 and quality["resident_ratio"] < 0.5


def test_chat_quality_scores_whole_replies_with_eos(samples):
    prepared = [{"sample": sample} for sample in samples]
    right = [{"reply": answer_words(s), "seconds": [0.002], "resident_bytes": 1, "full_bytes": 4} for s in samples]
    cut_short = [{**r, "reply": r["reply"][:-1]} for r in right]  # the answer words without <eos>
    kinds = sorted({s.qa.kind for s in samples})
    good = kv_quality.chat_quality(prepared, right, kinds)
    assert good["accuracy"] == 100.0 and all(good[f"kind_{kind}"] == 100.0 for kind in kinds)
    assert good["reply_tokens"] == sum(len(answer_words(s)) for s in samples) / len(samples)
    assert good["kv_smaller"] == 4.0 and good["resident_ratio"] == 0.25 and good["decode_ms"] == pytest.approx(2.0)
    mixed = kv_quality.chat_quality(prepared, cut_short[:1] + right[1:], kinds)
    assert mixed["accuracy"] == pytest.approx(200 / 3)
    assert mixed[f"kind_{samples[0].qa.kind}"] < 100.0


def test_command_line_runs_a_v2_suite(tmp_path):
    checkpoint, out = tmp_path / "toy", tmp_path / "out"
    save_toyvlm_v2(tiny_toyvlm_v2(), checkpoint, {"parameters": 1})
    argv = ["--suite", "long", "--checkpoint", str(checkpoint), "--methods", "snapkv,hybridkv", "--n", "1"]
    kv_quality.main(
        [*argv, "--seeds", "1", "2", "--cuts", *kv_quality.CUTS, "--max-reply-tokens", "3", "--out", str(out)]
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "kv-quality-toyvlm-v2-long-tests.json",
        "kv-quality-toyvlm-v2-long.json",
    ]
    results = json.loads((out / "kv-quality-toyvlm-v2-long.json").read_text())
    rows = {(r["cut"], r["method"], r["budget"]): r for r in results["rows"]}
    assert len(rows) == 2 * (1 + 2 * len(kv_quality.BUDGETS))
    for cut in kv_quality.CUTS:
        full = rows[(cut, "full", 1.0)]
        assert full["decode_speedup"] == 1.0 and full["resident_ratio"] == 1.0 and full["reply_tokens"] <= 3
        for budget in kv_quality.BUDGETS:
            assert rows[(cut, "snapkv", budget)]["decode_vs_snapkv"] == 1.0
            assert rows[(cut, "hybridkv", budget)]["resident_ratio"] < 1.0
        assert rows[(cut, "snapkv", 0.1)]["resident_ratio"] < rows[(cut, "snapkv", 0.4)]["resident_ratio"]
        assert full["offloaded_ratio"] == rows[(cut, "snapkv", 0.4)]["offloaded_ratio"] == 0
        assert rows[(cut, "hybridkv", 0.4)]["offloaded_ratio"] > 0  # its cold pools, kept apart from resident
    assert {"kind_list", "kind_tally_all", "needle_accuracy"} <= set(full)
    tests = json.loads((out / "kv-quality-toyvlm-v2-long-tests.json").read_text())["rows"]
    versus_full = {(t["cut"], t["budget"], t["versus"]) for t in tests if t["method"] == "full"}
    assert ("before-question", 0.1, "hybridkv") in versus_full and ("after-question", 0.4, "snapkv") in versus_full


def test_decode_profile_times_the_parts_and_restores_them(bundle, samples):
    """The decode profiler times a step and its parts only inside its run, and puts every timed function back."""
    from reference_impls.bench import kv_decode_profile
    from reference_impls.decoding.hybridkv import HybridKV, HybridKVLayer

    prepared = kv_quality.prepare_chat(bundle, samples[:2])
    decode = HybridKVLayer.decode_attention
    step, parts = kv_decode_profile.profile(bundle, prepared, None, steps=3)
    assert step > 0 and parts["full-cache attention (sdpa)"] > 0 and "decode attention (all of it)" not in parts
    method = HybridKV(budget=0.5, window=4, n_sink=2, chunk_size=4, window_min=2, typing="all_dynamic")
    step, parts = kv_decode_profile.profile(bundle, prepared, method, steps=3)
    assert parts["decode attention (all of it)"] > parts["  chunk selection (bounds, sort, greedy fill)"] > 0
    assert parts.get("full-cache attention (sdpa)", 0.0) == 0  # the prefill's attention is not a decode step's
    assert HybridKVLayer.decode_attention is decode
