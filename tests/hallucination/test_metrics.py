import pytest

from reference_impls.hallucination.hallucination_metrics import (
    chair,
    extract_objects,
    mention_rate,
    object_f1,
    pope,
    pope_questions,
)


def test_chair_hand_built():
    mentions = [["cat", "dog", "car", "cup"], ["cat"], []]
    truths = [{"cat", "dog", "car"}, {"cat", "bus"}, {"cup"}]
    scores = chair(mentions, truths)
    assert scores["chair_i"] == pytest.approx(1 / 5)
    assert scores["chair_s"] == pytest.approx(1 / 3)
    assert scores["recall"] == pytest.approx(4 / 6)
    assert scores["mentions"] == pytest.approx(5 / 3)
    assert chair([["cat", "dog", "car", "bus"]], [{"cat", "dog", "car"}])["chair_i"] == 0.25


def test_object_f1_and_mention_rate():
    scores = object_f1([["a", "b"], ["c"]], [{"a"}, {"c", "d"}])
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert mention_rate([["a", "b"], ["c"], ["b"]], "b") == pytest.approx(2 / 3)


def test_pope_hand_built():
    answers = [True, True, False, False, True, False]
    labels = [True, False, True, False, True, False]
    scores = pope(answers, labels)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["yes_ratio"] == pytest.approx(0.5)


def test_pope_questions_adversarial_picks_cooccurring():
    truths = [{"a", "b"}, {"a", "b"}, {"a", "c"}, {"d"}]
    questions = pope_questions(truths, ["a", "b", "c", "d", "e"], per_image=1, mode="adversarial")
    absent_for_a_only = [obj for idx, obj, present in questions if idx == 2 and not present]
    assert absent_for_a_only == ["b"]  # b co-occurs most with a
    assert sum(present for *_, present in questions) == 4


def test_extract_objects_synonyms_and_duplicates():
    words = "a kitty and a dog and a cat".split()
    # every mention by default (CHAIR counts repeats); distinct=True keeps the first of each
    assert extract_objects(words, ["cat", "dog"], {"kitty": "cat"}) == ["cat", "dog", "cat"]
    assert extract_objects(words, ["cat", "dog"], {"kitty": "cat"}, distinct=True) == ["cat", "dog"]


def test_extract_objects_folds_regular_plurals():
    words = "two boxes three ponies and dogs but not glass or mice".split()
    assert extract_objects(words, ["box", "pony", "dog", "glass", "mouse"]) == ["box", "pony", "dog", "glass"]
    assert extract_objects(["mice"], ["mouse"], {"mice": "mouse"}) == ["mouse"]


def test_chair_distinct_option_counts_once_per_caption():
    mentions, truths = [["square", "square", "square"], ["circle"]], [set(), {"circle"}]
    assert chair(mentions, truths)["chair_i"] == pytest.approx(3 / 4)
    assert chair(mentions, truths, distinct=True)["chair_i"] == pytest.approx(1 / 2)
    assert chair([[], []], [{"a"}, set()])["chair_i"] == 0.0  # nothing mentioned: 0, not ZeroDivisionError
