"""PAI attention intervention: amplify the attention the generated token pays to the image.

Idea: object hallucination grows as a model attends to its own text more than to the image
("text inertia"). PAI raises the pre-softmax attention scores of the image tokens for the token
being generated, ``s_img <- s_img + alpha |s_img|`` in decoder layers ``start_layer`` to
``end_layer - 1``, so every new token looks more at the image, without training. Its second,
optional part refines the logits against the same prompt without the image:
``gamma (log p - log p_text) + log p_text`` on the tokens with ``p >= 0.1 max p``. We did not
build OPERA's over-trust penalty in beam search.

Paper: arXiv 2407.21771 ("Paying More Attention to Image: A Training-Free Method for
Alleviating Hallucination in LVLMs").
Upstream: LALBJ/PAI attention.py (``llama_new_forward``, ``llama_modify``), CFG.py
(``CFGLogits``), model_loader.py (``init_cfg_processor``) @
4a085d1e39dae0d95d2fafe6ba24f0f9b8d49023; defaults from chair_eval.py and the README commands:
``alpha`` 0.2, ``start_layer`` 2, ``end_layer`` 32 (= every layer of LLaMA-7B from the third on);
the refinement is opt-in (``--use-cfg``; ``--gamma`` defaults to 2, the README commands run 1.1).

Examples:
    >>> from reference_impls.common.tiny import tiny_qwen25vl, tiny_inputs
    >>> model = tiny_qwen25vl()
    >>> inputs = tiny_inputs(model, grids=((4, 4),))
    >>> with VisualAttentionAmplification(alpha=0.5, start_layer=0)(model):
    ...     ids = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    >>> ids.shape[1] == inputs["input_ids"].shape[1] + 3
    True
    >>> with VisualAttentionAmplification(guidance=1.1)(model):  # the README's PAI with logits refinement
    ...     ids = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    >>> ids.shape[1] == inputs["input_ids"].shape[1] + 3
    True

Implementation: a registered attention function (``"atlas_pai"``, masks built as for sdpa) is
switched on for the language model inside ``with method(model)``; a forward pre-hook reads the
visual key positions from ``input_ids`` (image / video token ids in the config) at every prefill
and the cache keeps them aligned during decoding. Layers that are not chosen, and ``alpha == 0``,
go through the unchanged sdpa function. :func:`amplified_attention` is the pure tensor function.
With ``guidance`` set, ``model.forward`` is wrapped (:mod:`.streams`, shared with VCD): the
prefill also opens a text-only stream (the prompt without image, video and vision-marker tokens,
upstream's "text before and after ``<ImageHere>``") with its own KV cache and its own 1-D
positions (passed explicitly, so Qwen's cached M-RoPE offset of the image stream is untouched);
each decoding call feeds it the same new tokens, without amplification, and the last logits are
replaced by :func:`guided_logits`. Left-padded batches are cut row by row and left-padded again.

Faithful to upstream: the rule (last query row only, image-key scores ``s + alpha |s|`` after
the scale and before the softmax; upstream adds the mask first, which only differs on keys a
row may not see anyway), the default ``alpha`` 0.2 and the layer range "from layer 2 to the
last" (``end_layer=None``); the refinement (``CFGLogits``: log-softmax of both streams,
``gamma (s - u) + u``, ``-inf`` where ``s < log 0.1 + max s``), its text-only prompt, its
unamplified text-only stream, its default "off" (``guidance=None``), and a quirk of its switch:
``llama_modify`` starts with ``use_cfg`` set when the refinement is on, so the image stream's
prefill -- the first generated token -- is not amplified (``amplify_first_token=True`` amplifies it).

Deviations / guesses: ``guidance=1`` is "off" here; upstream's ``--use-cfg --gamma 1`` returns
early and never clears ``use_cfg``, which silences the amplification too. The refinement edits
the model's logits, so all of ``generate``'s processors act after it; upstream's logits
processor runs after transformers' built-in processors (repetition penalty and the like, which
upstream does not set) and, as ours, before the sampling warpers (temperature, top-p; upstream
recommends nucleus sampling). Only the positions that match one-to-one between the streams are
refined (the last prompt position, then every new token); earlier prompt positions of a plain
forward keep the image stream's logits. ``layers`` (off by default) names the layers
explicitly instead of a range. The comparison benchmark runs ``start_layer=0`` (every layer of
the 3-layer captioner; with the default only the last layer would change) at alpha 0.5 and 1.0,
without the refinement.

Measured on ToyVLM (comparison benchmark, all layers): a trade-off, not a clear win. alpha 0.5 lowered the
targeted rate from 91% to 70% and alpha 1.0 to 42%. Clean-caption F1 fell to 99 and 90, the
exact-caption rate to 96% and 68%, and POPE F1 from 66.7 to 61 and 58. Restricting it to layers
1-2 had no effect (exploratory run).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from reference_impls.common.architectures import UnsupportedFeature, adapter_for
from reference_impls.registry import register

from .contrastive_decoding import plausibility_mask
from .streams import cache_key, cache_length, new_cache, patched

__all__ = ["VisualAttentionAmplification", "amplified_attention", "guided_logits", "text_only_prompt", "ATTENTION_NAME"]

ATTENTION_NAME = "atlas_pai"


def amplified_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    allowed: torch.Tensor,
    visual: torch.Tensor,
    alpha: float,
    scaling: float,
    last_only: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with the image keys' scores raised by ``alpha |score|`` before the softmax.

    Args:
        query: (B, H, q, D); key, value: (B, H, k, D) (KV heads already repeated).
        allowed: (B, 1, q, k) bool, True where a query may attend.
        visual: (B, k) bool, True at image-token keys.
        alpha: amplification (0: plain attention).
        scaling: score scale (``head_dim ** -0.5``).
        last_only: change only the last query row (the token being generated).

    Returns:
        ``(output (B, q, H, D), probabilities (B, H, q, k))``.
    """
    scores = (query @ key.transpose(-1, -2)).float() * scaling  # (B, H, q, k)
    boost = visual[:, None, None, :].to(scores.dtype) * scores.abs() * alpha  # (B, H, q, k)
    if last_only:
        rows = torch.zeros(scores.shape[-2], 1, dtype=scores.dtype)
        rows[-1] = 1
        boost = boost * rows  # (B, H, q, k)
    scores = (scores + boost).masked_fill(~allowed, float("-inf"))
    # Fully masked rows (left padding) would give NaN, which then leaks through the cache.
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0).to(query.dtype)
    return (probs @ value).transpose(1, 2).contiguous(), probs


