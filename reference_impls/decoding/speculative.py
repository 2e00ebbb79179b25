"""Speculative decoding with a visually pruned draft (training-free).

**SpecVLM: Enhancing Speculative Decoding of Video LLMs via Verifier-Guided Token Pruning**

A cheap *draft* proposes ``num_draft`` tokens one at a time; the *target* scores all of them
in one forward and keeps the longest prefix it agrees with, plus one token of its own (the
correction, or a bonus when everything was accepted). With strict verification the output is
exactly the target's greedy output, only produced with fewer target forwards. SpecVLM's
observation is that the draft is insensitive to visual-token pruning, so the draft sees only
a small fraction of the visual tokens: its prefill is cheaper and its KV cache smaller, while
the target, which sees everything, keeps the output lossless. The draft is a smaller model
sharing the vocabulary, or the target itself (self-speculation), optionally truncated to its
first layers. Relaxed verification (survey arXiv 2604.05546, Appendix D.2) trades exactness
for longer accepted runs: a draft token that is not the target's top-1 is still accepted, with
probability ``relax_rate``, when it is within the target's top-``relax_top_k``, optionally only
for a caller-given set of token ids (e.g. function words that carry no visual content).

Paper: arXiv 2508.16201

Upstream: zju-jiyicheng/SpecVLM ``decoding/tree_decoding_qwen2_5.py`` (``evaluate_posterior``,
``initialize_tree_with_pruning``), ``utils/utils.py`` (``convert_attention_to_score``,
``drop_visual_tokens_specvlm``, ``get_attention_token_from_percentage``) and ``inference.py``
/ ``run_qwenvl.sh`` (``percentage=0.4``, ``drop_rate`` 0.9) @
632ef27aa65a07d574d21c0e13ccf336c1d14e08. Verification is the same rule: a draft token is
accepted while it equals the target's argmax at its position (``cumprod`` of the matches), and
the target's argmax after the accepted prefix is emitted (:func:`verify_step`, parity test
against that rule and against the standard greedy case of Leviathan et al. 2023 / Chen et al.
2023). The default draft pruning (``prune="specvlm"``, ``draft_visual_keep=0.1``) is
upstream's verifier-guided rule: the target's prefill also scores every visual token by the
attention it receives from the text rows after the last visual token (mean over those rows,
the heads and the layers); the draft keeps ``int(n * keep)`` of them, first the most-attended
ones until they hold 40% of the total score (stage I), then evenly spaced ones from the rest
(stage II, torch's integer ``linspace``). Parity test:
``tests/decoding/test_parity_speculative.py``.

Examples:
    >>> from reference_impls.common.tiny import tiny_qwen25vl, tiny_inputs
    >>> model = tiny_qwen25vl()
    >>> inputs = tiny_inputs(model)
    >>> result = SpeculativeDecoding(draft_visual_keep=0.25, num_draft=4)(model, inputs, max_new_tokens=12)
    >>> result.tokens == greedy_decode(model, inputs, max_new_tokens=12).tokens
    True

Deviations:
    - Draft pruning: upstream scores video tokens only; ``"specvlm"`` here scores every visual
      token (images and videos, one budget over all of them). Upstream computes the scores
      from ``output_attentions`` of its second prefill stage; ours records them inside the
      sdpa prefill (same rows, same reduction, checked against eager attention maps), and
      breaks score ties by position (upstream's unstable ``torch.sort`` leaves them to the
      kernel). As upstream, a budget ``int(n * keep)`` of 0 leaves the draft no visual token.
      Our earlier rules stay as options, attention-free and per image: ``prune="uniform"``
      (evenly spaced, ``linspace`` *rounded*, ``k = round(n * keep)``, at least 1), ``"norm"``
      (largest embedding norm) or ``"random"``; any registered ``visual-token`` method can be
      plugged in instead. The draft's pruning only changes speed, never the output.
    - Draft positions: upstream feeds the draft the shorter sequence (``input_ids`` without
      the dropped tokens, ``selected_indices`` handed to its modified Qwen2.5-VL modelling file,
      generated tokens numbered from the draft's own length); we did not verify how that file
      numbers the kept video tokens. The default keeps every kept token's original 3-D M-RoPE
      position (``draft_positions="original"``): the draft then sees the image geometry the
      target sees and its generated tokens share the target's positions, which cannot hurt
      acceptance. ``draft_positions="renumbered"`` numbers the shorter sequence ``0..S-1`` on
      all three rows (our reading of "the shorter sequence"; a guess, not upstream's code).
    - SpecVLM drafts an EAGLE-style token tree (top-10 per node, 48 draft tokens, depth 5) and
      verifies every path in one forward; we draft and verify one chain (the tree's single
      path case). There is no sampling path: the draft decodes greedily and verification
      compares with the target's argmax, as upstream; the stochastic rule of Leviathan et al. /
      Chen et al. (accept with ``min(1, p/q)``, resample from ``max(0, p - q)``) is not
      implemented, so strict mode is lossless for greedy decoding only.
    - ``draft_layers`` (early exit of the draft after its first layers) is our addition, to get
      a draft cheaper than the target when no smaller model exists; it is not from SpecVLM.
      Likewise ``draft_min_confidence`` (stop a proposal when the draft is unsure), a common
      speculative-decoding device we added; off by default.
    - The relaxation rule reads the survey's description; "within top-k" and the function-word
      set are our choices. Batch size 1, no tree drafting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from reference_impls.common.architectures import adapter_for
from reference_impls.common.visual_tokens import VisualTokenMethod
from reference_impls.decoding._speculative_prompt import (
    POSITION_MODES,
    PRUNE_RULES,
    DecodeResult,
    crop,
    decode,
    encode_prompt,
    eos_ids,
    forward,
    prefill,
    prefill_with_attention,
    prune_prompt,
    text_positions,
)
from reference_impls.registry import register

__all__ = ["SpeculativeDecoding", "DecodeResult", "accept_draft", "accepted_prefix", "verify_step", "greedy_decode"]


def accept_draft(
    draft: torch.Tensor,
    target_logits: torch.Tensor,
    *,
    relax_rate: float = 0.0,
    relax_top_k: int = 2,
    relax_ids: frozenset[int] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position verification of draft tokens against the target's logits.

    A draft token is accepted when it is the target's argmax (strict), or, relaxed, when it
    ranks within the target's top ``relax_top_k``, is listed in ``relax_ids`` (any token when
    ``None``) and a coin with probability ``relax_rate`` comes up. One coin is drawn per
    position whatever the outcome, so runs are reproducible for a given generator.

    Args:
        draft: ``(k,)`` draft token ids.
        target_logits: ``(k, V)`` target logits at the positions that predict those tokens.
        relax_rate: probability of accepting an eligible non-top-1 token; 0 is strict.
        relax_top_k: how far down the target's ranking an eligible token may be.
        relax_ids: the only ids that may be relaxed (None: every id).
        generator: random source for the coins.

    Returns:
        ``(accepted, relaxed)``, two ``(k,)`` bool tensors; ``relaxed`` marks accepted tokens
        that were not the target's argmax.
    """
    exact = draft == target_logits.argmax(-1)  # (k,)
    drafted = target_logits.gather(-1, draft[:, None])  # (k, 1)
    rank = (target_logits > drafted).sum(-1)  # (k,) how many tokens the target prefers
    eligible = rank < relax_top_k
    if relax_ids is not None:
        eligible &= torch.tensor([int(t) in relax_ids for t in draft], dtype=torch.bool)
    coins = torch.rand(len(draft), generator=generator) < relax_rate
    relaxed = ~exact & eligible & coins
    return exact | relaxed, relaxed


