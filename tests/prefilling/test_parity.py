"""Parity with the authors' code: each upstream rule re-implemented in a few lines (never pasted),
run as a plain layer loop on a tiny random Qwen2.5-VL, and compared with our default (and options).

The references share three helpers (LLM inputs, one layer, one layer's attention map); each then
follows its repository's forward: where it ranks, what it keeps, which positions it gives.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb, repeat_kv

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl, visual_mask
from reference_impls.common.visual_tokens import keep_count
from reference_impls.prefilling.divprune import DivPrune, max_min_select
from reference_impls.prefilling.fastv import FastV
from reference_impls.prefilling.pyramiddrop import PyramidDrop, stage_keep_count, stage_layers
from reference_impls.prefilling.sparsevlm import SparseVLM, dpc_knn_merge, sparse_layers
from reference_impls.prefilling.trim import TRIM, iqr_keep_fraction, question_relevance

torch.set_num_threads(1)
NUM_LAYERS = 4


@pytest.fixture(scope="module")
def model():
    return tiny_qwen25vl(seed=1, num_layers=NUM_LAYERS)


@pytest.fixture(scope="module")
def inputs(model):
    # 6 x 10 patches -> 15 merged visual tokens: not a multiple of 8, so int() and round() differ.
    return tiny_inputs(model, grids=((6, 10),), prompt_before=4, prompt_after=8, seed=5)


def _llm_inputs(model, inputs):
    """Hidden states entering layer 0, their M-RoPE positions (3, 1, N) and the visual mask (N,)."""
    with torch.no_grad():
        embeds = model.model(**inputs, output_hidden_states=True).hidden_states[0]
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    return embeds, positions, visual_mask(inputs["input_ids"][0], model.config)


def _layer(model, index, hidden, positions):
    """One decoder layer, causal, with rotary embeddings of ``positions``."""
    text = model.model.language_model
    n = hidden.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
    return text.layers[index](hidden, attention_mask=causal, position_embeddings=text.rotary_emb(hidden, positions))


def _attention_map(model, index, hidden, positions):
    """(N, N) causal attention probabilities of layer ``index`` on ``hidden``, mean over heads."""
    text = model.model.language_model
    layer, n = text.layers[index], hidden.shape[1]
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    q = attn.q_proj(x).view(1, n, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(1, n, -1, attn.head_dim).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, *text.rotary_emb(hidden, positions))
    scores = (q @ repeat_kv(k, attn.num_key_value_groups).transpose(-1, -2)) * attn.scaling
    scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return scores.float().softmax(-1).mean(1)[0]


def _logits(model, hidden):
    text = model.model.language_model
    return model.lm_head(text.norm(hidden))[:, -1]


def _ours(model, inputs, method):
    with method(model), torch.no_grad():
        return model(**inputs).logits[:, -1]


def _renumbered(n: int) -> torch.Tensor:
    return torch.arange(n).view(1, 1, -1).expand(3, 1, -1)


# ----------------------------------------------------------------------------------------------
# FastV. pkunlp-icler/FastV src/transformers/src/transformers/models/llama/modeling_llama.py
# @ eca14d61dc4706059f007de7fb0c75fecff5e00a (LlamaModel.forward, FASTV_INPLACE): at layer K the
# head-mean attention of layer K-1, last token's row, ranks the image tokens; the top
# ATTENTION_RANK stay (sorted), and position_ids = keep_indexs (original positions).


def reference_fastv(model, inputs, k_layer: int, rank: int):
    hidden, positions, visual = _llm_inputs(model, inputs)
    with torch.no_grad():
        for index in range(NUM_LAYERS):
            if index == k_layer - 1:
                last_row = _attention_map(model, index, hidden, positions)[-1]
            if index == k_layer:
                image = visual.nonzero()[:, 0]
                top = image[last_row[image].topk(rank).indices]
                keep = torch.cat([(~visual).nonzero()[:, 0], top]).sort().values
                hidden, positions = hidden[:, keep], positions[..., keep]
            hidden = _layer(model, index, hidden, positions)
        return _logits(model, hidden)


@pytest.mark.parametrize("k_layer", [1, 2, 3])
@pytest.mark.parametrize("budget", [0.3, 0.5])
def test_fastv_matches_upstream(model, inputs, k_layer, budget):
    rank = keep_count(15, budget)  # upstream takes an absolute count; ours rounds budget * N
    expected = reference_fastv(model, inputs, k_layer, rank)
    ours = _ours(model, inputs, FastV(budget=budget, layer=k_layer))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# DivPrune. vbdi/divprune LLaVA/llava/model/llava_arch.py DivPrune() (rule as carried verbatim by
# its derivatives; our index holds only the README @ 3a1227fd2d0326c1de8679b3ce4119ac1314f066):
# distance = 1 - cosine; the first pick is the column whose second-smallest distance (nearest other
# token) is largest; then repeatedly the column whose min distance to the picked rows is largest;
# int(round(ratio * n)) picks; applied to the projector outputs before the LLM.


def reference_divprune(features: torch.Tensor, ratio: float) -> torch.Tensor:
    unit = features / features.norm(dim=1, keepdim=True)
    distance = 1.0 - unit @ unit.T
    picks: list[int] = []
    for i in range(int(round(ratio * len(features)))):
        rows = distance if i == 0 else distance[torch.tensor(picks)]
        scores = rows.topk(2, dim=0, largest=False).values[1] if i == 0 else rows.min(0).values
        picks.append(int(scores.argmax()))
    return torch.tensor(picks)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.6])
def test_divprune_selection_matches_upstream(seed, ratio):
    features = torch.randn(40, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected = reference_divprune(features, ratio)
    assert max_min_select(features, keep_count(40, ratio)).tolist() == expected.tolist()


@pytest.mark.parametrize("positions", ["keep", "renumber"])
def test_divprune_matches_upstream(model, inputs, positions):
    hidden, original, visual = _llm_inputs(model, inputs)
    image = visual.nonzero()[:, 0]
    keep = torch.cat([(~visual).nonzero()[:, 0], image[reference_divprune(hidden[0, image], 0.3)]]).sort().values
    hidden = hidden[:, keep]
    # Upstream feeds the shorter sequence with default positions (0..n-1); "keep" is our default.
    positions_ids = _renumbered(len(keep)) if positions == "renumber" else original[..., keep]
    with torch.no_grad():
        for index in range(NUM_LAYERS):
            hidden = _layer(model, index, hidden, positions_ids)
        expected = _logits(model, hidden)
    ours = _ours(model, inputs, DivPrune(budget=0.3, positions=positions))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# PyramidDrop. Cooperx521/PyramidDrop llava/model/modeling_llama_pdrop.py @
# 3f89f94f899d3fea3c37922d0cd8db45e9884c08 (pdrop_forward, pdrop_rank_drop): after layer b-1 for b
# in layer_list, layer b's own norm/q/k on the hidden states, last instruction token's row, mean
# over heads, ranks the image tokens; stage s keeps int(N * ratio[s + 1]) of the N original ones
# (ratio = [1.0, 0.5, 0.25, 0.125], scripts/v1_5/pdrop_eval/*.sh); positions become 0..len-1.


def reference_pyramiddrop(model, inputs, layer_list: list[int], ratios: list[float], renumber: bool):
    hidden, positions, visual = _llm_inputs(model, inputs)
    n_image = int(visual.sum())
    with torch.no_grad():
        for index in range(NUM_LAYERS):
            if index in layer_list:
                stage = layer_list.index(index)
                last_row = _attention_map(model, index, hidden, positions)[-1]
                image = visual.nonzero()[:, 0]
                top = image[last_row[image].topk(int(n_image * ratios[stage + 1])).indices]
                keep = torch.cat([(~visual).nonzero()[:, 0], top]).sort().values
                hidden, visual = hidden[:, keep], visual[keep]
                positions = _renumbered(len(keep)) if renumber else positions[..., keep]
            hidden = _layer(model, index, hidden, positions)
        return _logits(model, hidden)


def test_pyramiddrop_counts_match_upstream():
    ratios = [0.5, 0.25, 0.125]  # upstream's explicit list; ours is budget ** (s / S)
    for n in range(8, 2001):
        assert [stage_keep_count(n, 0.125 ** (s / 3)) for s in (1, 2, 3)] == [int(n * r) for r in ratios], n


@pytest.mark.parametrize("positions", ["keep", "renumber"])
def test_pyramiddrop_matches_upstream(model, inputs, positions):
    layer_list = stage_layers((0.25, 0.5, 0.75), NUM_LAYERS)  # [1, 2, 3]
    ratios = [1.0, 0.5, 0.25, 0.125]
    expected = reference_pyramiddrop(model, inputs, layer_list, ratios, renumber=positions == "renumber")
    ours = _ours(model, inputs, PyramidDrop(budget=0.125, positions=positions))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


def test_defaults():
    # Upstream's settings, except the positions (a documented deviation, see the cards).
    assert PyramidDrop().budget == 0.125 and PyramidDrop().boundaries_frac == (8 / 32, 16 / 32, 24 / 32)
    assert SparseVLM().recycle and SparseVLM().layers_frac == (2 / 32, 6 / 32, 15 / 32)
    assert PyramidDrop().positions == "keep" and SparseVLM().positions == "keep" and DivPrune().positions == "keep"


# ----------------------------------------------------------------------------------------------
# SparseVLM v1. Gumpest/SparseVLMs llava/model/language_model/modelling_sparse_llama.py and
# score.py @ 14cb5a9c9251e1941c3d912b703ccd477a41cb53, utils.py @ 8435974a1577b0223e23810fda24a65b667022ca:
# raters once from the input embeddings (softmax over text of V T^T, mean over visual, > mean; text =
# everything after the image); at a pruning layer the layer's OWN attention (rows = raters, image
# columns, mean over raters) ranks the image tokens and the layer's OUTPUT keeps the top k; the
# int(0.3 m) + 1 best pruned tokens form int(r / 10) + 1 DPC-kNN clusters, merged by their mean.


def reference_cluster_and_merge(x: torch.Tensor, clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """utils.py cluster_and_merge, without its 1e-6 random density noise."""
    distance = (x[:, None] - x[None]).norm(dim=-1) / x.shape[1] ** 0.5
    density = (-(distance.topk(clusters, dim=-1, largest=False).values ** 2).mean(-1)).exp()
    higher = (density[None, :] > density[:, None]).to(x.dtype)
    parent = (distance * higher + distance.max() * (1 - higher)).min(-1).values
    centres = (parent * density).topk(clusters).indices
    owner = distance[centres].argmin(0)
    owner[centres] = torch.arange(clusters)
    total = torch.zeros(clusters, dtype=x.dtype).index_add(0, owner, torch.ones(len(x), dtype=x.dtype)) + 1e-6
    merged = torch.zeros(clusters, x.shape[1], dtype=x.dtype).index_add(0, owner, x / total[owner][:, None])
    return centres, merged


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("m,clusters", [(12, 2), (40, 4), (7, 1)])
def test_dpc_knn_merge_matches_upstream(seed, m, clusters):
    x = torch.randn(m, 24, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    centres, merged = dpc_knn_merge(x, clusters)
    ref_centres, ref_merged = reference_cluster_and_merge(x, clusters)
    assert centres.tolist() == ref_centres.tolist()
    torch.testing.assert_close(merged, ref_merged)


def reference_sparsevlm(model, inputs, prune_layers: list[int], keeps: list[int], renumber: bool, recycle: bool):
    hidden, positions, visual = _llm_inputs(model, inputs)
    ids = inputs["input_ids"][0]
    markers = (ids == model.config.vision_start_token_id) | (ids == model.config.vision_end_token_id)
    after_image = torch.arange(len(ids)) > visual.nonzero()[0, 0]
    text = (~visual & ~markers & after_image).nonzero()[:, 0]  # LLaVA: every token after the image block
    relevance = (hidden[0, visual] @ hidden[0, text].T).softmax(1).mean(0)
    raters, original = text[relevance > relevance.mean()], torch.arange(len(ids))
    with torch.no_grad():
        for index in range(NUM_LAYERS):
            if index in prune_layers:
                probs = _attention_map(model, index, hidden, positions)  # the layer's own attention
            hidden = _layer(model, index, hidden, positions)
            if index not in prune_layers:
                continue
            image = visual.nonzero()[:, 0]
            k = keeps[prune_layers.index(index)]
            if k >= len(image):
                continue
            scores = probs[torch.searchsorted(original, raters)][:, image].mean(0)
            top = scores.topk(k).indices
            keep = ~visual
            keep[image[top]] = True
            if recycle:
                pruned = torch.ones(len(image), dtype=torch.bool)
                pruned[top] = False
                best = scores[pruned].topk(int(int(pruned.sum()) * 0.3) + 1).indices
                recycled = image[pruned][best]
                centres, merged = reference_cluster_and_merge(hidden[0, recycled], int(len(recycled) / 10) + 1)
                # Documented deviation: a cluster token takes its centre's slot (upstream appends it
                # after the kept image tokens).
                hidden = hidden.clone()
                hidden[0, recycled[centres]] = merged
                keep[recycled[centres]] = True
            keep = keep.nonzero()[:, 0]
            hidden, visual, original = hidden[:, keep], visual[keep], original[keep]
            positions = _renumbered(len(keep)) if renumber else positions[..., keep]
        return _logits(model, hidden)


@pytest.mark.parametrize("positions", ["keep", "renumber"])
@pytest.mark.parametrize("recycle", [True, False])
@pytest.mark.parametrize("budget", [0.1, 0.4])
def test_sparsevlm_matches_upstream(model, inputs, positions, recycle, budget):
    method = SparseVLM(budget=budget, recycle=recycle, positions=positions)
    layers = sparse_layers(method.layers_frac, NUM_LAYERS)  # [0, 1, 2]: each prunes its own output
    keeps = [keep_count(15, budget ** (s / len(layers))) for s in range(1, len(layers) + 1)]  # our schedule
    expected = reference_sparsevlm(model, inputs, layers, keeps, renumber=positions == "renumber", recycle=recycle)
    torch.testing.assert_close(_ours(model, inputs, method), expected, atol=1e-5, rtol=1e-4)


def test_sparsevlm_default_matches_upstream(model, inputs):
    layers = sparse_layers(SparseVLM().layers_frac, NUM_LAYERS)
    keeps = [keep_count(15, 0.25 ** (s / len(layers))) for s in range(1, len(layers) + 1)]
    expected = reference_sparsevlm(model, inputs, layers, keeps, renumber=False, recycle=True)
    torch.testing.assert_close(_ours(model, inputs, SparseVLM(budget=0.25)), expected, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# TRIM. FreedomIntelligence/TRIM llava/model/multimodal_encoder/clip_encoder.py
# @ 988896531d65ca18a54347d37566b6e750d85276 (CLIPVisionTower.token_reduction, TextSim): similarity =
# projected patches @ the text embedding, negated, softmaxed over the patches; k == -1 takes the
# share of scores above Q3 + 1.5 IQR (numpy.percentile); int(N * k) tokens by topk. Here the
# "projected patches" are the LLM inputs and the text embedding the mean of the question's inputs.


def reference_trim_scores(patches: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    similarity = torch.einsum("bnd,bd->bn", patches, text)
    return torch.nn.functional.softmax(-similarity, dim=-1)


def reference_iqr_ratio(scores: torch.Tensor) -> float:
    values = scores.double().numpy().ravel()
    q1, q3 = np.percentile(values, 25), np.percentile(values, 75)
    return len(np.where(values > q3 + 1.5 * (q3 - q1))[0]) / len(values)


@pytest.mark.parametrize("seed", range(4))
def test_trim_scores_and_adaptive_count_match_upstream(seed):
    generator = torch.Generator().manual_seed(seed)
    patches = torch.randn(1, 60, 16, generator=generator, dtype=torch.float64) * (1 + seed)
    patches[0, :5] += 3.0  # a few outliers, so that the IQR rule keeps something
    text = torch.randn(1, 16, generator=generator, dtype=torch.float64)
    expected = reference_trim_scores(patches, text)[0]
    ours = question_relevance(patches[0], text[0])
    torch.testing.assert_close(ours.double(), expected, atol=1e-6, rtol=1e-5)
    assert iqr_keep_fraction(ours) == reference_iqr_ratio(expected)
    flipped = question_relevance(patches[0], text[0], negate=False)
    assert flipped.argmax() == expected.argmin()


def reference_trim(model, inputs, ratio: float, negate: bool = True):
    hidden, positions, visual = _llm_inputs(model, inputs)
    ids = inputs["input_ids"][0]
    image = visual.nonzero()[:, 0]
    after = torch.arange(len(ids)) > image.max()
    markers = (ids == model.config.vision_start_token_id) | (ids == model.config.vision_end_token_id)
    text = hidden[0, after & ~markers].mean(0)
    scores = reference_trim_scores(hidden[:, image], text[None] if negate else -text[None])[0]
    top = image[scores.topk(keep_count(len(image), ratio)).indices]  # upstream floors, we round: 15 * 0.3 -> 4 both
    keep = torch.cat([(~visual).nonzero()[:, 0], top]).sort().values
    hidden, positions = hidden[:, keep], positions[..., keep]
    with torch.no_grad():
        for index in range(NUM_LAYERS):
            hidden = _layer(model, index, hidden, positions)
    return _logits(model, hidden)


@pytest.mark.parametrize("negate", [True, False])
def test_trim_matches_upstream(model, inputs, negate):
    expected = reference_trim(model, inputs, 0.3, negate)
    ours = _ours(model, inputs, TRIM(budget=0.3, negate=negate))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Renumbered decoding: upstream (PyramidDrop's decode branch, SparseVLM's get_usable_length) places
# a new token of a pruned layer right after the tokens that layer holds.


def test_renumbered_decode_position_follows_the_kept_tokens(model, inputs):
    text = model.model.language_model
    seen = []
    handle = text.layers[NUM_LAYERS - 1].self_attn.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_embeddings"]), with_kwargs=True
    )
    method = PyramidDrop(budget=0.125, positions="renumber")
    try:
        with method(model), torch.no_grad():
            model.generate(**inputs, max_new_tokens=3, do_sample=False, min_new_tokens=3)
    finally:
        handle.remove()
    n_kept = inputs["input_ids"].shape[1] - 15 + method.stats["visual_kept"]
    for step, (cos, sin) in enumerate(seen[1:]):
        want_cos, want_sin = text.rotary_emb(cos, torch.full((3, 1, 1), n_kept + step))
        torch.testing.assert_close((cos, sin), (want_cos, want_sin))
