"""Pure tensor functions shared by the KV-cache methods: attention scores and budget allocation.

No model code here (ToMe-style): the method modules call these from their cache layers, and the
tests call them directly. Scores are recomputed from post-RoPE queries and keys (never from
eager attention maps). By default they are averaged over the query heads of each KV head (GQA),
so every score and budget is per KV head; ``per_query_head=True`` keeps one row per query head,
as the reference SnapKV/PyramidKV code does after repeating K/V.

Upstream rules reproduced here (each cited again in ``tests/decoding/test_parity_kv.py``):
:func:`snapkv_scores` (FasterDecoding/SnapKV, KVCache-Factory), :func:`pyramidkv_budgets`
(KVCache-Factory ``PyramidKVCluster``), :func:`adakv_head_capacities` (FFY0/AdaKV) and
:func:`lookm_merge` (SUSTechBruce/LOOK-M). :func:`pooled_scores`, :func:`allocate_with_floor`,
:func:`pyramid_budgets` and :func:`merge_evicted` are our own variants, kept for HybridKV and for
the named options that reproduce the previous behaviour.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "window_attention",
    "pool_scores",
    "snapkv_scores",
    "pooled_scores",
    "accumulated_attention",
    "stable_order",
    "top_per_row",
    "allocate_with_floor",
    "pyramid_budgets",
    "pyramidkv_budgets",
    "adakv_head_capacities",
    "observation_scores",
    "merge_evicted",
    "lookm_merge",
]


def window_attention(
    query: torch.Tensor, key: torch.Tensor, rows: torch.Tensor, scaling: float, per_query_head: bool = False
) -> torch.Tensor:
    """Causal softmax attention of the queries at positions ``rows`` to every key, group-averaged.

    Args:
        query: ``(1, Hq, N, D)`` post-RoPE.
        key: ``(1, H, N, D)`` post-RoPE.
        rows: 1-D long tensor of query positions (the observation window).
        scaling: softmax scale.
        per_query_head: keep one row per query head instead of the group mean.

    Returns:
        ``(H, len(rows), N)``: post-softmax probabilities (0 where ``j > i``), averaged over
        the ``G = Hq / H`` query heads of each KV head (``(Hq, len(rows), N)`` per query head).
    """
    n_kv, n = key.shape[1], key.shape[2]
    groups = query.shape[1] // n_kv
    q = query[0, :, rows].float()  # (Hq, w, D)
    k = key[0].float().repeat_interleave(groups, dim=0)  # (Hq, N, D)
    logits = torch.einsum("hwd,hnd->hwn", q, k) * scaling
    causal = torch.arange(n, device=key.device)[None, :] <= rows.to(key.device)[:, None]  # (w, N)
    probs = logits.masked_fill(~causal, float("-inf")).softmax(dim=-1)
    if per_query_head:
        return probs
    return probs.view(n_kv, groups, len(rows), n).mean(dim=1)


def pool_scores(scores: torch.Tensor, kernel: int = 7, pooling: str = "max") -> torch.Tensor:
    """Upstream SnapKV smoothing of ``(R, C)`` scores: 1-D max or average pool, stride 1, "same" zero padding.

    Average pooling counts the padding (PyTorch's default ``count_include_pad=True``), so the
    first and last ``kernel // 2`` columns are divided by ``kernel`` although fewer real scores
    enter them; max pooling ignores the padding. ``kernel <= 1`` returns the scores unchanged.
    """
    if kernel <= 1:
        return scores
    if pooling == "max":
        return F.max_pool1d(scores[:, None], kernel, stride=1, padding=kernel // 2)[:, 0]
    if pooling == "avg":
        return F.avg_pool1d(scores[:, None], kernel, stride=1, padding=kernel // 2)[:, 0]
    raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}")


def snapkv_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    window: int,
    scaling: float,
    kernel: int = 7,
    pooling: str = "max",
    per_query_head: bool = False,
) -> torch.Tensor:
    """SnapKV scores of the non-window prompt positions, by the upstream rule.

    The last ``window`` queries attend causally to every key; their probabilities are averaged
    over the window rows, only the ``N - window`` columns before the window are kept, and those
    are pooled with :func:`pool_scores` (padding at the window edge too, as upstream).

    Returns:
        ``(H, N - window)``, or ``(Hq, N - window)`` with ``per_query_head``.
    """
    n = key.shape[2]
    rows = torch.arange(n - window, n, device=key.device)
    attn = window_attention(query, key, rows, scaling, per_query_head)  # (H', w, N)
    return pool_scores(attn.mean(dim=1)[:, : n - window], kernel, pooling)


def pooled_scores(attn: torch.Tensor, kernel: int = 7) -> torch.Tensor:
    """HybridKV's window score: mean over the window rows, then a 1-D average pool along all positions.

    Unlike SnapKV's reference rule (:func:`snapkv_scores`) it pools every column, the window's
    included, and does not count the padding, so the edge positions score differently.

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


def allocate_with_floor(
    scores: torch.Tensor, total: int, floor: int, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
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


def pyramid_budgets(
    n_layers: int, mean_budget: int, window: int, beta: float = 20.0, cap: int | None = None
) -> list[int]:
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


def observation_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    window: int,
    scaling: float,
    kernel: int = 7,
    pooling: str = "max",
    per_query_head: bool = False,
) -> torch.Tensor:
    """:func:`snapkv_scores` of every prompt position, with ``+inf`` on the window.

    Window positions get ``+inf`` so that any top-k keeps them (they count inside the budget).

    Returns:
        ``(H, N)`` (``(Hq, N)`` with ``per_query_head``).
    """
    n = key.shape[2]
    window = max(1, min(window, n))
    scores = snapkv_scores(query, key, window, scaling, kernel, pooling, per_query_head)
    return torch.cat([scores, torch.full((scores.shape[0], window), float("inf"), device=scores.device)], dim=1)


def pyramidkv_budgets(n_layers: int, mean_budget: int, window: int, n: int, beta: float = 20.0) -> list[int]:
    """PyramidKV per-layer entries per KV head (window included), by KVCache-Factory's integer rule.

    With ``m = mean_budget - window``: ``min = m // beta``, ``max = 2m - min``; when ``max`` reaches
    ``n - window`` it becomes ``n - window`` and ``min = 2m - max``. Layer ``l`` keeps
    ``window + max - l * ((max - min) // (L - 1))``, so the floor division makes the total
    exceed ``L * mean_budget`` a little. Prompts shorter than ``mean_budget`` are not
    compressed (every layer keeps ``n``), and prompts shorter than ``2 m`` get the uniform
    ``mean_budget`` in every layer.
    """
    m = mean_budget - window
    if m < 0:
        raise ValueError(f"mean budget {mean_budget} is smaller than the window {window}")
    if n < mean_budget:
        return [n] * n_layers
    if n < 2 * m or n_layers == 1:
        return [mean_budget] * n_layers
    low = int(m // beta)
    high = 2 * m - low
    if high >= n - window:
        high = n - window
        low = 2 * m - high
    step = (high - low) // (n_layers - 1)
    return [window + high - layer * step for layer in range(n_layers)]


def adakv_head_capacities(scores: torch.Tensor, free: int, alpha: float) -> torch.Tensor:
    """Ada-KV per-head capacities (non-window entries) of a layer, by FFY0/AdaKV's rule.

    The ``H * free`` best scores of the flattened ``(H, C)`` table give each head a count
    ``c_h``; head ``h`` then keeps ``round((1 - alpha) c_h + int(alpha * free))`` of its own best
    entries (``torch.round``: halves to even). The floor term guarantees every head
    ``int(alpha * free)`` entries; the rounding can make the layer total differ from
    ``H * free`` by a few entries. Exact ties (frequent after max pooling) go to the lower head
    and position; upstream's ``topk`` leaves their order to the kernel.

    Returns:
        ``(H,)`` long.
    """
    h, c = scores.shape
    top = stable_order(scores.float())[: h * free] // c  # ties: lower head, then lower position
    counts = torch.bincount(top, minlength=h).float()
    return torch.round(counts * (1 - alpha) + int(free * alpha)).long()


def merge_evicted(
    keys: torch.Tensor,
    values: torch.Tensor,
    kept: torch.Tensor,
    evicted: torch.Tensor,
    text: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
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
    count = torch.ones(keys.shape[0], device=keys.device).index_add_(
        0, target, torch.ones_like(target, dtype=torch.float)
    )
    new_k = keys.float().index_add(0, target, keys[evicted].float()) / count[:, None]
    new_v = values.float().index_add(0, target, values[evicted].float()) / count[:, None]
    return new_k.to(keys.dtype), new_v.to(values.dtype)


def lookm_merge(
    keys: torch.Tensor, values: torch.Tensor, kept: torch.Tensor, literal_scatter: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """LOOK-M averaging merge of the evicted entries of a layer (``TextAVGMergeKVCache_LayerWise``).

    Every head keeps the same number of entries. The ``j``-th evicted entry of each head (in
    position order) is compared, by cosine similarity of keys, with the kept entries of its
    head; slot ``j`` is merged only when its best similarity, averaged over the heads, is at
    least the mean best similarity over all heads and slots. A merged entry is averaged into
    its most similar kept entry (``mean`` with the kept entry itself included, keys and values
    alike).

    Args:
        keys, values: ``(H, N, D)``.
        kept: ``(H, N)`` bool, the same count per head.
        literal_scatter: reproduce the reference code's pairing of the filtered targets with
            the *first* evicted rows instead of the filtered ones (see the LOOK-M card).

    Returns:
        ``(keys, values)`` of the kept entries, ``(H, K, D)`` each, in position order.
    """
    h, n, d = keys.shape
    kept_idx = torch.nonzero(kept)[:, 1].view(h, -1)  # (H, K) sorted positions
    evicted_idx = torch.nonzero(~kept)[:, 1].view(h, -1)  # (H, E)
    take = lambda t, idx: t.gather(1, idx[..., None].expand(-1, -1, d))  # noqa: E731
    k_kept, v_kept = take(keys, kept_idx).float(), take(values, kept_idx).float()
    if evicted_idx.shape[1] == 0 or kept_idx.shape[1] == 0:
        return k_kept.to(keys.dtype), v_kept.to(values.dtype)
    k_ev = take(keys, evicted_idx).float()
    sim = F.normalize(k_ev, dim=-1) @ F.normalize(k_kept, dim=-1).transpose(1, 2)  # (H, E, K)
    best, target = sim.max(dim=-1)  # (H, E)
    merge = best.mean(dim=0) >= best.mean()  # (E,) one decision per slot, over heads
    f = int(merge.sum())
    rows = evicted_idx[:, :f] if literal_scatter else evicted_idx[:, merge]  # (H, F)
    target = target[:, merge]  # (H, F)
    ones = torch.ones_like(target, dtype=torch.float)
    count = torch.ones(h, kept_idx.shape[1], device=keys.device).scatter_add_(1, target, ones)  # self + joined
    new_k = k_kept.scatter_add(1, target[..., None].expand(-1, -1, d), take(keys, rows).float()) / count[..., None]
    new_v = v_kept.scatter_add(1, target[..., None].expand(-1, -1, d), take(values, rows).float()) / count[..., None]
    return new_k.to(keys.dtype), new_v.to(values.dtype)
