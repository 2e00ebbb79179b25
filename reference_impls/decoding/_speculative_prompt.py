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
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from reference_impls.common.architectures import adapter_for
from reference_impls.common.random_pruning import random_keep
from reference_impls.common.visual_tokens import (
    Selection,
    VisualContext,
    VisualTokenMethod,
    build_context,
    keep_count,
    next_positions,
    reduce_inputs,
)

PRUNE_RULES = ("specvlm", "uniform", "norm", "random")
"""Draft pruning rules; ``"specvlm"`` (upstream's) reads the verifier prefill's attention."""
POSITION_MODES = ("original", "renumbered")
SPECVLM_MASS = 0.4
"""Stage I keeps the most-attended tokens until they hold this share of the attention
(upstream inference.py: ``percentage=0.4``)."""
ATTENTION_NAME = "atlas_specvlm"
GQA_BLOCK_NAME = "atlas_gqa_block"


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
        next_position=int(next_positions(context.position_ids)[0]),
        visual=context.visual_mask[0],
        context=context,
    )


def specvlm_keep(scores: torch.Tensor, keep: float, mass: float = SPECVLM_MASS) -> torch.Tensor:
    """SpecVLM's two-stage choice of the draft's visual tokens, over all of them at once.

    Pure function. The budget is ``int(n * keep)``. Stage I takes the most-attended tokens, as
    few as reach ``mass`` of the total score (at most the budget); stage II fills the rest of
    the budget evenly from the remaining tokens in sequence order (``linspace`` truncated).

    Args:
        scores: ``(n,)`` verifier attention received by each visual token
            (:func:`prefill_with_attention`).
        keep: fraction in ``(0, 1]``.
        mass: stage I's share of the total score.

    Returns:
        ``(K,)`` ascending indices into the visual tokens.
    """
    n = scores.shape[0]
    budget = int(n * keep)
    order = scores.argsort(descending=True, stable=True)  # ties: lower index first
    reached = scores[order].cumsum(0) >= mass * scores.sum()  # (n,)
    stage_one = min(int(reached.long().argmax()) + 1 if bool(reached.any()) else n, budget)
    chosen = order[:stage_one]
    rest = torch.ones(n, dtype=torch.bool)
    rest[chosen] = False
    remaining = rest.nonzero().squeeze(-1)  # ascending
    # torch's integer linspace (upstream's call): not always floor of the exact fraction
    fill = remaining[torch.linspace(0, len(remaining) - 1, budget - stage_one, dtype=torch.long)]
    return torch.cat([chosen, fill]).sort().values


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
    if rule not in PRUNE_RULES[1:]:
        raise ValueError(f"unknown per-image prune rule {rule!r}; expected one of {PRUNE_RULES[1:]}")
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


