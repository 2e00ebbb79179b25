"""The twig pipeline on ToyVLM v2: training target, strict decoding on chat prompts, the ``--suite`` bench."""

from __future__ import annotations

import json

import pytest
import torch

from reference_impls.bench import speculative_distilled
from reference_impls.common import seeded
from reference_impls.common.chat_scenes import IMAGE_LONG_KINDS, ChatSceneSpec, make_chat_samples
from reference_impls.common.toyvlm_v2 import load_toyvlm_v2, save_toyvlm_v2, tiny_toyvlm_v2
from reference_impls.decoding import train_twig
from reference_impls.decoding.speculative import greedy_decode
from reference_impls.decoding.twig_draft import (
    DistillConfig,
    TwigSpeculativeDecoding,
    distill_twig,
    grow_twig,
    load_twig,
)

torch.set_num_threads(1)
MAX_NEW = 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ToyVLM v2 checkpoint and a twig trained on it by the ``toyvlm-v2`` target's command line."""
    root = tmp_path_factory.mktemp("twig-v2")
    checkpoint, twig = root / "toy", root / "twig"
    save_toyvlm_v2(tiny_toyvlm_v2(seed=5), checkpoint, {"parameters": 1})
    argv = ["--target", "toyvlm-v2", "--checkpoint", str(checkpoint), "--steps", "3", "-n", "2"]
    manifest = train_twig.main([*argv, "--held-out", "2", "--batch-size", "2", "--out", str(twig)])
    return checkpoint, twig, manifest


def test_v2_target_trains_and_saves(trained):
    checkpoint, twig, manifest = trained
    spec = train_twig.SETTINGS["toyvlm-v2"]
    assert manifest["target"] == "toyvlm-v2" and manifest["suite"] == "long"
    assert manifest["train_data_seed"] == spec.train_seed and manifest["held_out_seed"] == spec.held_out_seed
    assert manifest["visual_keeps"] == [1.0, 0.1] and manifest["max_new_tokens"] == 24
    assert set(manifest["held_out_agreement"]) == {"visual 100%", "visual 10%"}
    assert manifest["log"][0]["step"] == 0 and manifest["log"][-1]["step"] == 2  # --steps 3
    saved = json.loads((twig / "manifest.json").read_text())
    assert (saved["shared_layers"], saved["twig_layers"]) == (spec.shared_layers, spec.twig_layers)
    model = load_toyvlm_v2(checkpoint).model
    draft = load_twig(model, twig)
    assert draft.model.language_model.layers[0] is model.model.language_model.layers[0]
    untrained = grow_twig(model, spec.shared_layers, spec.twig_layers)
    assert not torch.equal(draft.lm_head.weight, untrained.lm_head.weight)  # distillation moved the head


def test_v2_training_prompts_are_disjoint_from_the_benchmarks_seeds():
    spec = train_twig.SETTINGS["toyvlm-v2"]
    assert spec.train_seed != spec.held_out_seed
    assert not {spec.train_seed, spec.held_out_seed} & set(seeded.REPORTED)
    bundle = tiny_toyvlm_v2()
    train = {repr(s.qa) for s in bundle.samples(30, spec.train_seed, train_twig.V2_SUITE)}
    held = {repr(s.qa) for s in bundle.samples(30, spec.held_out_seed, train_twig.V2_SUITE)}
    reported = {repr(s.qa) for s in bundle.samples(30, seeded.REPORTED[0], train_twig.V2_SUITE)}
    assert len(train) > 20 and not train & held and not train & reported
    with pytest.raises(ValueError, match="both for tuning and for reported"):
        speculative_distilled.main(["--suite", "long", "--seeds", str(spec.train_seed), "10"])


def test_strict_twig_decoding_equals_greedy_on_chat_prompts():
    bundle = tiny_toyvlm_v2(seed=5)
    samples = make_chat_samples(ChatSceneSpec(n_images=(2, 3), cells=(4, 4)), IMAGE_LONG_KINDS, 3, 4)
    prompts = [bundle.collate([sample]) for sample in samples]
    draft = grow_twig(bundle.model, shared_layers=1, twig_layers=1)
    distill_twig(bundle.model, draft, prompts, DistillConfig(steps=4, batch_size=3, lr=5e-2, max_new_tokens=MAX_NEW))
    rejected = 0
    for keep in (1.0, 0.1):
        method = TwigSpeculativeDecoding(twig=draft, num_draft=4, draft_visual_keep=keep, prune="uniform")
        for inputs in prompts:
            reference = greedy_decode(bundle.model, inputs, MAX_NEW).tokens
            result = method(bundle.model, inputs, MAX_NEW)
            assert result.tokens == reference
            assert result.stats["new_tokens"] == 1 + sum(result.stats["accepted_lengths"])
            rejected += result.stats["draft_proposed"] - result.stats["draft_accepted"]
    assert rejected > 0  # the twig differs from the target: corrections were exercised


def test_suite_bench_writes_results(trained, tmp_path):
    checkpoint, twig, _ = trained
    out = tmp_path / "out"
    argv = ["--suite", "long", "--checkpoint", str(checkpoint), "--twig", str(twig), "-n", "1"]
    speculative_distilled.main([*argv, "--seeds", "10", "11", "--max-new-tokens", "5", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == [
        "speculative-distilled-toyvlm-v2-long-tests.json",
        "speculative-distilled-toyvlm-v2-long.json",
    ]
    results = json.loads((out / "speculative-distilled-toyvlm-v2-long.json").read_text())
    assert results["seeds"] == {"tuning": [1, 2], "reported": [10, 11]}
    keys = {column["key"] for column in results["columns"]}
    assert {"mean_accepted_length", "speedup", "decode_speedup", "draft_cost", "identical", "accuracy"} <= keys
    rows = {row["method"]: row for row in results["rows"]}
    assert set(rows) == {
        "greedy",
        *(f"{name}, {keep} visual" for keep in ("100%", "10%") for name in ("twig", "early exit 1 layer")),
        *(f"early exit 2 layers, {keep} visual" for keep in ("100%", "10%")),
        "twig, 10% visual, 2 draft tokens",
    }
    assert rows["greedy"]["draft_cost"] == 1.0 and rows["greedy"]["setting"] == "long"
    for name, row in rows.items():
        assert row["identical"] == 100.0 and row["seeds"] == 2, name  # strict verification everywhere
        assert row["draft_cost"] > 0
    assert rows["twig, 10% visual"]["family"] == "speculative-training-aware"
    assert rows["early exit 1 layer, 10% visual"]["family"] == "speculative-training-free"
    tests = json.loads((out / "speculative-distilled-toyvlm-v2-long-tests.json").read_text())["rows"]
    assert {t["method"] for t in tests} == {"greedy", "twig, 100% visual", "twig, 10% visual"}  # the references
    assert {t["versus"] for t in tests if t["method"] == "twig, 10% visual"} == set(rows) - {
        "greedy",
        "twig, 10% visual",
    }
