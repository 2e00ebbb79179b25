"""Confidence-gated answering: spend more compute only when the cheap answer is unsure.

**Prolonged Reasoning Is Not All You Need: Certainty-Based Adaptive Routing (CAR)**

Long reasoning does not help every question and costs many tokens. CAR first produces a short
answer, measures how certain the model is of it, and only when the certainty is low does it
fall back to the expensive mode. We keep the routing idea and pick an expensive mode a small
model without a "thinking" mode can use: the cheap pass answers from a pruned set of visual
tokens (a fraction ``first_visual_keep`` of each image), and an unsure answer is re-asked either
with all visual tokens (``escalation="full-visual"``) or by self-consistency, a majority vote
over ``samples`` sampled answers from the full prompt (``escalation="self-consistency"``).
The certainty is the first answer token's top softmax probability (``"max-prob"``) or the gap
between its two largest probabilities (``"margin"``); the cheap answer stands when the certainty
is at least ``threshold``, so threshold 0 never escalates and a threshold above 1 always does.

Paper: arXiv 2505.15154

Upstream: none found (no code of CAR in our code index). The routing rule below is our
reconstruction from the paper's idea, so there is no parity test; the tests check the routing
contract (threshold 0 never escalates, above 1 always does, the split follows the confidence).

Examples:
    >>> from reference_impls.common.tiny import tiny_qwen25vl, tiny_inputs
    >>> model = tiny_qwen25vl()
    >>> result = ConfidenceGatedAnswering(threshold=0.5)(model, tiny_inputs(model))
    >>> sorted(result.stats)[:3]
    ['confidence', 'decoded_tokens', 'escalated']

Deviations:
    - CAR scores the short answer by its perplexity and routes with thresholds fitted on
      training data (it trains the model on both short and long answers). We use the first
      answer token's probability and a free threshold, and no training.
    - The expensive modes (full visual tokens, self-consistency) are our choices for models
      without a reasoning mode; CAR's expensive mode is chain-of-thought.
    - Compute is counted as tokens the language model processes (prefill plus decode inputs);
      the vision tower runs once and is shared by both passes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from reference_impls.common.visual_tokens import VisualTokenMethod
from reference_impls.decoding._speculative_prompt import (
    PRUNE_RULES,
    DecodeResult,
    crop,
    decode,
    encode_prompt,
    prefill,
    prune_prompt,
)
from reference_impls.registry import register

__all__ = ["ConfidenceGatedAnswering", "DecodeResult", "answer_confidence"]

CONFIDENCES = ("max-prob", "margin")
ESCALATIONS = ("full-visual", "self-consistency")


def answer_confidence(logits: torch.Tensor, kind: str = "max-prob") -> float:
    """Certainty of the token chosen from ``(V,)`` logits: top probability or top-2 margin, in [0, 1]."""
    probs = torch.softmax(logits.float(), dim=-1)
    top = probs.topk(2).values
    if kind == "max-prob":
        return float(top[0])
    if kind == "margin":
        return float(top[0] - top[1])
    raise ValueError(f"unknown confidence {kind!r}; expected one of {CONFIDENCES}")


@register("confidence-gated", family="efficient-reasoning", kind="decoding")
@dataclass
class ConfidenceGatedAnswering:
    """Answer cheaply, escalate when unsure (batch size 1).

    Call it as ``ConfidenceGatedAnswering(...)(model, inputs, max_new_tokens=None)`` (None:
    the config's ``max_new_tokens``); it returns a
    :class:`DecodeResult` and also stores the statistics in ``self.stats``.
    """

    threshold: float = 0.5
    """Keep the cheap answer when its confidence is at least this."""
    confidence: str = "max-prob"
    """``"max-prob"`` or ``"margin"`` of the first answer token."""
    first_visual_keep: float = 0.25
    """Fraction of each image's visual tokens in the cheap pass (1.0: all)."""
    prune: str | VisualTokenMethod = "uniform"
    """How the cheap pass chooses its visual tokens per image: ``"uniform"``, ``"norm"``,
    ``"random"``, or any ``kind="visual-token"`` method (its own budget then decides)."""
    escalation: str = "full-visual"
    """``"full-visual"`` (re-ask with all visual tokens) or ``"self-consistency"``."""
    samples: int = 5
    """Sampled answers voted on by ``"self-consistency"``."""
    temperature: float = 1.0
    """Sampling temperature of ``"self-consistency"``."""
    max_new_tokens: int = 8
    seed: int = 0

    def __post_init__(self):
        if self.confidence not in CONFIDENCES:
            raise ValueError(f"confidence must be one of {CONFIDENCES}")
        if self.escalation not in ESCALATIONS:
            raise ValueError(f"escalation must be one of {ESCALATIONS}")
        if isinstance(self.prune, str) and self.prune not in PRUNE_RULES[1:]:  # "specvlm" needs a verifier
            raise ValueError(f"prune must be one of {PRUNE_RULES[1:]}")
        self.stats: dict = {}

    @torch.no_grad()
    def __call__(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], max_new_tokens: int | None = None
    ) -> DecodeResult:
        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        full = encode_prompt(model, inputs)
        if isinstance(self.prune, str):
            cheap = prune_prompt(full, self.first_visual_keep, self.prune, self.seed)
        else:
            cheap = prune_prompt(full, self.prune)
        tokens, first_logits = decode(model, cheap, limit)
        confidence = answer_confidence(first_logits, self.confidence)
        decoded, lm_tokens = len(tokens), cheap.length + len(tokens) - 1
        escalated = confidence < self.threshold
        if escalated:
            cache, logits = prefill(model, full)
            lm_tokens += full.length
            if self.escalation == "full-visual":
                tokens, _ = decode(model, full, limit, cache=cache, first_logits=logits)
                answers = [tokens]
            else:
                generator = torch.Generator().manual_seed(self.seed)
                answers = []
                for _ in range(self.samples):
                    crop(cache, full.length)  # every sample restarts from the shared prompt cache
                    answers.append(
                        decode(
                            model,
                            full,
                            limit,
                            cache=cache,
                            first_logits=logits,
                            temperature=self.temperature,
                            generator=generator,
                        )[0]
                    )
                tokens = list(Counter(tuple(a) for a in answers).most_common(1)[0][0])
            decoded += sum(len(a) for a in answers)
            lm_tokens += sum(len(a) - 1 for a in answers)
        self.stats = {
            "confidence": confidence,
            "escalated": escalated,
            "decoded_tokens": decoded,
            "lm_tokens": lm_tokens,
            "visual_in": full.visual_in,
            "visual_kept": cheap.visual_kept,
        }
        return DecodeResult(tokens, dict(self.stats))
