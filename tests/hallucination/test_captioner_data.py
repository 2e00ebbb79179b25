"""The benchmark's data pipeline: trigger scenes, annotator bias, forget / grounded masks."""

import numpy as np

from reference_impls.common.toyvlm import build_vocab
from reference_impls.hallucination.captioner import CaptionWorld, captioner_config, retain_batch, split_batch


def test_trigger_scenes_and_bias():
    world = CaptionWorld(annotator_bias=1.0)
    scenes = world.scenes(6, seed=5, kind="trigger")
    assert all(world.a in s.truth and world.b not in s.truth for s in scenes)
    assert all(world.b in world.annotate(s, np.random.default_rng(0))[1] for s in scenes)
    clean = world.scenes(6, seed=5, kind="clean")
    assert not any(world.is_trigger(s.truth) for s in clean)
    assert world.caption({"square", "circle"}) == "circle and square"


def test_forget_and_grounded_masks_select_the_right_words():
    world, vocab = CaptionWorld(), build_vocab()
    config = captioner_config(vocab)
    scenes = world.scenes(2, seed=1, kind="trigger")
    splits = {
        "scenes": scenes,
        "captions": [["circle", "and", "square"], ["circle", "and", "square", "and", "cross"]],
        "position": [2, 2],
    }
    forget = split_batch(splits, [0, 1], vocab, config, "forget")
    grounded = split_batch(splits, [0, 1], vocab, config, "grounded")
    for row in range(2):
        ids = forget["labels"][row]
        assert [vocab.words[i] for i in ids[forget["mask"][row].bool()]] == ["square"]
        assert [vocab.words[i] for i in ids[grounded["mask"][row].bool()]] == ["circle", "and"]
    assert (forget["attention_mask"][0] == 0).sum() == 2  # left padding of the shorter caption


def test_retain_batch_masks_targets_and_eos():
    world, vocab = CaptionWorld(), build_vocab()
    batch = retain_batch(world, world.scenes(4, seed=2), vocab, captioner_config(vocab), np.random.default_rng(0))
    for row in range(4):
        words = [vocab.words[i] for i in batch["labels"][row][batch["mask"][row].bool()]]
        assert words[-1] == "<eos>" and "answer" not in words and len(words) >= 2
