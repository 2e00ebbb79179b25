"""The learned keyframe scorer: shapes, budget exactness, its loss, its labels, that it can learn,
the committed ToyVLM and ToyVLM v2 checkpoints and which one a model gets."""

from __future__ import annotations

import doctest
import itertools
import json

import pytest
import torch

from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl
from reference_impls.common.visual_tokens import apply_visual_token_selection, keep_count
from reference_impls.encoding import learned_keyframes
from reference_impls.encoding.keyframes import item_thumbnails
from reference_impls.encoding.learned_keyframes import (
    CHECKPOINT_DIR,
    CHECKPOINT_DIR_V2,
    FrameScorer,
    LearnedKeyframeSelection,
    combination_loss,
    fitting_checkpoint,
    frame_subsets,
    load_frame_scorer,
    question_embedding,
    rank_frames,
    sample_subsets,
    save_frame_scorer,
)
from reference_impls.encoding.train_frame_scorer import fit_scorer, make_dataset, ranking_metrics, subset_log_probs

from .test_methods import run_recording, video_inputs

GRIDS = ((4, 4),) * 4  # four images of 4 merged tokens each: the frames of one clip


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return tiny_qwen25vl()


def _method(model, budget: float) -> LearnedKeyframeSelection:
    torch.manual_seed(1)
    return LearnedKeyframeSelection(
        budget=budget, scorer=FrameScorer(model.config.text_config.hidden_size, thumb=2), thumb=2
    )


def _two_prompts(model) -> dict[str, torch.Tensor]:
    inputs = tiny_inputs(model, grids=GRIDS, batch_size=2)
    inputs["input_ids"][1, :5] = torch.tensor([20, 30, 40, 50, 60])  # a different question in row 1
    inputs["pixel_values"][64:] = torch.randn(
        64, inputs["pixel_values"].shape[1], generator=torch.Generator().manual_seed(3)
    )
    return inputs


