"""Twig draft: shares the target's modules, untrained = early exit, distillation helps, strict = greedy."""

from __future__ import annotations

import pytest
import torch

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl
from reference_impls.decoding._speculative_prompt import encode_prompt, prefill
from reference_impls.decoding.speculative import SpeculativeDecoding, greedy_decode
from reference_impls.decoding.train_twig import CHECKPOINTS
from reference_impls.decoding.twig_draft import (
    DistillConfig,
    TwigSpeculativeDecoding,
    distill_twig,
    grow_twig,
    load_twig,
    save_twig,
    twig_agreement,
)
from reference_impls.registry import get_method

torch.set_num_threads(1)
MAX_NEW = 16


@pytest.fixture(scope="module")
def target():
    return tiny_qwen25vl(seed=0, num_layers=3)


@pytest.fixture(scope="module")
def prompts(target):
    return [tiny_inputs(target, grids=((8, 8),), seed=i) for i in range(4)]


@pytest.fixture(scope="module")
def trained(target, prompts):
    """A twig (1 shared layer + 1 twig layer) distilled for a few steps, and its agreement before/after."""
    draft = grow_twig(target, shared_layers=1, twig_layers=1)
    before = twig_agreement(target, draft, prompts, max_new_tokens=MAX_NEW)
    log = distill_twig(
        target, draft, prompts, DistillConfig(steps=40, batch_size=4, lr=3e-3, max_new_tokens=MAX_NEW, log_every=39)
    )
    return draft, before, twig_agreement(target, draft, prompts, max_new_tokens=MAX_NEW), log


def test_registered():
    spec = get_method("twig-speculative")
    assert spec.family == "speculative-training-aware" and spec.kind == "decoding"
    assert issubclass(spec.target, SpeculativeDecoding)  # one verification loop, not a twin


def test_shapes_and_sharing(target):
    draft = grow_twig(target, shared_layers=1, twig_layers=1)
    text, twig_text = target.model.language_model, draft.model.language_model
    assert len(twig_text.layers) == 2 and twig_text.layers[0] is text.layers[0]
    assert draft.model.visual is target.model.visual and draft.get_input_embeddings() is target.get_input_embeddings()
    assert twig_text.layers[1] is not text.layers[1] and draft.lm_head is not target.lm_head
    shared = {id(p) for p in target.parameters()}
    own = [p for p in draft.parameters() if id(p) not in shared]
    layer = sum(p.numel() for p in text.layers[1].parameters())
    assert sum(p.numel() for p in own) == layer + text.norm.weight.numel() + target.lm_head.weight.numel()
    with pytest.raises(ValueError):
        grow_twig(target, shared_layers=3, twig_layers=1)


@pytest.mark.parametrize("shared,twig", [(1, 1), (2, 0), (1, 2)])
def test_untrained_twig_is_early_exit(target, prompts, shared, twig):
    prompt = encode_prompt(target, prompts[0])
    logits = prefill(grow_twig(target, shared, twig), prompt)[1]
    assert torch.equal(logits, prefill(target, prompt, shared + twig)[1])


def test_distillation_raises_agreement(target, trained):
    draft, before, after, log = trained
    assert log[-1]["loss"] < log[0]["loss"]
    assert after["tokens"] > before["tokens"] + 5
    assert after["decode"] >= 90


def test_distillation_leaves_target_untouched(target, prompts, trained):
    fresh = tiny_qwen25vl(seed=0, num_layers=3)
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), fresh.state_dict().values()))
    assert all(p.requires_grad for p in target.parameters())  # flags restored


@pytest.mark.parametrize("keep", [1.0, 0.25])
@pytest.mark.parametrize("num_draft", [1, 4])
def test_strict_twig_decoding_equals_greedy(target, prompts, trained, keep, num_draft):
    draft = trained[0]
    for inputs in prompts[:2]:
        reference = greedy_decode(target, inputs, MAX_NEW).tokens
        result = TwigSpeculativeDecoding(twig=draft, num_draft=num_draft, draft_visual_keep=keep)(
            target, inputs, MAX_NEW
        )
        assert result.tokens == reference
        lengths = result.stats["accepted_lengths"]
        assert result.stats["new_tokens"] == 1 + sum(lengths) and all(1 <= n <= num_draft + 1 for n in lengths)
    untrained = TwigSpeculativeDecoding(shared_layers=1, num_draft=4, draft_visual_keep=keep)(
        target, prompts[0], MAX_NEW
    )
    assert untrained.tokens == greedy_decode(target, prompts[0], MAX_NEW).tokens


def test_trained_twig_is_accepted_more_than_early_exit(target, prompts, trained):
    twig = TwigSpeculativeDecoding(twig=trained[0], num_draft=4)
    early = SpeculativeDecoding(draft_layers=2, draft_visual_keep=1.0, num_draft=4)  # the untrained twig
    accepted = {name: [] for name in ("twig", "early")}
    for inputs in prompts:
        accepted["twig"] += twig(target, inputs, MAX_NEW).stats["accepted_lengths"]
        accepted["early"] += early(target, inputs, MAX_NEW).stats["accepted_lengths"]
    assert sum(accepted["twig"]) / len(accepted["twig"]) > sum(accepted["early"]) / len(accepted["early"])


def test_save_load_round_trip(target, trained, tmp_path):
    path = save_twig(trained[0], tmp_path / "twig", {"note": "test"})
    loaded = load_twig(target, path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), trained[0].state_dict().values()))
    assert (path / "twig.safetensors").stat().st_size < 1_000_000
    with pytest.raises(ValueError, match="another model"):
        TwigSpeculativeDecoding(twig=trained[0])._draft_model(tiny_qwen25vl(seed=1, num_layers=3))
    with pytest.raises(ValueError):
        TwigSpeculativeDecoding(draft_layers=1)


@pytest.mark.parametrize("name", ["captioner", "toyvlm", "toyvlm-v2"])
def test_committed_checkpoint_loads(name):
    path = CHECKPOINTS / f"twig-{name}"
    if not (path / "manifest.json").exists():
        pytest.skip(f"no committed twig at {path}")
    if name == "captioner":
        from reference_impls.hallucination.train_captioner import load_captioner

        model = load_captioner()[0]
    elif name == "toyvlm-v2":
        from reference_impls.common.toyvlm_v2 import load_toyvlm_v2

        model = load_toyvlm_v2().model
    else:
        from reference_impls.common.toyvlm import load_toyvlm

        model = load_toyvlm().model
    draft = load_twig(model, path)
    assert draft.model.language_model.layers[0] is model.model.language_model.layers[0]
    limit = 2_000_000 if name == "toyvlm-v2" else 1_000_000  # a v2 layer (hidden 192) in float32: 1.7 MB
    assert (path / "twig.safetensors").stat().st_size < limit
