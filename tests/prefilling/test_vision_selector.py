"""VisionSelector: its scorer, differentiable top-k, curriculum and inference selection against a
re-implementation of upstream's rule (ygywzb/VisionSelector @ 6e23a08358e3b73bad53d5d4a69d8dc2a833b749,
a fork of JulietChoo/VisionSelector): ``compression_method/selector_scorer.py`` (TransformerScorer),
``compression_method/selector_model.py`` (TopK, _find_ts, the training forward),
``qwenvl/train/train_qwen_selector.py`` (ScheduledWeightTrainer) and
``qwen-evaluation/token_compression/selector_model.py`` (inference: topk, sorted, positions kept)."""

from __future__ import annotations

import pytest
import torch

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl
from reference_impls.common.toyvlm_v2 import tiny_toyvlm_v2
from reference_impls.prefilling.train_vision_selector import masked_loss
from reference_impls.prefilling.vision_selector import (
    SelectorScorer,
    VisionSelector,
    curriculum_weight,
    hard_topk_mask,
    load_selector,
    save_selector,
    soft_topk_mask,
)
from tests.prefilling.test_parity import _layer, _llm_inputs, _logits, _ours

torch.set_num_threads(1)
NUM_LAYERS = 4


@pytest.fixture(scope="module")
def model():
    return tiny_qwen25vl(seed=1, num_layers=NUM_LAYERS)


@pytest.fixture(scope="module")
def inputs(model):
    return tiny_inputs(model, grids=((8, 8), (4, 8)), prompt_before=4, prompt_after=6, seed=7)


# ---- upstream's rule, re-written from its source -------------------------------------------------


def reference_scores(x: torch.Tensor, q_proj, k_proj, hidden_dim: int) -> torch.Tensor:
    """TransformerScorer.forward: the full (N, N) map q k^T / sqrt(h), mean over its last axis."""
    q, k = q_proj(x), k_proj(x)
    return (q @ k.transpose(-2, -1) / hidden_dim**0.5).mean(-1)


def reference_find_ts(xs: torch.Tensor, k: int):
    """_find_ts: 64 halvings, lo moves up where the sigmoids sum below k (in-place masked writes)."""
    lo = -xs.max(dim=1, keepdim=True).values - 10
    hi = -xs.min(dim=1, keepdim=True).values + 10
    for _ in range(64):
        mid = (hi + lo) / 2
        below = torch.sigmoid(xs + mid).sum(dim=1) < k
        lo[below] = mid[below]
        hi[~below] = mid[~below]
    ts = (lo + hi) / 2
    return ts, torch.sigmoid(xs + ts)


def reference_topk_vjp(xs: torch.Tensor, ts: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """TopK.backward as the explicit Jacobian (-v v^T / s + diag(v)) applied to each row."""
    s = torch.sigmoid(xs + ts)
    v = s * (1 - s)
    rows = []
    for b in range(xs.shape[0]):
        jacobian = torch.diag(v[b]) - torch.outer(v[b], v[b]) / v[b].sum()
        rows.append(grad_output[b] @ jacobian)
    return torch.stack(rows)


def reference_weight(step: int, total: int, start: float, end: float) -> float:
    """ScheduledWeightTrainer.compute_loss."""
    return start + (end - start) * min(step / total, 1.0) if total > 0 else start


@pytest.mark.parametrize("seed", range(3))
def test_scorer_and_soft_topk_match_upstream(seed):
    generator = torch.Generator().manual_seed(seed)
    scorer = SelectorScorer(24).double()
    with torch.no_grad():  # trained-looking weights, so that scores spread
        for p in scorer.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * 0.3)
    tokens = torch.randn(2, 40, 24, generator=generator, dtype=torch.float64)
    scores = scorer(tokens)
    expected = reference_scores(tokens, scorer.q_proj, scorer.k_proj, scorer.hidden_dim)
    torch.testing.assert_close(scores, expected)
    assert scorer.hidden_dim == 12  # upstream: out_hidden_size // 2

    k = 7
    leaf = scores.detach().clone().requires_grad_(True)
    mask = soft_topk_mask(leaf, k)
    ts, expected_mask = reference_find_ts(scores.detach().clone(), k)
    torch.testing.assert_close(mask.detach(), expected_mask)
    torch.testing.assert_close(mask.sum(-1).detach(), torch.full((2,), float(k), dtype=torch.float64))
    upstream = torch.randn(2, 40, generator=generator, dtype=torch.float64)
    mask.backward(upstream)
    torch.testing.assert_close(leaf.grad, reference_topk_vjp(scores.detach(), ts, upstream))
    hard = hard_topk_mask(scores, k)
    assert set(hard[0].nonzero()[:, 0].tolist()) == set(scores[0].topk(k).indices.tolist())