def accepted_prefix(accepted: torch.Tensor) -> int:
    """Length of the leading run of ``True`` in a ``(k,)`` bool tensor."""
    return int(accepted.long().cumprod(0).sum())


def verify_step(proposal: list[int], target_logits: torch.Tensor, accepted: torch.Tensor) -> tuple[list[int], int]:
    """The tokens one verification step emits: the accepted draft prefix, then the target's own token.

    Args:
        proposal: the ``k`` draft tokens.
        target_logits: ``(k + 1, V)`` target logits; row ``i`` predicts the token after ``i``
            draft tokens (row ``k`` gives the bonus token when every draft token is accepted).
        accepted: ``(k,)`` bool, per-position verdicts (:func:`accept_draft`).

    Returns:
        ``(tokens, n)``: the ``n + 1`` emitted tokens and the accepted prefix length ``n``.
    """
    n = accepted_prefix(accepted)
    return proposal[:n] + [int(target_logits[n].argmax())], n


class _Draft:
    """The draft's own (pruned) prompt, cache and count of generated tokens it has seen."""

    def __init__(self, model: nn.Module, prompt, layers: int | None):
        self.model, self.prompt, self.layers = model, prompt, layers
        self.cache, _ = prefill(model, prompt, layers)
        self.seen = 0  # generated tokens whose keys/values are in self.cache
        self.fed = 0  # proposal tokens of the last round whose keys/values are in self.cache
        self.forwards = 0

    def propose(
        self, generated: list[int], k: int, min_confidence: float = 0.0, stop: frozenset[int] = frozenset()
    ) -> list[int]:
        """Up to ``k`` greedy tokens continuing ``generated`` (feeds the 1-2 tokens it has not seen).

        Stops after an end-of-sequence id in ``stop``, or when the draft's top probability for
        the next token is below ``min_confidence`` (at least one token is always proposed).
        """
        new = generated[self.seen :]
        position = text_positions(self.prompt.next_position + self.seen, len(new))
        logits = forward(self.model, self.cache, position, ids=new, layers=self.layers)[-1]
        self.seen, self.fed, self.forwards = len(generated), 0, self.forwards + 1
        proposal = [int(logits.argmax())]
        while len(proposal) < k and proposal[-1] not in stop:
            position = text_positions(self.prompt.next_position + len(generated) + self.fed, 1)
            logits = forward(self.model, self.cache, position, ids=proposal[-1:], layers=self.layers)[-1]
            self.fed, self.forwards = self.fed + 1, self.forwards + 1
            if min_confidence > 0 and float(torch.softmax(logits, -1).max()) < min_confidence:
                break
            proposal.append(int(logits.argmax()))
        return proposal

    def rollback(self, accepted: int) -> None:
        """Keep the cache of the accepted proposal tokens only."""
        kept = min(accepted, self.fed)
        crop(self.cache, self.prompt.length + self.seen + kept)
        self.seen += kept