def prune_prompt(
    prompt: Prompt,
    keep: float | VisualTokenMethod,
    rule: str = "uniform",
    seed: int = 0,
    attention: torch.Tensor | None = None,
    positions: str = "original",
) -> Prompt:
    """The prompt with only some of its visual tokens.

    ``keep`` is a fraction (of all visual tokens for ``"specvlm"``, which needs the verifier's
    ``attention`` scores ``(n_visual,)``; per image for the other rules) or any
    ``kind="visual-token"`` method, whose ``select`` (and own budget) then decides.
    ``positions``: ``"original"`` keeps every kept token's 3-D position (generated tokens
    continue after the full prompt); ``"renumbered"`` numbers the shorter sequence ``0..S-1``
    on all three rows (generated tokens continue at ``S``).
    """
    if positions not in POSITION_MODES:
        raise ValueError(f"positions must be one of {POSITION_MODES}, got {positions!r}")
    if isinstance(keep, (int, float)) and keep >= 1:
        return prompt
    if prompt.visual_kept < prompt.visual_in:
        raise ValueError("prune the encoded prompt, not an already pruned one")
    context = prompt.context
    if isinstance(keep, (int, float)) and rule == "specvlm":
        if attention is None or attention.shape != (prompt.visual_in,):
            raise ValueError("prune rule 'specvlm' needs the verifier's attention per visual token (prefill)")
        selection = Selection(keep=[specvlm_keep(attention, keep)])
    elif isinstance(keep, (int, float)):
        generator = torch.Generator().manual_seed(seed)
        selection = Selection(keep=[keep_visual(context.items[0], context.features(0), keep, rule, generator)])
    else:
        selection = keep.select(context)
        selection = selection if isinstance(selection, Selection) else Selection(keep=list(selection))
    reduced, kept_index = reduce_inputs(context, selection)
    length = reduced["inputs_embeds"].shape[1]
    renumber = positions == "renumbered"
    return Prompt(
        embeds=reduced["inputs_embeds"],
        positions=text_positions(0, length) if renumber else reduced["position_ids"],
        next_position=length if renumber else prompt.next_position,
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
    """One language-model forward over new tokens (ids or embeddings); returns ``(n, V)`` logits.

    Same logits as the plain model call, with less per-call work (a ToyVLM v2 forward is mostly
    fixed costs): the vision-language wrapper is skipped (with the prompt embedded and explicit
    positions it only forwards its arguments); one new token runs the decoder layers in a plain
    loop (:func:`_one_token`); a block of new tokens over a filled cache (speculative
    verification) attends through :func:`gqa_block_attention` (no copies of the cache).
    """
    text = adapter_for(model).text_model(model)
    if embeds is None:
        embeds = text.embed_tokens(torch.tensor([ids]))  # (1, n, D)
    if embeds.shape[1] == 1 and cache.get_seq_length() > 0 and not getattr(text, "has_sliding_layers", False):
        hidden = _one_token(text, embeds, positions, cache, layers)
    else:
        block = embeds.shape[1] > 1 and cache.get_seq_length() > 0
        with truncated(model, layers), _attention(model, GQA_BLOCK_NAME, only_from="sdpa", enabled=block):
            hidden = text(inputs_embeds=embeds, position_ids=positions, cache=cache, use_cache=True).last_hidden_state
    return model.get_output_embeddings()(hidden)[0].float()


def _one_token(
    text: nn.Module, embeds: torch.Tensor, positions: torch.Tensor, cache: DynamicCache, layers: int | None
) -> torch.Tensor:
    """The text model's own loop for one new token over a filled cache: rotary embedding, the
    (first ``layers``) decoder layers, final norm; ``(1, 1, D)``. One query may attend to every
    cached key, so there is no mask (transformers' sdpa mask is ``None`` there too; models with
    sliding-window layers, whose mask is not, take the text model's own forward)."""
    if layers is not None and not 0 < layers <= len(text.layers):
        raise ValueError(f"layers must be in 1..{len(text.layers)}, got {layers}")
    hidden, rotary = embeds, text.rotary_emb(embeds, positions)
    for layer in text.layers[:layers]:
        hidden = layer(hidden, attention_mask=None, position_embeddings=rotary, cache=cache, use_cache=True)
    return text.norm(hidden)


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


def _recording_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """sdpa, plus (on a recording layer) the attention the rows after the last visual token pay."""
    out = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    record = getattr(module, "_atlas_specvlm", None)
    if record is not None:
        rows = torch.arange(record["first_row"], query.shape[-2])  # (r,) query = key index in a prefill
        keys = repeat_kv(key, module.num_key_value_groups)  # (1, H, N, D)
        scores = (query[:, :, rows] @ keys.transpose(-1, -2)).float() * scaling  # (1, H, r, N)
        scores = scores.masked_fill(torch.arange(keys.shape[-2]) > rows[:, None], float("-inf"))  # causal
        record["layers"].append(torch.softmax(scores, dim=-1).mean(dim=(0, 1, 2)))  # (N,) mean of heads, rows
    return out


AttentionInterface.register(ATTENTION_NAME, _recording_attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def gqa_block_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """sdpa for a block of queries under a boolean mask, attending on the key/value heads (CPU).

    transformers' sdpa repeats every cached key and value ``num_key_value_groups`` times
    (``repeat_kv``, two copies of the cache per layer) whenever there is a mask, which a block of
    new tokens over a cache always has; torch's sdpa reads the grouped heads itself
    (``enable_gqa``), with the same result. Any other case goes to transformers' sdpa.
    """
    plain = attention_mask is None or attention_mask.dtype != torch.bool or query.shape[-2] == 1
    if plain or dropout or query.device.type != "cpu" or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None  # (1, n, H, D) as transformers' sdpa returns


AttentionInterface.register(GQA_BLOCK_NAME, gqa_block_attention)
AttentionMaskInterface.register(GQA_BLOCK_NAME, sdpa_mask)


@contextmanager
def _attention(model: nn.Module, name: str, only_from: str | None = None, enabled: bool = True) -> Iterator[None]:
    """Run ``model``'s language layers with attention implementation ``name`` for the duration.

    Every attention module's own config is switched (a twig's copied layers hold copies of the
    target's config), and the text config's, which picks the mask. ``only_from``: switch only
    configs currently set to that implementation (e.g. leave a recording prefill alone).
    """
    text = adapter_for(model).text_model(model)
    configs = {id(c): c for c in [text.config, *(layer.self_attn.config for layer in text.layers)]}.values()
    switched = [(c, c._attn_implementation) for c in configs if enabled and only_from in (None, c._attn_implementation)]
    for config, _ in switched:
        config._attn_implementation = name
    try:
        yield
    finally:
        for config, previous in switched:
            config._attn_implementation = previous


def prefill_with_attention(model: nn.Module, prompt: Prompt) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
    """:func:`prefill`, plus the ``(n_visual,)`` score SpecVLM prunes the draft by.

    The score of a visual token is the attention it receives from the text rows after the last
    visual token, averaged over those rows, the heads and the layers. The layers still run
    sdpa (cache and logits are those of :func:`prefill`); the score costs one ``rows x N``
    product per layer.
    """
    cache = DynamicCache(config=model.config.get_text_config())
    visual_index = prompt.visual.nonzero().squeeze(-1)  # (n,)
    if len(visual_index) == 0 or int(visual_index[-1]) == prompt.length - 1:
        raise ValueError("SpecVLM's attention score needs text after the last visual token")
    text_config, modules = model.config.get_text_config(), adapter_for(model).attention_modules(model)
    record = {"first_row": int(visual_index[-1]) + 1, "layers": []}
    previous = text_config._attn_implementation
    text_config._attn_implementation = ATTENTION_NAME
    for module in modules:
        module._atlas_specvlm = record
    try:
        logits = forward(model, cache, prompt.positions, embeds=prompt.embeds)
    finally:
        text_config._attn_implementation = previous
        for module in modules:
            del module._atlas_specvlm
    scores = torch.stack(record["layers"]).mean(0)  # (N,)
    return cache, logits[-1], scores[visual_index]


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
