"""Confidence-gated answering: the threshold routes, the escalated answer is the expensive mode's."""

from __future__ import annotations

import pytest
import torch

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl
from reference_impls.decoding._speculative_prompt import decode, encode_prompt, prune_prompt
from reference_impls.decoding.reasoning import ConfidenceGatedAnswering, answer_confidence
from reference_impls.decoding.speculative import greedy_decode
from reference_impls.registry import get_method

torch.set_num_threads(1)
MAX_NEW = 6


@pytest.fixture(scope="module")
def model():
    return tiny_qwen25vl(seed=0, num_layers=2)


@pytest.fixture(scope="module")
def samples(model):
    return [tiny_inputs(model, grids=((8, 8),), seed=seed) for seed in range(4)]


def test_registered():
    spec = get_method("confidence-gated")
    assert spec.family == "efficient-reasoning" and spec.kind == "decoding"


@pytest.mark.parametrize("escalation", ["full-visual", "self-consistency"])
def test_threshold_zero_always_answers_directly(model, samples, escalation):
    for inputs in samples:
        method = ConfidenceGatedAnswering(
            threshold=0.0, escalation=escalation, max_new_tokens=MAX_NEW, first_visual_keep=0.25
        )
        result = method(model, inputs)
        cheap = prune_prompt(encode_prompt(model, inputs), 0.25, "uniform")
        assert not result.stats["escalated"]
        assert result.tokens == decode(model, cheap, MAX_NEW)[0]
        assert result.stats["decoded_tokens"] == len(result.tokens)
        assert result.stats["lm_tokens"] == cheap.length + len(result.tokens) - 1


@pytest.mark.parametrize("confidence", ["max-prob", "margin"])
def test_threshold_above_one_always_escalates(model, samples, confidence):
    for inputs in samples:
        method = ConfidenceGatedAnswering(threshold=1.01, confidence=confidence, max_new_tokens=MAX_NEW)
        result = method(model, inputs)
        assert result.stats["escalated"]
        assert result.tokens == greedy_decode(model, inputs, MAX_NEW).tokens  # the full-visual answer
        assert result.stats["decoded_tokens"] > len(result.tokens)  # both passes are counted


def test_threshold_splits_on_confidence(model, samples):
    confidences = [ConfidenceGatedAnswering(threshold=0.0)(model, inputs).stats["confidence"] for inputs in samples]
    middle = sorted(confidences)[len(confidences) // 2]
    for inputs, confidence in zip(samples, confidences):
        assert ConfidenceGatedAnswering(threshold=middle)(model, inputs).stats["escalated"] == (confidence < middle)


def test_self_consistency_votes_over_samples(model, samples):
    inputs = samples[0]
    cold = ConfidenceGatedAnswering(
        threshold=2.0, escalation="self-consistency", samples=3, temperature=1e-4, max_new_tokens=MAX_NEW
    )
    result = cold(model, inputs)
    greedy = greedy_decode(model, inputs, MAX_NEW).tokens
    assert result.tokens == greedy  # near-zero temperature: every sample is the greedy answer
    first = prune_prompt(encode_prompt(model, inputs), 0.25, "uniform")
    assert result.stats["decoded_tokens"] == len(decode(model, first, MAX_NEW)[0]) + 3 * len(greedy)
    hot = ConfidenceGatedAnswering(
        threshold=2.0, escalation="self-consistency", samples=5, temperature=5.0, max_new_tokens=MAX_NEW
    )
    assert hot(model, inputs).stats["escalated"]


def test_answer_confidence_bounds():
    logits = torch.randn(20, 50)
    for row in logits:
        top, margin = answer_confidence(row, "max-prob"), answer_confidence(row, "margin")
        assert 0 <= margin <= top <= 1
    assert answer_confidence(torch.tensor([0.0, 0.0]), "margin") == 0
