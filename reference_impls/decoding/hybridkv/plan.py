"""HybridKV's pure tensor functions: head typing, top-down allocation, text-prior order, chunks.

No model code here (ToMe-style): :mod:`reference_impls.decoding.hybridkv.layer` calls these from
its cache layer and the tests call them directly. A mark such as "§4.5" names the numbered
section of this package's ``README.md`` that specifies the function. Every formula below beyond
"typing by text-centric attention, top-down allocation, text-prior pruning for static heads,
chunk-wise retrieval for dynamic heads" (the paper's abstract, arXiv 2604.05887) is our
reconstruction (README §2 and §5 say which is which).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from reference_impls.decoding.cache import PromptLayout
from reference_impls.decoding.kv_scores import allocate_with_floor

__all__ = [
    "HeadTyping",
    "GroupAgg",
    "Positions",
    "reserved_positions",
    "text_centric_attention",
    "type_heads",
    "mean_budget",
    "hierarchical_budgets",
    "static_order",
    "dynamic_split",
    "make_chunks",
    "chunk_upper_bounds",
    "select_chunks",
    "select_chunks_batched",
    "save_head_types",
    "load_head_types",
]

log = logging.getLogger(__name__)

HeadTyping = Literal["threshold", "rank", "all_static", "all_dynamic"]
"""How heads are typed static/dynamic (§4.2); the last two are ablations."""
GroupAgg = Literal["max", "mean"]
"""How the chunk bounds of a KV head's query heads are combined (§4.5)."""


@dataclass
class Positions:
    """Position sets of one prompt (§3): sinks, window, reserved ``R``, candidates ``C``, text."""

    sink: torch.Tensor  # (N,) bool
    window: torch.Tensor  # (N,) bool
    text: torch.Tensor  # (N,) bool
    segment: torch.Tensor  # (N,) long, id of the maximal same-(modality, item) run

    @property
    def reserved(self) -> torch.Tensor:
        return self.sink | self.window

    @property
    def candidates(self) -> torch.Tensor:
        return ~self.reserved

    @property
    def r(self) -> int:
        return int(self.reserved.sum())


def reserved_positions(layout: PromptLayout, n_sink: int = 4, window: int = 32, window_min: int = 8) -> Positions:
    """Sinks, observation window and run segments of a prompt (§4.0 window rule).

    The window is the last ``window`` positions when the prompt has no visual token; otherwise
    the (at most ``window``) text positions after the last visual one, or the last ``window``
    positions with a warning when fewer than ``window_min`` text tokens follow the last image.
    """
    n = layout.n
    visual = layout.visual
    sink = torch.zeros(n, dtype=torch.bool)
    sink[: min(n_sink, n)] = True
    win = torch.zeros(n, dtype=torch.bool)
    if visual.any():
        last_visual = int(visual.nonzero().max())
        after = n - 1 - last_visual
        if after >= window_min:
            win[max(last_visual + 1, n - window) :] = True
        else:
            log.warning(
                "only %d text tokens after the last visual token: using the last %d positions as window", after, window
            )
            win[max(0, n - window) :] = True
    else:
        win[max(0, n - window) :] = True
    key = torch.where(visual, layout.item, torch.full_like(layout.item, -1))
    change = torch.cat([torch.tensor([True]), key[1:] != key[:-1]])
    return Positions(sink=sink, window=win, text=~visual, segment=torch.cumsum(change.long(), 0) - 1)


def text_centric_attention(
    attn: torch.Tensor, rows: torch.Tensor, pos: Positions, exclude_sink: bool = True
) -> torch.Tensor:
    """TCA of each KV head (§4.2): share of the window's (non-sink) attention landing on text.

    Args:
        attn: ``(H, w, N)`` window attention (rows = the positions ``rows``), group-averaged.
        rows: ``(w,)`` query positions.
        pos: the prompt's :class:`Positions`.
        exclude_sink: leave sink columns out of numerator and denominator.

    Returns:
        ``(H,)`` in [0, 1].
    """
    keep = ~pos.sink if exclude_sink else torch.ones_like(pos.sink)
    keep = keep.to(attn.device)
    text = (pos.text.to(attn.device) & keep).float()
    num = (attn * text).sum(-1)  # (H, w); causal zeros already in attn
    den = (attn * keep.float()).sum(-1).clamp_min(1e-12)
    return (num / den).mean(-1)


