"""Private plumbing shared by ``speculative.py`` and ``reasoning.py``.

A hand-written decode loop for Qwen2.5-VL with explicit M-RoPE positions
(``docs/notes/transformers5.md`` §2): the prompt's embeddings and 3-D positions come from
:func:`reference_impls.common.visual_tokens.build_context` (the model's own ``get_rope_index`` on
the full sequence); a pruned prompt keeps its tokens' original positions
(:func:`~reference_impls.common.visual_tokens.reduce_inputs`); every generated token ``j`` gets
position ``next_position + j`` on all three rows. With explicit positions a plain physical
``DynamicCache`` is correct even when the prompt was pruned, and cropping it (rejected draft
tokens) needs no other bookkeeping.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import DynamicCache

from reference_impls.common.architectures import adapter_for
from reference_impls.common.random_pruning import random_keep
from reference_impls.common.visual_tokens import (
    Selection,
    VisualContext,
    VisualTokenMethod,
    build_context,
    keep_count,
    reduce_inputs,
)

PRUNE_RULES = ("uniform", "norm", "random")


@dataclass
class Prompt:
    """A (possibly pruned) batch-1 prompt ready for the language model."""

    embeds: torch.Tensor  # (1, S, D) input embeddings with the visual features scattered in
    positions: torch.Tensor  # (3, 1, S) M-RoPE positions of the full sequence, index-selected
    next_position: int  # position of the first generated token (max prompt position + 1)
    visual: torch.Tensor  # (S,) bool, True at visual tokens
    context: VisualContext = field(repr=False)  # the full prompt (vision tower output included)

    @property
    def length(self) -> int:
        return self.embeds.shape[1]

    @property
    def visual_in(self) -> int:
        return int(self.context.visual_mask[0].sum())

    @property
    def visual_kept(self) -> int:
        return int(self.visual.sum())


@dataclass
class DecodeResult:
    """Generated token ids (the prompt excluded) and the method's statistics."""

    tokens: list[int]
    stats: dict = field(default_factory=dict)


def encode_prompt(model: nn.Module, inputs: dict[str, torch.Tensor]) -> Prompt:
    """Embed a batch-1 Qwen2.5-VL prompt (vision tower included) and compute its 3-D positions."""
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError("the reference decoders handle batch size 1")
    context = build_context(model, inputs)
    return Prompt(
        embeds=context.inputs_embeds,
        positions=context.position_ids,
        next_position=int(context.position_ids.max()) + 1,
        visual=context.visual_mask[0],
        context=context,
    )


