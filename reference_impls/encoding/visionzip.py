"""VisionZip: keep the dominant visual tokens, merge the rest into a few contextual tokens.

VisionZip notes that in CLIP/SigLIP encoders the attention concentrates on a small set of
tokens that carry most of the image's information, while the rest are largely redundant. Before
the projector it keeps the *dominant* tokens, those receiving the most attention (from the class
token, summed over heads, in a late encoder layer), and compresses all remaining tokens into a
handful of *contextual* tokens: targets are picked at a uniform stride among the remaining
tokens (``arange(0, R, R // c)[:c]``), every other remaining token is assigned to its most
similar target by key similarity, and each target becomes *itself plus the mean of the tokens
assigned to it* (``target + sum(assigned) / count``; not the mean of the whole group). It needs
no training and ignores the text (the README's default keeps 54 dominant + 10 contextual = 64
of 576 tokens).

Paper: arXiv 2412.04467.

Upstream: dvlab-research/VisionZip ``Qwen2_5_VL/qwen2_5vl_visionzip.py`` (the authors' own
Qwen2.5-VL port; the CLIP rule in ``visionzip/clip_encoder.py`` is the same), read in the fork
jsilvcast/VisionZip @ 68993a31d4f704498a0cc1f0f026754467be65e2 (the upstream repository's copy
of these files is not in our index). The selection and merge rule is re-implemented in
``tests/encoding/test_parity.py``.

Examples:
    >>> import torch
    >>> from reference_impls.encoding.visionzip import visionzip_reduce
    >>> x, keys = torch.randn(16, 8), torch.randn(16, 4)
    >>> scores = torch.zeros(16); scores[[3, 7]] = 1.0
    >>> feats, rep = visionzip_reduce(x, scores, keys, n_dominant=2, n_contextual=2)
    >>> 3 in rep.tolist() and 7 in rep.tolist()
    True

    With a model: ``with VisionZip(budget=0.25)(model): model.generate(**inputs)``.

Deviations / guesses:
    - Score: Qwen2.5-VL has no class token. Like the authors' Qwen2.5-VL port, a merged token's
      score is the attention its 4 patches *receive* in the last vision block (a full-attention
      block, per frame), averaged over heads. The port sums over queries and averages over the 4
      patches; we average over the queries of the frame and sum over the patches, which only
      rescales the scores of one item (same ranking). We recompute the attention from q/k in a
      hook on that block (sdpa returns no weights).
    - Keys: head-averaged (rotated) keys of the same block, averaged over the merged 4 patches,
      L2-normalised: as the port.
    - Per item: the port ranks the tokens of all images of a call together and handles images
      only; we decide per image (and per video, frames together), so every item keeps
      ``keep_count(n, budget)`` tokens.
    - Split: ``n_contextual = round(keep * contextual_ratio)`` with the LLaVA README's 10 of 64 as
      default, at least one dominant token; the counts always sum to the budget's ``keep``. The
      Qwen2.5-VL port hard-codes ``int(0.65 n)`` dominant and ``max(int(0.05 n), 1)`` contextual
      tokens (70% kept, ``contextual_ratio=1/14``).
    - Where and positions: post-merger tokens in raster order; a dominant token keeps its own 3-D
      position and a contextual token takes its target's, as in the port.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
from transformers.vision_utils import get_vision_window_index

from reference_impls.common.architectures import adapter_for
from reference_impls.common.visual_tokens import Selection, VisualContext, keep_count
from reference_impls.encoding._base import EncodingMethod, Item, keep_all
from reference_impls.registry import register

__all__ = [
    "received_attention",
    "visionzip_split",
    "visionzip_reduce",
    "rotated_qkv",
    "window_to_raster",
    "AttentionRecorder",
    "VisionZip",
]


def received_attention(q: torch.Tensor, k: torch.Tensor, cu_seqlens: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention each key receives, averaged over the queries of its segment and over heads.

    Args:
        q, k: ``(L, H, d)`` rotated queries and keys of one vision block (window order).
        cu_seqlens: ``(S + 1,)`` segment boundaries (one segment per frame in full-attention blocks).
        scale: softmax scale (``head_dim ** -0.5``).

    Returns:
        ``(L,)`` float scores; within a segment they sum to 1 (a distribution over keys).
    """
    scores = torch.empty(q.shape[0], dtype=torch.float32, device=q.device)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks = q[start:end].float().transpose(0, 1), k[start:end].float().transpose(0, 1)  # (H, n, d)
        probs = torch.softmax(qs @ ks.transpose(1, 2) * scale, dim=-1)  # (H, n, n)
        scores[start:end] = probs.mean(dim=(0, 1))
    return scores