def type_heads(tca: torch.Tensor, mode: HeadTyping = "threshold", tau: float = 0.5, rho: float = 0.25) -> torch.Tensor:
    """``(L, H)`` bool, True = static (§4.2).

    ``"threshold"``: static iff TCA >= tau. ``"rank"``: the ``round(rho * L * H)`` heads with the
    lowest TCA are dynamic (ties by (l, h) order). ``"all_static"`` / ``"all_dynamic"``: ablations.
    """
    if mode == "threshold":
        return tca >= tau
    if mode == "rank":
        n_dynamic = int(round(rho * tca.numel()))
        order = torch.sort(tca.reshape(-1), stable=True).indices
        static = torch.ones(tca.numel(), dtype=torch.bool)
        static[order[:n_dynamic]] = False
        return static.view_as(tca)
    if mode == "all_static":
        return torch.ones_like(tca, dtype=torch.bool)
    if mode == "all_dynamic":
        return torch.zeros_like(tca, dtype=torch.bool)
    raise ValueError(f"unknown typing mode {mode!r}")


def mean_budget(budget: float | int, n: int, r: int) -> int:
    """Mean entries per head ``b`` (§4.3 step 1): ``clip(round(beta N), r + 1, N)`` or ``min(B_abs, N)``."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise TypeError(f"budget must be a float ratio or an int count, got {budget!r}")
    if isinstance(budget, float):
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"a ratio budget must be in (0, 1], got {budget}")
        b = min(max(int(round(budget * n)), r + 1), n)
        if b > budget * n + 0.5:
            log.info("budget %.3f raised to %d/%d = %.3f to hold the reserved entries", budget, b, n, b / n)
        return b
    if budget < 1:
        raise ValueError(f"an absolute budget must be >= 1, got {budget}")
    return min(budget, n)


def hierarchical_budgets(
    scores: torch.Tensor, cand: torch.Tensor, b: int, r: int, alpha: float = 0.2, full_layers: tuple[int, ...] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-down allocation model -> layers -> heads (§4.3).

    Args:
        scores: ``(L, H, N)`` window scores ``s`` (non-negative).
        cand: ``(N,)`` bool candidate positions ``C``.
        b: mean entries per head; the model total is ``b * L * H``.
        r: reserved entries per head (kept in every head, inside its budget).
        alpha: floor fraction for layers and heads.
        full_layers: layers kept whole (``N`` entries per head).

    Returns:
        ``(B (L, H) long, A_l (L,) long)``: prompt entries per head (reserved included) and
        candidate entries per layer. ``B.sum() == b * L * H`` exactly.
    """
    n_layers, n_heads, n = scores.shape
    full = sorted(set(full_layers))
    compressed = [l for l in range(n_layers) if l not in full]
    total = b * n_layers * n_heads
    needed = len(full) * n * n_heads + len(compressed) * n_heads * (r + 1)
    if needed > total:
        raise ValueError(
            f"budget infeasible: {len(full)} full layers x {n} x {n_heads} heads + {len(compressed)} layers x "
            f"{n_heads} heads x (r={r} + 1) = {needed} > b={b} x L={n_layers} x H={n_heads} = {total}"
        )
    free = total - len(full) * n * n_heads - len(compressed) * n_heads * r
    budgets = torch.full((n_layers, n_heads), n, dtype=torch.long)
    layer_alloc = torch.zeros(n_layers, dtype=torch.long)
    if not compressed:
        return budgets, layer_alloc
    s = scores[compressed][:, :, cand].float()  # (Lc, H, C)
    s_hat = s / s.sum(-1, keepdim=True).clamp_min(1e-12)
    per_layer, _ = allocate_with_floor(s_hat.reshape(len(compressed), -1), free, int(alpha * free / len(compressed)))
    for i, l in enumerate(compressed):
        a_l = int(per_layer[i])
        per_head, _ = allocate_with_floor(s[i], a_l, int(alpha * a_l / n_heads))
        budgets[l] = r + per_head
        layer_alloc[l] = a_l
    return budgets, layer_alloc


