"""Drop (or merge) visual tokens before the language model, keeping their M-RoPE positions.

Every encoding-stage token compression method (random pruning, ToMe, PruMerge, VisionZip,
pooling adapters) has the same plumbing around a different choice: run the vision tower, decide
which post-merger visual tokens survive (and optionally what their features become), and feed
the language model a shorter sequence. The plumbing lives here, once:

1. :func:`build_context` runs the vision tower, scatters the features into the text embeddings
   and computes the 3-D M-RoPE positions of the **full** sequence (``get_rope_index``), exactly
   as ``Qwen2_5_VLModel.forward`` does.
2. A method's ``select(ctx) -> Selection`` picks, per sequence, the indices of the visual tokens
   to keep (and may replace their features, for merging methods).
3. :func:`reduce_inputs` index-selects embeddings, positions and attention mask, so every kept
   token keeps the position it had in the full sequence; text tokens are always kept.
4. :class:`VisualTokenMethod` patches ``model.model.forward`` inside ``with method(model):``, so
   ``model(**inputs)`` and ``model.generate(**inputs)`` run with the shorter sequence, and
   records ``method.stats = {"visual_in", "visual_kept"}`` (first sequence of the batch).

With every token kept the patched model is bit-identical to the unpatched one (tested).

Examples:
    >>> from reference_impls.common.tiny import tiny_qwen25vl, tiny_inputs
    >>> model = tiny_qwen25vl(); inputs = tiny_inputs(model)
    >>> kwargs, ctx, sel = apply_visual_token_selection(model, inputs, lambda ctx: [torch.arange(0, n, 2) for n in ctx.visual_counts])
    >>> logits = model(**kwargs).logits     # half of the visual tokens, original positions

Deviations / guesses:
    Methods act on the post-merger tokens (one per 28 x 28 pixels) in raster order, not inside
    the vision tower's windowed blocks (see ``docs/notes/transformers5.md`` §6). When sequences of a batch
    keep different numbers of tokens, the shorter ones are left-padded (masked).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "VisualContext",
    "Selection",
    "SelectFn",
    "keep_count",
    "next_positions",
    "build_context",
    "reduce_inputs",
    "apply_visual_token_selection",
    "patch_visual_tokens",
    "VisualTokenMethod",
]


@dataclass
class VisualContext:
    """Everything a selection rule may look at, for a batch of ``B`` sequences of length ``S``."""

    input_ids: torch.Tensor  # (B, S)
    attention_mask: torch.Tensor  # (B, S)
    inputs_embeds: torch.Tensor  # (B, S, D) visual features already scattered in
    position_ids: torch.Tensor  # (3, B, S) M-RoPE positions of the full sequence
    rope_deltas: torch.Tensor  # (B, 1) next position minus S, as the model computes it
    visual_mask: torch.Tensor  # (B, S) bool, image or video tokens
    items: list[list[tuple[int, int, int, int]]]
    """Per sequence, one ``(start, t, h, w)`` per image/video: ``start`` indexes the sequence's
    visual tokens, ``(t, h, w)`` is the merged-token grid (raster order inside an item)."""
    vision_outputs: dict[str, Any] = field(default_factory=dict)
    """``{"image": ..., "video": ...}`` outputs of the vision tower (``pooler_output`` split per item)."""

    @property
    def visual_counts(self) -> list[int]:
        """Number of visual tokens of each sequence."""
        return self.visual_mask.sum(-1).tolist()

    def features(self, b: int) -> torch.Tensor:
        """Visual token features of sequence ``b`` in sequence order. ``(V_b, D)``."""
        return self.inputs_embeds[b][self.visual_mask[b]]

    def visual_positions(self, b: int) -> torch.Tensor:
        """Indices in the sequence of the visual tokens of sequence ``b``. ``(V_b,)``."""
        return self.visual_mask[b].nonzero().squeeze(-1)


@dataclass
class Selection:
    """Which visual tokens survive, per sequence (indices into that sequence's visual tokens,
    ascending), and optionally their new features ``(K_b, D)`` (merging methods)."""

    keep: list[torch.Tensor]
    embeds: list[torch.Tensor] | None = None


SelectFn = Callable[[VisualContext], "Selection | Sequence[torch.Tensor]"]


def next_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """The 3-D M-RoPE position each sequence's first generated token takes, ``(3, B, N)`` -> ``(B,)``.

    It is the last prompt token's position + 1, as ``generate()`` continues, not the largest
    position + 1: a video's temporal ids run past the text that follows it."""
    return position_ids[:, :, -1].amax(dim=0) + 1


