"""Synthetic scenes: coloured shapes on a noisy background, multi-image inputs and short videos.

Every ToyVLM experiment draws its data from here. A *scene* is a list of images (or the frames
of a short video) holding a few objects, each a coloured shape filling one 28 px cell (one
merged Qwen2.5-VL visual token), plus small distractor specks that are not objects. Questions
(colour, shape, count, presence, position, which image/frame, motion) and object-list captions
are deterministic functions of the scene, so the answer of every question lives in the few
visual tokens that cover the objects it names: dropping those tokens has a measurable cost.

Everything is deterministic by seed (``numpy.random.default_rng``) and needs only numpy.

Examples:
    >>> spec = SceneSpec(n_images=2, image_size=112)
    >>> sample = make_sample(spec, seed=0)
    >>> sample.scene.images[0].shape
    (112, 112, 3)
    >>> caption(sample.scene) == caption(make_sample(spec, seed=0).scene)
    True

Deviations / guesses:
    Objects are aligned to the 28 px merged-token grid by default (``aligned=True``) so that one
    object maps to one visual token; ``aligned=False`` places them at any pixel offset. The
    co-occurrence bias (``SceneSpec.cooccur``) mimics the object-pair statistics that
    hallucination papers blame (e.g. "fork" with "knife"); its strength is our choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

__all__ = [
    "COLOURS",
    "SHAPES",
    "ORDINALS",
    "COUNT_WORDS",
    "QUESTION_KINDS",
    "SceneObject",
    "Scene",
    "SceneSpec",
    "QA",
    "Sample",
    "make_scene",
    "make_video",
    "repeat_images",
    "ask",
    "caption",
    "make_sample",
    "make_samples",
    "render_shape",
]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "purple": (170, 60, 220),
    "cyan": (40, 210, 220),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond")
ORDINALS: tuple[str, ...] = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
COUNT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six")
QUESTION_KINDS: tuple[str, ...] = ("colour", "shape", "presence", "count", "position", "image", "frame", "motion")
CELL = 28
"""Pixels per merged visual token side (14 px patches, 2x2 merge)."""
_DISTRACTOR_COLOURS = ((128, 128, 128), (200, 200, 200), (120, 80, 40), (90, 90, 140))


@dataclass(frozen=True)
class SceneObject:
    """One object: a coloured shape in cell ``(row, col)`` of image (or frame) ``image``."""

    colour: str
    shape: str
    image: int
    row: int
    col: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    """Rendered images (``uint8``, ``(H, W, 3)``) and the objects they show."""

    images: list[np.ndarray]
    objects: list[SceneObject]
    grid: tuple[int, int]
    """Cells per image (rows, cols)."""
    video: bool = False
    """True when ``images`` are the frames of one video."""
    motion: tuple[int, str] | None = None
    """For videos: (index in ``objects`` of the first position of the moving object, direction)."""


@dataclass(frozen=True)
class SceneSpec:
    """What scenes look like. The defaults are the ToyVLM benchmark setting (4 x 64 = 256 tokens)."""

    n_images: int = 4
    image_size: int = 224
    """Side in pixels; a multiple of 28 (one merged visual token per 28 x 28 pixels)."""
    min_objects: int = 2
    max_objects: int = 5
    """Objects per scene (over all images); at most ``n_images * cells`` of course."""
    colours: tuple[str, ...] = tuple(COLOURS)
    shapes: tuple[str, ...] = SHAPES
    repeat_colour: float = 0.35
    """Probability that a new object reuses a colour already in the scene (makes counts > 1)."""
    n_distractors: int = 6
    """Small specks per image that are not objects."""
    noise: float = 8.0
    """Std of the per-pixel background noise (0-255 scale)."""
    aligned: bool = True
    cooccur: tuple[str, str, float] | None = None
    """``(shape_a, shape_b, p)``: each time ``shape_a`` is drawn and the scene still has room, a
    ``shape_b`` is added with probability ``p``; ``shape_b`` is otherwise drawn half as often. When
    ``shape_a`` is the last object there is no room, so P(B | A) ends up below ``p``."""
    video_frames: int = 0
    """> 0: make a video of this many frames instead of ``n_images`` images."""

    @property
    def cells(self) -> int:
        return (self.image_size // CELL) ** 2


@dataclass(frozen=True)
class QA:
    """A question, its one-word answer, its kind and the objects whose cells hold the answer."""

    question: str
    answer: str
    kind: str
    relevant: tuple[int, ...] = ()
    """Indices into ``scene.objects`` that the question is about (empty: none present)."""


@dataclass
class Sample:
    scene: Scene
    qa: QA
    spec: SceneSpec = field(default_factory=SceneSpec)


def render_shape(shape: str, size: int = CELL) -> np.ndarray:
    """Boolean ``(size, size)`` mask of ``shape`` centred in a square cell."""
    centre = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) - centre
    radius = size * 0.40
    if shape == "circle":
        return x**2 + y**2 <= radius**2
    if shape == "square":
        return (np.abs(x) <= radius * 0.85) & (np.abs(y) <= radius * 0.85)
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= radius * 1.15
    if shape == "cross":
        arm = radius * 0.35
        return ((np.abs(x) <= arm) & (np.abs(y) <= radius)) | ((np.abs(y) <= arm) & (np.abs(x) <= radius))
    if shape == "triangle":
        # apex up: the half-width grows linearly from the top edge to the bottom edge
        top, bottom = -radius, radius
        half = (y - top) / (bottom - top) * radius
        return (y >= top) & (y <= bottom) & (np.abs(x) <= half)
    raise ValueError(f"unknown shape {shape!r}")


_NOISE_BANK: list[np.ndarray] = []


def _noise(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """Gaussian noise cropped from a fixed bank at a random offset (fast and deterministic)."""
    if not _NOISE_BANK:
        _NOISE_BANK.append(np.random.default_rng(12345).normal(0.0, 1.0, (512 + 64, 512 + 64, 3)).astype(np.float32))
    bank = _NOISE_BANK[0]
    if shape[0] > 512 or shape[1] > 512:
        return rng.normal(0.0, std, shape).astype(np.float32)
    y, x = rng.integers(0, 64, size=2)
    flip = rng.integers(0, 3)
    return std * np.roll(bank[y : y + shape[0], x : x + shape[1]], flip, axis=2)


def _background(spec: SceneSpec, rng: np.random.Generator) -> np.ndarray:
    side = spec.image_size
    image = 24.0 + _noise(rng, (side, side, 3), spec.noise)
    for _ in range(spec.n_distractors):
        y, x = rng.integers(0, side - 4, size=2)
        colour = _DISTRACTOR_COLOURS[rng.integers(len(_DISTRACTOR_COLOURS))]
        image[y : y + 3, x : x + 3] = colour
    return image


def _paint(image: np.ndarray, obj: SceneObject, rng: np.random.Generator, aligned: bool) -> None:
    mask = render_shape(obj.shape)
    y, x = obj.row * CELL, obj.col * CELL
    if not aligned:  # shift by up to half a cell, staying inside the image
        side = image.shape[0]
        y = int(np.clip(y + rng.integers(-CELL // 2, CELL // 2 + 1), 0, side - CELL))
        x = int(np.clip(x + rng.integers(-CELL // 2, CELL // 2 + 1), 0, side - CELL))
    image[y : y + CELL, x : x + CELL][mask] = COLOURS[obj.colour]


def _draw_attributes(spec: SceneSpec, rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    """Colours and shapes of ``n`` objects, with colour repeats and the co-occurrence bias."""
    attributes: list[tuple[str, str]] = []
    shapes = list(spec.shapes)
    weights = np.ones(len(shapes))
    if spec.cooccur is not None:
        weights[shapes.index(spec.cooccur[1])] = 0.5
    weights /= weights.sum()
    while len(attributes) < n:
        used = [colour for colour, _ in attributes]
        if used and rng.random() < spec.repeat_colour:
            colour = used[rng.integers(len(used))]
        else:
            colour = spec.colours[rng.integers(len(spec.colours))]
        shape = shapes[rng.choice(len(shapes), p=weights)]
        attributes.append((colour, shape))
        # The hallucination captioner (and its committed results) were made with this rule; a
        # rule that forces the nominal P(B | A) would change that benchmark's scenes.
        if spec.cooccur is not None and shape == spec.cooccur[0] and len(attributes) < n:
            if rng.random() < spec.cooccur[2]:
                attributes.append((spec.colours[rng.integers(len(spec.colours))], spec.cooccur[1]))
    return attributes


def make_scene(spec: SceneSpec, seed: int) -> Scene:
    """A multi-image scene: ``spec.n_images`` images sharing ``min..max_objects`` objects."""
    if spec.video_frames:
        return make_video(spec, seed)
    if spec.image_size % CELL:
        raise ValueError(f"image_size must be a multiple of {CELL}")
    rng = np.random.default_rng(seed)
    side = spec.image_size // CELL
    n = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    cells = rng.choice(spec.n_images * side * side, size=n, replace=False)
    objects = []
    for (colour, shape), cell in zip(_draw_attributes(spec, rng, n), cells):
        image, rest = divmod(int(cell), side * side)
        objects.append(SceneObject(colour, shape, image, rest // side, rest % side))
    objects.sort(key=lambda o: (o.image, o.row, o.col))  # reading order: captions depend on it
    images = [_background(spec, rng) for _ in range(spec.n_images)]
    for obj in objects:
        _paint(images[obj.image], obj, rng, spec.aligned)
    return Scene([np.clip(im, 0, 255).astype(np.uint8) for im in images], objects, (side, side))


_MOVES = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}


def make_video(spec: SceneSpec, seed: int) -> Scene:
    """A short video: one object moves one cell per frame, one object flashes in a single frame,
    the other objects stay still. ``objects`` lists every (object, frame) appearance."""
    rng = np.random.default_rng(seed)
    frames, side = spec.video_frames, spec.image_size // CELL
    if side < frames:
        raise ValueError("the image must be at least video_frames cells wide for the motion")
    direction = list(_MOVES)[rng.integers(len(_MOVES))]
    dy, dx = _MOVES[direction]
    attributes = _draw_attributes(spec, rng, max(spec.min_objects, 2) + int(rng.integers(0, 2)))
    # moving object: choose a start so that the whole path stays inside the image
    start_y = int(rng.integers(0, side)) if dy == 0 else (0 if dy > 0 else side - 1)
    start_x = int(rng.integers(0, side)) if dx == 0 else (0 if dx > 0 else side - 1)
    path = [(start_y + dy * t, start_x + dx * t) for t in range(frames)]
    free = [(r, c) for r in range(side) for c in range(side) if (r, c) not in path]
    picks = rng.choice(len(free), size=len(attributes) - 1, replace=False)
    still = [free[i] for i in picks]
    flash_frame = int(rng.integers(frames))
    objects: list[SceneObject] = []
    for t in range(frames):
        objects.append(SceneObject(*attributes[0], t, *path[t]))
        if t == flash_frame:
            objects.append(SceneObject(*attributes[1], t, *still[0]))
        objects += [SceneObject(*attributes[k + 1], t, *still[k]) for k in range(1, len(still))]
    objects.sort(key=lambda o: (o.image, o.row, o.col))
    base = _background(replace(spec, n_distractors=0), rng)
    images = []
    for t in range(frames):
        frame = base + _noise(rng, base.shape, spec.noise / 2)
        for obj in objects:
            if obj.image == t:
                _paint(frame, obj, rng, True)
        images.append(np.clip(frame, 0, 255).astype(np.uint8))
    first = next(
        i
        for i, o in enumerate(objects)
        if o.image == 0 and (o.colour, o.shape) == attributes[0] and (o.row, o.col) == path[0]
    )
    return Scene(images, objects, (side, side), video=True, motion=(first, direction))


def repeat_images(scene: Scene, repeats: int, seed: int, noise: float = 4.0) -> Scene:
    """A redundant clip: every image of ``scene`` shown ``repeats`` times in a row, each copy
    with fresh Gaussian noise of std ``noise`` added (``A A B B ...`` for ``repeats=2``).

    ``objects`` lists each object once, at its first copy (image ``image * repeats``), so the
    indices of a question's ``relevant`` objects stay valid; colour, shape and presence answers
    are unchanged, counts over all frames are not.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    rng = np.random.default_rng([seed, 2])
    images = [
        np.clip(image.astype(np.float32) + _noise(rng, image.shape, noise), 0, 255).astype(np.uint8)
        for image in scene.images
        for _ in range(repeats)
    ]
    objects = [replace(obj, image=obj.image * repeats) for obj in scene.objects]
    return Scene(images, objects, scene.grid, video=False)


