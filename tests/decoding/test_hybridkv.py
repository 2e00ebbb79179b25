"""HybridKV: typing, text prior, chunks, retrieval, memory modes and byte accounting."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl
from reference_impls.decoding.cache import PromptLayout, prompt_layout
from reference_impls.decoding.hybridkv import HybridKV, HybridKVLayer, calibrate_head_types
from reference_impls.decoding.hybridkv.plan import (
    chunk_upper_bounds,
    load_head_types,
    make_chunks,
    reserved_positions,
    select_chunks,
    select_chunks_batched,
    static_order,
    text_centric_attention,
    type_heads,
)

SMALL = dict(window=6, n_sink=2, chunk_size=4, window_min=4)
PACKAGE = Path(__file__).resolve().parents[2] / "reference_impls" / "decoding" / "hybridkv"


def _run(model, inputs, steps=4, **kwargs):
    method = HybridKV(**{**SMALL, **kwargs})
    with method(model):
        out = model.generate(
            **inputs, max_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    return method.cache, out


# --- typing ----------------------------------------------------------------------------------
def _typed_model():
    """Layer 0: KV head 0 attends to text tokens, KV head 1 to image tokens (by construction)."""
    model = tiny_qwen25vl(seed=0, num_layers=2)
    attn = model.model.language_model.layers[0].self_attn
    d = attn.head_dim
    with torch.no_grad():
        for p in (attn.q_proj.weight, attn.q_proj.bias, attn.k_proj.weight, attn.k_proj.bias):
            p.zero_()
        # Dimension 3 pairs with 3 + d/2, the slowest RoPE frequency: rotation is negligible here.
        attn.q_proj.bias.view(-1, d)[:, 3] = 10.0
        attn.k_proj.weight[0 * d + 3, 0] = 3.0  # head 0 reads the "text" feature
        attn.k_proj.weight[1 * d + 3, 1] = 3.0  # head 1 reads the "image" feature
    return model


def _typed_inputs(model, seed):
    inputs = tiny_inputs(model, grids=((4, 4), (4, 4)), prompt_before=8, prompt_after=10, seed=seed)
    inputs.pop("pixel_values")
    embeds = model.get_input_embeddings()(inputs["input_ids"]).detach().clone()
    visual = inputs["mm_token_type_ids"][0].bool()
    embeds[0, :, :2] = 0.0
    embeds[0, ~visual, 0] = 4.0
    embeds[0, visual, 1] = 4.0
    return {**inputs, "inputs_embeds": embeds}


def test_typing_finds_text_and_visual_heads(tmp_path):
    model = _typed_model()
    samples = [_typed_inputs(model, seed) for seed in (0, 1)]
    method = HybridKV(budget=0.5, **SMALL)
    tca, static = calibrate_head_types(model, samples, method, tmp_path / "types.json", model_id="typed-tiny")
    assert tca[0, 0] > 0.95 and tca[0, 1] < 0.05, tca
    assert static[0].tolist() == [True, False]
    assert torch.equal(load_head_types(tmp_path / "types.json", *tca.shape), static)
    # The offline mask drives the cache.
    offline = HybridKV(budget=0.5, types_source="offline", types_path=str(tmp_path / "types.json"), **SMALL)
    with offline(model):
        cache = offline.make_cache(model, samples[0]["input_ids"])
        model(**samples[0], cache=cache, use_cache=True)
    assert torch.equal(cache.plan["static"], static)
    assert cache.layers[0].static == [True, False] and 1 in cache.layers[0].pool and 0 not in cache.layers[0].pool


def test_calibration_accepts_a_method_that_has_already_run(model, inputs):
    """Run state (the last cache, its byte report) is not configuration: copies and comparisons ignore it."""
    method = HybridKV(budget=0.5, **SMALL)
    with method(model):
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert method.cache is not None and method.stats is not None
    fresh = HybridKV(budget=0.5, **SMALL)
    assert method == fresh and repr(method) == repr(fresh)
    copy = dataclasses.replace(method, typing="rank")
    assert copy.cache is None and copy.stats is None and copy.typing == "rank" and copy.window == SMALL["window"]
    tca, static = calibrate_head_types(model, [inputs], method)  # failed with "unexpected keyword argument 'cache'"
    tca_fresh, static_fresh = calibrate_head_types(model, [inputs], fresh)
    assert torch.equal(tca, tca_fresh) and torch.equal(static, static_fresh)


def test_tca_and_typing_modes_by_hand():
    layout = PromptLayout(
        visual=torch.tensor([0, 0, 1, 1, 0, 0], dtype=torch.bool), item=torch.tensor([-1, -1, 0, 0, -1, -1])
    )
    pos = reserved_positions(layout, n_sink=1, window=2, window_min=1)
    assert pos.window.tolist() == [False] * 4 + [True, True] and pos.r == 3
    attn = torch.zeros(1, 2, 6)
    attn[0, 0, :5] = torch.tensor([0.5, 0.1, 0.2, 0.1, 0.1])
    attn[0, 1, :6] = torch.tensor([0.2, 0.2, 0.2, 0.0, 0.2, 0.2])
    tca = text_centric_attention(attn, torch.tensor([4, 5]), pos)
    assert torch.allclose(tca, torch.tensor([(0.2 / 0.5 + 0.6 / 0.8) / 2]))
    tcas = torch.tensor([[0.9, 0.2], [0.5, 0.4]])
    assert type_heads(tcas, "threshold", tau=0.5).tolist() == [[True, False], [True, False]]
    assert type_heads(tcas, "rank", rho=0.25).tolist() == [[True, False], [True, True]]
    assert not type_heads(tcas, "all_dynamic").any() and type_heads(tcas, "all_static").all()


# --- static heads: text prior -------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_static_order_is_text_prior(seed):
    g = torch.Generator().manual_seed(seed)
    visual = torch.rand(40, generator=g) < 0.6
    layout = PromptLayout(visual=visual, item=torch.where(visual, 0, -1))
    pos = reserved_positions(layout, n_sink=3, window=5, window_min=1)
    scores = torch.rand(40, generator=g)
    order = static_order(scores, pos)
    assert sorted(order.tolist()) == list(range(40))
    for budget in range(pos.r, 41):
        kept = order[:budget]
        assert set(pos.reserved.nonzero().view(-1).tolist()) <= set(kept.tolist())
        kept_text = [p for p in kept.tolist() if pos.text[p] and not pos.reserved[p]]
        if any(not pos.text[p] for p in kept.tolist() if not pos.reserved[p]):
            assert len(kept_text) == int((pos.text & pos.candidates).sum())  # visual only once all text fits
        cand_text = (pos.text & pos.candidates).nonzero().view(-1)
        if kept_text:
            dropped = [p for p in cand_text.tolist() if p not in kept_text]
            assert all(scores[p] <= min(scores[q] for q in kept_text) for p in dropped)


# --- dynamic heads: chunks and retrieval -------------------------------------------------------
def test_chunks_never_cross_items(model):
    inputs = tiny_inputs(model, grids=((4, 4), (8, 4), (4, 4)), prompt_before=3, prompt_after=9)
    layout = prompt_layout(model.config, inputs["input_ids"])
    assert int(layout.item.max()) == 2  # three images, three items
    pos = reserved_positions(layout, n_sink=2, window=6)
    pool = (~pos.reserved).nonzero().view(-1)
    for gap in (True, False):
        starts, lengths = make_chunks(pool, pos.segment, 3, break_on_gap=gap)
        assert int(lengths.sum()) == pool.numel() and int(lengths.max()) <= 3
        for s, n in zip(starts.tolist(), lengths.tolist()):
            members = pool[s : s + n]
            assert len(set(pos.segment[members].tolist())) == 1


def test_video_and_image_are_separate_items(model):
    cfg = model.config
    ids = torch.tensor([[7, cfg.vision_start_token_id] + [cfg.image_token_id] * 4 + [cfg.video_token_id] * 4 + [8, 9]])
    layout = prompt_layout(cfg, ids)
    assert layout.item.tolist() == [-1, -1, 0, 0, 0, 0, 1, 1, 1, 1, -1, -1]
    assert torch.equal(
        prompt_layout(cfg, mm_token_type_ids=(ids == cfg.image_token_id) + 2 * (ids == cfg.video_token_id)).item,
        layout.item,
    )


@pytest.mark.parametrize("seed", range(4))
def test_chunk_bounds_and_greedy_selection(seed):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(37, 8, generator=g)
    starts, lengths = make_chunks(torch.arange(37), torch.zeros(37, dtype=torch.long), 5)
    cid = torch.repeat_interleave(torch.arange(len(starts)), lengths.long())
    kmin = torch.stack([keys[cid == c].min(0).values for c in range(len(starts))])
    kmax = torch.stack([keys[cid == c].max(0).values for c in range(len(starts))])
    query = torch.randn(2, 1, 8, generator=g)
    bounds = chunk_upper_bounds(query, kmin, kmax)
    dots = (query.reshape(2, 8) @ keys.T).max(0).values  # (37,)
    assert bool((bounds[cid] >= dots - 1e-5).all())  # upper bound for every key
    lengths = torch.tensor([5, 5, 2, 5, 1, 5, 5, 4, 5], dtype=torch.int32)[: len(starts)]
    for room in (0, 3, 7, 12, 40):
        chosen, left = [], room
        for c in torch.sort(bounds, descending=True, stable=True).indices.tolist():  # brute force
            if int(lengths[c]) <= left:
                chosen.append(c)
                left -= int(lengths[c])
        assert select_chunks(bounds, lengths, room).tolist() == chosen
        padded = torch.cat([lengths, torch.zeros(3, dtype=torch.int32)])
        for walk in (False, True):  # the vectorised fill and the plain walk
            rows, ids = select_chunks_batched(
                torch.stack([torch.cat([bounds, torch.full((3,), float("-inf"))])] * 2),
                torch.stack([padded, padded]),
                torch.tensor([room, room // 2]),
                walk=walk,
            )
            assert ids[rows == 0].tolist() == chosen  # in selection order
            assert ids[rows == 1].tolist() == select_chunks(bounds, lengths, room // 2).tolist()


def test_retrieval_picks_the_needle_chunk():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(64, 16, generator=g) * 0.3
    query = torch.randn(4, 1, 16, generator=g)
    needle = 41
    keys[needle] = 3.0 * query.mean(0)[0]
    starts, lengths = make_chunks(torch.arange(64), torch.zeros(64, dtype=torch.long), 8)
    cid = torch.repeat_interleave(torch.arange(len(starts)), lengths.long())
    kmin = torch.stack([keys[cid == c].min(0).values for c in range(len(starts))])
    kmax = torch.stack([keys[cid == c].max(0).values for c in range(len(starts))])
    chosen = select_chunks(chunk_upper_bounds(query, kmin, kmax), lengths, 8)
    assert chosen.tolist() == [int(cid[needle])]


def test_retrieval_with_room_for_everything_is_exact(model, inputs):
    ref = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    cache, out = _run(model, inputs, budget=1.0, typing="all_dynamic")
    assert all(len(layer.pool) == 2 for layer in cache.layers)  # the retrieval path really ran
    assert all(
        layer.last_retrieved[h].numel() == layer.pool[h]["positions"].numel()
        for layer in cache.layers
        for h in layer.pool
    )
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(ref.logits), atol=1e-5, rtol=0)


def test_dynamic_heads_retrieve_within_budget(model, inputs):
    cache, _ = _run(model, inputs, budget=0.3, typing="all_dynamic")
    for layer in cache.layers:
        for h, pool in layer.pool.items():
            retrieved = layer.last_retrieved[h]
            assert retrieved.numel() <= layer.budgets[h] - layer.resident_prompt(h)
            assert set(retrieved.tolist()) <= set(pool["positions"].tolist())
            assert not set(retrieved.tolist()) & set(layer.head_pos[h].tolist())  # pool and resident disjoint


_DECODE = HybridKVLayer.decode_attention


def _decode_trace(model, inputs, reference: bool, monkeypatch, steps: int, **kwargs):
    """Tokens, every decode-step attention output, the last retrieval, the byte report and every head's positions."""
    outputs = []
    decode = _DECODE

    def spy(self, module, query, key, value, scaling):
        out = decode(self, module, query, key, value, scaling)
        outputs.append((self.layer_idx, out.detach().clone()))
        return out

    monkeypatch.setattr(HybridKVLayer, "_reference_path", reference)
    monkeypatch.setattr(HybridKVLayer, "decode_attention", spy)
    cache, out = _run(model, inputs, steps=steps, **kwargs)
    retrieved = {(l, h): p.tolist() for l, layer in enumerate(cache.layers) for h, p in layer.last_retrieved.items()}
    positions = [[layer.head_positions(h).tolist() for h in range(len(layer.head_lengths()))] for layer in cache.layers]
    return out.sequences, outputs, retrieved, cache.byte_report(), positions


