"""Prefilling-stage visual-token pruning (FastV, PyramidDrop, SparseVLM, DivPrune) on tiny Qwen2.5-VL."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl, visual_mask
from reference_impls.common.visual_tokens import keep_count
from reference_impls.prefilling._layer_drop import DropMethod, SingleLayerDrop, _LogicalLayer, keep_top_visual
from reference_impls.prefilling.divprune import DivPrune, max_min_select
from reference_impls.prefilling.fastv import FastV
from reference_impls.prefilling.pyramiddrop import PyramidDrop, stage_layers
from reference_impls.prefilling.sparsevlm import SparseVLM, rater_scores, sparse_layers, text_raters
from reference_impls.prefilling.trim import TRIM, question_relevance, question_tokens
from reference_impls.prefilling.vision_selector import VisionSelector
from reference_impls.registry import all_methods

torch.set_num_threads(1)

NUM_LAYERS = 4
PREFILL_METHODS = [spec for spec in all_methods("visual-token") if spec.module.startswith("reference_impls.prefilling")]
KEEPS_EVERY_TOKEN = ("sparse-attention", "computation-skipping")  # change computation, not the tokens
TOKEN_DROPPING = [spec for spec in PREFILL_METHODS if spec.family not in KEEPS_EVERY_TOKEN]
# Configurations that prune at different depths, including before the LLM (DivPrune layer 0).
CONFIGS = {
    "fastv": lambda b: FastV(budget=b, layer=2),
    "pyramiddrop": lambda b: PyramidDrop(budget=b),
    "sparsevlm": lambda b: SparseVLM(budget=b),
    "sparsevlm-norecycle": lambda b: SparseVLM(budget=b, recycle=False),
    "pyramiddrop-renumber": lambda b: PyramidDrop(budget=b, positions="renumber"),
    "divprune": lambda b: DivPrune(budget=b),
    "divprune-layer2": lambda b: DivPrune(budget=b, layer=2),
    "trim": lambda b: TRIM(budget=b),
    "trim-similar-layer2": lambda b: TRIM(budget=b, negate=False, layer=2),
    "vision-selector": lambda b: VisionSelector(budget=b, checkpoint=None),
}


@pytest.fixture(scope="module")
def model():
    return tiny_qwen25vl(seed=1, num_layers=NUM_LAYERS)


@pytest.fixture(scope="module")
def two_images(model):
    return tiny_inputs(model, grids=((8, 8), (4, 8)), prompt_before=4, prompt_after=5, seed=3)


def test_every_prefilling_method_is_covered():
    assert {spec.name for spec in TOKEN_DROPPING} == {
        "fastv",
        "pyramiddrop",
        "sparsevlm",
        "divprune",
        "trim",
        "vision-selector",
    }
    assert {spec.name for spec in PREFILL_METHODS} - {spec.name for spec in TOKEN_DROPPING} == {
        "block-sparse",
        "op-skip",
    }
    for spec in PREFILL_METHODS:
        method = spec.target()
        assert 0 < method.budget <= 1 and callable(method)


def _kept_positions(model, inputs, method, layer: int) -> torch.Tensor:
    """Original indices of the tokens layer ``layer`` sees, matched through its rotary inputs."""
    text = model.model.language_model
    position_ids, _ = model.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    full_cos, full_sin = text.rotary_emb(torch.zeros(1, dtype=torch.float32), position_ids)  # (B, N, hd)
    seen = {}

    def hook(module, args, kwargs):
        seen["cos"], seen["sin"] = kwargs["position_embeddings"]

    handle = text.layers[layer].self_attn.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with method(model), torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    cos, sin = seen["cos"][0], seen["sin"][0]  # (n, hd)
    match = (cos[:, None] == full_cos[0][None]).all(-1) & (sin[:, None] == full_sin[0][None]).all(-1)  # (n, N)
    assert bool((match.sum(-1) == 1).all()), "every rotary input must be exactly one original position"
    return match.float().argmax(-1)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_budget_one_is_bit_exact(model, two_images, name):
    with torch.no_grad():
        logits = model(**two_images).logits
        tokens = model.generate(**two_images, max_new_tokens=4, do_sample=False)
    method = CONFIGS[name](1.0)
    with method(model), torch.no_grad():
        assert torch.equal(model(**two_images).logits, logits)
        assert torch.equal(model.generate(**two_images, max_new_tokens=4, do_sample=False), tokens)
    assert method.stats["visual_kept"] == method.stats["visual_in"] == 24


def _expected_kept(name: str, n: int, budget: float) -> int:
    if name.startswith("pyramiddrop"):  # int(), as upstream
        return int(n * budget)
    if name == "sparsevlm":  # each stage adds int((int(0.3 m) + 1) / 10) + 1 cluster tokens for m pruned
        stages, visual = len(sparse_layers(SparseVLM().layers_frac, NUM_LAYERS)), n
        for stage in range(1, stages + 1):
            k = keep_count(n, budget ** (stage / stages))
            if k < visual:
                visual = k + int((int((visual - k) * 0.3) + 1) / 10) + 1
        return visual
    return keep_count(n, budget)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("budget", [0.1, 0.5])
def test_kept_count_positions_and_cache(model, two_images, name, budget):
    method = CONFIGS[name](budget)
    ids = two_images["input_ids"][0]
    n_prompt, n_visual = ids.numel(), int(visual_mask(ids, model.config).sum())
    if name.endswith("renumber"):  # positions are not the original ones: check the count only
        with method(model), torch.no_grad():
            model(**two_images)
        assert method.stats["visual_kept"] == _expected_kept(name, n_visual, budget)
        return
    kept = _kept_positions(model, two_images, method, NUM_LAYERS - 1)
    expected = _expected_kept(name, n_visual, budget)
    assert method.stats == {**method.stats, "visual_in": n_visual, "visual_kept": expected}
    # Every text token survives, the visual ones are exactly the budget, in the original order.
    assert int(visual_mask(ids[kept], model.config).sum()) == expected
    assert int((~visual_mask(ids[kept], model.config)).sum()) == n_prompt - n_visual
    assert bool((kept.diff() > 0).all())
    # The cache of the last layer holds the kept entries but reports the logical length.
    with method(model), torch.no_grad():
        cache = model(**two_images, use_cache=True).cache
    last = cache.layers[NUM_LAYERS - 1]
    assert isinstance(last, _LogicalLayer)
    assert last.keys.shape[-2] == n_prompt - n_visual + expected
    assert cache.get_seq_length(NUM_LAYERS - 1) == n_prompt == cache.get_seq_length(0)


def _manual_decode(model, inputs, steps: int, explicit_positions: bool) -> tuple[list[int], object]:
    """Greedy decoding with an explicit cache; positions given explicitly or left to the model."""
    model.model.rope_deltas = None
    kwargs = dict(inputs)
    if explicit_positions:
        position_ids, _ = model.model.get_rope_index(
            inputs["input_ids"],
            inputs["mm_token_type_ids"],
            inputs["image_grid_thw"],
            attention_mask=inputs["attention_mask"],
        )
        kwargs["position_ids"] = position_ids
    out = model(**kwargs, use_cache=True)
    cache, tokens = out.cache, [int(out.logits[0, -1].argmax())]
    next_position = kwargs["position_ids"][..., -1:] + 1 if explicit_positions else None
    for _ in range(steps - 1):
        step = {"input_ids": torch.tensor([[tokens[-1]]]), "cache": cache, "use_cache": True}
        if explicit_positions:
            step["position_ids"] = next_position
            next_position = next_position + 1
        out = model(**step)
        tokens.append(int(out.logits[0, -1].argmax()))
    return tokens, cache


@pytest.mark.parametrize("name", ["fastv", "divprune", "pyramiddrop", "pyramiddrop-renumber"])
def test_generate_matches_manual_decoding(model, two_images, name):
    steps = 6
    method = CONFIGS[name](0.25)
    with method(model), torch.no_grad():
        generated = model.generate(**two_images, max_new_tokens=steps, do_sample=False, min_new_tokens=steps)
        generated = generated[0, two_images["input_ids"].shape[1] :].tolist()
        explicit, cache = _manual_decode(model, two_images, steps, explicit_positions=True)
        implicit, _ = _manual_decode(model, two_images, steps, explicit_positions=False)
    assert explicit == generated == implicit
    n_prompt = two_images["input_ids"].shape[1]
    for layer in range(NUM_LAYERS):  # logical length = prompt + generated tokens fed back
        assert cache.get_seq_length(layer) == n_prompt + steps - 1
    with torch.no_grad():
        unpruned = model.generate(**two_images, max_new_tokens=steps, do_sample=False, min_new_tokens=steps)
    assert unpruned.shape == (1, n_prompt + steps)


@dataclass
class _TwoStage(DropMethod):
    """A test plan pruning before the LLM and again at layer 2 (exercises nested kept sets)."""

    budget: float = 0.25
    stats: dict = field(default_factory=dict)

    def boundaries(self, num_layers):
        return [0, 2]

    def stash(self, num_layers):
        return set()

    def select(self, ctx):
        fraction = 0.75 if ctx.layer_idx == 0 else self.budget
        return keep_top_visual(ctx.hidden[..., 0], ctx.visual, keep_count(ctx.n_visual_in, fraction))


@pytest.mark.parametrize(
    "method",
    [
        FastV(budget=0.25, layer=1),
        SparseVLM(budget=0.25),
        PyramidDrop(budget=0.25),
        _TwoStage(),
        SparseVLM(budget=0.25, positions="renumber"),
        DivPrune(budget=0.25, positions="renumber"),
    ],
    ids=["fastv", "sparsevlm", "pyramiddrop", "two-stage", "sparsevlm-renumber", "divprune-renumber"],
)
def test_padded_batch_matches_single_rows(model, method):
    """Left padding: the pruned layers select the right mask columns in prefill and decode."""
    single = tiny_inputs(model, grids=((8, 8),), prompt_before=3, prompt_after=4, seed=5)
    padded = {key: value.clone() for key, value in single.items()}
    pad = 3
    padded["input_ids"] = torch.cat(
        [torch.full((1, pad), model.config.text_config.pad_token_id), single["input_ids"]], 1
    )
    padded["attention_mask"] = torch.cat([torch.zeros(1, pad, dtype=torch.long), single["attention_mask"]], 1)
    padded["mm_token_type_ids"] = torch.cat([torch.zeros(1, pad, dtype=torch.long), single["mm_token_type_ids"]], 1)
    batch = {
        "input_ids": torch.cat(
            [padded["input_ids"], torch.cat([single["input_ids"][:, :pad], single["input_ids"]], 1)]
        ),
        "attention_mask": torch.cat([padded["attention_mask"], torch.ones_like(padded["attention_mask"])]),
        "mm_token_type_ids": torch.cat(
            [
                padded["mm_token_type_ids"],
                torch.cat([single["mm_token_type_ids"][:, :pad], single["mm_token_type_ids"]], 1),
            ]
        ),
        "pixel_values": torch.cat([single["pixel_values"]] * 2),
        "image_grid_thw": torch.cat([single["image_grid_thw"]] * 2),
    }
    with method(model), torch.no_grad():
        alone = model.generate(
            **single, max_new_tokens=5, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
        both = model.generate(
            **batch, max_new_tokens=5, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
    assert both.sequences[0, -5:].tolist() == alone.sequences[0, -5:].tolist()
    for step_alone, step_both in zip(alone.scores, both.scores):
        torch.testing.assert_close(step_both[0], step_alone[0], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# The kept tokens are the top-scored ones, against eager attention maps of the same weights.


@pytest.fixture(scope="module")
def eager_model():
    return tiny_qwen25vl(seed=1, num_layers=NUM_LAYERS, attn_implementation="eager")


def _eager_attentions(eager_model, inputs):
    with torch.no_grad():
        return eager_model(**inputs, output_attentions=True).attentions  # per layer (B, H, N, N)


def _top_visual(scores: torch.Tensor, visual: torch.Tensor, k: int) -> set[int]:
    return set(scores.masked_fill(~visual, float("-inf")).topk(k).indices.tolist())


@pytest.mark.parametrize("layout", ["image-then-question", "question-then-image"])
def test_fastv_keeps_the_top_attended(model, eager_model, layout):
    inputs = tiny_inputs(
        model,
        grids=((8, 8), (4, 4)),
        prompt_before=2 if layout == "image-then-question" else 6,
        prompt_after=6 if layout == "image-then-question" else 0,
        seed=7,
    )
    ids = inputs["input_ids"][0]
    visual = visual_mask(ids, model.config)
    method = FastV(budget=0.3, layer=2)
    row = _eager_attentions(eager_model, inputs)[1][0, :, -1].mean(0)  # layer K-1, last prompt token
    kept = _kept_positions(model, inputs, method, 2)
    expected = _top_visual(row, visual, keep_count(int(visual.sum()), 0.3))
    assert set(kept[visual[kept]].tolist()) == expected


def test_pyramiddrop_first_stage_keeps_the_top_attended(model, eager_model, two_images):
    method = PyramidDrop(budget=0.125)
    first = stage_layers(method.boundaries_frac, NUM_LAYERS)[0]
    ids = two_images["input_ids"][0]
    visual = visual_mask(ids, model.config)
    # The boundary layer's own attention on its incoming hidden states (no pruning before it).
    row = _eager_attentions(eager_model, two_images)[first][0, :, -1].mean(0)
    kept = _kept_positions(model, two_images, method, first)
    k = keep_count(int(visual.sum()), 0.125 ** (1 / len(stage_layers(method.boundaries_frac, NUM_LAYERS))))
    assert set(kept[visual[kept]].tolist()) == _top_visual(row, visual, k)


def test_sparsevlm_first_stage_uses_text_raters(model, eager_model):
    inputs = tiny_inputs(model, grids=((8, 8),), prompt_before=4, prompt_after=6, seed=11)
    method = SparseVLM(budget=0.25, recycle=False)
    first = sparse_layers(method.layers_frac, NUM_LAYERS)[0]  # prunes its own output
    ids = inputs["input_ids"][0]
    visual = visual_mask(ids, model.config)
    with torch.no_grad():
        eager = eager_model(**inputs, output_attentions=True, output_hidden_states=True)
    probs = eager.attentions[first][0].mean(0)  # (N, N) the pruning layer's own attention
    markers = (ids == model.config.vision_start_token_id) | (ids == model.config.vision_end_token_id)
    text = (~visual & ~markers & (torch.arange(len(ids)) > visual.nonzero()[0, 0])).nonzero()[:, 0]
    embeds = eager.hidden_states[0][0]
    raters = text[text_raters(embeds[visual], embeds[text])]  # chosen on the LLM input embeddings
    scores = rater_scores(probs[raters][None], visual[None], torch.ones(1, len(raters), dtype=torch.bool))[0]
    kept = _kept_positions(model, inputs, method, first + 1)
    k = keep_count(int(visual.sum()), 0.25 ** (1 / len(sparse_layers(method.layers_frac, NUM_LAYERS))))
    assert set(kept[visual[kept]].tolist()) == _top_visual(scores, visual, k)


def test_rater_scores_use_only_raters():
    # Two text rows; only row 0 rates, so the scores are its attention on the visual columns.
    probs = torch.tensor([[[0.1, 0.6, 0.3, 0.0], [0.9, 0.05, 0.05, 0.0]]])
    visual = torch.tensor([[False, True, True, False]])
    scores = rater_scores(probs, visual, torch.tensor([[True, False]]))
    torch.testing.assert_close(scores, torch.tensor([[0.0, 0.6, 0.3, 0.0]]))


def test_text_raters_are_the_text_tokens_above_the_mean_relevance():
    visual = torch.tensor([[1.0, 0.0], [0.9, 0.1]])
    text = torch.tensor([[3.0, 0.0], [0.0, 3.0], [0.0, 0.0]])  # only the first points at the image
    assert text_raters(visual, text).tolist() == [True, False, False]


# ----------------------------------------------------------------------------------------------
# DivPrune's selection is max-min.


def test_max_min_select_picks_one_per_cluster():
    directions = torch.eye(4)[:3]  # three orthogonal clusters of near-duplicates
    features = torch.cat(
        [directions[i] + 0.01 * torch.randn(5, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    )
    chosen = max_min_select(features, 3)
    assert sorted((chosen // 5).tolist()) == [0, 1, 2]


def test_max_min_select_is_greedy_farthest_point():
    features = torch.randn(20, 6, generator=torch.Generator().manual_seed(0))
    chosen = max_min_select(features, 6).tolist()
    unit = torch.nn.functional.normalize(features, dim=-1)
    distance = 1 - unit @ unit.T
    off_diagonal = distance + torch.eye(20) * 1e9
    assert chosen[0] == int(off_diagonal.amin(-1).argmax())
    for step in range(1, 6):
        to_set = distance[:, chosen[:step]].amin(-1)
        to_set[chosen[:step]] = -1
        assert chosen[step] == int(to_set.argmax())
    assert len(set(chosen)) == 6


def test_divprune_keeps_the_max_min_subset_of_llm_inputs(model, two_images):
    ids = two_images["input_ids"][0]
    visual = visual_mask(ids, model.config)
    with torch.no_grad():
        embeds = model.model(**two_images, output_hidden_states=True).hidden_states[0][0]  # entering layer 0
    k = keep_count(int(visual.sum()), 0.2)
    expected = set(visual.nonzero()[:, 0][max_min_select(embeds[visual], k)].tolist())
    kept = _kept_positions(model, two_images, DivPrune(budget=0.2), 0)
    assert set(kept[visual[kept]].tolist()) == expected


def test_trim_keeps_the_visual_tokens_nearest_the_question(model, two_images):
    ids = two_images["input_ids"][0]
    visual = visual_mask(ids, model.config)
    with torch.no_grad():
        embeds = model.model(**two_images, output_hidden_states=True).hidden_states[0][0]  # entering layer 0
    # The question is the 5 text tokens after the second image (the vision-end marker is not text).
    question = torch.zeros_like(visual)
    question[-5:] = True
    text = ~visual & (ids != model.config.vision_start_token_id) & (ids != model.config.vision_end_token_id)
    assert question_tokens(text[None], visual[None])[0].tolist() == question.tolist()
    similarity = embeds[visual] @ embeds[question].mean(0)
    k = keep_count(int(visual.sum()), 0.2)
    for negate, largest in ((False, True), (True, False)):
        expected = set(visual.nonzero()[:, 0][similarity.topk(k, largest=largest).indices].tolist())
        kept = _kept_positions(model, two_images, TRIM(budget=0.2, negate=negate), 0)
        assert set(kept[visual[kept]].tolist()) == expected
    scores = question_relevance(embeds[visual], embeds[question])
    assert torch.isclose(scores.sum(), torch.tensor(1.0)) and int(scores.argmax()) == int(similarity.argmin())


def test_trim_adaptive_keeps_the_iqr_outliers(model, two_images):
    method = TRIM(adaptive=True)
    with method(model), torch.no_grad():
        model(**two_images)
    ids = two_images["input_ids"][0]
    visual = visual_mask(ids, model.config)
    with torch.no_grad():
        embeds = model.model(**two_images, output_hidden_states=True).hidden_states[0][0]
    scores = question_relevance(embeds[visual], embeds[-5:])
    upper = scores.quantile(0.75) + 1.5 * (scores.quantile(0.75) - scores.quantile(0.25))
    assert method.stats["visual_kept"] == max(1, int((scores > upper).sum()))


def test_trim_without_a_question_raises(model):
    inputs = tiny_inputs(model, grids=((8, 8),), prompt_before=6, prompt_after=0, seed=2)
    with pytest.raises(ValueError, match="question text"), TRIM(budget=0.5)(model), torch.no_grad():
        model(**inputs)


SINGLE_LAYER = [spec for spec in PREFILL_METHODS if issubclass(spec.target, SingleLayerDrop)]


def test_single_layer_methods_share_one_plan():
    """DivPrune, TRIM and VisionSelector drop once, at ``layer``: one piece of code (SingleLayerDrop) gives their plans."""
    assert {spec.name for spec in SINGLE_LAYER} == {"divprune", "trim", "vision-selector"}
    for spec in SINGLE_LAYER:
        assert not {"boundaries", "stash"} & set(vars(spec.target))


@pytest.mark.parametrize("spec", SINGLE_LAYER, ids=lambda spec: spec.name)
def test_single_layer_plan(model, spec):
    method = spec.target(layer=2)
    assert method.boundaries(NUM_LAYERS) == [2] and method.stash(NUM_LAYERS) == set()
    assert spec.target().boundaries(NUM_LAYERS) == [0]  # default: the LLM inputs
    for layer in (-1, NUM_LAYERS):
        refusal = rf"{spec.target.__name__} layer must lie in \[0, {NUM_LAYERS - 1}\], got {layer}"
        with pytest.raises(ValueError, match=refusal), spec.target(layer=layer)(model):
            pass


def test_invalid_configs_raise(model, two_images):
    with pytest.raises(ValueError):
        with FastV(budget=0.5, layer=0)(model):
            pass
    with pytest.raises(ValueError):
        keep_count(10, 0.0)


def test_sparsevlm_without_text_after_the_image_uses_the_last_token(model, eager_model):
    inputs = tiny_inputs(model, grids=((8, 8),), prompt_before=6, prompt_after=0, seed=2)
    method = SparseVLM(budget=0.25, recycle=False)
    first = sparse_layers(method.layers_frac, NUM_LAYERS)[0]
    visual = visual_mask(inputs["input_ids"][0], model.config)
    row = _eager_attentions(eager_model, inputs)[first][0, :, -1].mean(0)  # the last prompt token
    kept = _kept_positions(model, inputs, method, first + 1)
    k = keep_count(16, 0.25 ** (1 / len(sparse_layers(method.layers_frac, NUM_LAYERS))))
    assert set(kept[visual[kept]].tolist()) == _top_visual(row, visual, k)
