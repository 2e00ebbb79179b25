"""The KV evidence diagnostic on ToyVLM v2: which visual evidence a compressed cache keeps after the prefill."""

import json
import math

import pytest
import torch

from reference_impls.bench import kv_evidence
from reference_impls.bench.kv_quality import prepare_chat
from reference_impls.common import harness
from reference_impls.common.chat_scenes import IMAGE_LONG_KINDS, ChatSceneSpec, evidence_tokens, make_chat_samples
from reference_impls.common.toyvlm_v2 import save_toyvlm_v2, tiny_toyvlm_v2
from reference_impls.decoding.cache import prompt_layout
from reference_impls.decoding.streamingllm import StreamingLLM


@pytest.fixture(scope="module")
def bundle():
    torch.set_num_threads(1)
    return tiny_toyvlm_v2(seed=8)


@pytest.fixture(scope="module")
def prepared(bundle):
    samples = make_chat_samples(ChatSceneSpec(n_images=(2, 3), cells=(4, 4)), IMAGE_LONG_KINDS, 4, 4)
    return prepare_chat(bundle, samples)


def _masks(bundle, item, method):
    inputs = {**item["inputs"], "mm_encoder_outputs": dict(item["encoded"])}
    with method(bundle.model):
        _, cache, _, _ = harness.prefill(bundle.model, inputs)
    return kv_evidence.kept_masks(cache, inputs["input_ids"].shape[1])


def _visual(bundle, item):
    return prompt_layout(bundle.model.config, item["inputs"]["input_ids"]).visual


def test_evidence_positions_split_first_and_later_words(bundle, prepared):
    kinds = set()
    for item in prepared:
        sample, visual = item["sample"], _visual(bundle, item)
        evidence = kv_evidence.evidence_positions(sample, visual.nonzero().view(-1))
        assert len(evidence["all"]) == len(evidence_tokens(sample)) > 0 and visual[evidence["all"]].all()
        first = {t for i in sample.qa.evidence[0] for t in sample.scene.object_tokens[i]}
        assert sorted(visual.nonzero().view(-1)[sorted(first)].tolist()) == evidence["first"].tolist()
        # every relevant object is named by some reply word: first and later words cover the evidence
        assert set(evidence["first"].tolist()) | set(evidence["later"].tolist()) == set(evidence["all"].tolist())
        kinds.add(sample.qa.kind)
    assert len(kinds) > 1


def test_full_cache_keeps_every_evidence_token(bundle, prepared):
    for item in prepared:
        visual = _visual(bundle, item)
        evidence = kv_evidence.evidence_positions(item["sample"], visual.nonzero().view(-1))
        masks = _masks(bundle, item, kv_evidence.FullCache())
        metrics = kv_evidence.kept_metrics(masks, visual, evidence, lookup_layer=1)
        assert metrics["recall"] == metrics["recall_lookup"] == 1.0
        if evidence["later"].numel():
            assert metrics["first_recall"] == metrics["later_recall"] == 1.0 and metrics["later_gap"] == 0.0
        else:  # no later word names a new object: no first-against-later comparison
            assert math.isnan(metrics["first_recall"]) and math.isnan(metrics["later_gap"])
        assert metrics["visual_kept"] == 1.0 and metrics["kept_entries"] == metrics["prompt_tokens"] == visual.numel()
        assert metrics["text_share"] == pytest.approx(metrics["text_tokens"] / metrics["prompt_tokens"])
        assert metrics["text_tokens"] == int((~visual).sum()) > 0