def guided_logits(
    conditional: torch.Tensor, unconditional: torch.Tensor, gamma: float, beta: float = 0.1
) -> torch.Tensor:
    """PAI's logits refinement: ``gamma (s - u) + u`` on log-probabilities, ``-inf`` where implausible.

    Args:
        conditional: (..., V) logits with the image.
        unconditional: (..., V) logits of the text-only prompt.
        gamma: guidance scale (1: ``s``, the conditional log-probabilities, inside the plausible set).
        beta: keep tokens with ``p_cond >= beta * max p_cond`` (upstream's fixed 0.1).

    Returns:
        (..., V) scores (float32); the argmax is always a plausible token.
    """
    s = torch.log_softmax(conditional.float(), dim=-1)  # (..., V)
    u = torch.log_softmax(unconditional.float(), dim=-1)  # (..., V)
    return (gamma * (s - u) + u).masked_fill(~plausibility_mask(conditional, beta), float("-inf"))


def text_only_prompt(
    input_ids: torch.Tensor, keep: torch.Tensor, pad_token_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt rows without their dropped tokens, left-padded to one width.

    Args:
        input_ids: (B, N) prompt.
        keep: (B, N) bool, True at the tokens the text-only prompt keeps.
        pad_token_id: filler for shorter rows (masked out).

    Returns:
        ``(ids (B, M), attention_mask (B, M))``.
    """
    rows = [row[k] for row, k in zip(input_ids, keep)]
    width = max(len(row) for row in rows)
    ids = input_ids.new_full((len(rows), width), pad_token_id)  # (B, M)
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=input_ids.device)  # (B, M)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, -len(row) :], mask[i, -len(row) :] = row, 1
    return ids, mask


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The registered attention function: PAI on chosen layers, sdpa everywhere else."""
    setting = getattr(module, "_atlas_pai", None)
    if setting is None or setting["alpha"] == 0 or setting["state"].get("off"):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    q_len, k_len = query.shape[-2], key.shape[-2]
    if attention_mask is None:  # sdpa_mask skips a plain causal mask
        allowed = torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len)[None, None]
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask
    else:
        allowed = attention_mask > float("-inf")
    visual = setting["state"]["visual"]  # (B, prompt length)
    visual = torch.nn.functional.pad(visual, (0, k_len - visual.shape[1]), value=False)  # (B, k)
    return amplified_attention(
        query,
        key,
        value,
        allowed.expand(query.shape[0], 1, q_len, k_len),
        visual,
        setting["alpha"],
        scaling,
        setting["last_only"],
    )


