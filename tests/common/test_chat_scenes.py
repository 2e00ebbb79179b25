"""Chat-layout scenes of ToyVLM v2: determinism, suite sizes, answers, evidence and seeds."""

import numpy as np
import pytest

from reference_impls.common.chat_scenes import (
    COLOURS,
    IMAGE_LONG_KINDS,
    IMAGE_SHORT_KINDS,
    SUITES,
    TRAIN_SEED,
    VIDEO_LONG_KINDS,
    VIDEO_SHORT_KINDS,
    ChatSceneSpec,
    answer_words,
    evidence_tokens,
    make_chat_sample,
    make_chat_samples,
    suite_samples,
    texture,
)
from reference_impls.common.scenes import SHAPES, render_shape

SMALL = ChatSceneSpec(n_images=(3, 3), cells=(4, 4), objects_per_image=(1, 3))


def test_deterministic_by_seed_and_index():
    a, b = make_chat_sample(SMALL, IMAGE_LONG_KINDS, 7, 3), make_chat_sample(SMALL, IMAGE_LONG_KINDS, 7, 3)
    assert a.qa == b.qa and a.scene.objects == b.scene.objects
    assert all(np.array_equal(x, y) for x, y in zip(a.scene.images, b.scene.images))
    c = make_chat_sample(SMALL, IMAGE_LONG_KINDS, 7, 4)
    assert not all(np.array_equal(x, y) for x, y in zip(a.scene.images, c.scene.images))


