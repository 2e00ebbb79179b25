"""SparseVLM: text-guided, staged visual token sparsification with token recycling.

SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference. Not every
text token is a good judge of which visual tokens matter, so SparseVLM first picks *text
raters*: the text tokens most related to the image. At a few layers, the raters' head-averaged
attention to the visual tokens scores them, and the lowest are dropped from that layer's output
(a schedule over depth). Instead of discarding the pruned tokens outright, the best of them are
*recycled*: clustered, and each cluster merged into one extra token.

Paper: arXiv 2410.04417

Upstream: Gumpest/SparseVLMs ``llava/model/language_model/modelling_sparse_llama.py``
(``LlamaDynamicvitModel.forward``) and ``llava/model/language_model/score.py``
(``attn_postprocess_topk``) @ 14cb5a9c9251e1941c3d912b703ccd477a41cb53, and
``llava/model/language_model/utils.py`` (``cluster_and_merge``) @
8435974a1577b0223e23810fda24a65b667022ca (the v1 code; the later commit
9e376ce09433af5ea331225db02aca527158d440 keeps this path unless ``USE_VERSION=2_0``).
Same rule by default:

- Raters, chosen once from the LLM's input embeddings: with ``V`` the visual and ``T`` the text
  embeddings after the image, ``r = softmax(V T^T, over text).mean(over visual)``; the raters
  are the text tokens with ``r > mean(r)`` (:func:`text_raters`).
- At each pruning layer ``l`` (2, 6, 15 of 32), the layer's own attention on its input (causal,
  head mean), averaged over the raters' rows, scores the visual tokens; the top ``k`` stay in the
  layer's *output* (the layer itself and its KV cache still hold every token).
- Recycling (on by default, as upstream): of the ``m`` pruned visual tokens, the
  ``r = int(0.3 m) + 1`` best scored are clustered by DPC-kNN into ``int(r / 10) + 1`` clusters
  (:func:`dpc_knn_merge`); each cluster's mean (``sum / (count + 1e-6)``) is one extra visual
  token, so a stage keeps ``k`` + clusters visual tokens.

Examples:
    >>> from reference_impls.common.tiny import tiny_qwen25vl, tiny_inputs
    >>> from reference_impls.prefilling.sparsevlm import SparseVLM
    >>> model = tiny_qwen25vl(num_layers=4)
    >>> method = SparseVLM(budget=0.25)
    >>> with method(model):
    ...     _ = model(**tiny_inputs(model))
    >>> method.stats["visual_kept"]  # 4 by the schedule, plus 1 recycled cluster token
    5

Deviations:
    - Positions: ``positions="keep"`` (default) keeps the original M-RoPE positions;
      ``"renumber"`` is upstream v1's rule (``position_ids[:, :len]``). Why keep is the default
      on Qwen2.5-VL: see :mod:`~reference_impls.prefilling.pyramiddrop`. The authors' own
      SparseVLM+ mode (``USE_VERSION=2_0`` in the same repository) also keeps the original
      position ids of the kept tokens.
    - A cluster token takes the sequence slot (and, with ``"keep"``, the position) of its
      cluster's centre, a pruned token; upstream appends the cluster tokens after the kept
      visual tokens. DPC-kNN's density gets no random tie-breaking noise (upstream adds
      ``rand * 1e-6``); ties go to the lower index.
    - Schedule: upstream hard-codes kept counts for 576 tokens per target (e.g. 66/30/17 for
      "64", 303/110/36 for "128"); we use a geometric schedule, ``round(N * budget ** (s / S))``
      after stage ``s`` of ``S`` (before the cluster tokens are added). Upstream caps ``k`` at
      ``v - 1`` (it always prunes one token); we prune nothing when ``k >= v``, so budget 1 is
      the unpruned model. The layers [2, 6, 15] of 32 are scaled to the model's depth.
    - Mapping to Qwen2.5-VL: text "after the image" = valid text tokens after the first visual
      token, not counting the ``<|vision_start|>``/``<|vision_end|>`` markers (LLaVA has none);
      a prompt with the question before the image therefore has only template tokens as raters,
      and with no text at all after the image the last prompt token rates alone. Several images
      are pooled. With no text token above the mean (all equal), every candidate rates (upstream
      would average an empty set).
    - Not implemented: SparseVLM+ (the repository's ``USE_VERSION=2_0`` mode: RoPE-bias
      correction of the attention, text-visual head selection, no merging, kept positions), and
      the training-time ``policy`` path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reference_impls.common.visual_tokens import keep_count
from reference_impls.prefilling._layer_drop import (
    DropContext,
    DropMethod,
    Positions,
    _gather,
    attention_rows,
    keep_top_visual,
)
from reference_impls.registry import register

__all__ = ["SparseVLM", "sparse_layers", "text_raters", "rater_scores", "dpc_knn_merge"]


def sparse_layers(fractions: tuple[float, ...], num_layers: int) -> list[int]:
    """Pruning layers for depth fractions, rounded, unique, inside ``[0, num_layers - 2]`` (each
    prunes its output, which the next layer reads)."""
    return sorted({min(num_layers - 2, max(0, round(f * num_layers))) for f in fractions})


def text_raters(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Which text tokens rate: relevance ``softmax(V T^T, over text).mean(over visual)`` above its mean.

    Args:
        visual: (Nv, D) visual embeddings entering the LLM.
        text: (Nt, D) candidate text embeddings.

    Returns:
        (Nt,) bool.
    """
    relevance = (visual @ text.T).softmax(-1).mean(0)  # (Nt,)
    raters = relevance > relevance.mean()
    return raters if bool(raters.any()) else torch.ones_like(raters)