def test_paper_card_examples_run():
    assert "Deviations / guesses:" in learned_keyframes.__doc__ and "arXiv 2410.03226" in learned_keyframes.__doc__
    result = doctest.testmod(learned_keyframes, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_scorer_shapes_and_size():
    scorer = FrameScorer(question_dim=96)
    assert 1000 < sum(p.numel() for p in scorer.parameters()) < 10_000
    frames, question = torch.randn(5, 3 * 8 * 8), torch.randn(96)
    assert scorer(frames, question).shape == (5,)
    batched = scorer(frames.expand(2, -1, -1), question.expand(2, -1))
    assert batched.shape == (2, 5) and torch.allclose(batched[0], scorer(frames, question), atol=1e-6)
    assert (
        rank_frames(scorer, frames, question, 3).tolist()
        == scorer(frames, question).topk(3).indices.sort().values.tolist()
    )


def test_frame_index_embeddings_separate_frames_that_look_alike(tmp_path):
    frames, question = torch.randn(1, 12).expand(6, -1), torch.randn(8)  # 6 identical frames
    torch.manual_seed(0)
    plain = FrameScorer(8, thumb=2)(frames, question).detach()
    torch.testing.assert_close(plain, plain[:1].expand(6))
    scorer = FrameScorer(8, thumb=2, positions=4)
    scores = scorer(frames, question).detach()
    assert (scores[:4, None] - scores[None, :4]).abs().add(torch.eye(4)).min() > 1e-3  # 4 distinct scores
    torch.testing.assert_close(scores[3:], scores[3:4].expand(3))  # past index 3: index 3's embedding
    loaded = load_frame_scorer(save_frame_scorer(scorer, tmp_path))
    assert loaded.hparams["positions"] == 4 and torch.equal(loaded(frames, question), scores)
    assert "positions" not in FrameScorer(8).hparams  # ToyVLM's scorer (no index) keeps its manifest


def test_combination_loss_matches_brute_force():
    scores = torch.tensor([[0.3, -1.0, 2.0, 0.5]])
    log_probs = {1: torch.tensor([[-0.1, -3.0, -2.0, -1.0]]), 2: torch.arange(6.0).neg()[None]}
    expected = 0.0
    for size, target in log_probs.items():
        combos = list(itertools.combinations(range(4), size))
        predicted = torch.stack([scores[0, list(c)].sum() for c in combos])
        expected += -(target[0].softmax(-1) * predicted.log_softmax(-1)).sum() / len(log_probs)
    torch.testing.assert_close(combination_loss(scores, log_probs), expected)
    assert frame_subsets(4, 2).sum(-1).tolist() == [2.0] * 6


def test_subset_log_probs_match_running_the_model_on_those_frames(model):
    inputs = tiny_inputs(model, grids=GRIDS)
    labels = subset_log_probs(model, inputs, 10, sizes=(1, 2))
    combos = list(itertools.combinations(range(4), 2))
    for size, subset in ((2, (1, 3)), (1, (2,))):
        keep = torch.cat([torch.arange(4 * f, 4 * f + 4) for f in subset])
        kwargs, _, _ = apply_visual_token_selection(model, inputs, lambda ctx: [keep])
        with torch.no_grad():
            expected = model(**kwargs).logits[0, -1].log_softmax(-1)[10]
        index = combos.index(subset) if size == 2 else subset[0]
        torch.testing.assert_close(labels[size][index], expected, rtol=1e-4, atol=1e-5)


def test_sampled_subsets_are_distinct_combinations_of_the_size_and_seeded():
    member = sample_subsets(16, 3, 20, torch.Generator().manual_seed(0))
    assert member.shape == (20, 16) and member.sum(-1).tolist() == [3.0] * 20
    assert len({tuple(row.nonzero().flatten().tolist()) for row in member}) == 20
    assert torch.equal(member, sample_subsets(16, 3, 20, torch.Generator().manual_seed(0)))
    assert not torch.equal(member, sample_subsets(16, 3, 20, torch.Generator().manual_seed(1)))
    assert torch.equal(sample_subsets(5, 2, 10, torch.Generator()), frame_subsets(5, 2))  # 10 of 10: all of them


def _padded(data: dict, extra_frames: int, extra_rows: int) -> dict:
    """``data`` (every combination of its frames) with explicit ``members``, each clip padded by
    junk frames and all-zero combination rows, as ToyVLM v2's clips of different lengths are."""
    n, frames = data["thumbs"].shape[:2]
    members, log_probs = {}, {}
    for size, target in data["log_probs"].items():
        member = torch.nn.functional.pad(frame_subsets(frames, size), (0, extra_frames)).expand(n, -1, -1)
        members[size] = torch.cat([member, torch.zeros(n, extra_rows, frames + extra_frames)], dim=1)
        log_probs[size] = torch.cat([target, torch.full((n, extra_rows), 5.0)], dim=1)  # padding values must not count
    junk = torch.randn(n, extra_frames, data["thumbs"].shape[-1], generator=torch.Generator().manual_seed(5)) * 9
    return data | {
        "thumbs": torch.cat([data["thumbs"], junk], dim=1),
        "frames": torch.arange(frames + extra_frames).expand(n, -1) < frames,
        "members": members,
        "log_probs": log_probs,
    }


def test_sampled_combination_loss_and_ranking_ignore_padding():
    data, _ = _synthetic(64, seed=2)
    padded = _padded(data, extra_frames=2, extra_rows=3)
    torch.manual_seed(0)
    scorer = FrameScorer(question_dim=8, thumb=2)
    scores = scorer(data["thumbs"], data["questions"])
    padded_scores = scorer(padded["thumbs"], padded["questions"])
    expected = combination_loss(scores, data["log_probs"])
    torch.testing.assert_close(
        combination_loss(padded_scores, padded["log_probs"], members=padded["members"]), expected
    )
    assert ranking_metrics(scorer, padded) == ranking_metrics(scorer, data)


def test_multi_token_reply_log_prob_is_the_teacher_forced_sum_on_those_frames():
    # ToyVLM v2 layout: a video (frames = temporal slices), the question last, a reply of several tokens
    from reference_impls.common.chat_scenes import SUITES, answer_words, make_chat_samples
    from reference_impls.common.toyvlm_v2 import tiny_toyvlm_v2

    torch.set_num_threads(1)
    toy = tiny_toyvlm_v2()
    with torch.no_grad():  # sharper attention than at random init, so that positions matter
        for layer in toy.model.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(8.0)
            layer.self_attn.k_proj.weight.mul_(8.0)
    sample = next(s for s in make_chat_samples(SUITES["video"].spec, ("events",), 4, 0) if s.qa.kind == "events")
    reply = [toy.vocab.id(w) for w in answer_words(sample)]
    assert len(reply) > 3
    prompt, full = toy.collate([sample]), toy.collate([sample], with_answer=True)
    full.pop("labels")
    t, hw = prompt["video_grid_thw"][0, 0].item(), prompt["video_grid_thw"][0, 1:].prod().item() // 4
    member = torch.zeros(2, t)
    member[0, [0, 3]] = member[1, [1, t - 1]] = 1.0
    labels = subset_log_probs(toy.model, prompt, reply, subsets={2: member})[2]
    for row, frames in enumerate(([0, 3], [1, t - 1])):
        keep = torch.cat([torch.arange(f * hw, (f + 1) * hw) for f in frames])
        kwargs, _, _ = apply_visual_token_selection(toy.model, full, lambda ctx: [keep])
        with torch.no_grad():
            log_probs = toy.model(**kwargs).logits[0, -len(reply) - 1 : -1].log_softmax(-1)  # (L, V)
        expected = log_probs.gather(-1, torch.tensor(reply)[:, None]).sum()
        torch.testing.assert_close(labels[row], expected, rtol=1e-4, atol=1e-4)


def test_v2_dataset_pads_clips_and_samples_combinations():
    from reference_impls.common.toyvlm_v2 import tiny_toyvlm_v2

    torch.set_num_threads(1)
    data = make_dataset(tiny_toyvlm_v2(), 2, seed=0, suites=("video", "short"), combos=5)
    frames = data["frames"].sum(-1).tolist()
    assert data["thumbs"].shape[:2] == data["frames"].shape == (4, max(frames)) and frames[2:] == [16, 16]
    assert all(8 <= f <= 16 for f in frames[:2])
    for clip, count in enumerate(frames):
        assert data["members"][1][clip, :count, :count].equal(torch.eye(count))  # every single frame
        for size in (2, 3):
            member = data["members"][size][clip]  # (5, T): 5 sampled combinations, none with padded frames
            assert member.shape[0] == 5 and member.sum(-1).tolist() == [size] * 5 and not member[:, count:].any()
    assert torch.isfinite(data["log_probs"][3]).all() and (data["log_probs"][3] < 0).all()


def _save_scorer(path, question_dim: int, seed: int):
    torch.manual_seed(seed)
    return save_frame_scorer(FrameScorer(question_dim, thumb=2), path)


def test_default_scorer_is_the_committed_one_that_fits_the_model(model, tmp_path, monkeypatch):
    other = _save_scorer(tmp_path / "v1", 96, seed=0)
    fits = _save_scorer(tmp_path / "v2", model.config.text_config.hidden_size, seed=1)
    monkeypatch.setattr(learned_keyframes, "COMMITTED", (other, fits))
    assert fitting_checkpoint(96, thumb=2) == other and fitting_checkpoint(32, thumb=2) == fits
    assert fitting_checkpoint(32, thumb=4) is None and fitting_checkpoint(64, thumb=2) is None
    method = LearnedKeyframeSelection(budget=0.5, thumb=2)
    with torch.no_grad(), method(model):
        model(**_two_prompts(model))
    expected = load_frame_scorer(fits).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in method._active.state_dict().items())


