"""ToyVLM v2: chat layout, replies ending in <eos>, greedy generate, save/load, trainer smoke test."""

import pytest
import torch

from reference_impls.common.chat_scenes import (
    IMAGE_LONG_KINDS,
    SUITES,
    TRAIN_SEED,
    VIDEO_LONG_KINDS,
    ChatSceneSpec,
    answer_words,
    evidence_tokens,
    make_chat_sample,
    make_chat_samples,
    suite_samples,
)
from reference_impls.common.toyvlm import build_vocab
from reference_impls.common.toyvlm_v2 import (
    build_vocab_v2,
    load_toyvlm_v2,
    save_toyvlm_v2,
    tiny_toyvlm_v2,
)

torch.set_num_threads(1)
IMAGES = ChatSceneSpec(n_images=(2, 3), cells=(4, 4))
VIDEO = ChatSceneSpec(video_frames=(4, 6), cells=(4, 8), still_objects=(1, 3))


@pytest.fixture(scope="module")
def toy():
    return tiny_toyvlm_v2()


def test_vocabulary_covers_every_suite_and_keeps_v1_special_ids():
    vocab = build_vocab_v2()
    assert vocab.words[:7] == build_vocab().words[:7]
    for name in SUITES:
        for sample in suite_samples(name, 3):
            vocab.encode(sample.qa.question), vocab.encode(sample.qa.answer)


def test_chat_layout_images_first_question_last(toy):
    samples = make_chat_samples(IMAGES, IMAGE_LONG_KINDS, 3, seed=1)
    batch = toy.collate(samples, with_answer=True)
    config, vocab = toy.model.config, toy.vocab
    for sample, ids, mask, labels in zip(samples, batch["input_ids"], batch["attention_mask"], batch["labels"]):
        ids, labels = ids[mask.bool()].tolist(), labels[mask.bool()].tolist()
        assert ids[0] == vocab.bos
        n_images, position = 0, 1
        while ids[position + 2] == config.vision_start_token_id:  # (image k <vision_start> <image>*16 <vision_end>)+
            assert ids[position : position + 2] == vocab.encode(f"image {n_images + 1}")
            assert (
                ids[position + 3 : position + 19] == [config.image_token_id] * 16
                and ids[position + 19] == config.vision_end_token_id
            )
            n_images, position = n_images + 1, position + 20
        assert n_images == len(sample.scene.images)
        question = vocab.encode(sample.qa.question)
        reply = answer_words(sample)
        assert ids[position:] == question + [vocab.id("answer")] + [vocab.id(w) for w in reply]
        assert [vocab.words[i] for i in labels if i != -100] == reply and reply[-1] == "<eos>"
        assert all(i == -100 for i in labels[: -len(reply)])
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]] * sum(len(s.scene.images) for s in samples)


def test_follow_up_turns_come_after_each_reply_and_are_labelled(toy):
    single, dialogue = (make_chat_sample(IMAGES, IMAGE_LONG_KINDS, 1, 0, turns=t) for t in (1, 3))
    assert dialogue.qa == single.qa and len(dialogue.follow_ups) == 2 and not single.follow_ups
    batch = toy.collate([dialogue], with_answer=True)
    vocab = toy.vocab
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    tail = []
    for qa in (dialogue.qa, *dialogue.follow_ups):
        tail += vocab.encode(qa.question) + [vocab.id("answer")] + [vocab.id(w) for w in answer_words(qa)]
    assert ids[-len(tail) :] == tail
    replies = [w for qa in (dialogue.qa, *dialogue.follow_ups) for w in answer_words(qa)]
    assert [vocab.words[i] for i in labels if i != -100] == replies
    # evaluation prompts hold the first question only
    assert torch.equal(toy.collate([dialogue])["input_ids"], toy.collate([single])["input_ids"])


def test_supervised_heads_weights_equal_eager_attention(toy):
    from reference_impls.common.train_toyvlm_v2 import supervised_attention

    samples = [make_chat_sample(IMAGES, IMAGE_LONG_KINDS, 1, i, turns=2) for i in range(3)]
    batch = toy.collate(samples, with_answer=True)  # left-padded: the mask matters
    layer = toy.model.model.language_model.layers[1].self_attn
    seen = {}
    handle = layer.register_forward_pre_hook(
        lambda m, args, kwargs: seen.update(hidden=kwargs["hidden_states"], cos_sin=kwargs["position_embeddings"]),
        with_kwargs=True,
    )
    toy.model.config.text_config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            eager = toy.model(**batch, output_attentions=True).attentions[1][:, :2]  # (B, 2, S, S)
    finally:
        toy.model.config.text_config._attn_implementation = "sdpa"
        handle.remove()
    first = batch["input_ids"].shape[1] - 30
    weights = supervised_attention(layer, seen["hidden"], seen["cos_sin"], batch["attention_mask"], first, 2)
    real = batch["attention_mask"].bool()[:, None, first:, None].expand_as(weights)
    torch.testing.assert_close(weights[real], eager[:, :, first:][real])