def rater_scores(probs: torch.Tensor, visual_cols: torch.Tensor, raters: torch.Tensor) -> torch.Tensor:
    """Visual-token scores: the raters' mean attention to each visual column.

    Args:
        probs: (B, r, n) head-averaged attention of r query rows.
        visual_cols: (B, n) bool, visual columns.
        raters: (B, r) bool, rows that rate.

    Returns:
        (B, n) scores (zero outside visual columns).
    """
    weights = raters.float() / raters.sum(-1, keepdim=True).clamp(min=1)  # (B, r)
    return (weights[:, :, None] * probs * visual_cols[:, None, :]).sum(1)


def dpc_knn_merge(x: torch.Tensor, clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peak (k-NN) clustering of ``x`` into ``clusters`` groups, merged by their mean.

    Distances are Euclidean over ``sqrt(C)``; a token's density is ``exp(-mean d^2)`` over its
    ``clusters`` nearest (itself included); the centres maximise density times the distance to
    the nearest denser token; every token joins its nearest centre.

    Args:
        x: (m, C) features.
        clusters: number of clusters (<= m).

    Returns:
        ``(centres, merged)``: (clusters,) indices into ``x`` and (clusters, C) merged features.
    """
    dist = torch.cdist(x.float(), x.float(), compute_mode="donot_use_mm_for_euclid_dist") / x.shape[-1] ** 0.5  # (m, m)
    nearest = dist.topk(clusters, dim=-1, largest=False).values  # (m, clusters)
    density = (-(nearest**2).mean(-1)).exp()  # (m,)
    denser = density[None, :] > density[:, None]  # [i, j]: j is denser than i
    to_denser = torch.where(denser, dist, dist.max()).amin(-1)  # (m,)
    centres = (to_denser * density).topk(clusters).indices  # (clusters,)
    assign = dist[centres].argmin(0)  # (m,) nearest centre
    assign[centres] = torch.arange(clusters, device=x.device)
    counts = torch.zeros(clusters, device=x.device).index_add_(0, assign, torch.ones(len(x), device=x.device))
    merged = torch.zeros(clusters, x.shape[-1], dtype=x.dtype, device=x.device).index_add_(0, assign, x)
    return centres, merged / (counts[:, None] + 1e-6).to(x.dtype)


def _recycle(
    hidden: torch.Tensor, scores: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add one merged token per cluster of the best pruned visual tokens (at its centre's slot)."""
    keep_mask = torch.zeros_like(visual).scatter(1, keep, True)  # (B, n)
    new_hidden, rows = hidden.clone(), []
    for b in range(hidden.shape[0]):
        pruned = (visual[b] & ~keep_mask[b]).nonzero()[:, 0]  # (m,)
        recycled = pruned[scores[b, pruned].float().argsort(descending=True, stable=True)[: int(len(pruned) * 0.3) + 1]]
        centres, merged = dpc_knn_merge(hidden[b, recycled], int(len(recycled) / 10) + 1)
        new_hidden[b, recycled[centres]] = merged
        row = keep_mask[b].clone()
        row[recycled[centres]] = True
        rows.append(row.nonzero()[:, 0])
    keep = torch.stack(rows)
    return keep, _gather(new_hidden, keep, 1)


@register("sparsevlm", family="prefilling-attention-guided", kind="visual-token")
@dataclass
class SparseVLM(DropMethod):
    """SparseVLM configuration.

    Args:
        budget: fraction of visual tokens the schedule leaves after the last stage, before the
            recycled cluster tokens are added (0 < budget <= 1).
        layers_frac: pruning layers as fractions of depth (paper: 2/32, 6/32, 15/32); each
            prunes its own output.
        recycle: merge the best pruned tokens into extra cluster tokens (upstream default).
        positions: ``"keep"`` the original M-RoPE positions (default) or ``"renumber"`` them as
            upstream v1 does.
    """

    budget: float = 0.25
    layers_frac: tuple[float, ...] = (2 / 32, 6 / 32, 15 / 32)
    recycle: bool = True
    positions: Positions = "keep"
    stats: dict = field(default_factory=dict, repr=False, compare=False)

    def boundaries(self, num_layers: int) -> list[int]:
        return [layer + 1 for layer in sparse_layers(self.layers_frac, num_layers)]

    def stash(self, num_layers: int) -> set[int]:
        return set(sparse_layers(self.layers_frac, num_layers))

    def _raters(self, ctx: DropContext) -> torch.Tensor:
        """(B, n) bool raters in the current coordinates, chosen once on the LLM input embeddings."""
        raters = torch.zeros_like(ctx.prompt_text)
        positions = torch.arange(raters.shape[1], device=raters.device)
        for b in range(raters.shape[0]):
            visual = ctx.prompt_visual[b].nonzero()[:, 0]
            text = (ctx.prompt_text[b] & (positions > visual[0])).nonzero()[:, 0]  # text after the (first) image
            if len(text):
                raters[b, text] = text_raters(ctx.embeds[b, visual], ctx.embeds[b, text])
            else:  # nothing after the image: the last prompt token rates alone
                raters[b, _gather(ctx.kept, ctx.last[:, None], 1)[b, 0]] = True
        return _gather(raters, ctx.kept, 1)

    def select(self, ctx: DropContext) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        layers = self.boundaries(len(ctx.layers))
        stage = layers.index(ctx.layer_idx) + 1
        k = keep_count(ctx.n_visual_in, self.budget ** (stage / len(layers)))
        if k >= int(ctx.visual[0].sum()):
            return torch.arange(ctx.hidden.shape[1], device=ctx.hidden.device).expand(ctx.hidden.shape[0], -1)
        hidden, cos, sin = ctx.inputs[ctx.layer_idx - 1]  # the pruning layer's own input
        rows = (~ctx.visual).nonzero()[:, 1].view(ctx.visual.shape[0], -1)  # (B, r) non-visual rows
        probs = attention_rows(ctx.layers[ctx.layer_idx - 1], hidden, cos, sin, rows, ctx.valid)  # (B, r, n)
        scores = rater_scores(probs, ctx.visual, _gather(self._raters(ctx), rows, 1))
        keep = keep_top_visual(scores, ctx.visual, k)
        return _recycle(ctx.hidden, scores, ctx.visual, keep) if self.recycle else keep