def keep_count(n: int, budget: float) -> int:
    """Visual tokens kept out of ``n`` at ``budget`` (fraction kept): ``round(n * budget)``, >= 1."""
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget must be in (0, 1], got {budget}")
    return min(n, max(1, round(n * budget)))


def _item_table(mm_types: torch.Tensor, position_ids: torch.Tensor) -> list[list[tuple[int, int, int, int]]]:
    """Items as maximal runs of visual tokens; their grid is read off the 3-D positions (so it
    also works when ``generate`` has already consumed ``image_grid_thw``)."""
    table = []
    for b, row in enumerate(mm_types.tolist()):
        items, start, visual_index = [], None, 0
        for s, kind in enumerate(row + [0]):
            if kind and start is None:
                start, first = s, visual_index
            if start is not None and (not kind or kind != row[start]):
                t_ids, h_ids, w_ids = position_ids[:, b, start:s]
                grid = (t_ids.unique().numel(), int(h_ids.max() - h_ids.min()) + 1, int(w_ids.max() - w_ids.min()) + 1)
                items.append((first, *grid))
                start = s if kind else None
                first = visual_index
            visual_index += kind > 0
        table.append(items)
    return table


def build_context(model, inputs: dict[str, torch.Tensor]) -> VisualContext:
    """Run the vision tower and build the full-sequence embeddings and M-RoPE positions.

    Mirrors ``Qwen2_5_VLModel.forward`` (and Qwen2-VL's): same calls in the same order, so that
    keeping every token reproduces the unpatched model bit for bit.

    Args:
        model: a ``Qwen2_5_VLForConditionalGeneration`` (or its ``.model``).
        inputs: processor outputs: ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` and
            ``pixel_values``/``image_grid_thw`` and/or ``pixel_values_videos``/``video_grid_thw``.
    """
    from reference_impls.common.architectures import adapter_for

    adapter_for(model).require_encoder_context("encoding-stage token selection")
    inner = getattr(model, "model", model)
    input_ids = inputs["input_ids"]
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if inputs.get("mm_token_type_ids") is None:
        raise ValueError("mm_token_type_ids is required (without it Qwen2.5-VL silently uses 1-D positions)")
    embeds = inner.get_input_embeddings()(input_ids)
    outputs: dict[str, Any] = {}
    precomputed = inputs.get("mm_encoder_outputs") or {}  # generate() runs the vision tower first
    if precomputed.get("image") is not None:
        outputs["image"] = precomputed["image"]
    elif inputs.get("pixel_values") is not None:
        outputs["image"] = inner.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
    if outputs.get("image") is not None:
        features = torch.cat(outputs["image"].pooler_output, dim=0).to(embeds.device, embeds.dtype)
        image_mask, _ = inner.get_placeholder_mask(input_ids, inputs_embeds=embeds, image_features=features)
        embeds = embeds.masked_scatter(image_mask, features)
    if precomputed.get("video") is not None:
        outputs["video"] = precomputed["video"]
    elif inputs.get("pixel_values_videos") is not None:
        outputs["video"] = inner.get_video_features(
            inputs["pixel_values_videos"], inputs["video_grid_thw"], return_dict=True
        )
    if outputs.get("video") is not None:
        features = torch.cat(outputs["video"].pooler_output, dim=0).to(embeds.device, embeds.dtype)
        _, video_mask = inner.get_placeholder_mask(input_ids, inputs_embeds=embeds, video_features=features)
        embeds = embeds.masked_scatter(video_mask, features)
    if inputs.get("image_grid_thw") is not None or inputs.get("video_grid_thw") is not None:
        position_ids, rope_deltas = inner.get_rope_index(
            input_ids,
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"),
            second_per_grid_ts=inputs.get("second_per_grid_ts"),
            attention_mask=attention_mask,
        )
    elif inputs.get("position_ids") is not None and inputs["position_ids"].dim() == 3:
        # generate() computed them with get_rope_index before consuming the grids
        position_ids = inputs["position_ids"][-3:]
        rope_deltas = (position_ids.amax(dim=(0, 2)) + 1 - attention_mask.sum(-1))[:, None]
    else:
        raise ValueError("need image_grid_thw / video_grid_thw (or 3-D position_ids) to place the visual tokens")
    config = inner.config
    visual = (input_ids == config.image_token_id) | (input_ids == config.video_token_id)
    items = _item_table(inputs["mm_token_type_ids"], position_ids)
    return VisualContext(input_ids, attention_mask, embeds, position_ids, rope_deltas, visual, items, outputs)