def static_order(scores: torch.Tensor, pos: Positions) -> torch.Tensor:
    """Text-prior keep order of a static head (§4.4): reserved, text candidates, visual candidates.

    Args:
        scores: ``(N,)`` window scores of the head.

    Returns:
        ``(N,)`` positions; a head with budget ``B`` keeps the first ``B``.
    """
    idx = torch.arange(scores.numel())
    cand_text = pos.candidates & pos.text
    cand_vis = pos.candidates & ~pos.text

    def by_score(mask):
        sel = idx[mask]
        return sel[torch.sort(scores[mask], descending=True, stable=True).indices]

    return torch.cat([idx[pos.reserved], by_score(cand_text), by_score(cand_vis)])


def dynamic_split(
    scores: torch.Tensor, pos: Positions, budget: int, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resident prompt set and retrieval pool of a dynamic head (§4.5 steps 1-2).

    Returns:
        ``(resident positions, pool positions)``, both sorted.
    """
    idx = torch.arange(scores.numel())
    cand_text = idx[pos.candidates & pos.text]
    r = pos.r
    if r + cand_text.numel() <= budget - chunk_size:
        text_keep = cand_text
    else:
        k = max(0, budget - chunk_size - r)
        text_keep = cand_text[torch.sort(scores[cand_text], descending=True, stable=True).indices[:k]]
    resident = torch.zeros(scores.numel(), dtype=torch.bool)
    resident[pos.reserved] = True
    resident[text_keep] = True
    return idx[resident], idx[~resident]


def make_chunks(
    positions: torch.Tensor, segment: torch.Tensor, chunk_size: int, break_on_gap: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut sorted pool positions into chunks that never cross a segment (modality/item) boundary.

    Args:
        positions: ``(P,)`` sorted prompt positions of the pool.
        segment: ``(N,)`` segment id of every prompt position.
        chunk_size: maximal chunk length.
        break_on_gap: also end a chunk where positions are not consecutive.

    Returns:
        ``(starts, lengths)``: int32 ``(n_chunks,)`` offsets into ``positions``.
    """
    starts, lengths = [], []
    seg = segment[positions].tolist()
    pos = positions.tolist()
    for i in range(len(pos)):
        new = i == 0 or seg[i] != seg[i - 1] or (break_on_gap and pos[i] != pos[i - 1] + 1) or lengths[-1] == chunk_size
        if new:
            starts.append(i)
            lengths.append(1)
        else:
            lengths[-1] += 1
    return torch.tensor(starts, dtype=torch.int32), torch.tensor(lengths, dtype=torch.int32)


def chunk_upper_bounds(
    query: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor, group_agg: GroupAgg = "max"
) -> torch.Tensor:
    """Quest bound ``u_c = agg_g sum_d max(q_gd kmin_cd, q_gd kmax_cd)`` (§4.5 step 5).

    Any leading dimensions (e.g. the dynamic heads of a layer) are batch dimensions.

    Args:
        query: ``(..., G, q, D)`` the query heads of each KV head (post-RoPE).
        kmin, kmax: ``(..., n_chunks, D)`` channel-wise minimum and maximum key of each chunk.
        group_agg: ``"max"`` or ``"mean"`` over the ``G * q`` query rows.

    Returns:
        ``(..., n_chunks)``; with ``"max"``, ``u_c >= q . k`` for every key of chunk ``c`` and
        every query row.
    """
    q = query.flatten(-3, -2).float()  # (..., Gq, D)
    # max(q kmin, q kmax) per channel = q+ kmax + q- kmin, so the bound is two matrix products.
    u = q.clamp(min=0) @ kmax.float().transpose(-1, -2) + q.clamp(max=0) @ kmin.float().transpose(-1, -2)  # (.., Gq, C)
    return u.amax(-2) if group_agg == "max" else u.mean(-2)


def select_chunks(bounds: torch.Tensor, lengths: torch.Tensor, room: int) -> torch.Tensor:
    """Chunks by bound descending, each added when its length still fits in ``room``. Returns chunk ids.

    Equal to the sequential greedy walk; the leading run of fitting chunks is taken at once.
    """
    order = torch.sort(bounds, descending=True, stable=True).indices
    sorted_len = lengths[order].long()
    fits = torch.cumsum(sorted_len, 0) <= room
    n_prefix = int(fits.long().cumprod(0).sum())
    chosen = order[:n_prefix].tolist()
    room -= int(sorted_len[:n_prefix].sum())
    for c, length in zip(order[n_prefix:].tolist(), sorted_len[n_prefix:].tolist()):
        if room <= 0:
            break
        if length <= room:
            chosen.append(c)
            room -= length
    return torch.tensor(chosen, dtype=torch.long)


WALK_MAX = 4096  # chunks (all rows together) up to which the CPU selection walks in plain Python


def select_chunks_batched(
    bounds: torch.Tensor, lengths: torch.Tensor, rooms: torch.Tensor, *, walk: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`select_chunks` for several heads at once (rows of ``(Hd, C)``; padded chunks have length 0).

    The leading run of fitting chunks is found for all rows together; only rows where a later,
    shorter chunk could still fit walk the rest one by one. With ``walk`` (default: on the CPU
    with at most :data:`WALK_MAX` chunks, where a dozen tensor operations cost more than the loop),
    the whole greedy fill is one plain Python walk over the sorted chunks instead: the same choice.

    Returns:
        ``(rows, chunk ids)``: flat long tensors, row-major, each row in selection order.
    """
    order = torch.sort(bounds, dim=-1, descending=True, stable=True).indices  # (Hd, C)
    sorted_len = lengths.gather(1, order).long()
    if walk is None:
        walk = bounds.device.type == "cpu" and bounds.numel() <= WALK_MAX
    if walk:
        rows_w, ids_w = [], []
        for row, (ids, lens, room) in enumerate(zip(order.tolist(), sorted_len.tolist(), rooms.tolist())):
            for c, length in zip(ids, lens):
                if 0 < length <= room:
                    rows_w.append(row)
                    ids_w.append(c)
                    room -= length
                    if room == 0:  # lengths are >= 1: nothing else fits
                        break
        return torch.tensor(rows_w, dtype=torch.long), torch.tensor(ids_w, dtype=torch.long)
    csum = torch.cumsum(sorted_len, 1)
    take = (csum <= rooms[:, None]) & (sorted_len > 0)  # csum is monotone: a prefix per row
    left = rooms - torch.where(take, sorted_len, 0).sum(1)
    # Chunks after the prefix that could still fit (a short chunk after a long one that did not).
    candidates = (sorted_len > 0) & (sorted_len <= left[:, None]) & (csum > rooms[:, None])
    rows_c, cols_c = candidates.nonzero(as_tuple=True)
    if rows_c.numel():
        # The sequential walk in plain Python, then one write: a tensor write per chunk costs more.
        room = dict(enumerate(left.tolist()))
        extra_rows, extra_cols = [], []
        for row, j, length in zip(rows_c.tolist(), cols_c.tolist(), sorted_len[rows_c, cols_c].tolist()):
            if length <= room[row]:
                extra_rows.append(row)
                extra_cols.append(j)
                room[row] -= length
        if extra_rows:
            take[torch.tensor(extra_rows), torch.tensor(extra_cols)] = True
    rows, cols = take.nonzero(as_tuple=True)
    return rows, order[rows, cols]


def save_head_types(
    path: str | Path, tca: torch.Tensor, static: torch.Tensor, *, model_id: str, tau: float, calibration: str
) -> None:
    """Write an offline head-type mask (JSON) with the TCA matrix it came from (§4.2)."""
    n_layers, n_heads = tca.shape
    data = {
        "model": model_id,
        "L": n_layers,
        "H": n_heads,
        "tau": tau,
        "calibration": calibration,
        "tca": [[round(float(x), 6) for x in row] for row in tca],
        "static": [[bool(x) for x in row] for row in static],
    }
    Path(path).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def load_head_types(path: str | Path, n_layers: int | None = None, n_heads: int | None = None) -> torch.Tensor:
    """Read an offline mask written by :func:`save_head_types`; ``(L, H)`` bool, True = static."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    static = torch.tensor(data["static"], dtype=torch.bool)
    if (n_layers is not None and static.shape[0] != n_layers) or (n_heads is not None and static.shape[1] != n_heads):
        raise ValueError(f"head-type mask {tuple(static.shape)} does not match the model ({n_layers}, {n_heads})")
    return static