def test_curriculum_matches_upstream():
    for step in (0, 1, 37, 99, 100, 150):
        assert curriculum_weight(step, 100, 0.1, 2.0) == pytest.approx(reference_weight(step, 100, 0.1, 2.0))
    assert curriculum_weight(5, 0) == 0.1


def test_upstream_init_gives_near_zero_scores():
    torch.manual_seed(0)
    scorer = SelectorScorer(32)
    assert scorer(torch.randn(50, 32)).abs().max() < 1e-5


def reference_selector(model, inputs, scorer, budget: float):
    """Inference (qwen-evaluation selector_model.py): score the merger outputs of all images of the
    prompt jointly, keep topk, sort, gather tokens and their original positions, run the LLM."""
    hidden, positions, visual = _llm_inputs(model, inputs)
    image = visual.nonzero()[:, 0]
    with torch.no_grad():
        scores = reference_scores(hidden[0, image], scorer.q_proj, scorer.k_proj, scorer.hidden_dim)
    count = max(1, round(len(image) * budget))  # upstream int(); the budgets below give the same count
    kept = image[scores.topk(count).indices.sort().values]
    keep = torch.cat([(~visual).nonzero()[:, 0], kept]).sort().values
    hidden, positions = hidden[:, keep], positions[..., keep]
    with torch.no_grad():
        for index in range(NUM_LAYERS):
            hidden = _layer(model, index, hidden, positions)
    return _logits(model, hidden)


@pytest.mark.parametrize("budget", [0.25, 0.5])
def test_inference_matches_upstream(model, inputs, tmp_path, budget):
    width = model.config.text_config.hidden_size
    torch.manual_seed(3)
    trained = SelectorScorer(width)
    with torch.no_grad():
        for p in trained.parameters():
            p.normal_(0, 0.5)
    save_selector(trained, tmp_path, {"note": "test"})
    loaded = load_selector(tmp_path)  # float16 on disk: compare against what was loaded
    n_visual = 16 + 8
    assert int(n_visual * budget) == max(1, round(n_visual * budget))
    expected = reference_selector(model, inputs, loaded, budget)
    method = VisionSelector(budget=budget, checkpoint=str(tmp_path))
    torch.testing.assert_close(_ours(model, inputs, method), expected, atol=1e-5, rtol=1e-4)
    assert method.stats["visual_kept"] == round(n_visual * budget)
    assert method.load(width)[1] == "trained"


def test_untrained_and_auto_on_a_foreign_width(model, inputs):
    width = model.config.text_config.hidden_size
    for checkpoint in (None, "auto"):  # the committed scorer is 192 wide; the tiny model is not
        method = VisionSelector(budget=0.25, checkpoint=checkpoint)
        with method(model), torch.no_grad():
            model(**inputs)
        assert method.load(width)[1] == "untrained" and method.stats["visual_kept"] == 6


def test_wrong_width_checkpoint_and_layer_raise(model, inputs, tmp_path):
    save_selector(SelectorScorer(8), tmp_path)
    with pytest.raises(ValueError, match="wide"), VisionSelector(checkpoint=str(tmp_path))(model), torch.no_grad():
        model(**inputs)
    with pytest.raises(ValueError, match="layer"), VisionSelector(layer=NUM_LAYERS)(model), torch.no_grad():
        model(**inputs)


def test_training_step_moves_only_the_scorer():
    bundle = tiny_toyvlm_v2()
    for p in bundle.model.parameters():
        p.requires_grad_(False)
    from reference_impls.common.chat_scenes import SUITES, TRAIN_SEED, ChatSceneSpec, make_chat_samples

    samples = make_chat_samples(ChatSceneSpec(n_images=(2, 2)), SUITES["short"].kinds, 2, TRAIN_SEED)
    torch.manual_seed(0)
    scorer = SelectorScorer(bundle.model.config.text_config.hidden_size)
    with torch.no_grad():
        for p in scorer.parameters():
            p.normal_(0, 0.3)
    ce, bce = masked_loss(bundle, samples, scorer, 0.25, soft=True)
    # The answer's loss alone reaches the scorer, through the soft mask on the visual embeddings.
    through_mask = torch.autograd.grad(ce, list(scorer.parameters()), retain_graph=True)
    assert all(g.abs().sum() > 0 for g in through_mask)
    (ce + curriculum_weight(0, 10) * bce).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in scorer.parameters())
    assert all(p.grad is None for p in bundle.model.parameters())
    assert 0 < bce.item() < 1.0