def test_committed_scorers_go_to_toyvlm_and_toyvlm_v2():
    v2_hidden = json.loads((CHECKPOINT_DIR_V2.parents[2] / "common/checkpoints/toyvlm_v2/config.json").read_text())
    assert fitting_checkpoint(96) == CHECKPOINT_DIR
    assert fitting_checkpoint(v2_hidden["text_config"]["hidden_size"]) == CHECKPOINT_DIR_V2


@pytest.mark.parametrize("budget", [0.75, 0.5, 0.25])
def test_keeps_keep_count_frames_per_prompt_ranked_by_the_scorer_and_encodes_only_those(model, budget):
    inputs = _two_prompts(model)
    method = _method(model, budget)
    encoded = []
    handle = model.model.visual.register_forward_pre_hook(lambda module, args: encoded.append(args[0].shape[0]))
    try:
        _, _, ctx, selection = run_recording(model, method, inputs)
    finally:
        handle.remove()
    keep = keep_count(4, budget)
    thumbs = item_thumbnails(inputs["pixel_values"], inputs["image_grid_thw"], model.config.vision_config, 2)
    for b in range(2):
        question = question_embedding(model.get_input_embeddings(), inputs["input_ids"][b], method._skip)
        frames = rank_frames(method._active, torch.cat(thumbs[4 * b : 4 * b + 4]), question, keep)
        assert selection.keep[b].tolist() == [4 * f + i for f in frames.tolist() for i in range(4)]
    assert encoded == [2 * keep * 16]  # the tower saw the kept images' patches only (16 per image)