@pytest.mark.parametrize(
    "kwargs,walk_max",
    [
        (dict(budget=0.3, typing="all_dynamic"), 4096),
        (dict(budget=0.3, typing="all_dynamic"), 0),  # selection and gather plan as tensor operations
        (dict(budget=0.2), 4096),
        (dict(budget=0.3, static_max_generated=2), 4096),
    ],
    ids=["dynamic", "dynamic-tensor-ops", "threshold", "trimmed"],
)
def test_packed_decode_equals_the_reference_path(model, inputs, monkeypatch, kwargs, walk_max):
    """The one-token packed path (preallocated buffers, re-packed when full) computes what the
    straightforward path computes: same tokens, attention outputs, retrievals and bytes."""
    import reference_impls.decoding.hybridkv.layer as layer_module
    import reference_impls.decoding.hybridkv.plan as plan_module

    monkeypatch.setattr(layer_module, "_GROW", 2)  # several re-packs within the run
    monkeypatch.setattr(plan_module, "WALK_MAX", walk_max)
    fast = _decode_trace(model, inputs, False, monkeypatch, 9, **kwargs)
    ref = _decode_trace(model, inputs, True, monkeypatch, 9, **kwargs)
    assert torch.equal(fast[0], ref[0])
    n_layers = len(model.model.language_model.layers)
    assert [l for l, _ in fast[1]] == [l for l, _ in ref[1]] and len(fast[1]) == 8 * n_layers
    for (_, a), (_, b) in zip(fast[1], ref[1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert fast[2] == ref[2] and fast[3] == ref[3] and fast[4] == ref[4]
    if kwargs.get("typing") == "all_dynamic":
        assert any(fast[2].values())  # the retrieval path really ran


# --- budgets, reserved entries, GQA, bytes --------------------------------------------------------
@pytest.mark.parametrize("typing", ["threshold", "rank", "all_static", "all_dynamic"])
def test_budgets_reserved_and_gqa(model, inputs, typing):
    cache, _ = _run(model, inputs, budget=0.25, typing=typing)
    plan, pos = cache.plan, cache.positions
    cfg = model.config.text_config
    assert plan["budgets"].shape == (cfg.num_hidden_layers, cfg.num_key_value_heads)  # per KV head
    assert int(plan["budgets"].sum()) == plan["b"] * cfg.num_hidden_layers * cfg.num_key_value_heads
    reserved = set(pos.reserved.nonzero().view(-1).tolist())
    for l, layer in enumerate(cache.layers):
        for h in range(cfg.num_key_value_heads):
            assert reserved <= set(layer.head_positions(h).tolist())
            if layer.static[h]:
                assert layer.resident_prompt(h) == int(plan["budgets"][l, h])


def test_byte_accounting_and_memory_modes(model, inputs):
    reports = {}
    for mode in ("offload", "resident_pool"):
        cache, _ = _run(model, inputs, budget=0.3, typing="all_dynamic", memory_mode=mode, pool_cap=2)
        d = cache.layers[0].head_keys[0].shape[1]
        entry = 2 * d * 4 + 4  # K + V float32 + int32 position
        resident = offloaded = 0
        for layer in cache.layers:
            resident += sum(layer.head_lengths()) * entry
            n_dynamic, c_max = layer.chunk_len.shape  # chunk metadata, padded to the longest head
            resident += n_dynamic * c_max * (2 * d * 4 + 2 * 4)  # kmin, kmax + int32 start, length
            for pool in layer.pool.values():
                n_pool = pool["positions"].numel()
                if mode == "offload":
                    offloaded += n_pool * entry
                else:
                    resident += n_pool * entry
        assert cache.resident_bytes() == resident and cache.offloaded_bytes() == offloaded
        reports[mode] = cache.byte_report()
    assert reports["offload"]["resident_bytes"] < reports["resident_pool"]["resident_bytes"]
    assert reports["resident_pool"]["offloaded_bytes"] == 0 < reports["offload"]["offloaded_bytes"]
    assert reports["offload"]["transient_bytes"] > 0


def test_resident_pool_cap(model, inputs):
    cache, _ = _run(model, inputs, budget=0.2, typing="all_dynamic", memory_mode="resident_pool", pool_cap=1)
    for layer in cache.layers:
        for h, pool in layer.pool.items():
            assert pool["positions"].numel() <= layer.budgets[h]


def test_no_visual_tokens_means_all_static(model):
    ids = torch.randint(7, 99, (1, 40), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": torch.zeros_like(ids)}
    cache, out = _run(model, inputs, budget=0.3, typing="all_dynamic")
    assert bool(cache.plan["static"].all()) and not any(layer.pool for layer in cache.layers)


def test_refusals(model, inputs):
    with pytest.raises(ValueError, match="input_ids"):
        HybridKV().make_cache(model)
    with pytest.raises(ValueError, match="memory_mode must be one of"):
        HybridKV(memory_mode="resident")
    with pytest.raises(ValueError, match="typing must be one of"):
        HybridKV(typing="thresh")
    with pytest.raises(ValueError, match="types_path"):
        HybridKV(types_source="offline")
    with pytest.raises(ValueError, match="infeasible"):
        _run(model, inputs, budget=3)  # absolute budget below the reserved entries


def _oracle_retrieval(query, pool_keys, pool_positions, segment, chunk_size, room):
    """Brute force: chunks (consecutive, one segment, <= chunk_size), Quest bound per chunk from its keys,
    then the greedy fill by bound. Returns the retrieved prompt positions."""
    chunks, positions = [], pool_positions.tolist()
    for i, p in enumerate(positions):
        last = positions[chunks[-1][-1]] if chunks else None
        if last is not None and p == last + 1 and segment[p] == segment[last] and len(chunks[-1]) < chunk_size:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    q = query.double()  # (G, D)
    bounds = []
    for rows in chunks:
        lo, hi = pool_keys[rows].double().min(0).values, pool_keys[rows].double().max(0).values
        bounds.append(float(torch.maximum(q * lo, q * hi).sum(-1).max()))  # max over the group's query heads
    chosen = []
    for c in sorted(range(len(chunks)), key=lambda c: -bounds[c]):
        if len(chunks[c]) <= room:
            chosen += chunks[c]
            room -= len(chunks[c])
    return sorted(pool_positions[chosen].tolist())


def test_dynamic_heads_retrieve_the_top_bound_chunks(model, inputs, monkeypatch):
    """The layer's chunk choice equals a brute-force top-bound fill over its own pool (catches kmin/kmax swaps)."""
    queries = {}
    select = HybridKVLayer._select

    def spy(self, query):
        queries[self.layer_idx] = query.detach().clone()
        return select(self, query)

    monkeypatch.setattr(HybridKVLayer, "_select", spy)
    cache, _ = _run(model, inputs, budget=0.3, typing="all_dynamic")
    partial = 0
    for l, layer in enumerate(cache.layers):
        query = queries[l][0, :, -1]  # (Hq, D), the last decode step's query
        groups = query.shape[0] // len(layer.head_keys)
        for h, pool in layer.pool.items():
            room = layer.budgets[h] - int((layer.head_pos[h] < layer.prompt_length).sum())
            expected = _oracle_retrieval(
                query[h * groups : (h + 1) * groups],
                pool["keys"],
                pool["positions"],
                cache.positions.segment,
                SMALL["chunk_size"],
                room,
            )
            assert sorted(layer.last_retrieved[h].tolist()) == expected, (l, h)
            partial += 0 < len(expected) < pool["positions"].numel()
    assert partial >= 3  # the choice matters: heads retrieve some, not all, of their pool


# --- the design README the code cites ------------------------------------------------------------
def _slug(heading: str) -> str:
    """Heading id as GitHub and Python-Markdown's toc both make it for ASCII headings."""
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower())


def test_section_marks_and_anchors_resolve_in_the_readme():
    outside = ("shared" + "/design", "../" + "shared")  # design notes outside the repository (spelt apart on purpose)
    readme = (PACKAGE / "README.md").read_text(encoding="utf-8")
    headings = re.findall(r"^#{2,4} (.+)$", readme, flags=re.M)
    numbers = {h.split(" ", 1)[0].rstrip(".") for h in headings if h[0].isdigit()}
    slugs = {_slug(h) for h in headings}
    assert len(slugs) == len(headings)  # unique ids, so every anchor names one section
    for anchor in re.findall(r"\]\(#([^)]+)\)", readme):
        assert anchor in slugs, anchor
    for path in sorted(PACKAGE.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert not any(name in text for name in outside), path.name
        for mark in re.findall(r"§(\d+(?:\.\d+)?)", text):
            assert mark in numbers, f"{path.name}: §{mark} is not a section of README.md"
    assert not any(name in readme for name in outside)
