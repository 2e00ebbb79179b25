"""HybridKV's cache: ragged per-head storage, the retrieval pools of dynamic heads, and the plan over all layers.

:class:`HybridKVCache` runs typing and allocation once every layer's prefill has been scored
(README §4.0 step 3); :class:`HybridKVLayer` records the window scores during the prefill
(§4.1), builds each head's storage (§4.4, §4.5 steps 1-4) and, at every decode step, picks the
chunks of each dynamic head with :func:`~reference_impls.decoding.hybridkv.plan.chunk_upper_bounds`
and :func:`~reference_impls.decoding.hybridkv.plan.select_chunks_batched` (§4.5 step 5) and
attends exactly over resident plus retrieved entries (§4.7). The configuration lives in
:class:`reference_impls.decoding.hybridkv.HybridKV`; everything here is run state of one request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from reference_impls.decoding.cache import CompressedCache, RaggedLayer, attend, flat_attention
from reference_impls.decoding.hybridkv import plan
from reference_impls.decoding.hybridkv.plan import (
    chunk_upper_bounds,
    dynamic_split,
    hierarchical_budgets,
    load_head_types,
    make_chunks,
    mean_budget,
    reserved_positions,
    select_chunks_batched,
    static_order,
    text_centric_attention,
    type_heads,
)
from reference_impls.decoding.kv_scores import merge_evicted, pooled_scores, window_attention

if TYPE_CHECKING:
    from reference_impls.decoding.hybridkv import HybridKV

__all__ = ["HybridKVLayer", "HybridKVCache", "attend_two"]


def attend_two(
    query: torch.Tensor,
    retrieved: tuple[torch.Tensor, torch.Tensor],
    resident: tuple[torch.Tensor, torch.Tensor],
    scaling: float,
    n_new: int,
) -> torch.Tensor:
    """Exact softmax attention over retrieved ∪ resident entries without concatenating K/V.

    Args:
        query: ``(1, G, q, D)``.
        retrieved, resident: ``(keys (n, D), values (n, D))``; the last ``n_new`` resident
            entries are the queries' own tokens (causal among themselves).

    Returns:
        ``(1, q, G, D)``.
    """
    q = query[0].float()  # (G, q, D)
    logits_r = q @ retrieved[0].float().T * scaling  # (G, q, n_r)
    logits_s = q @ resident[0].float().T * scaling  # (G, q, n_s)
    if q.shape[1] > 1:
        n_s = logits_s.shape[-1]
        causal = torch.ones(q.shape[1], n_s, dtype=torch.bool, device=q.device)
        causal[:, n_s - n_new :] = torch.tril(torch.ones(q.shape[1], n_new, dtype=torch.bool, device=q.device))
        logits_s = logits_s.masked_fill(~causal, float("-inf"))
    probs = torch.cat([logits_r, logits_s], dim=-1).softmax(-1)
    n_r = logits_r.shape[-1]
    out = probs[..., :n_r] @ retrieved[1].float() + probs[..., n_r:] @ resident[1].float()  # (G, q, D)
    return out.to(query.dtype).transpose(0, 1)[None]


_GROW = 16  # spare rows per head in the packed decode buffers (re-packed when a head fills them)


class HybridKVLayer(RaggedLayer):
    """Ragged per-head storage plus, for dynamic heads, a chunked retrieval pool.

    One-token decode steps run on packed, preallocated buffers (:meth:`_pack`); the straightforward
    path (:meth:`_decode_reference`, per-head tensors concatenated every step) runs for multi-token
    steps and whenever ``_reference_path`` is set, and the tests compare the two.
    """

    _reference_path = False

    def __init__(self, layer_idx: int, method: HybridKV):
        super().__init__(layer_idx, method)
        self.scores: torch.Tensor | None = None  # (H, N) window scores, dropped after finalisation
        self.tca: torch.Tensor | None = None  # (H,)
        self.static: list[bool] = []
        self.budgets: list[int] = []
        self.pool: dict[int, dict[str, torch.Tensor]] = {}  # dynamic head -> pool tensors
        self.selection: tuple[torch.Tensor, torch.Tensor] | None = None  # (row, chunk id) of the last refresh
        self.steps = 0
        self._last_retrieved: dict[int, torch.Tensor] = {}  # dynamic head -> retrieved prompt positions
        self._pending: tuple[torch.Tensor, list[int]] | None = None  # (pool rows, entries per head), lazy
        self._chunk_lists: tuple[list, list] | None = None  # chunk starts and lengths as Python lists
        self._buf: dict | None = None  # preallocated decode buffers of the one-token path (see _pack)
        self._n_resident: dict[int, int] = {}
        self._chunks: list = []  # per dynamic head, until stacked
        self.dynamic: list[int] = []  # dynamic heads, in the row order of the chunk tensors
        self.chunk_start = self.chunk_len = self.chunk_kmin = self.chunk_kmax = None
        self.pool_keys = self.pool_values = self.pool_positions = None  # flat cold store of the layer

    # --- prefill: record scores ----------------------------------------------------------------
    def after_prefill(self, module, query, scaling):
        cache = self.cache
        pos = cache.positions
        rows = pos.window.nonzero().view(-1).to(query.device)
        attn = window_attention(query, self.keys, rows, scaling)  # (H, w, N)
        self.scores = pooled_scores(attn, self.method.pool_kernel).cpu()
        self.tca = text_centric_attention(attn, rows, pos, self.method.tca_exclude_sink).cpu()

    # --- finalisation: build the storage -------------------------------------------------------
    def finalize(self, static: torch.Tensor, budgets: torch.Tensor) -> None:
        m, pos = self.method, self.cache.positions
        n = self.physical_length()
        keys, values = self.keys[0], self.values[0]  # (H, N, D)
        self.static, self.budgets = static.tolist(), budgets.tolist()
        index, merged = [], []
        for h in range(keys.shape[0]):
            b = self.budgets[h]
            if b >= n and self.static[h]:
                index.append(torch.arange(n))
            elif self.static[h]:
                order = static_order(self.scores[h], pos)
                index.append(order[:b])
                if m.merge_evicted:
                    merged.append((h, order[:b], order[b:]))
            else:
                resident, pool = dynamic_split(self.scores[h], pos, b, m.chunk_size)
                index.append(resident)
                self._build_pool(h, keys[h], values[h], pool, b)
        for h, kept, evicted in merged:
            keys[h], values[h] = merge_evicted(keys[h], values[h], kept, evicted, pos.text)
        self.keep_per_head(index)
        self._stack_chunks()
        self.scores = None  # only the counts and storage survive the prefill
        self._buf = None

    def _build_pool(self, h: int, keys: torch.Tensor, values: torch.Tensor, pool: torch.Tensor, budget: int) -> None:
        m, pos = self.method, self.cache.positions
        if m.memory_mode == "resident_pool" and m.pool_cap is not None and pool.numel() > m.pool_cap * budget:
            best = torch.sort(self.scores[h][pool], descending=True, stable=True).indices[: m.pool_cap * budget]
            pool = pool[best].sort().values
        starts, lengths = make_chunks(pool, pos.segment, m.chunk_size, break_on_gap=m.memory_mode == "offload")
        idx = pool.to(keys.device)
        pool_k, pool_v = keys.index_select(0, idx), values.index_select(0, idx)
        chunk_id = torch.repeat_interleave(torch.arange(len(starts)), lengths.long()).to(keys.device)
        kmin = torch.full((len(starts), keys.shape[-1]), float("inf"), dtype=keys.dtype, device=keys.device)
        kmax = torch.full_like(kmin, float("-inf"))
        kmin = kmin.scatter_reduce(0, chunk_id[:, None].expand_as(pool_k), pool_k, "amin")
        kmax = kmax.scatter_reduce(0, chunk_id[:, None].expand_as(pool_k), pool_k, "amax")
        store = "cpu" if m.memory_mode == "offload" else keys.device  # host memory on accelerators
        self.pool[h] = {"keys": pool_k.to(store), "values": pool_v.to(store), "positions": pool.to(torch.int32)}
        self._chunks.append((h, starts, lengths, kmin, kmax))

    def _stack_chunks(self) -> None:
        """Chunk metadata of all dynamic heads as ``(Hd, C_max, ...)`` tensors (padding: length 0)."""
        if not self._chunks:
            return
        heads, starts, lengths, kmins, kmaxs = zip(*self._chunks)
        c_max, d = max(len(s) for s in starts), kmins[0].shape[-1]
        device, dtype = kmins[0].device, kmins[0].dtype
        self.dynamic = list(heads)
        self.chunk_start = torch.zeros(len(heads), c_max, dtype=torch.int32, device=device)
        self.chunk_len = torch.zeros_like(self.chunk_start)
        self.chunk_kmin = torch.zeros(len(heads), c_max, d, dtype=dtype, device=device)  # (Hd, C_max, D)
        self.chunk_kmax = torch.zeros_like(self.chunk_kmin)
        for i, (s, n, lo, hi) in enumerate(zip(starts, lengths, kmins, kmaxs)):
            self.chunk_start[i, : len(s)], self.chunk_len[i, : len(s)] = s, n
            self.chunk_kmin[i, : len(s)], self.chunk_kmax[i, : len(s)] = lo, hi
        self._chunks = []
        self._rooms = torch.tensor([self.budgets[h] - self.resident_prompt(h) for h in heads])
        # Fixed per request, so built once rather than every step.
        self._dynamic_index = torch.tensor(heads, device=device)
        self._padding_chunks = self.chunk_len == 0
        # One flat cold store per layer, so each step gathers every head's chunks in one indexing op;
        # pool[h] keeps views of its rows and chunk starts become offsets into the flat store.
        sizes = [self.pool[h]["positions"].numel() for h in heads]
        offsets = torch.cumsum(torch.tensor([0] + sizes[:-1]), 0)
        self.chunk_start += offsets.to(device=device, dtype=torch.int32)[:, None]
        self.pool_keys = torch.cat([self.pool[h]["keys"] for h in heads])
        self.pool_values = torch.cat([self.pool[h]["values"] for h in heads])
        self.pool_positions = torch.cat([self.pool[h]["positions"] for h in heads])
        for h, start, size in zip(heads, offsets.tolist(), sizes):
            rows = slice(start, start + size)
            self.pool[h] = {
                "keys": self.pool_keys[rows],
                "values": self.pool_values[rows],
                "positions": self.pool_positions[rows],
            }

    # --- decode --------------------------------------------------------------------------------
    def _select(self, query: torch.Tensor) -> None:
        """Chunk choice of every dynamic head for this step (§4.5 step 5), batched over heads."""
        n_heads = len(self.head_keys)
        q = query[0].reshape(n_heads, -1, query.shape[2], query.shape[3]).index_select(0, self._dynamic_index)
        u = chunk_upper_bounds(q, self.chunk_kmin, self.chunk_kmax, self.method.group_agg)  # (Hd, C_max)
        u = u.masked_fill(self._padding_chunks, float("-inf"))  # padding chunks are never chosen
        self.selection = select_chunks_batched(u, self.chunk_len, self._rooms)

    def _retrieve_all(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Copy every dynamic head's chosen chunks from the cold store into one working buffer.

        Returns ``(keys (R, D), values (R, D), entries per dynamic head)``, head after head.
        """
        rows, cols = self.selection
        starts, lengths = self.chunk_start[rows, cols].long(), self.chunk_len[rows, cols].long()
        first = torch.cumsum(lengths, 0) - lengths  # where each chunk starts in the working buffer
        idx = torch.repeat_interleave(starts - first, lengths) + torch.arange(
            int(first[-1] + lengths[-1]) if len(lengths) else 0
        )
        idx = idx.cpu()  # flat pool rows, chunk by chunk
        counts = torch.zeros(len(self.dynamic), dtype=torch.long).index_add_(0, rows.cpu(), lengths.cpu()).tolist()
        device = self.head_keys[0].device
        keys, values = self.pool_keys.index_select(0, idx).to(device), self.pool_values.index_select(0, idx).to(device)
        self._last_retrieved = dict(zip(self.dynamic, self.pool_positions.index_select(0, idx).split(counts)))
        self._pending = None
        return keys, values, counts

    def _retrieval_rows(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Where the chosen chunks lie in the cold store, in the reference path's order (chunk by chunk,
        head after head).

        Returns ``(store rows (R,) on the store's device, KV head of each row (R,), entries per
        dynamic head)``. Small selections on the CPU are expanded in plain Python (fewer tensor
        operations), larger ones with tensor operations; both give the same rows.
        """
        rows, cols = self.selection
        device = self.head_keys[0].device
        if self.chunk_len.device.type == "cpu" and self.chunk_len.numel() <= plan.WALK_MAX:
            if self._chunk_lists is None:
                self._chunk_lists = (self.chunk_start.tolist(), self.chunk_len.tolist())
            starts, lens = self._chunk_lists
            idx, owner, counts = [], [], [0] * len(self.dynamic)
            for r, c in zip(rows.tolist(), cols.tolist()):
                start, n = starts[r][c], lens[r][c]
                idx.extend(range(start, start + n))
                owner.extend([self.dynamic[r]] * n)
                counts[r] += n
            return torch.tensor(idx, dtype=torch.long), torch.tensor(owner, dtype=torch.long, device=device), counts
        starts, lengths = self.chunk_start[rows, cols].long(), self.chunk_len[rows, cols].long()
        total = int(lengths.sum())
        first = torch.cumsum(lengths, 0) - lengths  # where each chunk starts in the working buffer
        idx = torch.repeat_interleave(starts - first, lengths, output_size=total) + torch.arange(
            total, device=lengths.device
        )
        owner = torch.repeat_interleave(self._dynamic_index[rows], lengths, output_size=total)
        counts = torch.zeros(len(self.dynamic), dtype=torch.long).index_add_(0, rows.cpu(), lengths.cpu()).tolist()
        return idx.to(self.pool_keys.device), owner.to(device), counts

    @property
    def last_retrieved(self) -> dict[int, torch.Tensor]:
        """Dynamic head -> prompt positions it retrieved for the last decode step (built when read)."""
        if self._pending is not None:
            idx, counts = self._pending
            positions = self.pool_positions.index_select(0, idx).split(counts)
            self._last_retrieved, self._pending = dict(zip(self.dynamic, positions)), None
        return self._last_retrieved

    def retrieved_positions(self, head: int) -> torch.Tensor:
        """Prompt positions of the chunks head ``head`` fetched from its pool for the last decode step."""
        return self.last_retrieved.get(head, torch.zeros(0, dtype=torch.int32))

    def resident_prompt(self, h: int) -> int:
        """Prompt entries head ``h`` keeps resident (fixed after finalisation, so cached)."""
        if h not in self._n_resident:
            self._n_resident[h] = int((self.head_pos[h] < self.prompt_length).sum())
        return self._n_resident[h]

    # --- decode: the packed one-token path -----------------------------------------------------
    def _pack(self, extra: int = 0) -> None:
        """Copy the per-head storage into preallocated decode buffers; ``head_keys`` etc. become views.

        One working buffer ``(R_cap + H * cap, D)`` for keys (and one for values): rows ``[0, R_cap)``
        receive the retrieved chunks of each step (``R_cap`` = the dynamic heads' rooms together),
        rows ``R_cap + h * cap + [0, n_h)`` hold head ``h``'s entries, and ``owner`` gives each row's
        KV head (-1: unused, masked). Generated tokens are written in place; a head that reaches
        ``cap`` entries triggers a re-pack with ``_GROW`` more rows. The attention over this buffer
        is :func:`~reference_impls.decoding.cache.flat_attention`'s rule (the same entries, unused
        rows masked), without concatenating the storage every step.
        """
        lengths = self.head_lengths()
        n_heads, (d, device) = len(lengths), (self.head_keys[0].shape[-1], self.head_keys[0].device)
        cap = max(lengths) + max(extra, 1) + _GROW
        r_cap = int(self._rooms.clamp(min=0).sum()) if self.pool else 0
        keys = self.head_keys[0].new_zeros(r_cap + n_heads * cap, d)
        values = self.head_values[0].new_zeros(r_cap + n_heads * cap, d)
        positions = self.head_pos[0].new_zeros(n_heads, cap)
        owner = torch.full((r_cap + n_heads * cap,), -1, dtype=torch.long, device=device)
        for h, n in enumerate(lengths):
            rows = slice(r_cap + h * cap, r_cap + h * cap + n)
            keys[rows], values[rows], positions[h, :n], owner[rows] = (
                self.head_keys[h],
                self.head_values[h],
                self.head_pos[h],
                h,
            )
        heads = torch.arange(n_heads, device=device)
        self._buf = {
            "keys": keys,
            "values": values,
            "positions": positions,
            "owner": owner,
            "r_cap": r_cap,
            "cap": cap,
            "lengths": lengths,
            "heads": heads,
        }
        self._views()

    def _views(self) -> None:
        b = self._buf
        r_cap, cap = b["r_cap"], b["cap"]
        starts = [r_cap + h * cap for h in range(len(b["lengths"]))]
        self.head_keys = [b["keys"][s : s + n] for s, n in zip(starts, b["lengths"])]
        self.head_values = [b["values"][s : s + n] for s, n in zip(starts, b["lengths"])]
        self.head_pos = [b["positions"][h, :n] for h, n in enumerate(b["lengths"])]

    def _append(self, k, v, pos):
        if not self.ragged or self._reference_path:
            return super()._append(k, v, pos)
        q = k.shape[2]
        if self._buf is None or max(self._buf["lengths"]) + q > self._buf["cap"]:
            self._pack(extra=q)
        b = self._buf
        r_cap, cap = b["r_cap"], b["cap"]
        if q == 1:  # one row per head, written in place (fewer operations than one indexed copy)
            k_new, v_new, p_new = k[0, :, 0], v[0, :, 0], pos[0]  # (H, D), (H, D), ()
            for h, n in enumerate(b["lengths"]):
                row = r_cap + h * cap + n
                b["keys"][row], b["values"][row], b["owner"][row], b["positions"][h, n] = k_new[h], v_new[h], h, p_new
        else:
            n_heads = len(b["lengths"])
            first = [r_cap + h * cap + n for h, n in enumerate(b["lengths"])]
            at = (torch.tensor(first, device=pos.device)[:, None] + torch.arange(q, device=pos.device)).view(-1)
            b["keys"].index_copy_(0, at, k[0].reshape(n_heads * q, -1))  # k (1, H, q, D), head after head
            b["values"].index_copy_(0, at, v[0].reshape(n_heads * q, -1))
            b["owner"].index_copy_(0, at, b["heads"].repeat_interleave(q))
            b["positions"].view(-1).index_copy_(0, at - r_cap, pos.repeat(n_heads))  # (H, cap) rows
        b["lengths"] = [n + q for n in b["lengths"]]
        self._views()
        return None, None

    def _decode_packed(self, query: torch.Tensor, scaling: float) -> torch.Tensor:
        """One token, every head at once: retrieved chunks copied into the buffer's front rows, one masked matmul."""
        b = self._buf
        n_r = 0
        if self.pool:
            if self.steps % self.method.refresh_every == 0 or self.selection is None:
                self._select(query)
            idx, owner, counts = self._retrieval_rows()
            n_r = idx.numel()
            if self.pool_keys.device == b["keys"].device:
                torch.index_select(self.pool_keys, 0, idx, out=b["keys"][:n_r])
                torch.index_select(self.pool_values, 0, idx, out=b["values"][:n_r])
            else:  # offload on an accelerator: host gather, then one copy each
                b["keys"][:n_r].copy_(self.pool_keys.index_select(0, idx))
                b["values"][:n_r].copy_(self.pool_values.index_select(0, idx))
            b["owner"][:n_r] = owner
            b["owner"][n_r : b["r_cap"]] = -1
            self._pending = (idx, counts)
        n_q = query.shape[1]
        if "query_head" not in b:
            b["query_head"] = torch.arange(n_q, device=query.device) // (n_q // len(b["lengths"]))
        q = query[0, :, 0].float()  # (Hq, D)
        logits = q @ b["keys"].float().T * scaling  # (Hq, R_cap + H cap)
        probs = logits.masked_fill(b["owner"][None, :] != b["query_head"][:, None], float("-inf")).softmax(-1)
        out = (probs @ b["values"].float()).to(query.dtype)[None, None]  # (1, 1, Hq, D)
        self.steps += 1
        # The entries attended (retrieved plus resident), as the reference path's concatenated buffer.
        transient = 2 * b["keys"].element_size() * b["keys"].shape[-1] * (n_r + sum(b["lengths"]))
        self.cache.transient_bytes = max(self.cache.transient_bytes, transient)
        return out

    def decode_attention(self, module, query, key, value, scaling):
        if self.ragged and query.shape[2] == 1 and not self._reference_path:
            if self._buf is None:
                self._pack()
            return self._decode_packed(query, scaling)
        return self._decode_reference(module, query, key, value, scaling)

    def _decode_reference(self, module, query, key, value, scaling):
        """The straightforward step (concatenates the storage each step); the packed path must equal it."""
        if not self.ragged:
            return super().decode_attention(module, query, key, value, scaling)
        n_heads = len(self.head_keys)
        groups = query.shape[1] // n_heads
        outs, transient, retrieved = [], 0, {}
        if self.pool:
            if self.steps % self.method.refresh_every == 0 or self.selection is None:
                self._select(query)
            k_r, v_r, counts = self._retrieve_all()
            transient = 2 * k_r.element_size() * k_r.nelement()
            retrieved = dict(zip(self.dynamic, zip(k_r.split(counts), v_r.split(counts))))
        if query.shape[2] == 1:  # one token: all heads in one masked matmul over a packed working buffer
            ids = self.head_ids()
            keys, values = torch.cat(self.head_keys), torch.cat(self.head_values)
            if retrieved:
                owner = torch.repeat_interleave(
                    torch.tensor(self.dynamic, device=ids.device), torch.tensor(counts, device=ids.device)
                )
                keys, values, ids = torch.cat([k_r, keys]), torch.cat([v_r, values]), torch.cat([owner, ids])
            outs.append(flat_attention(query, keys, values, ids, scaling))
            transient = 2 * keys.element_size() * keys.nelement()
        else:
            for h in range(n_heads):
                q_h = query[:, h * groups : (h + 1) * groups]
                keys_h, values_h = self.head_keys[h], self.head_values[h]
                if h in retrieved:
                    outs.append(attend_two(q_h, retrieved[h], (keys_h, values_h), scaling, n_new=query.shape[2]))
                else:
                    outs.append(attend(q_h, keys_h[None, None], values_h[None, None], scaling, n_new=query.shape[2]))
        self.steps += 1
        # Working buffers are reused layer after layer: report the largest one.
        self.cache.transient_bytes = max(self.cache.transient_bytes, transient)
        return torch.cat(outs, dim=2)

    def after_decode(self, module, query, scaling):
        cap = self.method.static_max_generated
        if cap is None or not self.ragged:
            return
        for h in range(len(self.head_keys)):
            generated = (self.head_pos[h] >= self.prompt_length).nonzero().view(-1)
            if self.static[h] and generated.numel() > cap:
                drop = generated[: generated.numel() - cap]
                keep = torch.ones(self.head_pos[h].numel(), dtype=torch.bool, device=drop.device)
                keep[drop] = False
                self.head_keys[h], self.head_values[h] = self.head_keys[h][keep], self.head_values[h][keep]
                self.head_pos[h] = self.head_pos[h][keep]
                self._buf = None  # the packed buffers are rebuilt from the trimmed storage

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        self._buf = None

    # --- bytes ---------------------------------------------------------------------------------
    def _pool_tensors(self, resident: bool):
        if resident:
            yield from (self.chunk_start, self.chunk_len, self.chunk_kmin, self.chunk_kmax)
        if self.pool and resident == (self.method.memory_mode == "resident_pool"):
            yield from (self.pool_keys, self.pool_values, self.pool_positions)

    def resident_tensors(self):
        yield from super().resident_tensors()
        yield from self._pool_tensors(resident=True)
        yield from (t for t in (self.scores, self.tca) if t is not None and not self.ragged)

    def offloaded_tensors(self):
        yield from self._pool_tensors(resident=False)