@register("speculative", family="speculative-training-free", kind="decoding")
@dataclass
class SpeculativeDecoding:
    """Draft-then-verify greedy decoding for Qwen2.5-VL (batch size 1).

    Call it as ``SpeculativeDecoding(...)(model, inputs, max_new_tokens=...)``; it returns a
    :class:`DecodeResult` and also stores the statistics in ``self.stats``.
    """

    draft_model: nn.Module | None = None
    """A smaller model sharing the vocabulary, or a twig grown on the target
    (:mod:`reference_impls.decoding.twig_draft`); ``None`` drafts with the target itself."""
    draft_visual_keep: float = 0.1
    """Fraction of the visual tokens the draft sees (1.0: all); upstream's ``drop_rate`` 0.9."""
    prune: str | VisualTokenMethod = "specvlm"
    """How the draft's visual tokens are chosen: ``"specvlm"`` (upstream's two stages, from the
    target prefill's attention, over all visual tokens), per image ``"uniform"``, ``"norm"``,
    ``"random"`` (not upstream), or any ``kind="visual-token"`` method (its own ``select`` and
    budget decide, ``draft_visual_keep`` is then ignored)."""
    draft_positions: str = "original"
    """The pruned draft prompt's positions: ``"original"`` 3-D M-RoPE positions of the kept
    tokens, or ``"renumbered"`` ``0..S-1`` over the shorter sequence (see Deviations)."""
    draft_layers: int | None = None
    """Run only the draft's first ``draft_layers`` decoder layers (``None``: all)."""
    num_draft: int = 4
    """Most tokens proposed per verification step."""
    draft_min_confidence: float = 0.0
    """Stop a proposal early when the draft's top probability falls below this (0: never)."""
    relax_rate: float = 0.0
    """Probability of accepting an eligible non-top-1 draft token (0: strict, lossless)."""
    relax_top_k: int = 2
    """Eligible tokens rank within the target's top ``relax_top_k``."""
    relax_ids: frozenset[int] | None = None
    """Only these ids may be relaxed (``None``: any id)."""
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.prune, str) and self.prune not in PRUNE_RULES:
            raise ValueError(f"prune must be one of {PRUNE_RULES}, got {self.prune!r}")
        if self.draft_positions not in POSITION_MODES:
            raise ValueError(f"draft_positions must be one of {POSITION_MODES}, got {self.draft_positions!r}")
        if self.num_draft < 1:
            raise ValueError("num_draft must be >= 1")
        self.stats: dict = {}

    @torch.no_grad()
    def __call__(self, model: nn.Module, inputs: dict[str, torch.Tensor], max_new_tokens: int = 32) -> DecodeResult:
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(self.seed)
        prompt = encode_prompt(model, inputs)
        if self._needs_attention():  # the verifier's prefill also scores the visual tokens
            cache, logits, attention = prefill_with_attention(model, prompt)
        else:
            (cache, logits), attention = prefill(model, prompt), None
        draft_model, draft_prompt = self._draft_prompt(model, inputs, prompt, attention)
        draft = _Draft(draft_model, draft_prompt, self.draft_layers)
        prefilled = time.perf_counter()
        generated, stop = [int(logits.argmax())], eos_ids(model)
        lengths, proposed, drafted, relaxed_total = [], 0, 0, 0
        while not stop.intersection(generated) and len(generated) < max_new_tokens:
            k = min(self.num_draft, max_new_tokens - len(generated) - 1)
            proposal = draft.propose(generated, k, self.draft_min_confidence, frozenset(stop)) if k > 0 else []
            k = len(proposal)
            block = generated[-1:] + proposal  # the target has not seen the last generated token yet
            position = text_positions(prompt.next_position + len(generated) - 1, len(block))
            target_logits = forward(model, cache, position, ids=block)  # (k + 1, V)
            accepted, relaxed = accept_draft(
                torch.tensor(proposal, dtype=torch.long),
                target_logits[:k],
                relax_rate=self.relax_rate,
                relax_top_k=self.relax_top_k,
                relax_ids=self.relax_ids,
                generator=generator,
            )
            emitted, n = verify_step(proposal, target_logits, accepted)
            crop(cache, prompt.length + len(generated) + n)  # keep the accepted prefix only
            if k > 0:
                draft.rollback(n)
            new = _until_stop(emitted, stop)  # nothing after <eos>
            generated += new
            lengths.append(len(new))
            proposed += k
            drafted += min(n, len(new))
            relaxed_total += int(relaxed[: len(new)].sum())
        tokens = generated
        self.stats = {
            "prefill_seconds": prefilled - start,  # vision tower, target and draft prefill
            "decode_seconds": time.perf_counter() - prefilled,
            "new_tokens": len(tokens),
            "target_forwards": len(lengths),
            "accepted_lengths": lengths,
            "mean_accepted_length": sum(lengths) / len(lengths) if lengths else 1.0,
            "draft_proposed": proposed,
            "draft_accepted": drafted,  # = sum(lengths) - len(lengths) unless a drafted <eos> ended a step
            "relaxed_accepts": relaxed_total,
            "draft_forwards": draft.forwards,
            "visual_in": draft_prompt.visual_in,
            "visual_kept": draft_prompt.visual_kept,
            # physical cache lengths at the end: prompt plus every accepted token the model was fed
            "prompt_length": prompt.length,
            "target_cache_length": cache.get_seq_length(),
            "draft_prompt_length": draft_prompt.length,
            "draft_cache_length": draft.cache.get_seq_length(),
        }
        return DecodeResult(tokens, dict(self.stats))

    def _draft_model(self, model: nn.Module) -> nn.Module:
        """The draft for this target (a subclass may build one, e.g. a trained twig)."""
        return self.draft_model if self.draft_model is not None else model

    def _needs_attention(self) -> bool:
        return self.prune == "specvlm" and self.draft_visual_keep < 1

    def _draft_prompt(self, model: nn.Module, inputs: dict[str, torch.Tensor], prompt=None, attention=None):
        """The draft model and its pruned prompt (reusing the target's encoding when they share
        the vision tower and token embeddings, as the target itself or a twig grown on it).
        ``attention``: the target prefill's visual-token scores (``"specvlm"``)."""
        draft_model = self._draft_model(model)
        if attention is None and self._needs_attention():
            prompt = encode_prompt(model, inputs)
            attention = prefill_with_attention(model, prompt)[2]
        if prompt is None or not _same_encoder(draft_model, model):
            prompt = encode_prompt(draft_model, inputs)
        if isinstance(self.prune, str):
            keep, rule = self.draft_visual_keep, self.prune
            return draft_model, prune_prompt(prompt, keep, rule, self.seed, attention, self.draft_positions)
        return draft_model, prune_prompt(prompt, self.prune, positions=self.draft_positions)

    @torch.no_grad()
    def draft_first_token(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> int:
        """The draft's greedy first token for this prompt.

        Decoding never asks the draft for it (the first token comes from the target's
        prefill), but for one-word answers it is the one content token, so agreement with the
        target's first token measures how much the draft's pruning costs where it matters.
        """
        draft_model, draft_prompt = self._draft_prompt(model, inputs)
        return int(prefill(draft_model, draft_prompt, self.draft_layers)[1].argmax())


def _same_encoder(draft: nn.Module, target: nn.Module) -> bool:
    """Whether the draft embeds prompts with the target's own modules (same prompt encoding)."""
    if draft is target:
        return True
    draft_tower, target_tower = adapter_for(draft).vision_tower(draft), adapter_for(target).vision_tower(target)
    return draft_tower is target_tower and draft.get_input_embeddings() is target.get_input_embeddings()


def _until_stop(tokens: list[int], stop: set[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in stop:
            return tokens[: i + 1]
    return tokens


@torch.no_grad()
def greedy_decode(model: nn.Module, inputs: dict[str, torch.Tensor], max_new_tokens: int = 32) -> DecodeResult:
    """Plain greedy decoding with the same explicit-position loop (the speculative baseline)."""
    start = time.perf_counter()
    prompt = encode_prompt(model, inputs)
    cache, logits = prefill(model, prompt)
    prefilled = time.perf_counter()
    tokens, _ = decode(model, prompt, max_new_tokens, cache=cache, first_logits=logits)
    stats = {"prefill_seconds": prefilled - start, "decode_seconds": time.perf_counter() - prefilled}
    return DecodeResult(tokens, stats | {"new_tokens": len(tokens), "target_forwards": len(tokens) - 1})
