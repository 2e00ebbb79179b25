"""Parity of the KV-cache methods' defaults with the authors' code, on random tensors.

Each test re-implements the upstream rule in a few lines of our own (the repository, path and
commit it was read from are cited above it) and compares it with our default configuration,
driven through the method's cache layer. Upstream runs in the model dtype (fp16/bf16); these
tests use float32 on both sides, so the comparisons are exact (index sets) or to 1e-6.
Max pooling copies a peak to its neighbours, so exact score ties are common; upstream's
``topk``/``sort`` leave their order to the kernel, and the re-implementations here break them
as ours does (lower position first, stable sorts) so that the kept sets can be compared exactly.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from reference_impls.decoding.adakv import AdaKV
from reference_impls.decoding.cache import CompressedCache, PromptLayout
from reference_impls.decoding.h2o import H2O
from reference_impls.decoding.kivi import KIVI
from reference_impls.decoding.kv_scores import pyramidkv_budgets, snapkv_scores
from reference_impls.decoding.lookm import LookM
from reference_impls.decoding.pyramidkv import PyramidKV, layer_budgets
from reference_impls.decoding.snapkv import SnapKV
from reference_impls.decoding.streamingllm import StreamingLLM

torch.set_num_threads(1)


def _qkv(seed: int, n: int, hq: int = 4, h: int = 2, d: int = 16, sharpness: tuple[float, ...] | None = None):
    """Random post-RoPE ``(1, Hq, N, D)`` queries and ``(1, H, N, D)`` keys/values.

    ``sharpness`` scales the queries of each KV group, so that some heads attend sharply and
    others diffusely (Ada-KV's allocation then moves entries between heads).
    """
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, hq, n, d, generator=g)
    if sharpness is not None:
        q = q * torch.tensor(sharpness).repeat_interleave(hq // h)[None, :, None, None]
    return q, torch.randn(1, h, n, d, generator=g), torch.randn(1, h, n, d, generator=g)


def _prefill(method, q, k, v, n_layers: int = 1, layer_idx: int = 0, visual: torch.Tensor | None = None):
    """One cache layer of ``method`` after its prefill on ``(q, k, v)`` (batch 1, scale 1/sqrt(D))."""
    layer = method.make_layer(layer_idx, SimpleNamespace(num_hidden_layers=n_layers))
    cache = CompressedCache([layer])
    layer.keep_alive = cache  # layers hold their cache by weak reference
    layer.layer_idx = layer_idx
    if visual is not None:
        cache.set_prompt(PromptLayout(visual=visual, item=torch.where(visual, 0, -1)))
    layer.update(k, v)
    layer.after_prefill(None, q, 1 / math.sqrt(k.shape[-1]))
    return layer


def _kept(layer) -> list[set[int]]:
    return [set(layer.head_positions(h).tolist()) for h in range(len(layer.head_lengths()))]


# --- SnapKV -------------------------------------------------------------------------------------
# FasterDecoding/SnapKV snapkv/monkeypatch/snapkv_utils.py @ 557aff1c6d018d8d3021cb511a6080c1164083da
# (SnapKVCluster.update_kv), with K/V repeated to the query heads before it
# (snapkv/monkeypatch/llama_hijack_4_37.py @ 395b54dce7866cb2cffdebdc9f641fd0821a2c30). The same
# rule is SnapKVCluster in Zefan-Cai/KVCache-Factory pyramidkv/pyramidkv_utils.py
# @ 5fb995d72366fff6d00620cd33fad99b38725907.
def upstream_snapkv_scores(q, k, window, kernel, pooling):
    """Per query head: window rows' summed attention to the non-window columns, pooled (padding counted)."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    logits = q[..., -window:, :] @ k.transpose(2, 3) / math.sqrt(q.shape[-1])
    block = torch.full((window, window), torch.finfo(logits.dtype).min).triu(1)
    logits[..., -window:, -window:] += block
    summed = logits.softmax(-1)[..., :-window].sum(dim=-2)[0]  # (Hq, N - w)
    pool = F.avg_pool1d if pooling == "avg" else F.max_pool1d
    return pool(summed[:, None], kernel_size=kernel, padding=kernel // 2, stride=1)[:, 0]


def upstream_snapkv_kept(q, k, budget, window, kernel, pooling):
    scores = upstream_snapkv_scores(q, k, window, kernel, pooling)
    n = k.shape[2]
    top = scores.sort(dim=-1, descending=True, stable=True).indices[:, : budget - window]
    return [set(row.tolist()) | set(range(n - window, n)) for row in top]


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_snapkv_scores_match_upstream_including_edges(pooling):
    q, k, _ = _qkv(0, 60)
    window, kernel = 8, 7
    ours = snapkv_scores(q, k, window, 1 / math.sqrt(16), kernel, pooling, per_query_head=True)
    ref = upstream_snapkv_scores(q, k, window, kernel, pooling) / window  # ours averages the window rows
    torch.testing.assert_close(ours, ref, atol=1e-7, rtol=1e-5)
    last = 60 - window - 1  # the last non-window position: its pooling window reaches into the padding
    for edge in (0, 1, last):
        torch.testing.assert_close(ours[:, edge], ref[:, edge], atol=1e-7, rtol=1e-5)
    if pooling == "avg":  # padding not counted (our earlier rule) gives different edge scores
        s = ref * window
        uncounted = F.avg_pool1d(s[:, None], kernel, 1, kernel // 2, count_include_pad=False)[:, 0] / window
        assert not torch.allclose(uncounted[:, 0], ours[:, 0]) and not torch.allclose(uncounted[:, last], ours[:, last])


@pytest.mark.parametrize("seed", range(4))
def test_snapkv_default_keeps_upstream_entries(seed):
    method = SnapKV(budget=20, window=8)
    assert (method.window, method.pool_kernel, method.pooling, method.gqa) == (8, 7, "max", "repeat")
    assert (SnapKV().window, SnapKV().pool_kernel) == (32, 7)  # SnapKV's LongBench configuration
    q, k, v = _qkv(seed, 64)
    layer = _prefill(method, q, k, v)
    assert _kept(layer) == upstream_snapkv_kept(q, k, 20, 8, 7, "max")  # one selection per query head
    # The stored K/V are the repeated KV heads' entries.
    idx = layer.positions.long()  # (Hq, b)
    torch.testing.assert_close(layer.keys[0], k[0].repeat_interleave(2, 0).gather(1, idx[..., None].expand(-1, -1, 16)))


# --- PyramidKV ----------------------------------------------------------------------------------
# Zefan-Cai/KVCache-Factory pyramidkv/pyramidkv_utils.py @ 5fb995d72366fff6d00620cd33fad99b38725907
# (PyramidKVCluster.update_kv): integer schedule, uniform fallback below 2 (b - w).
def upstream_pyramid_capacity(n_layers, layer, b, w, n, beta=20):
    """Entries (window included) that layer ``layer`` keeps."""
    low = (b - w) // beta
    high = (b - w) * 2 - low
    if high >= n - w:
        high = n - w
        low = (b - w) * 2 - high
    step = (high - low) // (n_layers - 1)
    if n < b:
        return n
    if n < (b - w) * 2:
        return b
    return high - layer * step + w


@pytest.mark.parametrize(
    "n_layers,b,w,n",
    [
        (8, 60, 8, 270),
        (8, 200, 8, 300),
        (8, 60, 8, 105),
        (4, 27, 8, 270),
        (28, 128, 32, 2000),
        (3, 16, 4, 106),
        (8, 40, 8, 50),
        (5, 30, 30, 100),
    ],
)
def test_pyramidkv_budgets_match_upstream(n_layers, b, w, n):
    ours = pyramidkv_budgets(n_layers, b, w, n)
    assert ours == [upstream_pyramid_capacity(n_layers, layer, b, w, n) for layer in range(n_layers)]
    assert ours == sorted(ours, reverse=True)  # monotone, unlike the earlier redistribution


def test_pyramidkv_default_layer_keeps_upstream_entries():
    n_layers, n = 4, 80
    method = PyramidKV(budget=24, window=8)
    expected = [upstream_pyramid_capacity(n_layers, i, 24, 8, n) for i in range(n_layers)]
    assert layer_budgets(method, n_layers, n) == expected
    q, k, v = _qkv(5, n)
    for layer_idx in (0, 3):
        layer = _prefill(method, q, k, v, n_layers=n_layers, layer_idx=layer_idx)
        capacity = upstream_pyramid_capacity(n_layers, layer_idx, 24, 8, n)
        assert _kept(layer) == upstream_snapkv_kept(q, k, capacity, 8, 7, "max")


# --- Ada-KV -------------------------------------------------------------------------------------
# FFY0/AdaKV adaptive_snapkv/monkeypatch/snapkv_utils.py @ 1baceda55924419c444815f377b1a44e9a604402
# (AdaptiveSnapKVCluster.update_kv_gqa; window 32, kernel 7, maxpool, floor_alpha 0.2 as in
# experiments/LongBench/GQA_eval_longbench.sh at the same commit).
def upstream_adakv_kept(q, k, budget, window, kernel, alpha):
    hq, h, n = q.shape[1], k.shape[1], k.shape[2]
    kr = k.repeat_interleave(hq // h, dim=1)
    logits = q[..., -window:, :] @ kr.transpose(2, 3) / math.sqrt(q.shape[-1])
    logits[..., -window:, -window:] += torch.full((window, window), torch.finfo(logits.dtype).min).triu(1)
    mean = logits.softmax(-1)[..., :-window].mean(dim=-2)  # (1, Hq, N - w)
    mean = mean.view(1, h, hq // h, -1).mean(dim=-2)  # GQA support: mean over the group
    score = F.max_pool1d(mean, kernel_size=kernel, padding=kernel // 2, stride=1)[0]  # (H, N - w)
    base = budget - window
    floor = int(base * alpha)
    order = score.sort(dim=-1, descending=True, stable=True).indices
    owners = score.reshape(-1).sort(descending=True, stable=True).indices[: h * base] // score.shape[1]
    counts = torch.zeros(h, dtype=torch.long).scatter_add_(0, owners, torch.ones_like(owners))
    capacity = torch.round(counts * (1 - alpha) + floor).int()
    return [set(order[i, : capacity[i]].tolist()) | set(range(n - window, n)) for i in range(h)]


@pytest.mark.parametrize("seed", range(4))
def test_adakv_default_matches_upstream_with_a_starved_head(seed):
    method = AdaKV(budget=20, window=8)
    assert (AdaKV().window, AdaKV().pool_kernel, AdaKV().pooling, AdaKV().alpha) == (32, 7, "max", 0.2)
    q, k, v = _qkv(seed, 80, sharpness=(4.0, 0.05))  # KV head 1 attends almost uniformly: few entries earned
    layer = _prefill(method, q, k, v)
    ref = upstream_adakv_kept(q, k, 20, 8, 7, 0.2)
    assert _kept(layer) == ref
    assert len(ref[1]) - 8 < 12 <= len(ref[0]) - 8  # the allocation really moved entries between heads
    assert len(ref[1]) - 8 >= int(0.2 * 12)  # the floor binds for the starved head


# --- LOOK-M -------------------------------------------------------------------------------------
# SUSTechBruce/LOOK-M LLaVA-mix_merge_v1/llava/model/kv_token_merge/modify_llama.py
# @ 0b9c09df55e614cd4070997ab21dc04ca2c238b5 (TextAVGMergeKVCache_LayerWise.__call__), multi-head
# attention (as upstream). ``literal`` keeps upstream's src/index pairing of the scatter.
def upstream_lookm(q, k, v, visual, hh_size, recent, literal):
    h, n, d = k.shape[1], k.shape[2], k.shape[3]
    logits = q[0] @ k[0].transpose(1, 2) / math.sqrt(d)
    logits = logits + torch.full((n, n), torch.finfo(logits.dtype).min).triu(1)
    score = logits.softmax(-1).sum(dim=1)  # (H, N) accumulated over every prompt query
    bias = torch.zeros(h, n)
    bias[:, visual] = -65516
    bias[:, -recent:] = -65516
    score = score + bias
    top = score[:, :-recent].topk(hh_size, dim=-1).indices
    score = score.scatter(1, top, 0)
    score[:, -recent:] = 0
    keep = score >= 0  # evicted text has a positive score: it stays
    k_keep, v_keep = k[0][keep].view(h, -1, d), v[0][keep].view(h, -1, d)
    k_drop, v_drop = k[0][~keep].view(h, -1, d), v[0][~keep].view(h, -1, d)
    sim = F.normalize(k_drop, dim=-1) @ F.normalize(k_keep, dim=-1).transpose(1, 2)
    best, target = sim.max(dim=-1)
    chosen = best.mean(0) >= best.mean()
    index = target[:, chosen][..., None].expand(-1, -1, d)
    src_k = k_drop[:, : index.shape[1]] if literal else k_drop[:, chosen]
    src_v = v_drop[:, : index.shape[1]] if literal else v_drop[:, chosen]
    k_out = k_keep.scatter_reduce(1, index, src_k, reduce="mean", include_self=True)
    v_out = v_keep.scatter_reduce(1, index, src_v, reduce="mean", include_self=True)
    return keep, k_out, v_out


@pytest.mark.parametrize("literal", [False, True])
@pytest.mark.parametrize("text_tokens", [6, 30])
def test_lookm_default_matches_upstream(literal, text_tokens):
    n, window, budget = 90, 8, 24
    visual = torch.zeros(n, dtype=torch.bool)
    visual[text_tokens // 2 : n - text_tokens // 2 - window] = True  # text, image, text, then the window
    q, k, v = _qkv(11, n, hq=4, h=4)
    layer = _prefill(LookM(budget=budget, window=window, literal_scatter=literal), q, k, v, visual=visual)
    keep, k_ref, v_ref = upstream_lookm(q, k, v, visual, budget - window, window, literal)
    assert _kept(layer) == [set(row.nonzero().view(-1).tolist()) for row in keep]
    torch.testing.assert_close(layer.keys[0], k_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(layer.values[0], v_ref, atol=1e-6, rtol=1e-5)
    if text_tokens == 30:  # more text than the budget: all of it stays, the cache exceeds the budget
        assert layer.head_lengths()[0] == int((~visual).sum()) > budget


# --- H2O ----------------------------------------------------------------------------------------
# FMInference/H2O h2o_hf/utils_real_drop/modify_llama.py @ 0ee6a85948a774e9822478551718a76053359f68
# (H2OKVCache_LayerWise.__call__ and _update_hh_score), multi-head attention.
def test_h2o_matches_upstream_over_decode_steps():
    n, steps, size, d = 40, 12, 16, 16
    q, k, v = _qkv(3, n + steps, hq=2, h=2, d=d)
    layer = _prefill(H2O(budget=size), q[:, :, :n], k[:, :, :n], v[:, :, :n])
    hh, recent = size - size // 2, size // 2
    # Upstream: the prefill's column sums, then per step the new query's attention added; evict after each.
    logits = q[0, :, :n] @ k[0, :, :n].transpose(1, 2) / math.sqrt(d)
    score = (logits + torch.full((n, n), torch.finfo(logits.dtype).min).triu(1)).softmax(-1).sum(1)
    positions = torch.arange(n).expand(2, -1)

    def evict(score, positions):
        s = score.shape[1]
        top = score[:, : s - recent].topk(hh, dim=-1).indices.sort().values
        idx = torch.cat([top, torch.arange(s - recent, s).expand(2, -1)], dim=1)
        return score.gather(1, idx), positions.gather(1, idx)

    score, positions = evict(score, positions)
    assert _kept(layer) == [set(row.tolist()) for row in positions]
    for t in range(n, n + steps):
        keys, values = layer.update(k[:, :, t : t + 1], v[:, :, t : t + 1])
        layer.decode_attention(None, q[:, :, t : t + 1], keys, values, 1 / math.sqrt(d))
        layer.after_decode(None, q[:, :, t : t + 1], 1 / math.sqrt(d))
        positions = torch.cat([positions, torch.full((2, 1), t)], dim=1)
        cached = k[0].gather(1, positions[..., None].expand(-1, -1, d))
        probs = (q[0, :, t : t + 1] @ cached.transpose(1, 2) / math.sqrt(d)).softmax(-1)[:, 0]
        score = torch.cat([score, torch.zeros(2, 1)], dim=1) + probs
        score, positions = evict(score, positions)
        assert _kept(layer) == [set(row.tolist()) for row in positions], t
        torch.testing.assert_close(layer.scores, score, atol=1e-6, rtol=1e-5)


# --- StreamingLLM -------------------------------------------------------------------------------
# mit-han-lab/streaming-llm streaming_llm/kv_cache.py @ d729b3ffc947caca63fc0f7644b7468ca2d50881
# (StartRecentKVCache.__call__: the first start_size entries and the last recent_size).
def test_streamingllm_matches_upstream_over_decode_steps():
    n, steps, size, sink = 30, 10, 12, 4
    q, k, v = _qkv(4, n + steps)
    layer = _prefill(StreamingLLM(budget=size, n_sink=sink), q[:, :, :n], k[:, :, :n], v[:, :, :n])
    cached = list(range(n))

    def trim(cached):
        return cached if len(cached) <= size else cached[:sink] + cached[len(cached) - (size - sink) :]

    cached = trim(cached)
    assert _kept(layer) == [set(cached)] * 2
    for t in range(n, n + steps):
        layer.update(k[:, :, t : t + 1], v[:, :, t : t + 1])
        layer.after_decode(None, q[:, :, t : t + 1], 0.25)
        cached = trim(cached + [t])
        assert _kept(layer) == [set(cached)] * 2


# --- KIVI ---------------------------------------------------------------------------------------
# jy-yuan/KIVI models/llama_kivi.py @ 04eeae0657316ae2adafa97101408e433b588d52 (when: prefill
# split, key flush at R, value flush beyond R) and quant/new_pack.py
# @ 150def81efb680e793f1ad6bc49760ae9619e511 (how: quant_and_pack_kcache / quant_and_pack_vcache).
def upstream_fake_quant(x, group, bits, over_tokens):
    """Quantise-dequantise ``(1, H, T, D)``: per channel over ``group`` tokens, or per token over ``group`` channels."""
    b, h, t, d = x.shape
    data = x.view(b, h, t // group, group, d) if over_tokens else x.view(b, h, t, d // group, group)
    axis = -2 if over_tokens else -1
    mn, mx = data.amin(dim=axis, keepdim=True), data.amax(dim=axis, keepdim=True)
    scale = (mx - mn) / (2**bits - 1)
    codes = ((data - mn) / scale).clamp(0, 2**bits - 1).round()
    return (codes * scale + mn).view(b, h, t, d)


class UpstreamKIVI:
    def __init__(self, k, v, group, residual, bits):
        self.g, self.r, self.bits = group, residual, bits
        n = k.shape[2]
        split = n - n % residual  # keys: a multiple of R is quantised, n mod R stay
        self.kq = upstream_fake_quant(k[:, :, :split], group, bits, True)
        self.kf = k[:, :, split:]
        vsplit = max(0, n - residual)  # values: all but the last R
        self.vq = upstream_fake_quant(v[:, :, :vsplit], group, bits, False)
        self.vf = v[:, :, vsplit:]

    def step(self, k1, v1):
        """The K/V the new token attends to, then the flush (upstream order)."""
        self.kf = torch.cat([self.kf, k1], dim=2)
        self.vf = torch.cat([self.vf, v1], dim=2)
        seen = torch.cat([self.kq, self.kf], dim=2), torch.cat([self.vq, self.vf], dim=2)
        if self.kf.shape[2] == self.r:
            self.kq = torch.cat([self.kq, upstream_fake_quant(self.kf, self.g, self.bits, True)], dim=2)
            self.kf = self.kf[:, :, :0]
        if self.vf.shape[2] > self.r:
            self.vq = torch.cat([self.vq, upstream_fake_quant(self.vf[:, :, :1], self.g, self.bits, False)], dim=2)
            self.vf = self.vf[:, :, 1:]
        return seen


@pytest.mark.parametrize("bits", [2, 4])
def test_kivi_matches_upstream_over_decode_steps(bits):
    n, steps, d = 70, 40, 64  # head dim 64 with group 32: two value groups per token
    _, k, v = _qkv(6, n + steps, hq=2, h=2, d=d)
    method = KIVI(bits=bits, group_size=32, residual_length=32)
    layer = _prefill(method, None, k[:, :, :n], v[:, :, :n])
    ref = UpstreamKIVI(k[:, :, :n], v[:, :, :n], 32, 32, bits)
    assert (layer.keys.shape[2], layer.values.shape[2]) == (n % 32, 32) == (ref.kf.shape[2], ref.vf.shape[2])
    for t in range(n, n + steps):
        keys, values = layer.update(k[:, :, t : t + 1], v[:, :, t : t + 1])
        ref_keys, ref_values = ref.step(k[:, :, t : t + 1], v[:, :, t : t + 1])
        torch.testing.assert_close(keys, ref_keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(values, ref_values, atol=1e-5, rtol=1e-5)
        layer.after_decode(None, None, None)
        assert (layer.keys.shape[2], layer.values.shape[2]) == (ref.kf.shape[2], ref.vf.shape[2])