class HybridKVCache(CompressedCache):
    """Runs typing and allocation over all layers once the prefill has scored them."""

    def __init__(self, layers):
        super().__init__(layers)
        self.positions = None
        self.plan: dict = {}

    def set_prompt(self, layout):
        super().set_prompt(layout)
        m = self.method
        self.positions = reserved_positions(layout, m.n_sink, m.window, m.window_min)

    def after_prefill_all(self) -> None:
        m, pos = self.method, self.positions
        n, r = self.layout.n, pos.r
        tca = torch.stack([layer.tca for layer in self.layers])  # (L, H)
        if m.types_source == "offline":
            static = load_head_types(m.types_path, *tca.shape)
        else:
            static = type_heads(tca, m.typing, m.tau, m.rho)
        if not self.layout.visual.any():
            static = torch.ones_like(static)  # no visual token: nothing to retrieve
        b = mean_budget(m.budget, n, r)
        budgets, layer_alloc = hierarchical_budgets(
            torch.stack([layer.scores for layer in self.layers]), pos.candidates, b, r, m.alpha, tuple(m.full_layers)
        )
        self.plan = {
            "tca": tca,
            "static": static,
            "budgets": budgets,
            "layer_alloc": layer_alloc,
            "b": b,
            "r": r,
            "n": n,
            "effective_ratio": b / n,
        }
        for l, layer in enumerate(self.layers):
            layer.finalize(static[l], budgets[l])