def keep_visual(
    items: list[tuple[int, int, int, int]],
    features: torch.Tensor,
    keep: float,
    rule: str = "uniform",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Which visual tokens to keep when only a fraction ``keep`` of each image's tokens stays.

    Pure function. Each image or video of ``n`` merged tokens keeps ``keep_count(n, keep)`` of
    them, chosen by ``rule``: ``"uniform"`` evenly spaced in raster order, ``"norm"`` the
    largest L2 norms of ``features``, ``"random"`` a random subset.

    Args:
        items: ``(start, t, h, w)`` per image/video; ``start`` indexes the visual tokens.
        features: ``(V, D)`` features of the sequence's visual tokens (read by ``"norm"``).
        keep: fraction in ``(0, 1]``.
        rule: one of ``PRUNE_RULES``.
        generator: random source for ``"random"``.

    Returns:
        ``(K,)`` ascending indices into the visual tokens.
    """
    if rule not in PRUNE_RULES:
        raise ValueError(f"unknown prune rule {rule!r}; expected one of {PRUNE_RULES}")
    chosen = []
    for start, t, h, w in items:
        n = t * h * w
        k = keep_count(n, keep)
        if rule == "uniform":
            index = torch.linspace(0, n - 1, k).round().long()
        elif rule == "norm":
            index = features[start : start + n].norm(dim=-1).topk(k).indices.sort().values
        else:
            index = random_keep(n, k, generator)
        chosen.append(start + index)
    return torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long)


def prune_prompt(prompt: Prompt, keep: float | VisualTokenMethod, rule: str = "uniform", seed: int = 0) -> Prompt:
    """The prompt with only some of its visual tokens; kept tokens keep their positions.

    ``keep`` is a fraction per image (chosen by ``rule``) or any ``kind="visual-token"`` method,
    whose ``select`` (and own budget) then decides.
    """
    if isinstance(keep, (int, float)) and keep >= 1:
        return prompt
    if prompt.visual_kept < prompt.visual_in:
        raise ValueError("prune the encoded prompt, not an already pruned one")
    context = prompt.context
    if isinstance(keep, (int, float)):
        generator = torch.Generator().manual_seed(seed)
        selection = Selection(keep=[keep_visual(context.items[0], context.features(0), keep, rule, generator)])
    else:
        selection = keep.select(context)
        selection = selection if isinstance(selection, Selection) else Selection(keep=list(selection))
    reduced, kept_index = reduce_inputs(context, selection)
    return Prompt(
        embeds=reduced["inputs_embeds"],
        positions=reduced["position_ids"],
        next_position=prompt.next_position,
        visual=context.visual_mask[0, kept_index[0]],
        context=context,
    )


def text_positions(start: int, count: int) -> torch.Tensor:
    """``(3, 1, count)`` positions of generated tokens: text tokens share one id on all rows."""
    return torch.arange(start, start + count).view(1, 1, -1).expand(3, 1, -1)


@contextmanager
def truncated(model: nn.Module, layers: int | None) -> Iterator[nn.Module]:
    """Run only the first ``layers`` decoder layers (then the final norm and LM head): early exit."""
    text = adapter_for(model).text_model(model)
    full = text.layers
    if layers is not None and not 0 < layers <= len(full):
        raise ValueError(f"layers must be in 1..{len(full)}, got {layers}")
    if layers is not None:
        text.layers = nn.ModuleList(list(full)[:layers])
    try:
        yield model
    finally:
        text.layers = full


@torch.no_grad()
def forward(
    model: nn.Module,
    cache: DynamicCache,
    positions: torch.Tensor,
    *,
    ids: list[int] | None = None,
    embeds: torch.Tensor | None = None,
    layers: int | None = None,
) -> torch.Tensor:
    """One language-model forward over new tokens (ids or embeddings); returns ``(n, V)`` logits."""
    input_ids = torch.tensor([ids]) if ids is not None else None
    with truncated(model, layers):
        out = model(input_ids=input_ids, inputs_embeds=embeds, position_ids=positions, cache=cache, use_cache=True)
    return out.logits[0].float()


def crop(cache: DynamicCache, length: int) -> None:
    """Drop entries past physical ``length`` (rejected draft tokens) from every layer."""
    surplus = cache.get_seq_length() - length
    if surplus < 0:
        raise ValueError(f"cannot crop a cache of length {cache.get_seq_length()} to {length}")
    if surplus:
        cache.crop(-surplus)  # transformers >= 5.24: a negative count of entries to remove


def eos_ids(model: nn.Module) -> set[int]:
    """End-of-sequence ids from the generation config (int or list)."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        return set()
    return {eos} if isinstance(eos, int) else set(eos)


def prefill(model: nn.Module, prompt: Prompt, layers: int | None = None) -> tuple[DynamicCache, torch.Tensor]:
    """Run the prompt; returns the cache and the ``(V,)`` logits of the first generated token."""
    cache = DynamicCache(config=model.config.get_text_config())
    logits = forward(model, cache, prompt.positions, embeds=prompt.embeds, layers=layers)
    return cache, logits[-1]


def decode(
    model: nn.Module,
    prompt: Prompt,
    max_new_tokens: int,
    *,
    cache: DynamicCache | None = None,
    first_logits: torch.Tensor | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[list[int], torch.Tensor]:
    """Greedy (``temperature == 0``) or sampled decoding, one token per forward.

    Returns the tokens (stopping after an end-of-sequence id) and the ``(V,)`` logits that chose
    the first token. ``cache``/``first_logits`` reuse an earlier prefill of ``prompt``; the cache
    is left holding the prompt and all generated tokens but the last.
    """
    if cache is None:
        cache, first_logits = prefill(model, prompt)
    stop = eos_ids(model)
    logits, tokens = first_logits, []
    while True:
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        else:
            token = int(logits.argmax())
        tokens.append(token)
        if token in stop or len(tokens) >= max_new_tokens:
            return tokens, first_logits
        position = text_positions(prompt.next_position + len(tokens) - 1, 1)
        logits = forward(model, cache, position, ids=[token])[-1]
