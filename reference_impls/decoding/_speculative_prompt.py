"""Private plumbing shared by ``speculative.py`` and ``reasoning.py``.

A hand-written decode loop for Qwen2.5-VL with explicit M-RoPE positions (design note
kv-cache-on-transformers5.md, section 2): the prompt's 3-D positions come from the model's own
``get_rope_index`` on the full sequence; a pruned prompt keeps its tokens' original positions by
index-selecting them; every generated token ``j`` gets position ``next_position + j`` on all three
rows. With explicit positions a plain physical ``DynamicCache`` is correct even when the prompt
was pruned, and cropping it (rejected draft tokens) needs no other bookkeeping.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn
from transformers import DynamicCache

from reference_impls.common.tiny import visual_mask, visual_spans

PRUNE_RULES = ("uniform", "norm", "random")


@dataclass
class Prompt:
    """A (possibly pruned) prompt ready for the language model."""

    embeds: torch.Tensor  # (1, S, D) input embeddings with the visual features scattered in
    positions: torch.Tensor  # (3, 1, S) M-RoPE positions of the full sequence, index-selected
    next_position: int  # position of the first generated token (max prompt position + 1)
    visual: torch.Tensor  # (S,) bool, True at visual tokens
    spans: list[tuple[int, int]]  # [start, end) of each image/video; empty once pruned
    visual_in: int  # visual tokens before pruning

    @property
    def length(self) -> int:
        return self.embeds.shape[1]

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
    input_ids = inputs["input_ids"]
    if input_ids.shape[0] != 1:
        raise ValueError("the reference decoders handle batch size 1")
    inner = model.model
    embeds = inner.get_input_embeddings()(input_ids)  # (1, S, D)
    for kind, grid_key, token_id in (
        ("pixel_values", "image_grid_thw", model.config.image_token_id),
        ("pixel_values_videos", "video_grid_thw", model.config.video_token_id),
    ):
        if inputs.get(kind) is None:
            continue
        getter = inner.get_image_features if kind == "pixel_values" else inner.get_video_features
        features = torch.cat(getter(inputs[kind], inputs[grid_key], return_dict=True).pooler_output)
        where = (input_ids == token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(where, features.to(embeds.dtype))
    positions, _ = inner.get_rope_index(
        input_ids,
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
        second_per_grid_ts=inputs.get("second_per_grid_ts"),
        attention_mask=inputs.get("attention_mask"),
    )  # (3, 1, S)
    visual = visual_mask(input_ids[0], model.config)
    return Prompt(
        embeds=embeds,
        positions=positions,
        next_position=int(positions.max()) + 1,
        visual=visual,
        spans=visual_spans(input_ids[0], model.config),
        visual_in=int(visual.sum()),
    )


def keep_visual(
    length: int,
    spans: list[tuple[int, int]],
    features: torch.Tensor,
    keep: float,
    rule: str = "uniform",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Which prompt tokens to keep when only a fraction ``keep`` of each image's tokens stays.

    Pure function. Every token outside ``spans`` is kept; each span of ``n`` visual tokens (one
    image or video) keeps ``max(1, round(keep * n))`` of them, chosen by ``rule``: ``"uniform"``
    evenly spaced in raster order, ``"norm"`` the largest L2 norms of ``features``, ``"random"``
    a random subset.

    Args:
        length: prompt length ``S``.
        spans: ``[start, end)`` of each visual run.
        features: ``(S, D)`` token embeddings (read by ``"norm"`` only).
        keep: fraction in ``(0, 1]``.
        rule: one of ``PRUNE_RULES``.
        generator: random source for ``"random"``.

    Returns:
        ``(S,)`` bool mask of kept tokens.
    """
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    if rule not in PRUNE_RULES:
        raise ValueError(f"unknown prune rule {rule!r}; expected one of {PRUNE_RULES}")
    kept = torch.ones(length, dtype=torch.bool)
    for start, end in spans:
        n = end - start
        k = max(1, round(keep * n))
        if rule == "uniform":
            chosen = torch.linspace(0, n - 1, k).round().long()
        elif rule == "norm":
            chosen = features[start:end].norm(dim=-1).topk(k).indices
        else:
            chosen = torch.randperm(n, generator=generator)[:k]
        kept[start:end] = False
        kept[start + chosen] = True
    return kept


def prune_prompt(prompt: Prompt, keep: float, rule: str = "uniform", seed: int = 0) -> Prompt:
    """The prompt with only a fraction ``keep`` of its visual tokens; kept tokens keep their positions."""
    if keep >= 1:
        return prompt
    if prompt.visual_kept < prompt.visual_in:
        raise ValueError("prune the encoded prompt, not an already pruned one")
    generator = torch.Generator().manual_seed(seed)
    kept = keep_visual(prompt.length, prompt.spans, prompt.embeds[0], keep, rule, generator)
    index = kept.nonzero().squeeze(-1)  # (S_kept,)
    return Prompt(
        embeds=prompt.embeds[:, index],
        positions=prompt.positions[:, :, index],
        next_position=prompt.next_position,
        visual=prompt.visual[index],
        spans=[],
        visual_in=prompt.visual_in,
    )


def text_positions(start: int, count: int) -> torch.Tensor:
    """``(3, 1, count)`` positions of generated tokens: text tokens share one id on all rows."""
    return torch.arange(start, start + count).view(1, 1, -1).expand(3, 1, -1)


@contextmanager
def truncated(model: nn.Module, layers: int | None) -> Iterator[nn.Module]:
    """Run only the first ``layers`` decoder layers (then the final norm and LM head): early exit."""
    text = model.model.language_model
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