def _as_selection(result: Selection | Sequence[torch.Tensor]) -> Selection:
    return result if isinstance(result, Selection) else Selection(keep=list(result))


def reduce_inputs(ctx: VisualContext, selection: Selection) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Keep all text tokens and the selected visual tokens, at their full-sequence positions.

    Returns:
        ``kwargs`` for the language model path (``inputs_embeds (B, S', D)``, ``position_ids
        (3, B, S')``, ``attention_mask (B, S')``) and ``kept_index (B, S')``: the index of each
        kept token in the full sequence (-1 for left padding).
    """
    B, S, D = ctx.inputs_embeds.shape
    rows, embeds = [], ctx.inputs_embeds.clone() if selection.embeds is not None else ctx.inputs_embeds
    for b in range(B):
        visual_positions = ctx.visual_positions(b)  # (V_b,)
        keep = selection.keep[b].to(visual_positions.device).long()
        if keep.numel() and (keep.min() < 0 or keep.max() >= visual_positions.numel() or (keep.diff() <= 0).any()):
            raise ValueError("Selection.keep must hold ascending, unique indices into the visual tokens")
        kept_visual = visual_positions[keep]
        if selection.embeds is not None:
            embeds[b, kept_visual] = selection.embeds[b].to(embeds.dtype)
        text_positions = (~ctx.visual_mask[b]).nonzero().squeeze(-1)
        rows.append(torch.cat([text_positions, kept_visual]).sort().values)
    length = max(r.numel() for r in rows)
    kept_index = torch.full((B, length), -1, dtype=torch.long)
    for b, r in enumerate(rows):
        kept_index[b, length - r.numel() :] = r
    gather = kept_index.clamp(min=0)
    valid = kept_index >= 0
    inputs_embeds = embeds.gather(1, gather[..., None].expand(-1, -1, D)) * valid[..., None].to(embeds.dtype)
    position_ids = ctx.position_ids.gather(2, gather[None].expand(3, -1, -1).to(ctx.position_ids.device)).masked_fill(
        ~valid[None], 0
    )
    attention_mask = ctx.attention_mask.gather(1, gather) * valid
    return {"inputs_embeds": inputs_embeds, "position_ids": position_ids, "attention_mask": attention_mask}, kept_index


def apply_visual_token_selection(
    model, inputs: dict[str, torch.Tensor], select_fn: SelectFn
) -> tuple[dict[str, torch.Tensor], VisualContext, Selection]:
    """One-shot form: build the context, select, reduce.

    Returns ``(kwargs, ctx, selection)``; ``model(**kwargs)`` runs the language model on the
    kept tokens (``kwargs`` holds ``inputs_embeds``, ``position_ids``, ``attention_mask``). For
    decoding after it, the next positions are ``next_positions(ctx.position_ids)``.
    """
    ctx = build_context(model, inputs)
    selection = _as_selection(select_fn(ctx))
    kwargs, _ = reduce_inputs(ctx, selection)
    return kwargs, ctx, selection


@contextmanager
def patch_visual_tokens(
    model, select_fn: SelectFn, on_select: Callable[[VisualContext, Selection], None] | None = None
) -> Iterator[None]:
    """Within the block, every prefill with pixels drops visual tokens chosen by ``select_fn``.

    Patches ``model.model.forward``. At prefill (pixels given) the language model receives the
    reduced sequence. At later steps (``generate``), an attention mask over the *full* sequence
    is translated to the kept columns, and positions are continued from the full sequence's
    last position when the caller gives none. ``model.model.rope_deltas`` is left as the
    unpatched model sets it (full sequence), which is what ``generate`` expects.
    """
    from reference_impls.common.architectures import adapter_for

    adapter_for(model).require_encoder_context("encoding-stage token selection")  # refuse before patching
    inner = model.model
    previous = inner.__dict__.get("forward")  # an enclosing patch, if any
    original = inner.forward
    state: dict[str, Any] = {}

    def forward(*args, **kwargs):
        if args:
            raise TypeError("call the patched model with keyword arguments")
        has_pixels = any(
            kwargs.get(k) is not None for k in ("pixel_values", "pixel_values_videos", "mm_encoder_outputs")
        )
        if has_pixels and kwargs.get("input_ids") is not None:
            ctx = build_context(model, kwargs)
            selection = _as_selection(select_fn(ctx))
            reduced, kept_index = reduce_inputs(ctx, selection)
            if on_select is not None:
                on_select(ctx, selection)
            state.update(
                full_len=ctx.input_ids.shape[1],
                reduced_len=kept_index.shape[1],
                kept_index=kept_index,
                next_position=next_positions(ctx.position_ids),
            )
            inner.rope_deltas = ctx.rope_deltas
            for key in (
                "input_ids",
                "pixel_values",
                "pixel_values_videos",
                "image_grid_thw",
                "video_grid_thw",
                "mm_token_type_ids",
                "second_per_grid_ts",
                "position_ids",
                "mm_encoder_outputs",
            ):
                kwargs.pop(key, None)
            kwargs.update(reduced)
            return original(**kwargs)
        if state and kwargs.get("cache") is not None:
            step_ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
            q = step_ids.shape[1]
            generated = kwargs["cache"].get_seq_length() - state["reduced_len"]
            mask = kwargs.get("attention_mask")
            if mask is not None and mask.shape[1] == state["full_len"] + generated + q:
                full = state["full_len"]
                prompt = mask[:, :full].gather(1, state["kept_index"].clamp(min=0)) * (state["kept_index"] >= 0)
                kwargs["attention_mask"] = torch.cat([prompt, mask[:, full:]], dim=1)
            # Always continue from the full sequence: callers (generate) derive positions from
            # the physical cache length or the full mask, which no longer agree after pruning.
            steps = generated + torch.arange(q)
            kwargs["position_ids"] = (state["next_position"][:, None] + steps[None]).expand(3, -1, -1)
        return original(**kwargs)

    inner.forward = forward
    try:
        yield
    finally:
        if previous is None:
            del inner.forward
        else:
            inner.forward = previous


@dataclass
class VisualTokenMethod:
    """Base class of ``kind="visual-token"`` methods: subclasses implement :meth:`select`.

    ``with method(model): ...`` applies it; after each prefill ``method.stats`` holds
    ``{"visual_in": int, "visual_kept": int}`` for the first sequence of the batch.
    """

    budget: float = 1.0
    """Fraction of visual tokens kept, in (0, 1]."""
    stats: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def select(self, ctx: VisualContext) -> Selection | Sequence[torch.Tensor]:
        raise NotImplementedError

    def _record(self, ctx: VisualContext, selection: Selection) -> None:
        self.stats = {"visual_in": int(ctx.visual_counts[0]), "visual_kept": int(selection.keep[0].numel())}

    @contextmanager
    def __call__(self, model) -> Iterator[None]:
        with patch_visual_tokens(model, self.select, on_select=self._record):
            yield