def test_streaming_recall_of_the_last_image_falls_with_budget(bundle, prepared):
    # constructed case: the evidence is the last image, which StreamingLLM's recent window covers
    # only when the budget reaches back to it
    item = prepared[0]
    visual = _visual(bundle, item)
    n, last = visual.numel(), visual.nonzero().view(-1)[-16:]  # 4 x 4 tokens per image
    evidence = {"all": last, "first": last, "later": last[:0]}
    after = n - int(last[-1]) - 1  # text after the last image
    recalls = []
    for budget in (4 + after, 4 + after + 4, 4 + after + 12, n):  # sinks + recent entries
        masks = _masks(bundle, item, StreamingLLM(budget=budget))
        metrics = kv_evidence.kept_metrics(masks, visual, evidence, lookup_layer=0)
        recent = n - (budget - 4)
        assert metrics["recall"] == pytest.approx(float((last >= recent).float().mean()))
        recalls.append(metrics["recall"])
    assert recalls == sorted(recalls) and recalls[0] < recalls[-1] == 1.0
    assert recalls[1] < recalls[2] < 1.0


def test_command_line_writes_the_columns(tmp_path):
    checkpoint, out = tmp_path / "toy", tmp_path / "out"
    save_toyvlm_v2(tiny_toyvlm_v2(seed=3), checkpoint, {"parameters": 1, "attention_layer": 1})
    argv = ["--checkpoint", str(checkpoint), "--methods", "snapkv,streamingllm", "--n", "1", "--seeds", "1", "2"]
    kv_evidence.main([*argv, "--out", str(out)])
    assert [p.name for p in out.iterdir()] == ["kv-evidence-toyvlm-v2-long.json"]
    results = json.loads((out / "kv-evidence-toyvlm-v2-long.json").read_text())
    keys = [c["key"] for c in results["columns"]]
    assert {*kv_evidence.METRICS, "recall_ci", "text_share_ci", "method", "budget", "seeds"} <= set(keys)
    assert "Recall, layer 1" in [c["label"] for c in results["columns"]]
    assert {"recall_list", "recall_lookup_tally_all"} <= set(keys)
    assert results["families"] == ["kv-token-level"] and results["seeds"]["reported"] == [1, 2]
    rows = {(r["method"], r["budget"]): r for r in results["rows"]}
    assert sorted(rows) == [("full", 1.0)] + [(m, b) for m in ("snapkv", "streamingllm") for b in (0.1, 0.2, 0.4)]
    full = rows[("full", 1.0)]
    assert full["recall"] == full["recall_lookup"] == full["visual_kept"] == 1.0 and full["recall_ci"] == 0.0
    # a mean of per-prompt shares over seeds, against a ratio of means: close, not equal
    assert full["prompt_tokens"] > 1024
    assert full["text_share"] == pytest.approx(full["text_tokens"] / full["prompt_tokens"], rel=1e-3)
    snap = [rows[("snapkv", b)] for b in (0.1, 0.2, 0.4)]
    assert snap[0]["visual_kept"] < snap[1]["visual_kept"] < snap[2]["visual_kept"] < 1.0
    assert snap[0]["recall"] <= snap[2]["recall"]  # top-k sets grow with the budget
    assert "KIVI is left out" in results["notes"] and results["command"].startswith("python -m")


