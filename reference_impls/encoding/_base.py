"""Plumbing shared by the encoding-stage methods: apply a per-item rule to every image and video.

:class:`~reference_impls.common.visual_tokens.VisualContext` holds a batch of sequences, each
with any number of images or videos; every method of this package decides per item. An
:class:`EncodingMethod` walks the items, hands its rule one item's post-merger features and
merged-token grid, and assembles the answers (representative indices, optional new features) into
one :class:`~reference_impls.common.visual_tokens.Selection`; the visual-token mechanism then
feeds the language model the kept tokens at their original M-RoPE positions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from reference_impls.common.visual_tokens import Selection, VisualContext, VisualTokenMethod

__all__ = ["Item", "EncodingMethod"]


@dataclass
class Item:
    """One image or video of one sequence, as a rule sees it."""

    features: torch.Tensor
    """``(t*h*w, D)`` post-merger features, raster order (frame by frame for videos)."""
    grid: tuple[int, int, int]
    """``(t, h, w)`` in merged-token units."""
    modality: str
    """``"image"`` or ``"video"``."""
    index: int
    """Index among the batch's items of this modality (the order of ``image_grid_thw`` /
    ``video_grid_thw``, which is also the order of the vision tower's outputs)."""
    sequence: int
    """Batch row the item belongs to."""

    @property
    def count(self) -> int:
        return self.features.shape[0]


@dataclass
class EncodingMethod(VisualTokenMethod):
    """A visual-token method that decides image by image (and video by video).

    Subclasses implement :meth:`reduce_item`; those that need the vision tower (scores, frames,
    resolution) also override :meth:`install`, which runs when ``with method(model):`` starts.
    """

    _model: Any = field(default=None, init=False, repr=False, compare=False)

    def reduce_item(self, item: Item) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(features or None, rep)`` for one item.

        ``rep (K,)``: ascending indices into the item's tokens whose positions the output tokens
        take; ``features (K, D)``: their new values, or ``None`` for the tokens' own features.
        """
        raise NotImplementedError

    def install(self, model, stack: ExitStack) -> None:
        """Register hooks or patches on ``model``; push their removal onto ``stack``."""

    def select(self, ctx: VisualContext) -> Selection:
        video_id = self._model.config.video_token_id
        keeps, embeds, merged = [], [], False
        counters = {"image": 0, "video": 0}
        for b in range(ctx.input_ids.shape[0]):
            features = ctx.features(b)  # (V_b, D)
            ids = ctx.input_ids[b][ctx.visual_positions(b)]  # (V_b,)
            keep_parts, embed_parts = [], []
            for start, t, h, w in ctx.items[b]:
                modality = "video" if int(ids[start]) == video_id else "image"
                x = features[start : start + t * h * w]
                new, rep = self.reduce_item(Item(x, (t, h, w), modality, counters[modality], b))
                counters[modality] += 1
                merged |= new is not None
                keep_parts.append(rep.to(x.device) + start)
                embed_parts.append(x[rep] if new is None else new.to(x.dtype))
            keeps.append(torch.cat(keep_parts) if keep_parts else torch.zeros(0, dtype=torch.long))
            embeds.append(torch.cat(embed_parts) if embed_parts else features[:0])
        return Selection(keep=keeps, embeds=embeds if merged else None)

    @contextmanager
    def __call__(self, model) -> Iterator[None]:
        from reference_impls.common.architectures import adapter_for

        # Refuse before install() patches the vision tower: its hooks read Qwen-only config fields.
        adapter_for(model).require_encoder_context("encoding-stage token selection")
        self._model = model
        with ExitStack() as stack:
            self.install(model, stack)
            with super().__call__(model):
                yield


def keep_all(item: Item) -> tuple[None, torch.Tensor]:
    """The rule that changes nothing (budget 1.0, or an item the method does not handle)."""
    return None, torch.arange(item.count, device=item.features.device)
