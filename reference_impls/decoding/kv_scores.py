"""Pure tensor functions shared by the KV-cache methods: attention scores and budget allocation.

No model code here (ToMe-style): the method modules call these from their cache layers, and the
tests call them directly. Scores are recomputed from post-RoPE queries and keys (never from
eager attention maps) and are averaged over the query heads of each KV head (GQA), so every
score and budget is per KV head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "window_attention",
    "pooled_scores",
    "accumulated_attention",
    "stable_order",
    "top_per_row",
    "allocate_with_floor",
    "pyramid_budgets",
    "observation_scores",
    "merge_evicted",
]


def window_attention(query: torch.Tensor, key: torch.Tensor, rows: torch.Tensor, scaling: float) -> torch.Tensor:
    """Causal softmax attention of the queries at positions ``rows`` to every key, group-averaged.

    Args:
        query: ``(1, Hq, N, D)`` post-RoPE.
        key: ``(1, H, N, D)`` post-RoPE.
        rows: 1-D long tensor of query positions (the observation window).
        scaling: softmax scale.

    Returns:
        ``(H, len(rows), N)``: post-softmax probabilities (0 where ``j > i``), averaged over
        the ``G = Hq / H`` query heads of each KV head.
    """
    n_kv, n = key.shape[1], key.shape[2]
    groups = query.shape[1] // n_kv
    q = query[0, :, rows].float()  # (Hq, w, D)
    k = key[0].float().repeat_interleave(groups, dim=0)  # (Hq, N, D)
    logits = torch.einsum("hwd,hnd->hwn", q, k) * scaling
    causal = torch.arange(n, device=key.device)[None, :] <= rows.to(key.device)[:, None]  # (w, N)
    probs = logits.masked_fill(~causal, float("-inf")).softmax(dim=-1)
    return probs.view(n_kv, groups, len(rows), n).mean(dim=1)


def pooled_scores(attn: torch.Tensor, kernel: int = 7) -> torch.Tensor:
    """SnapKV score: mean over the window rows, then a 1-D average pool along positions.

    Args:
        attn: ``(H, w, N)`` from :func:`window_attention`.
        kernel: odd pooling width ("same" padding; padding not counted). 1 disables pooling.

    Returns:
        ``(H, N)``.
    """
    s = attn.mean(dim=1)
    if kernel <= 1:
        return s
    return F.avg_pool1d(s[:, None], kernel, stride=1, padding=kernel // 2, count_include_pad=False)[:, 0]


def accumulated_attention(query: torch.Tensor, key: torch.Tensor, scaling: float, block: int = 256) -> torch.Tensor:
    """H2O score: attention each key received, summed over every causal query, group-summed.

    Computed in query blocks so memory stays ``O(block * N)`` per head.

    Returns:
        ``(H, N)``.
    """
    n_kv, n = key.shape[1], key.shape[2]
    groups = query.shape[1] // n_kv
    k = key[0].float().repeat_interleave(groups, dim=0)
    total = torch.zeros(query.shape[1], n, device=key.device)
    for start in range(0, n, block):
        rows = torch.arange(start, min(start + block, n), device=key.device)
        logits = torch.einsum("hwd,hnd->hwn", query[0, :, rows].float(), k) * scaling
        causal = torch.arange(n, device=key.device)[None, :] <= rows[:, None]
        total += logits.masked_fill(~causal, float("-inf")).softmax(dim=-1).sum(dim=1)
    return total.view(n_kv, groups, n).sum(dim=1)


def stable_order(scores: torch.Tensor) -> torch.Tensor:
    """Indices of a flattened score tensor by score descending, ties by flat index ascending."""
    return torch.sort(scores.reshape(-1), descending=True, stable=True).indices


def top_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``(R, k)`` column indices of the ``k`` highest scores of each row (ties: lower index first)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]


def allocate_with_floor(scores: torch.Tensor, total: int, floor: int, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``total`` entries of a ``(G, C)`` score table: every group first gets its ``floor`` best, then the global best.

    This is the Ada-KV allocation (groups = heads of a layer) and the layer level of HybridKV
    (groups = layers). Pre-selecting the floors makes the counts sum to ``total`` exactly.

    Args:
        scores: ``(G, C)``; higher is better.
        total: entries to select (``<=`` number of valid entries).
        floor: minimum per group (clipped to the group's valid entries).
        valid: optional ``(G, C)`` bool; invalid entries are never selected.

    Returns:
        ``(counts (G,), selected (G, C) bool)``.
    """
    g, c = scores.shape
    valid = torch.ones_like(scores, dtype=torch.bool) if valid is None else valid
    if total > int(valid.sum()):
        raise ValueError(f"cannot select {total} entries from {int(valid.sum())} valid ones")
    if floor * g > total:
        raise ValueError(f"floor {floor} x {g} groups exceeds the total {total}")
    masked = scores.float().masked_fill(~valid, float("-inf"))
    selected = torch.zeros_like(valid)
    order = torch.sort(masked, dim=-1, descending=True, stable=True).indices  # (G, C)
    floors = torch.clamp(valid.sum(dim=-1), max=floor)
    for row in range(g):
        selected[row, order[row, : int(floors[row])]] = True
    rest = int(total - selected.sum())
    if rest > 0:
        remaining = masked.masked_fill(selected, float("-inf"))
        chosen = stable_order(remaining)[:rest]
        selected.view(-1)[chosen] = True
    return selected.sum(dim=-1), selected