def test_question_changes_the_choice(model):
    # same frames, two questions: a question-aware scorer must be able to pick different frames
    scorer = FrameScorer(model.config.text_config.hidden_size, thumb=2)
    frames = torch.randn(4, 12, generator=torch.Generator().manual_seed(0))
    picks = {
        tuple(rank_frames(scorer, frames, torch.randn(32, generator=torch.Generator().manual_seed(s)), 1).tolist())
        for s in range(20)
    }
    assert len(picks) > 1


def test_video_keeps_keep_count_slices_and_encodes_only_them(model):
    inputs = video_inputs(t=6, duplicates=())
    method = _method(model, 0.5)
    encoded = []
    handle = model.model.visual.register_forward_pre_hook(lambda module, args: encoded.append(args[0].shape[0]))
    try:
        _, _, _, selection = run_recording(model, method, inputs)
    finally:
        handle.remove()
    assert method._video_frames[0].numel() == keep_count(6, 0.5) == 3
    assert selection.keep[0].numel() == 3 * 16 and encoded == [3 * 64]


def test_budget_one_is_bit_exact(model):
    inputs = _two_prompts(model)
    with torch.no_grad():
        reference = model(**inputs).logits
        method = _method(model, 1.0)
        with method(model):
            logits = model(**inputs).logits
    assert torch.equal(logits, reference)


def test_warns_when_no_trained_scorer_fits_the_model(model):
    inputs = _two_prompts(model)
    with pytest.warns(UserWarning, match="no trained frame scorer fits this model"):
        with torch.no_grad(), LearnedKeyframeSelection(budget=0.5, thumb=2)(model):
            model(**inputs)


def _synthetic(n: int, seed: int, colours: int = 6, frames: int = 4) -> tuple[dict, torch.Tensor]:
    """Clips of 4 frames of 2x2 coloured cells; the question names a colour that exactly one frame
    (the answer frame) shows. Labels as the model would give them: high log-prob iff the
    combination holds the answer frame."""
    g = torch.Generator().manual_seed(seed)
    palette = torch.randn(colours, 3, generator=torch.Generator().manual_seed(99)) * 2
    target = torch.randint(colours, (n,), generator=g)
    answer = torch.randint(frames, (n,), generator=g)
    other = (
        target[:, None, None] + torch.randint(1, colours, (n, frames, 4), generator=g)
    ) % colours  # never the target
    other[torch.arange(n), answer, torch.randint(4, (n,), generator=g)] = target
    thumbs = palette[other].permute(0, 1, 3, 2).reshape(n, frames, 12)  # (n, T, C*2*2), channel-major
    questions = torch.nn.functional.one_hot(target, 8).float() + 0.1 * torch.randn(n, 8, generator=g)
    log_probs = {
        size: (frame_subsets(frames, size)[None] * torch.nn.functional.one_hot(answer, frames)[:, None].float()).sum(-1)
        * 4
        - 4
        for size in (1, 2, 3)
    }
    return {"thumbs": thumbs, "questions": questions, "log_probs": log_probs}, answer


