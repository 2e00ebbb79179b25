"""VisionZip: keep the dominant visual tokens, merge the rest into a few contextual tokens.

VisionZip notes that in CLIP/SigLIP encoders the attention concentrates on a small set of
tokens that carry most of the image's information, while the rest are largely redundant. Before
the projector it keeps the *dominant* tokens, those receiving the most attention (from the class
token, summed over heads, in a late encoder layer), and compresses all remaining tokens into a
handful of *contextual* tokens: targets are picked at a uniform stride among the remaining
tokens, every other remaining token is merged into its most similar target by key similarity,
and each target becomes the average of its group. It needs no training and ignores the text
(the README's default keeps 54 dominant + 10 contextual = 64 of 576 tokens).

Paper: arXiv 2412.04467 (public code: dvlab-research/VisionZip).

Example:
    >>> import torch
    >>> from reference_impls.encoding.visionzip import visionzip_reduce
    >>> x, keys = torch.randn(16, 8), torch.randn(16, 4)
    >>> scores = torch.zeros(16); scores[[3, 7]] = 1.0
    >>> feats, rep = visionzip_reduce(x, scores, keys, n_dominant=2, n_contextual=2)
    >>> rep.tolist()[:2] if 3 in rep.tolist() else None
    [0, 3]

Deviations / guesses:
    - Score (design note section 10): Qwen2.5-VL has no class token, so a patch's score is the
      attention it *receives* in the last full-attention vision block, averaged over all queries
      of its frame and over heads, and summed over the 4 patches that the merger fuses into one
      token. We recompute it from q/k in a hook on that block (sdpa returns no weights).
    - Keys: head-averaged keys of the same block, averaged over the merged 4 patches; cosine
      similarity (L2-normalised, as VisionZip) decides the contextual groups.
    - Where: on the post-merger tokens in raster order, per image, not inside the encoder.
    - Split: ``n_contextual = round(keep * 10 / 64)`` (the README's 54:10 ratio), at least one
      dominant token; the counts always sum to the budget's ``keep``.
    - Position: a dominant token keeps its own 3-D position; a contextual token takes its
      target's position (our choice).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["received_attention", "visionzip_split", "visionzip_reduce"]


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
        n_contextual: merged tokens made from all the others.

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
        stride_pick = (torch.arange(n_contextual, device=x.device) * rest.numel()) // n_contextual
        is_target = torch.zeros(rest.numel(), dtype=torch.bool, device=x.device)
        is_target[stride_pick] = True
        targets, others = rest[is_target], rest[~is_target]
        normed = F.normalize(keys.float(), dim=-1)
        group = (normed[others] @ normed[targets].T).argmax(dim=-1)  # (No,) target of each other
        total = x[targets].float().index_add(0, group, x[others].float())
        count = torch.ones(targets.numel(), device=x.device).index_add(0, group, torch.ones(others.numel(), device=x.device))
        feats.append((total / count[:, None]).to(x.dtype))
        reps.append(targets)
    features, rep = torch.cat(feats), torch.cat(reps)
    order = rep.argsort()
    return features[order], rep[order]