def pyramid_budgets(n_layers: int, mean_budget: int, window: int, beta: float = 20.0, cap: int | None = None) -> list[int]:
    """PyramidKV per-layer budgets: linear in depth, largest first, summing to ``n_layers * mean_budget``.

    With ``m = mean_budget - window``: ``min = m / beta``, ``max = 2m - min``; layer ``l`` gets
    ``window + max - (max - min) * l / (L - 1)``, rounded by largest remainder so the sum is exact.
    Budgets are clipped to ``cap`` (the prompt length) and the excess handed to the other layers.
    """
    m = mean_budget - window
    if m < 0:
        raise ValueError(f"mean budget {mean_budget} is smaller than the window {window}")
    if n_layers == 1:
        return [mean_budget]
    low = m / beta
    high = 2 * m - low
    raw = [window + high - (high - low) * l / (n_layers - 1) for l in range(n_layers)]
    base = [int(x) for x in raw]
    remainder = n_layers * mean_budget - sum(base)
    for l in sorted(range(n_layers), key=lambda l: (-(raw[l] - base[l]), l))[:remainder]:
        base[l] += 1
    if cap is not None:
        excess = sum(max(0, b - cap) for b in base)
        base = [min(b, cap) for b in base]
        for l in sorted(range(n_layers), key=lambda l: base[l]):
            give = min(excess, cap - base[l])
            base[l] += give
            excess -= give
    return base


def observation_scores(query: torch.Tensor, key: torch.Tensor, window: int, scaling: float, kernel: int = 7) -> torch.Tensor:
    """SnapKV scores of every prompt position: pooled attention from the last ``window`` queries.

    Window positions themselves get ``+inf`` so that any top-k keeps them (they count inside the
    budget).

    Returns:
        ``(H, N)``.
    """
    n = key.shape[2]
    window = max(1, min(window, n))
    rows = torch.arange(n - window, n, device=key.device)
    scores = pooled_scores(window_attention(query, key, rows, scaling), kernel)
    scores[:, n - window :] = float("inf")
    return scores


def merge_evicted(keys: torch.Tensor, values: torch.Tensor, kept: torch.Tensor, evicted: torch.Tensor, text: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """LOOK-M averaging merge: each evicted visual entry is averaged into its most cosine-similar kept key.

    Args:
        keys, values: ``(N, D)`` of one KV head.
        kept, evicted: 1-D position indices.
        text: optional ``(N,)`` bool; evicted text entries are dropped, not merged.

    Returns:
        ``(keys, values)`` copies where each kept row ``i`` is the mean of itself and the evicted
        rows assigned to it (other rows unchanged).
    """
    if text is not None:
        evicted = evicted[~text[evicted]]
    if evicted.numel() == 0 or kept.numel() == 0:
        return keys, values
    kept, evicted = kept.to(keys.device), evicted.to(keys.device)
    k_kept = F.normalize(keys[kept].float(), dim=-1)
    k_ev = F.normalize(keys[evicted].float(), dim=-1)
    target = kept[(k_ev @ k_kept.T).argmax(dim=-1)]  # (E,) kept row each evicted entry joins
    count = torch.ones(keys.shape[0], device=keys.device).index_add_(0, target, torch.ones_like(target, dtype=torch.float))
    new_k = keys.float().index_add(0, target, keys[evicted].float()) / count[:, None]
    new_v = values.float().index_add(0, target, values[evicted].float()) / count[:, None]
    return new_k.to(keys.dtype), new_v.to(values.dtype)