def test_non_evicting_or_unknown_methods_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="kivi"):
        kv_evidence.main(["--methods", "kivi", "--n", "1", "--seeds", "1", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_metrics_average_layers_and_heads_of_constructed_masks():
    # 8 positions, 5 visual; evidence 2 and 3 (first word), 5 (later words)
    visual = torch.tensor([False, True, True, True, False, True, True, False])
    evidence = {"all": torch.tensor([2, 3, 5]), "first": torch.tensor([2, 3]), "later": torch.tensor([5])}
    every = torch.ones(2, 8, dtype=torch.bool)
    some = torch.zeros(2, 8, dtype=torch.bool)
    some[0, [0, 2, 7]] = True  # head 0: one evidence token, one visual token, two text tokens
    some[1, [5, 6]] = True  # head 1: the later word's token and another visual token, no text
    metrics = kv_evidence.kept_metrics([every, some], visual, evidence, lookup_layer=1)
    assert metrics["recall"] == pytest.approx((1 + (1 / 3 + 1 / 3) / 2) / 2)
    assert metrics["recall_lookup"] == pytest.approx(1 / 3)
    assert metrics["first_recall_lookup"] == pytest.approx(0.25) and metrics["later_recall_lookup"] == 0.5
    assert metrics["later_gap_lookup"] == pytest.approx(-0.25)
    assert metrics["later_gap"] == pytest.approx((0.5 * 1 + 0.5 * 0.25) - (0.5 * 1 + 0.5 * 0.5))
    no_later = kv_evidence.kept_metrics([every, some], visual, {**evidence, "later": evidence["later"][:0]}, 1)
    assert math.isnan(no_later["first_recall"]) and math.isnan(no_later["later_gap_lookup"])
    assert no_later["recall"] == metrics["recall"]
    assert metrics["visual_kept"] == pytest.approx((1 + 1 + 1 / 5 + 2 / 5) / 4)
    assert metrics["text_share"] == pytest.approx((3 / 8 + 3 / 8 + 2 / 3 + 0) / 4)
    assert metrics["kept_entries"] == pytest.approx((8 + 8 + 3 + 2) / 4)
    assert (metrics["text_tokens"], metrics["prompt_tokens"]) == (3, 8)
    with pytest.raises(ValueError, match="lookup layer 2"):
        kv_evidence.kept_metrics([every, some], visual, evidence, lookup_layer=2)


def test_kind_metrics_define_each_recall_under_its_own_kind_only():
    metrics = {"recall": 0.5, "recall_lookup": 0.25}
    per_kind = kv_evidence.kind_metrics(metrics, "tally", ("list", "tally"))
    assert per_kind["recall_tally"] == 0.5 and per_kind["recall_lookup_tally"] == 0.25
    assert math.isnan(per_kind["recall_list"]) and math.isnan(per_kind["recall_lookup_list"])


def _steps(bundle, item, method, words=3):
    inputs = {**item["inputs"], "mm_encoder_outputs": dict(item["encoded"])}
    reply = [bundle.vocab.id(w) for w in item["sample"].qa.answer.split()][:words]
    with method(bundle.model):
        _, cache, position, _ = harness.prefill(bundle.model, inputs)
        steps = kv_evidence.reply_step_masks(bundle.model, cache, position, reply, inputs["input_ids"].shape[1])
    return cache, steps


def test_full_cache_steps_read_every_prompt_position(bundle, prepared):
    item = next(i for i in prepared if len(i["sample"].qa.answer.split()) >= 3)
    _, steps = _steps(bundle, item, kv_evidence.FullCache())
    assert len(steps) == 2 and all(mask.all() for masks in steps for mask in masks)
    words = [torch.tensor([5, 9]), torch.tensor([], dtype=torch.long)]
    assert kv_evidence.step_metrics(steps, words, 1) == {"step_recall": 1.0, "step_recall_lookup": 1.0}


def test_steps_of_a_retrieving_method_read_the_fetched_chunks(bundle, prepared):
    from reference_impls.decoding.hybridkv import HybridKV

    item = next(i for i in prepared if len(i["sample"].qa.answer.split()) >= 3)
    cache, steps = _steps(bundle, item, HybridKV(budget=0.3, window=6, chunk_size=4, typing="rank"))
    dynamic = [(index, h) for index, layer in enumerate(cache.layers) for h in layer.dynamic]
    assert dynamic  # the check needs heads that retrieve
    n = item["inputs"]["input_ids"].shape[1]
    for index, h in dynamic:
        layer, readable = cache.layers[index], steps[-1][index][h]
        fetched = layer.retrieved_positions(h).long()
        assert fetched.numel() > 0 and readable[fetched].all()
        held = layer.head_positions(h).long()
        assert int(readable.sum()) == len(set(held[held < n].tolist()) | set(fetched.tolist()))
    assert all(
        cache.layers[0].retrieved_positions(h).numel() == 0 for h in range(2) if h not in cache.layers[0].dynamic
    )