def test_scorer_learns_to_rank_the_answer_frame_first():
    train, _ = _synthetic(512, seed=0)
    test, answer = _synthetic(256, seed=1)
    torch.manual_seed(0)
    scorer = FrameScorer(question_dim=8, thumb=2)
    before = (scorer(test["thumbs"], test["questions"]).argmax(-1) == answer).float().mean()
    losses = fit_scorer(scorer, train, steps=300, lr=1e-2, batch=64)
    with torch.no_grad():
        after = (scorer(test["thumbs"], test["questions"]).argmax(-1) == answer).float().mean()
    assert before < 0.5 and after > 0.9, (before, after)
    assert sum(losses[-20:]) < sum(losses[:20])


def test_committed_checkpoint_loads_and_fits_toyvlm():
    from reference_impls.common.toyvlm import load_toyvlm

    manifest = json.loads((CHECKPOINT_DIR / "manifest.json").read_text())
    for key in ("command", "seed", "training_clips", "steps", "wall_seconds", "heldout_ranking"):
        assert key in manifest
    assert sum(p.stat().st_size for p in CHECKPOINT_DIR.iterdir()) < 100_000
    scorer = load_frame_scorer()
    assert sum(p.numel() for p in scorer.parameters()) == manifest["parameters"]
    toy = load_toyvlm()
    assert scorer.question_dim == toy.model.get_input_embeddings().embedding_dim
    # shape questions ("what shape is the red object ?") have their answer on one image: with one
    # image of four kept, the committed scorer must find it
    samples = [s for s in toy.samples(40, seed=11) if s.qa.kind == "shape"][:8]
    method, correct = LearnedKeyframeSelection(budget=0.25), 0
    with torch.no_grad(), method(toy.model):
        for sample in samples:
            logits = toy.model(**toy.collate([sample])).logits[0, -1]
            correct += toy.vocab.words[int(logits.argmax())] == sample.qa.answer
            assert method.stats["visual_kept"] == 64
    assert len(samples) >= 6 and correct >= len(samples) - 1


def test_committed_v2_checkpoint_ranks_better_than_untrained():
    manifest = json.loads((CHECKPOINT_DIR_V2 / "manifest.json").read_text())
    for key in ("command", "seed", "training_clips", "steps", "wall_seconds", "heldout_ranking", "combinations"):
        assert key in manifest
    assert "--target toyvlm-v2" in manifest["command"] and manifest["seed"] == 0 and manifest["heldout_seed"] != 0
    assert sum(p.stat().st_size for p in CHECKPOINT_DIR_V2.iterdir()) < 100_000
    scorer = load_frame_scorer(CHECKPOINT_DIR_V2)
    assert sum(p.numel() for p in scorer.parameters()) == manifest["parameters"] and scorer.question_dim == 192
    trained, untrained = manifest["heldout_ranking"], manifest["heldout_ranking_untrained"]
    assert trained["top1_agreement"] > untrained["top1_agreement"]


def test_recorded_training_command_leaves_out_the_label_cache():
    from reference_impls.encoding.train_frame_scorer import _without_cache

    argv = ["--target", "toyvlm-v2", "--data", "/tmp/x/labels.pt", "--threads", "1", "--data=/tmp/y.pt"]
    assert _without_cache(argv) == ["--target", "toyvlm-v2", "--threads", "1"]