@pytest.mark.parametrize("name", list(SUITES))
def test_suite_visual_tokens(name):
    samples = suite_samples(name, 2)
    tokens = [s.scene.n_visual_tokens for s in samples]
    if name == "stress":
        assert min(tokens) >= 4096
    else:
        assert min(tokens) >= 1024
    if name == "video":
        assert all(s.scene.video and 16 <= len(s.scene.images) <= 32 and len(s.scene.images) % 2 == 0 for s in samples)
        assert tokens == [len(s.scene.images) // 2 * 8 * 16 for s in samples]
    if name in ("short", "long", "stress"):
        assert all(len(s.scene.images) == 16 for s in samples)


def test_answer_lengths():
    assert all(len(answer_words(s)) == 2 for s in suite_samples("short", 10))
    lengths = [len(answer_words(s)) for s in suite_samples("long", 30)]
    assert min(lengths) >= 5 and max(lengths) <= 20 and np.mean(lengths) >= 6
    assert all(answer_words(s)[-1] == "<eos>" and "<eos>" not in s.qa.answer for s in suite_samples("video", 3))


def test_seeds_are_disjoint():
    seeds = [suite.seed for suite in SUITES.values()]
    assert len(set(seeds)) == len(seeds) and TRAIN_SEED not in seeds
    train = make_chat_sample(SUITES["short"].spec, SUITES["short"].kinds, TRAIN_SEED, 0)
    held = suite_samples("short", 1)[0]
    assert not np.array_equal(train.scene.images[0], held.scene.images[0])


def test_objects_cover_one_to_four_tokens_and_are_painted():
    for sample in make_chat_samples(SMALL, IMAGE_SHORT_KINDS, 30, seed=3):
        scene = sample.scene
        for obj, tokens in zip(scene.objects, scene.object_tokens):
            assert 1 <= len(tokens) <= 4
            image = scene.images[obj.image]
            box = image[obj.y : obj.y + obj.size, obj.x : obj.x + obj.size]
            mask = render_shape(obj.shape, obj.size)
            colour = np.asarray(COLOURS[obj.colour], dtype=np.float32)
            surface = (texture(obj.shape, obj.size, obj.y, obj.x)[..., None] * colour).astype(np.uint8)
            assert (box[mask] == surface[mask]).all()
        labelled = set(np.flatnonzero(scene.token_labels >= 0).tolist())
        assert labelled <= {t for tokens in scene.object_tokens for t in tokens}
    sizes = {len(t) for s in make_chat_samples(SMALL, IMAGE_SHORT_KINDS, 30, seed=3) for t in s.scene.object_tokens}
    assert sizes >= {1, 2, 4}  # unaligned objects of varied size


@pytest.mark.parametrize("kind", ["colour", "count", "list", "where", "tally_all", "describe"])
def test_answers_follow_from_the_objects(kind):
    for sample in make_chat_samples(SMALL, (kind,), 15, seed=5):
        objs, qa = sample.scene.objects, sample.qa
        words = qa.question.split()
        if kind == "colour":
            image, shape = int(words[-2]) - 1, words[4]
            (match,) = [o for o in objs if o.image == image and o.shape == shape]
            assert qa.answer == match.colour
        elif kind == "count":
            assert qa.answer == str(sum(o.colour == words[2] for o in objs))
        elif kind in ("list", "describe"):
            image = int(words[-2]) - 1
            order = lambda o: (list(COLOURS).index(o.colour), SHAPES.index(o.shape))  # noqa: E731
            group = sorted((o for o in objs if o.image == image), key=order)
            names = qa.answer.replace(" and ", " , ").split(" , ")
            expected = [f"{o.size_word} {o.name}" if kind == "describe" else o.name for o in group]
            assert names == expected
        elif kind == "where":
            query = " ".join(words[4:-1])
            hits = sorted({o.image + 1 for o in objs if query in (o.name, f"{o.colour} object", o.shape)})
            assert qa.answer.replace(" and ", " , ").split(" , ") == ["images " + str(hits[0])] + [
                str(h) for h in hits[1:]
            ]
        elif kind == "tally_all":
            parts = [p.split() for p in qa.answer.replace(" and ", " , ").split(" , ")]
            assert {c: int(n) for n, c in parts} == {c: n for c in COLOURS if (n := sum(o.colour == c for o in objs))}
        assert qa.answer == "0" or (set(qa.relevant) and evidence_tokens(sample))


def test_video_flash_and_motion():
    spec = SUITES["video"].spec
    for sample in make_chat_samples(spec, ("events",), 3, seed=9):
        scene = sample.scene
        flash, first = scene.flash
        obj = scene.objects[flash]
        centre = (obj.y + obj.size // 2, obj.x + obj.size // 2)
        bright = texture(obj.shape, obj.size, obj.y, obj.x)[obj.size // 2, obj.size // 2]
        painted = tuple((bright * np.asarray(COLOURS[obj.colour], dtype=np.float32)).astype(np.uint8))
        shown = [tuple(frame[centre]) == painted for frame in scene.images]
        assert [t for t, s in enumerate(shown) if s] == [first, first + 1]
        mover, direction = scene.moving
        assert sample.qa.answer.startswith(
            f"{scene.objects[mover].name} moves {direction} and {obj.name} appears in frames {first + 1}"
        )
        tokens = scene.object_tokens[mover]
        per_group = 8 * 16
        first_group = sorted(t % per_group for t in tokens if t < per_group)
        last_group = sorted(t % per_group for t in tokens if t >= (len(scene.images) // 2 - 1) * per_group)
        axis = (lambda t: t % 16) if direction in ("left", "right") else (lambda t: t // 16)
        sign = 1 if direction in ("right", "down") else -1
        assert sign * (np.mean([axis(t) for t in last_group]) - np.mean([axis(t) for t in first_group])) > 0


def test_every_video_kind_is_supported():
    for kind in VIDEO_SHORT_KINDS + VIDEO_LONG_KINDS:
        assert make_chat_sample(SUITES["video"].spec, (kind,), 1, 0).qa.kind == kind


def test_each_shape_has_its_own_pattern_in_the_same_phase_in_every_patch():
    """A fragment of an object must name its shape: patterns differ between shapes and, anchored to
    the pixel grid with periods dividing the 14 px patch, look the same in every patch."""
    templates = {}
    for shape in SHAPES:
        surface = texture(shape, 60, 5, 9)  # pixels (5..64, 9..68) of the image
        patches = [surface[r - 5 : r + 9, c - 9 : c + 5] for r in (14, 28, 42) for c in (14, 28, 42)]
        assert all(np.array_equal(patches[0], p) for p in patches[1:]), shape
        templates[shape] = patches[0].tobytes()
    assert len(set(templates.values())) == len(SHAPES)


def test_each_answer_word_names_the_objects_it_is_about():
    kinds = ("list", "describe", "tally", "where", "tally_all")
    for sample in make_chat_samples(SUITES["long"].spec, kinds, 20, seed=9):
        qa, objects = sample.qa, sample.scene.objects
        words = qa.answer.split()
        assert len(qa.evidence) == len(words) and all(set(about) <= set(qa.relevant) for about in qa.evidence)
        for j, (word, about) in enumerate(zip(words, qa.evidence)):
            if word in (",", "and"):  # a separator is about the item it introduces
                assert about == qa.evidence[j + 1]
            elif word in COLOURS:
                assert about and all(objects[i].colour == word for i in about)
            elif word in SHAPES:
                assert about == (next(i for i in about if objects[i].shape == word),)
            elif word.isdigit() and qa.kind in ("tally", "tally_all"):
                assert int(word) == len(about)
            elif word.isdigit():  # "images 3 , 7": the objects in that image
                assert {objects[i].image + 1 for i in about} == {int(word)}