def caption(scene: Scene) -> str:
    """Object-list caption in reading order (image by image, row by row): ``"red circle and blue
    square"``. For videos, each object is listed once (at its first appearance)."""
    seen, names = set(), []
    for obj in scene.objects:
        key = (obj.colour, obj.shape) if scene.video else obj
        if key not in seen:
            seen.add(key)
            names.append(obj.name)
    return " and ".join(names) if names else "nothing"


def _unique(values: list[str]) -> list[str]:
    return sorted(v for v in set(values) if values.count(v) == 1)


def ask(scene: Scene, kind: str, rng: np.random.Generator, spec: SceneSpec | None = None) -> QA | None:
    """One question of ``kind`` about ``scene``, or None when the scene cannot support it
    (e.g. "what colour is the circle?" needs exactly one circle)."""
    spec = spec or SceneSpec()
    objs = scene.objects
    if scene.video and kind in ("colour", "shape", "presence", "count"):
        objs = [o for o in objs if o.image == 0]  # ask about the first frame only
    index = {id(o): i for i, o in enumerate(scene.objects)}
    if kind == "colour":
        shapes = _unique([o.shape for o in objs])
        if not shapes:
            return None
        shape = shapes[rng.integers(len(shapes))]
        obj = next(o for o in objs if o.shape == shape)
        return QA(f"what colour is the {shape} ?", obj.colour, kind, (index[id(obj)],))
    if kind == "shape":
        colours = _unique([o.colour for o in objs])
        if not colours:
            return None
        colour = colours[rng.integers(len(colours))]
        obj = next(o for o in objs if o.colour == colour)
        return QA(f"what shape is the {colour} object ?", obj.shape, kind, (index[id(obj)],))
    if kind == "presence":
        present = sorted({(o.colour, o.shape) for o in objs})
        if rng.random() < 0.5 and present:
            colour, shape = present[rng.integers(len(present))]
        else:  # a hard negative: shares the colour or the shape of a present object
            absent = [(c, s) for c in spec.colours for s in spec.shapes if (c, s) not in present]
            near = [(c, s) for c, s in absent if any(c == pc or s == ps for pc, ps in present)] or absent
            colour, shape = near[rng.integers(len(near))]
        hits = tuple(index[id(o)] for o in objs if (o.colour, o.shape) == (colour, shape))
        return QA(f"is there a {colour} {shape} ?", "yes" if hits else "no", kind, hits)
    if kind == "count":
        counts = {c: sum(o.colour == c for o in objs) for c in spec.colours}
        # favour colours that are present so that the answers are not mostly "zero"
        weights = np.array([0.4 + 2.0 * counts[c] for c in spec.colours])
        colour = spec.colours[rng.choice(len(spec.colours), p=weights / weights.sum())]
        hits = tuple(index[id(o)] for o in objs if o.colour == colour)
        return QA(f"how many {colour} objects ?", COUNT_WORDS[len(hits)], kind, hits)
    if kind == "position":
        names = _unique([o.name for o in objs])
        if not names:
            return None
        name = names[rng.integers(len(names))]
        obj = next(o for o in objs if o.name == name)
        rows, cols = scene.grid
        vertical = "top" if obj.row < rows / 2 else "bottom"
        horizontal = "left" if obj.col < cols / 2 else "right"
        return QA(f"where is the {name} ?", f"{vertical}-{horizontal}", kind, (index[id(obj)],))
    if kind == "image" and not scene.video:
        names = _unique([o.name for o in objs])
        if not names:
            return None
        name = names[rng.integers(len(names))]
        obj = next(o for o in objs if o.name == name)
        return QA(f"which image shows the {name} ?", ORDINALS[obj.image], kind, (index[id(obj)],))
    if kind == "frame" and scene.video:
        counts = {}
        for o in scene.objects:
            counts[o.name] = counts.get(o.name, 0) + 1
        flashes = [o for o in scene.objects if counts[o.name] == 1]
        if not flashes:
            return None
        obj = flashes[0]
        return QA(f"which frame shows the {obj.name} ?", ORDINALS[obj.image], kind, (index[id(obj)],))
    if kind == "motion" and scene.video and scene.motion is not None:
        first, direction = scene.motion
        name = scene.objects[first].name
        hits = tuple(i for i, o in enumerate(scene.objects) if o.name == name)
        return QA(f"which way does the {name} move ?", direction, kind, hits)
    return None


def make_sample(
    spec: SceneSpec, seed: int, kinds: tuple[str, ...] = ("colour", "shape", "presence", "count")
) -> Sample:
    """A scene and one question of a kind drawn from ``kinds`` (redrawn until the scene supports
    one). Deterministic in ``(spec, seed, kinds)``."""
    rng = np.random.default_rng([seed, 1])
    for attempt in range(100):
        scene = make_scene(spec, seed if attempt == 0 else int(rng.integers(2**31)))
        order = rng.permutation(len(kinds))
        for k in order:
            qa = ask(scene, kinds[k], rng, spec)
            if qa is not None:
                return Sample(scene, qa, spec)
    raise RuntimeError(f"no scene of {spec} supports questions of kinds {kinds}")


def make_samples(
    spec: SceneSpec, n: int, seed: int, kinds: tuple[str, ...] = ("colour", "shape", "presence", "count")
) -> list[Sample]:
    """``n`` samples; sample ``i`` uses seed ``seed * 1_000_003 + i`` (disjoint sets per ``seed``)."""
    return [make_sample(spec, seed * 1_000_003 + i, kinds) for i in range(n)]