def visionzip_split(keep: int, n: int, contextual_ratio: float = 10 / 64) -> tuple[int, int]:
    """``(n_dominant, n_contextual)`` summing to ``keep`` out of ``n`` tokens."""
    if keep >= n:
        return n, 0
    n_contextual = min(int(keep * contextual_ratio + 0.5), keep - 1)
    return keep - n_contextual, n_contextual


def visionzip_reduce(
    x: torch.Tensor, scores: torch.Tensor, keys: torch.Tensor, n_dominant: int, n_contextual: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dominant selection plus contextual merging for one image.

    Args:
        x: ``(N, D)`` post-merger features, raster order.
        scores: ``(N,)`` attention received per token.
        keys: ``(N, Dk)`` head-averaged keys per token (similarity for the contextual groups).
        n_dominant: tokens kept as they are (the top scores).
        n_contextual: merged tokens made from all the others, each ``target + mean(assigned)``.

    Returns:
        ``(n_dominant + n_contextual, D)`` features and their representative original indices
        ``(K,)``, both sorted by that index.
    """
    n = x.shape[0]
    dominant = scores.float().topk(n_dominant).indices  # (Kd,)
    rest_mask = torch.ones(n, dtype=torch.bool, device=x.device)
    rest_mask[dominant] = False
    rest = rest_mask.nonzero().flatten()  # raster order
    feats, reps = [x[dominant]], [dominant]
    if n_contextual > 0 and rest.numel() > 0:
        n_contextual = min(n_contextual, rest.numel())
        # targets at a uniform stride among the remaining tokens, as upstream: arange(0, R, R // c)[:c]
        step = max(1, rest.numel() // n_contextual)
        stride_pick = torch.arange(0, rest.numel(), step, device=x.device)[:n_contextual]
        is_target = torch.zeros(rest.numel(), dtype=torch.bool, device=x.device)
        is_target[stride_pick] = True
        targets, others = rest[is_target], rest[~is_target]
        normed = F.normalize(keys.float(), dim=-1)
        group = (normed[others] @ normed[targets].T).argmax(dim=-1)  # (No,) target of each other
        assigned = x.new_zeros(targets.numel(), x.shape[1], dtype=torch.float32).index_add(0, group, x[others].float())
        count = torch.bincount(group, minlength=targets.numel()).float()  # (Nc,) tokens assigned to each target
        # the target itself plus the mean of the tokens assigned to it (upstream's rule)
        feats.append((x[targets].float() + assigned / count.clamp_min(1)[:, None]).to(x.dtype))
        reps.append(targets)
    features, rep = torch.cat(feats), torch.cat(reps)
    order = rep.argsort()
    return features[order], rep[order]


def rotated_qkv(module, hidden: torch.Tensor, position_embeddings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries and keys (rotated) and values of a Qwen2.5-VL vision attention, as its forward
    computes them. ``hidden (L, C)`` -> three ``(L, H, d)``."""
    length = hidden.shape[0]
    q, k, v = module.qkv(hidden).reshape(length, 3, module.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = apply_rotary_pos_emb_vision(q, k, *position_embeddings)
    return q, k, v


def window_to_raster(x: torch.Tensor, grid_thw: torch.Tensor, config) -> torch.Tensor:
    """Group patch rows of a vision block (window order) by merged token, in raster order.

    Args:
        x: ``(L, ...)`` one row per patch, in the order the vision blocks see them.
        grid_thw: ``(items, 3)`` the call's grids in patch units.
        config: the vision config.

    Returns:
        ``(L / merge**2, merge**2, ...)``: row ``i`` holds the patches of the ``i``-th merged
        token in raster order, the order of the tower's ``pooler_output``.
    """
    unit = config.spatial_merge_size**2
    # the merger fuses `unit` consecutive rows; argsort(window_index) is the reordering the
    # tower applies to its merged output
    window_index, _ = get_vision_window_index(
        grid_thw, config.spatial_merge_size, config.window_size, config.patch_size
    )
    return x.reshape(-1, unit, *x.shape[1:])[torch.argsort(window_index)]


class AttentionRecorder:
    """Hooks on a Qwen2.5-VL vision tower that record, per merged token, the attention received
    in the last full-attention block and the head-averaged keys (raster order, per item).

    One record per vision-tower call (``build_context`` encodes images, then videos);
    :meth:`item_scores` looks an item up, :meth:`clear` forgets them after a prefill.
    """

    def __init__(self, visual) -> None:
        self.visual = visual
        self.block = max(visual.config.fullatt_block_indexes)
        self.calls: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        self._grid: torch.Tensor | None = None
        self._patch: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def attach(cls, model, stack: ExitStack) -> AttentionRecorder:
        """Register the hooks on ``model.model.visual``; ``stack`` removes them."""
        adapter = adapter_for(model)
        adapter.require_attention_recorder("VisionZip-style attention scoring")
        visual = adapter.vision_tower(model)
        recorder = cls(visual)
        attention = visual.blocks[recorder.block].attn
        for handle in (
            visual.register_forward_pre_hook(recorder._on_tower, with_kwargs=True),
            attention.register_forward_pre_hook(recorder._on_attention, with_kwargs=True),
            visual.register_forward_hook(recorder._on_tower_done),
        ):
            stack.callback(handle.remove)
        return recorder

    def _on_tower(self, module, args, kwargs) -> None:
        self._grid = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]

    @torch.no_grad()
    def _on_attention(self, module, args, kwargs) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]  # (L, C) normed block input, window order
        q, k, _ = rotated_qkv(module, hidden, kwargs["position_embeddings"])
        self._patch = (received_attention(q, k, kwargs["cu_seqlens"], module.scaling), k.float().mean(dim=1))

    @torch.no_grad()
    def _on_tower_done(self, module, args, output) -> None:
        scores, keys = self._patch
        scores = window_to_raster(scores, self._grid, module.config).sum(dim=1)  # (M,)
        keys = window_to_raster(keys, self._grid, module.config).mean(dim=1)  # (M, d)
        sizes = (self._grid.prod(-1) // module.config.spatial_merge_size**2).tolist()
        self.calls.append(list(zip(scores.split(sizes), keys.split(sizes))))

    def item_scores(self, item: Item) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores (n,), keys (n, d))`` of ``item`` from the current prefill's records."""
        call = self.calls[0] if item.modality == "image" else self.calls[-1]
        return call[item.index]

    def clear(self) -> None:
        self.calls = []


@register("visionzip", family="encoding-compression-attention-aware", kind="visual-token")
@dataclass
class VisionZip(EncodingMethod):
    """Dominant tokens by received attention plus contextual merging, per image (and video).

    Attributes:
        contextual_ratio: share of the kept tokens that are contextual (README: 10 of 64).
    """

    contextual_ratio: float = 10 / 64
    _recorder: AttentionRecorder | None = field(default=None, init=False, repr=False, compare=False)

    def install(self, model, stack: ExitStack) -> None:
        self._recorder = AttentionRecorder.attach(model, stack)

    def select(self, ctx: VisualContext) -> Selection:
        try:
            return super().select(ctx)
        finally:
            self._recorder.clear()

    def reduce_item(self, item: Item) -> tuple[torch.Tensor | None, torch.Tensor]:
        keep = keep_count(item.count, self.budget)
        if keep == item.count:
            return keep_all(item)
        scores, keys = self._recorder.item_scores(item)
        n_dominant, n_contextual = visionzip_split(keep, item.count, self.contextual_ratio)
        return visionzip_reduce(item.features, scores, keys, n_dominant, n_contextual)
