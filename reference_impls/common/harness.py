"""Evaluation harness: run a method (or none) on ToyVLM or any local bundle and measure it.

One call measures what every efficiency page reports, phase by phase (``docs/notes/transformers5.md`` §11, lesson 6):

- ``accuracy``: greedy answer (next token after the prompt) equals the scene's answer;
- ``visual_tokens``: visual tokens the language model saw (``method.stats["visual_kept"]`` of
  ``kind="visual-token"`` methods, else all of them) and ``visual_tokens_full``;
- ``prefill_s``: seconds of the prefill forward (vision tower + selection + language model), of
  which ``encode_s`` inside the vision tower (TTFT = both; token pruning after the merger only
  shortens the language-model part);
- ``kv_bytes``: bytes resident in the cache after prefill (``cache.resident_bytes()`` when the
  method's cache has it, else the sum of keys and values ``element_size() * nelement()``) and
  ``kv_offloaded_bytes``;
- ``decode_ms_per_token``: mean milliseconds of one decode step (prefill excluded), measured on
  the first ``decode_samples`` samples with ``decode_tokens`` greedy steps each;
- ``language_s``: seconds inside the language model's forward at prefill only (no vision
  tower, no token selection: what the visual tokens it reads cost it).

Batch size 1 throughout, so no padding and no mask is needed at decode; decode steps pass
explicit 3-D positions (the full sequence's last position + 1 + step, ``docs/notes/transformers5.md`` §2;
the last token's position, not the largest one: after a video they differ).

Examples:
    >>> from reference_impls.common.toyvlm import load_toyvlm
    >>> from reference_impls.common.random_pruning import RandomPruning
    >>> toy = load_toyvlm()
    >>> result = evaluate(toy, RandomPruning(budget=0.25), n=8)
    >>> result["visual_tokens"], result["visual_tokens_full"]  # 25% of the four images' 256 tokens
    (64.0, 256.0)
    >>> 0.0 <= result["accuracy"] <= 1.0
    True

Deviations / guesses:
    Times are wall-clock on whatever machine runs it (CPU here, shared): compare methods within
    one run, not across machines.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch

from . import random_pruning as _random_pruning  # noqa: F401  (registers the baseline)
from .chat_scenes import answer_words
from .toyvlm import ToyVLM
from .toyvlm_v2 import ToyVLMv2
from .visual_tokens import next_positions

__all__ = ["cache_bytes", "prefill", "decode_steps", "evaluate"]


def cache_bytes(cache) -> tuple[int, int]:
    """``(resident, offloaded)`` bytes of a cache (stats protocol of ``kind="kv-cache"`` methods)."""
    if cache is None:
        return 0, 0
    if hasattr(cache, "resident_bytes"):
        offloaded = cache.offloaded_bytes() if hasattr(cache, "offloaded_bytes") else 0
        return int(cache.resident_bytes()), int(offloaded)
    total = 0
    for layer in getattr(cache, "layers", []):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.element_size() * tensor.nelement()
    return total, 0


def _output_cache(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


class _EncodeTimer:
    """Seconds spent inside the vision tower (forward pre/post hooks), or inside ``module``."""

    def __init__(self, model, module=None):
        self.seconds, self._start = 0.0, 0.0
        visual = module if module is not None else model.model.visual
        self._handles = [
            visual.register_forward_pre_hook(lambda *_: setattr(self, "_start", time.perf_counter())),
            visual.register_forward_hook(
                lambda *_: setattr(self, "seconds", self.seconds + time.perf_counter() - self._start)
            ),
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@torch.no_grad()
def prefill(model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any, torch.Tensor, float]:
    """One prefill forward. Returns ``(last logits (B, V), cache, next 3-D position (B,), seconds)``."""
    rope_kwargs = {k: inputs.get(k) for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")}
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        attention_mask=inputs.get("attention_mask"),
        **rope_kwargs,
    )
    start = time.perf_counter()
    output = model(**inputs, use_cache=True, logits_to_keep=1)
    seconds = time.perf_counter() - start
    # the reply continues from the prompt's last position, as generate() does and as the model saw in
    # training; a video's temporal ids may run past it (text after a video restarts at its h/w extent)
    return output.logits[:, -1], _output_cache(output), next_positions(positions), seconds


@torch.no_grad()
def decode_steps(
    model,
    first_token: torch.Tensor,
    cache,
    next_position: torch.Tensor,
    steps: int,
    stop: int | None = None,
    forced: Sequence[int] = (),
) -> tuple[list[int], list[float]]:
    """Greedy decoding of up to ``steps`` tokens (batch 1) with explicit positions, ending early
    after the token ``stop`` (e.g. ``<eos>``) when given.

    ``forced`` tokens are fed one per step after ``first_token`` whatever the model predicts
    (teacher forcing, e.g. the question of a prompt whose cache was compressed before it); greedy
    decoding starts after the last of them, so the first returned token is the model's next token
    after ``forced``. Those forced steps are neither timed nor counted in ``steps``.

    Returns the tokens and the seconds of each step.
    """
    token, tokens, times = first_token.view(1, 1), [], []
    for offset, forced_token in enumerate(forced):
        position = (next_position.view(1, 1, 1) + offset).expand(3, 1, 1)
        cache = _output_cache(model(input_ids=token, cache=cache, position_ids=position, use_cache=True))
        token = torch.tensor([[int(forced_token)]])
    next_position = next_position + len(forced)
    for step in range(steps):
        if stop is not None and int(token) == stop:
            break
        position = (next_position.view(1, 1, 1) + step).expand(3, 1, 1)
        start = time.perf_counter()
        output = model(input_ids=token, cache=cache, position_ids=position, use_cache=True)
        times.append(time.perf_counter() - start)
        cache = _output_cache(output)
        token = output.logits[:, -1].argmax(-1).view(1, 1)
        tokens.append(int(token))
    return tokens, times


def evaluate(
    bundle: ToyVLM | ToyVLMv2,
    method=None,
    *,
    n: int = 200,
    seed: int = 1,
    decode_samples: int = 5,
    decode_tokens: int = 8,
    question_first: bool | None = None,
    samples=None,
    max_reply_tokens: int = 24,
) -> dict[str, Any]:
    """Accuracy and costs of ``method`` (a registered method instance, or None) on ``n``
    held-out samples (``bundle.samples(n, seed)`` unless ``samples`` is given).

    For a ToyVLM v2 bundle the default samples are its ``short`` suite's (``bundle.samples``); the
    reply is decoded greedily through the method's cache until ``<eos>`` (at most
    ``max_reply_tokens``) and is right when it equals the answer followed by ``<eos>`` (exact
    match). Its decode time is measured on those reply steps of every sample.

    Returns:
        dict with ``accuracy``, ``accuracy_by_kind``, ``visual_tokens``, ``visual_tokens_full``,
        ``prefill_s``, ``encode_s``, ``language_s``, ``kv_bytes``, ``kv_offloaded_bytes``, ``decode_ms_per_token``, ``n``
        (and, for v2, ``accuracy_by_scope``: needle / aggregation questions, and ``reply_tokens``).
    """
    model = bundle.model.eval()
    chat = isinstance(bundle, ToyVLMv2)
    samples = samples if samples is not None else bundle.samples(n, seed)
    config = model.config
    hits: dict[str, list[bool]] = {}
    scopes: dict[str, list[bool]] = {}
    reply_lengths: list[int] = []
    kept, full, prefill_times, kv, offloaded, decode_times = [], [], [], [], [], []
    context = method(model) if method is not None else nullcontext()
    timer, encode_times = _EncodeTimer(model), []
    language_timer, language_times = _EncodeTimer(model, model.model.language_model), []
    try:
        with context:
            for index, sample in enumerate(samples):
                inputs = bundle.collate([sample]) if chat else bundle.collate([sample], question_first=question_first)
                visual_full = int(
                    (
                        (inputs["input_ids"] == config.image_token_id) | (inputs["input_ids"] == config.video_token_id)
                    ).sum()
                )
                if method is not None and hasattr(method, "stats"):
                    method.stats = {}
                timer.seconds = language_timer.seconds = 0.0
                logits, cache, next_position, seconds = prefill(model, inputs)
                encode_times.append(timer.seconds)
                language_times.append(language_timer.seconds)
                stats = getattr(method, "stats", None) or {}
                full.append(visual_full)
                kept.append(int(stats.get("visual_kept", visual_full)))
                prefill_times.append(seconds)
                resident, off = cache_bytes(cache)
                kv.append(resident)
                offloaded.append(off)
                if chat:
                    first = logits.argmax(-1)
                    rest, times = decode_steps(
                        model, first, cache, next_position, max_reply_tokens - 1, stop=bundle.vocab.eos
                    )
                    decode_times += times
                    reply = [bundle.vocab.words[i] for i in [int(first), *rest]]
                    reply_lengths.append(len(reply))
                    hit = reply == answer_words(sample)
                    hits.setdefault(sample.qa.kind, []).append(hit)
                    scopes.setdefault(sample.qa.scope, []).append(hit)
                    continue
                answer = bundle.vocab.words[int(logits.argmax(-1))]
                hits.setdefault(sample.qa.kind, []).append(answer == sample.qa.answer)
                if index < decode_samples and decode_tokens > 0:
                    _, times = decode_steps(model, logits.argmax(-1), cache, next_position, decode_tokens)
                    decode_times += times
    finally:
        timer.remove()
        language_timer.remove()
    mean = lambda values: sum(values) / max(1, len(values))  # noqa: E731
    result = {
        "accuracy": mean([h for v in hits.values() for h in v]),
        "accuracy_by_kind": {kind: mean(v) for kind, v in sorted(hits.items())},
        "visual_tokens": mean(kept),
        "visual_tokens_full": mean(full),
        "prefill_s": mean(prefill_times),
        "encode_s": mean(encode_times),
        "language_s": mean(language_times),
        "kv_bytes": mean(kv),
        "kv_offloaded_bytes": mean(offloaded),
        "decode_ms_per_token": 1000 * mean(decode_times),
        "n": len(samples),
    }
    if chat:
        result["accuracy_by_scope"] = {scope: mean(v) for scope, v in sorted(scopes.items())}
        result["reply_tokens"] = mean(reply_lengths)
    return result