def test_video_is_one_qwen_video_item(toy):
    (sample,) = make_chat_samples(VIDEO, VIDEO_LONG_KINDS, 1, seed=2)
    batch = toy.collate([sample])
    frames = len(sample.scene.images)
    assert batch["video_grid_thw"].tolist() == [[frames // 2, 8, 16]] and "pixel_values" not in batch
    assert (
        (batch["input_ids"] == toy.model.config.video_token_id).sum()
        == frames // 2 * 32
        == sample.scene.n_visual_tokens
    )
    assert torch.equal(batch["mm_token_type_ids"], 2 * (batch["input_ids"] == toy.model.config.video_token_id).long())


def test_generate_is_greedy_and_stops_at_eos(toy):
    samples = make_chat_samples(IMAGES, IMAGE_LONG_KINDS, 2, seed=3) + make_chat_samples(
        VIDEO, VIDEO_LONG_KINDS, 1, seed=3
    )
    replies = toy.generate(samples, max_new_tokens=4, batch_size=3)
    with torch.no_grad():
        for sample, reply in zip(samples, replies):
            logits = toy.model(**toy.collate([sample])).logits[0, -1]
            assert reply[0] == toy.vocab.words[logits.argmax().item()]
            assert len(reply) <= 4 and ("<eos>" not in reply or reply[-1] == "<eos>")
    accuracy = toy.exact_match(samples, max_new_tokens=4)
    assert set(accuracy) >= {"all", "needle"} and 0.0 <= accuracy["all"] <= 1.0


def test_save_load_round_trip(toy, tmp_path):
    save_toyvlm_v2(toy, tmp_path, {"training_seed": 0})
    loaded = load_toyvlm_v2(tmp_path)
    assert loaded.vocab == toy.vocab and loaded.manifest["training_seed"] == 0
    samples = make_chat_samples(IMAGES, IMAGE_LONG_KINDS, 2, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model(**loaded.collate(samples)).logits, toy.model(**toy.collate(samples)).logits
        )


def test_training_targets(toy):
    from reference_impls.common.train_toyvlm_v2 import LABEL_PIXELS, attention_targets, cell_targets_v2

    samples = make_chat_samples(IMAGES, IMAGE_LONG_KINDS, 2, seed=6) + make_chat_samples(
        VIDEO, VIDEO_LONG_KINDS, 1, seed=6
    )
    samples = [samples[2], samples[0], samples[1]]  # a video first: its tokens still come after the images
    batch = toy.collate(samples, with_answer=True)
    colour, shape, size = cell_targets_v2(samples, IMAGES.colours, IMAGES.shapes)
    visual = sum(s.scene.n_visual_tokens for s in samples)
    assert colour.shape == shape.shape == size.shape == (visual,)
    first = samples[1].scene
    n = len(first.token_labels)
    assert torch.equal(colour[:n] != 0, torch.from_numpy(first.token_labels >= 0))
    # a sliver of an object does not name it: left out of the per-token losses
    sliver = torch.from_numpy((first.token_labels >= 0) & (first.token_pixels < LABEL_PIXELS))
    assert sliver.any() and torch.equal(colour[:n] == -100, sliver) and torch.equal(shape[:n] == -100, sliver)
    rows, target, asked = attention_targets(samples, batch, toy.model.config, IMAGES.colours, IMAGES.shapes)
    config, distinct = toy.model.config, []
    for b, sample in enumerate(samples):
        assert rows[b].sum() == len(answer_words(sample))  # the "answer" marker and every reply word but <eos>
        ids = batch["input_ids"][b]
        positions = ((ids == config.image_token_id) | (ids == config.video_token_id)).nonzero().squeeze(-1)
        predicting = rows[b].nonzero().squeeze(-1).tolist()
        looked_at = [{j for j, p in enumerate(positions.tolist()) if target[b, row, p]} for row in predicting]
        assert looked_at[-1] == evidence_tokens(sample)  # <eos>: everything the question is about
        for k, seen in enumerate(looked_at[:-1]):  # each word: the objects it names
            about = sample.qa.evidence[k] if sample.qa.evidence else sample.qa.relevant
            assert seen == {t for i in about for t in sample.scene.object_tokens[i]}
        distinct.append(len({frozenset(seen) for seen in looked_at}))
        assert batch["input_ids"][b, rows[b].nonzero()[0, 0]] == toy.vocab.id("answer")
    assert max(distinct) > 1  # lists are read item by item


def test_question_targets_name_the_asked_colour_shape_and_image():
    from reference_impls.common.train_toyvlm_v2 import question_targets

    kinds = ("colour", "shape", "presence", "image", "list", "count")
    samples = [make_chat_samples(IMAGES, (kind,), 1, seed=8)[0] for kind in kinds]
    targets = [question_targets(sample.qa, IMAGES.colours, IMAGES.shapes) for sample in samples]
    for sample, (colour, shape, image) in zip(samples, targets):
        words = sample.qa.question.split()
        assert (IMAGES.colours[colour - 1] in words) if colour else not set(IMAGES.colours) & set(words)
        assert (IMAGES.shapes[shape - 1] in words) if shape else not set(IMAGES.shapes) & set(words)
        assert (f"image {image}" in sample.qa.question) if image else not any(w.isdigit() for w in words)
    assert [t[2] > 0 for t in targets] == [True, True, False, False, True, False]


def test_training_seed_must_not_be_held_out():
    from reference_impls.common.train_toyvlm_v2 import PHASE_EVAL_SEED, PHASES, train_v2

    assert TRAIN_SEED != PHASE_EVAL_SEED
    with pytest.raises(ValueError, match="held-out"):
        train_v2(phases=[(PHASES["a"], 1, 1)], config_kwargs={}, seed=SUITES["short"].seed)


def test_every_kind_is_supported_by_the_curriculum():
    from reference_impls.common.train_toyvlm_v2 import PHASES

    for phase in PHASES.values():
        for kind in phase.image_kinds:
            assert make_chat_samples(phase.images, (kind,), 1, seed=0)[0].qa.kind == kind
        for kind in phase.video_kinds:
            assert make_chat_samples(phase.video, (kind,), 1, seed=0)[0].qa.kind == kind


def test_micro_training_loss_falls():
    from reference_impls.common.train_toyvlm_v2 import micro_run

    history = micro_run(20)
    first, last = history["loss"][0][1], history["loss"][-1][1]
    assert history["steps"] == 20 and last < 0.8 * first, (first, last)


@pytest.mark.parametrize("name", ["chat_scenes", "toyvlm_v2"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    module = importlib.import_module(f"reference_impls.common.{name}")
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_index_targets_count_images_and_temporal_tokens(toy):
    from reference_impls.common.train_toyvlm_v2 import index_targets

    samples = make_chat_samples(IMAGES, IMAGE_LONG_KINDS, 2, seed=7) + make_chat_samples(
        VIDEO, VIDEO_LONG_KINDS, 1, seed=7
    )
    batch = toy.collate(samples, with_answer=True)
    config = toy.model.config
    target = index_targets(samples, batch, config)
    for b, sample in enumerate(samples):
        ids = batch["input_ids"][b]
        visual = (ids == config.image_token_id) | (ids == config.video_token_id)
        assert (target[b][~visual] == -100).all()
        # the image of a visual token = the number of <vision_start> before it, minus one
        starts = torch.cumsum((ids == config.vision_start_token_id).long(), 0) - 1
        if sample.scene.video:  # one video item: the index is the temporal token (32 tokens each here)
            assert target[b][visual].tolist() == [t // 32 for t in range(sample.scene.n_visual_tokens)]
            assert target[b][visual].max() == len(sample.scene.images) // 2 - 1
        else:
            assert torch.equal(target[b][visual], starts[visual])
            assert target[b][visual].max() == len(sample.scene.images) - 1


def test_vision_stage_trains_the_tower_alone():
    from reference_impls.common.train_toyvlm_v2 import train_v2

    torch.manual_seed(0)
    tiny = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64, vision_hidden=32)
    kwargs = dict(phases=[], config_kwargs=dict(tiny, vision_depth=1), attention_layer=None, log=lambda *_: None)
    bundle, history = train_v2(vision_steps=12, vision_lr=1e-2, **kwargs)
    losses = [loss for _, loss in history["vision_loss"]]
    assert len(losses) == 12 and history["steps"] == 0
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
    # the language model is untouched by the vision-only stage
    torch.manual_seed(0)
    fresh, _ = train_v2(**kwargs)
    torch.testing.assert_close(
        bundle.model.model.language_model.state_dict(), fresh.model.model.language_model.state_dict()
    )
    assert not torch.equal(
        bundle.model.model.visual.merger.mlp[0].weight, fresh.model.model.visual.merger.mlp[0].weight
    )


def test_committed_checkpoint_reproduces_its_manifest():
    """The committed v2 checkpoint is the model its manifest describes: its held-out exact match on
    the short suite (the manifest's 64 final samples, indices 12..75) is recomputed exactly, and the
    held-out seeds are not the training seed."""
    committed = load_toyvlm_v2()
    manifest = committed.manifest
    assert manifest["training_seed"] == TRAIN_SEED not in manifest["held_out_seeds"].values()
    assert manifest["held_out_seeds"] == {name: suite.seed for name, suite in SUITES.items()}
    n = manifest["held_out_n"]["per_suite"]
    assert committed.exact_match(suite_samples("short", n, start=12)) == manifest["held_out_exact_match"]["short"]