AttentionInterface.register(ATTENTION_NAME, _attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


@register("pai", family="attention-intervention", kind="hallucination")
@dataclass
class VisualAttentionAmplification:
    """``with VisualAttentionAmplification(alpha)(model):`` decodes with amplified image attention."""

    alpha: float = 0.2
    start_layer: int = 2
    """First decoder layer changed (upstream's ``start_layer``)."""
    end_layer: int | None = None
    """One past the last layer changed (None: the model's last layer, as upstream's 32 on LLaMA-7B)."""
    layers: Sequence[int] | None = None
    """Explicit layers to change instead of the range (not upstream; None: use the range)."""
    last_only: bool = True
    guidance: float | None = None
    """PAI's logits refinement scale ``gamma`` (upstream ``--use-cfg --gamma``; the README runs 1.1).
    None or 1: off, as upstream's default (``--use-cfg`` not given)."""
    amplify_first_token: bool = False
    """Not upstream: with guidance on, amplify the first generated token too (upstream's flag that
    silences the amplification in the text-only stream starts set, so its prefill is not amplified)."""

    @contextlib.contextmanager
    def __call__(self, model: nn.Module) -> Iterator[nn.Module]:
        with self._amplified(model) as state:
            if self.guidance is None or self.guidance == 1:
                yield model
            else:
                with patched((model, "forward", self._guided_forward(model, state))):
                    yield model

    def _guided_forward(self, model: nn.Module, state: dict):
        """``model.forward`` that also advances the text-only stream and returns the guided logits."""
        adapter, original, stream = adapter_for(model), model.forward, {}

        @functools.wraps(original)  # generate() validates its kwargs against this signature
        def forward(*args, **kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                raise UnsupportedFeature("PAI guidance cuts the text-only prompt from input_ids; got embeddings only")
            first = cache_length(kwargs) == 0
            state["off"] = first and not self.amplify_first_token
            try:
                out = original(*args, **kwargs)
            finally:
                state["off"] = False
            if first:  # the prompt without image, video and marker tokens (upstream: the text around <ImageHere>)
                keep = ~(adapter.visual_mask(ids, model.config) | adapter.marker_mask(ids, model.config))
                if kwargs.get("attention_mask") is not None:
                    keep &= kwargs["attention_mask"].bool()
                text, stream["mask"] = text_only_prompt(ids, keep)  # (B, M)
                stream["cache"], rows = new_cache(kwargs, model.config), 1
            else:  # the same new tokens in both streams
                text, rows = ids, ids.shape[1]
                stream["mask"] = torch.cat([stream["mask"], torch.ones_like(ids)], dim=1)
            # Explicit 1-D positions: the text-only stream's own (no image), and Qwen's cached
            # M-RoPE offsets (rope_deltas) of the main stream stay untouched.
            positions = (stream["mask"].cumsum(-1) - 1).clamp(min=0)[:, -text.shape[1] :]  # (B, m)
            key = cache_key(kwargs)
            extra = {key: stream["cache"]} if key is not None else {"use_cache": False}
            state["off"] = True  # upstream's use_cfg: no amplification in the text-only stream
            try:
                uncond = original(input_ids=text, attention_mask=stream["mask"], position_ids=positions, **extra)
            finally:
                state["off"] = False
            rows = min(rows, out.logits.shape[1])
            guided = guided_logits(out.logits[:, -rows:], uncond.logits[:, -rows:], self.guidance)
            out.logits = torch.cat([out.logits[:, :-rows].float(), guided], dim=1)
            return out

        return forward

    @contextlib.contextmanager
    def _amplified(self, model: nn.Module) -> Iterator[dict]:
        adapter = adapter_for(model)
        text_config = model.config.get_text_config()
        layers = adapter.language_layers(model)
        end = len(layers) if self.end_layer is None else self.end_layer
        chosen = range(self.start_layer, end) if self.layers is None else self.layers
        state: dict = {}

        def capture(_module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            if ids is not None and (cache is None or cache.get_seq_length() == 0):
                state["visual"] = adapter.visual_mask(ids, model.config)  # (B, N)

        handle = model.register_forward_pre_hook(capture, with_kwargs=True)
        previous = text_config._attn_implementation
        text_config._attn_implementation = ATTENTION_NAME
        for index in chosen:
            layers[index].self_attn._atlas_pai = {"alpha": self.alpha, "last_only": self.last_only, "state": state}
        try:
            yield state
        finally:
            handle.remove()
            text_config._attn_implementation = previous
            for index in chosen:
                del layers[index].self_attn._atlas_pai
