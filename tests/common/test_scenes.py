"""Synthetic scenes: determinism and answers that follow from the drawn objects."""

import numpy as np
import pytest

from reference_impls.common.scenes import (
    CELL,
    COLOURS,
    COUNT_WORDS,
    ORDINALS,
    QUESTION_KINDS,
    SceneSpec,
    ask,
    caption,
    make_sample,
    make_samples,
    make_scene,
    render_shape,
)

SPEC = SceneSpec(n_images=2, image_size=112, max_objects=6)


def test_deterministic_by_seed():
    a, b = make_sample(SPEC, 7), make_sample(SPEC, 7)
    assert a.qa == b.qa and a.scene.objects == b.scene.objects
    assert all(np.array_equal(x, y) for x, y in zip(a.scene.images, b.scene.images))
    c = make_sample(SPEC, 8)
    assert not all(np.array_equal(x, y) for x, y in zip(a.scene.images, c.scene.images))


def test_objects_are_painted_in_their_cells():
    for seed in range(20):
        scene = make_scene(SPEC, seed)
        for obj in scene.objects:
            y, x = obj.row * CELL + CELL // 2, obj.col * CELL + CELL // 2
            assert tuple(scene.images[obj.image][y, x]) == COLOURS[obj.colour]


def _check(scene, qa):
    objs = scene.objects
    if qa.kind == "colour":
        shape = qa.question.split()[-2]
        (match,) = [o for o in objs if o.shape == shape]
        assert qa.answer == match.colour
    elif qa.kind == "shape":
        colour = qa.question.split()[-3]
        (match,) = [o for o in objs if o.colour == colour]
        assert qa.answer == match.shape
    elif qa.kind == "presence":
        colour, shape = qa.question.split()[-3:-1]
        present = any(o.colour == colour and o.shape == shape for o in objs)
        assert qa.answer == ("yes" if present else "no")
    elif qa.kind == "count":
        colour = qa.question.split()[2]
        assert qa.answer == COUNT_WORDS[sum(o.colour == colour for o in objs)]
    elif qa.kind == "image":
        colour, shape = qa.question.split()[-3:-1]
        (match,) = [o for o in objs if o.colour == colour and o.shape == shape]
        assert qa.answer == ORDINALS[match.image]
    # the relevant objects are exactly the ones the question names
    for i in qa.relevant:
        assert objs[i].colour in qa.question or objs[i].shape in qa.question


@pytest.mark.parametrize("kind", ["colour", "shape", "presence", "count", "image", "position"])
def test_answers_follow_from_the_objects(kind):
    rng = np.random.default_rng(0)
    asked = 0
    for seed in range(40):
        scene = make_scene(SPEC, seed)
        qa = ask(scene, kind, rng, SPEC)
        if qa is not None:
            asked += 1
            _check(scene, qa)
    assert asked >= 10


def test_presence_is_balanced():
    answers = [s.qa.answer for s in make_samples(SPEC, 200, seed=3, kinds=("presence",))]
    assert 0.35 < answers.count("yes") / len(answers) < 0.65


def test_captions_are_deterministic_object_lists():
    scene = make_scene(SPEC, 5)
    assert caption(scene) == caption(make_scene(SPEC, 5))
    assert caption(scene) == " and ".join(o.name for o in scene.objects)


def test_cooccurrence_bias():
    biased = SceneSpec(n_images=1, image_size=112, min_objects=2, max_objects=3, cooccur=("circle", "square", 0.95))

    def rate(spec):
        with_circle = [make_scene(spec, s) for s in range(300)]
        with_circle = [sc for sc in with_circle if any(o.shape == "circle" for o in sc.objects)]
        return np.mean([any(o.shape == "square" for o in sc.objects) for sc in with_circle])

    assert rate(biased) > 0.85 > rate(SceneSpec(n_images=1, image_size=112, min_objects=2, max_objects=3))


def test_video_motion_and_flash():
    spec = SceneSpec(video_frames=4, image_size=112)
    scene = make_scene(spec, 2)
    assert scene.video and len(scene.images) == 4
    first, direction = scene.motion
    mover = scene.objects[first]
    path = sorted((o.image, o.row, o.col) for o in scene.objects if o.name == mover.name)
    steps = {(b[1] - a[1], b[2] - a[2]) for a, b in zip(path, path[1:])}
    assert steps == {{"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}[direction]}
    rng = np.random.default_rng(0)
    frame = ask(scene, "frame", rng, spec)
    assert frame is not None and frame.answer in ORDINALS[:4]
    assert ask(scene, "motion", rng, spec).answer == direction


def test_shapes_are_distinct():
    masks = {name: render_shape(name) for name in ("circle", "square", "triangle", "cross", "diamond")}
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert (masks[a] != masks[b]).sum() > 20
    assert set(QUESTION_KINDS) >= {"colour", "shape", "count", "presence", "position", "frame"}
