"""Self-check correction removes exactly the objects the (stubbed) model denies."""

from __future__ import annotations

from reference_impls.hallucination.post_hoc_correction import SelfCheckCorrection, remove_objects

OBJECTS = ("circle", "square", "triangle", "cross")


def test_removes_exactly_the_denied_objects_with_a_stubbed_model():
    captions = [["circle", "and", "square"], ["square", "and", "triangle", "and", "cross"], ["triangle"], ["nothing"]]
    present = [{"circle"}, {"triangle"}, set(), set()]
    asked = []

    def ask(i, names):
        asked.append((i, tuple(names)))
        return [name in present[i] for name in names]

    corrected = SelfCheckCorrection().correct(captions, OBJECTS, ask)
    assert corrected == [["circle"], ["triangle"], ["nothing"], ["nothing"]]
    assert asked == [(0, ("circle", "square")), (1, ("square", "triangle", "cross")), (2, ("triangle",))]


def test_nothing_denied_leaves_the_caption_unchanged():
    captions = [["circle", "and", "square"]]
    assert SelfCheckCorrection().correct(captions, OBJECTS, lambda i, names: [True] * len(names)) == captions


def test_remove_objects_keeps_connectors_only_between_kept_words():
    words = "circle and square and cross".split()
    assert remove_objects(words, {"circle"}, OBJECTS) == ["square", "and", "cross"]
    assert remove_objects(words, {"cross"}, OBJECTS) == ["circle", "and", "square"]
    assert remove_objects(words, {"circle", "square", "cross"}, OBJECTS, empty=None) == []
    assert remove_objects(["big", "circle"], {"circle"}, OBJECTS) == ["nothing"]
