"""Chat-layout scenes for ToyVLM v2: many images or a long video, objects of varied size, questions
with short and multi-token answers.

ToyVLM v1 (:mod:`reference_impls.common.scenes`) asks one-word questions about 4 x 64 = 256 visual
tokens with each object filling exactly one merged token. Real VLM prompts look different: several
images or a video first, the question last, answers of many tokens, thousands of visual tokens.
This module draws such samples; :mod:`reference_impls.common.toyvlm_v2` turns them into
``<bos> (<vision_start> <image|video>... <vision_end>)+ question answer -> reply <eos>`` inputs.

A *scene* is a list of images (each ``rows x cols`` merged tokens of 28 px) or the frames of one
video (two frames per temporal token, like Qwen2.5-VL). Objects are coloured shapes of side 14-18 px
("small") or 24-28 px ("large") at any pixel offset, so each covers 1 to 4 merged tokens, each
shape with its own surface pattern (:func:`texture`: stripes, checks or solid); grey
shapes and specks are distractors that no question names. For every object we record the merged
tokens that show it (:attr:`ChatScene.object_tokens`), so the evidence of each question is known.

Question kinds (answers are word sequences; the model adds ``<eos>``):

* short, images: ``colour`` and ``shape`` (of an object named with its image), ``presence``,
  ``size``, ``image`` (needles: one object),
  ``count`` (aggregation over all images). One word.
* long, images: ``list`` and ``describe`` (the objects of one image, with their size for
  ``describe``), ``tally`` (counts with colour words in one image), ``where`` (which images show X:
  aggregation), ``tally_all`` (counts of every colour over all images: aggregation). 5-20 tokens
  with ``<eos>``. Objects are listed in the vocabulary's order (by colour, then shape; names are
  unique within an image), images and colours in increasing order.
* video: ``colour``, ``shape``, ``presence``, ``count``, ``motion`` (short); ``still``, ``flash``,
  ``events`` (long).

:data:`SUITES` fixes the held-out benchmark sets (with their seeds); training draws from the same
generator with :data:`TRAIN_SEED`, and sample ``i`` of seed ``s`` uses the random stream
``(s, i)``, so training and held-out samples never share a stream.

Examples:
    >>> suite = SUITES["long"]
    >>> sample = make_chat_sample(suite.spec, suite.kinds, seed=suite.seed, index=0)
    >>> sample.scene.n_visual_tokens
    1024
    >>> 5 <= len(sample.qa.answer.split()) + 1 <= 20
    True
    >>> sample.qa == make_chat_sample(suite.spec, suite.kinds, seed=suite.seed, index=0).qa
    True

Deviations / guesses:
    Everything here is our own design (no paper defines these scenes). Lists follow the
    vocabulary's order rather than the layout: "the next name after the last one said" is a
    lookup on what the visual tokens show, whereas "the next object to the right" needs each
    token's column, which a Qwen2.5-VL token does not carry (its position only enters through
    M-RoPE). (Until 2026-12-07 lists read left to right and descriptions named quadrants:
    after 2,400 training steps lists scored 0.4 and descriptions 0.0 on held-out phase-``a``
    scenes while one-word questions scored 1.0.) "Small" and "large" are separated by a 6 px
    gap, so that size is visible at the 28 px token resolution. A merged token "shows" an object when at least :data:`MIN_PIXELS` of its pixels
    are painted with it. Shapes carry a surface pattern anchored to the pixel grid (real object
    classes differ in texture too; without it a token's fragment of an outline did not tell the
    shape). A flash lasts two frames (one temporal token), since one frame would be
    averaged with its neighbour by the temporal patch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .scenes import _DISTRACTOR_COLOURS, CELL, COLOURS, SHAPES, _noise, render_shape

__all__ = [
    "AGGREGATION_KINDS",
    "IMAGE_LONG_KINDS",
    "IMAGE_SHORT_KINDS",
    "LARGE_PX",
    "MIN_PIXELS",
    "SMALL_PX",
    "SUITES",
    "TEXTURES",
    "TRAIN_SEED",
    "VIDEO_LONG_KINDS",
    "VIDEO_SHORT_KINDS",
    "ChatObject",
    "ChatQA",
    "ChatSample",
    "ChatScene",
    "ChatSceneSpec",
    "ChatSuite",
    "answer_words",
    "ask_chat",
    "evidence_tokens",
    "make_chat_sample",
    "make_chat_samples",
    "make_chat_scene",
    "suite_samples",
    "texture",
]

SMALL_PX = (14, 18)
LARGE_PX = (24, 28)
"""Object sides in pixels: at most 28, so an unaligned object covers 1 to 4 merged tokens."""
MIN_PIXELS = 4
"""Painted pixels of an object that make a merged token show it."""
TEXTURES = {"circle": "solid", "square": "rows", "triangle": "columns", "cross": "checks", "diamond": "diagonals"}
"""The surface pattern of each shape (see :func:`texture`): a fragment of an object identifies it."""
DARK = 0.45
"""Brightness of a pattern's dark pixels, relative to the object's colour."""
MAX_NUMBER = 40
"""Numbers (image and frame indices, counts) are the words ``0`` .. ``MAX_NUMBER``."""
IMAGE_SHORT_KINDS = ("colour", "shape", "presence", "size", "image", "count")
IMAGE_LONG_KINDS = ("list", "describe", "tally", "where", "tally_all")
VIDEO_SHORT_KINDS = ("colour", "shape", "presence", "count", "motion")
VIDEO_LONG_KINDS = ("still", "flash", "events")
AGGREGATION_KINDS = ("count", "where", "tally_all")
"""Kinds whose evidence is spread over images; every other kind is a needle (one object or image)."""
TRAIN_SEED = 0
_DIRECTIONS = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}


@dataclass(frozen=True)
class ChatSceneSpec:
    """What scenes look like. ``n_images`` and ``video_frames`` are inclusive ``(min, max)`` ranges."""

    n_images: tuple[int, int] = (16, 16)
    cells: tuple[int, int] = (8, 8)
    """Merged tokens per image or frame (rows, cols); 28 px each."""
    min_visual_tokens: int = 0
    """> 0: square images just large enough that the sample has this many visual tokens."""
    objects_per_image: tuple[int, int] = (1, 3)
    video_frames: tuple[int, int] = (0, 0)
    """> 0: one video of an even number of frames in this range instead of images."""
    still_objects: tuple[int, int] = (2, 4)
    """Video only: objects that do not move (besides one moving and one flashing object)."""
    n_specks: int = 4
    """3 x 3 px grey specks per image or frame."""
    ghost_rate: float = 0.5
    """Probability of one grey distractor shape per image."""
    noise: float = 8.0
    colours: tuple[str, ...] = tuple(COLOURS)
    shapes: tuple[str, ...] = SHAPES


@dataclass(frozen=True)
class ChatObject:
    """A coloured shape of side ``size`` px whose top-left pixel is ``(y, x)`` in image ``image``
    (for videos: its position in the first frame where it appears)."""

    colour: str
    shape: str
    size: int
    image: int
    y: int
    x: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def size_word(self) -> str:
        return "small" if self.size <= SMALL_PX[1] else "large"


@dataclass
class ChatScene:
    """Rendered images or frames (uint8 ``(H, W, 3)``), objects and what each merged token shows."""

    images: list[np.ndarray]
    objects: list[ChatObject]
    object_tokens: list[tuple[int, ...]]
    """Per object: indices of the merged visual tokens (in prompt order) that show it."""
    token_labels: np.ndarray
    """Per visual token: the index of the object with the most pixels in it, or -1."""
    token_pixels: np.ndarray
    """Per visual token: how many pixels of that object it holds (0 when the label is -1)."""
    video: bool = False
    moving: tuple[int, str] | None = None
    """Video: (object index, direction) of the moving object."""
    flash: tuple[int, int] | None = None
    """Video: (object index, first frame) of the object shown in two frames only."""

    @property
    def n_visual_tokens(self) -> int:
        return len(self.token_labels)


@dataclass(frozen=True)
class ChatQA:
    """A question, its answer (words, without ``<eos>``), its kind and the objects it is about."""

    question: str
    answer: str
    kind: str
    relevant: tuple[int, ...] = ()
    evidence: tuple[tuple[int, ...], ...] = ()
    """Per answer word (when set): the objects that word is about (the second item of a list is
    about the second object; a separator is about the item it introduces)."""

    @property
    def scope(self) -> str:
        return "aggregation" if self.kind in AGGREGATION_KINDS else "needle"


@dataclass
class ChatSample:
    scene: ChatScene
    qa: ChatQA
    spec: ChatSceneSpec = field(default_factory=ChatSceneSpec)
    follow_ups: tuple[ChatQA, ...] = ()
    """Further turns about the same scene (training only: a multi-turn chat, each question after
    the previous reply); held-out samples have none."""


def answer_words(sample: ChatSample | ChatQA) -> list[str]:
    """The answer as the model must produce it: its words, then ``<eos>``."""
    qa = sample.qa if isinstance(sample, ChatSample) else sample
    return qa.answer.split() + ["<eos>"]


def evidence_tokens(sample: ChatSample) -> set[int]:
    """Visual tokens that show an object the question is about."""
    return {t for i in sample.qa.relevant for t in sample.scene.object_tokens[i]}


def texture(shape: str, size: int, y: int = 0, x: int = 0) -> np.ndarray:
    """``(size, size)`` brightness (1 or :data:`DARK`) of ``shape``'s surface pattern for an object
    whose top-left pixel is ``(y, x)``: 1 px rows, columns or checks, 7 px diagonals, or solid.

    An unaligned object of 14-28 px leaves only a part of itself in each 28 px merged token, often
    too little of the outline to tell a circle from a square (a linear probe on the vision tower's
    tokens read shape at 0.21-0.26, chance 0.20); real object classes are also told apart by their
    surface, so each shape gets its own pattern. Patterns are anchored to the image's pixel grid,
    with periods that divide the 14 px patch, so every patch sees a pattern in the same phase."""
    rows, cols = np.mgrid[y : y + size, x : x + size]
    bright = {
        "solid": np.ones((size, size), dtype=bool),
        "rows": rows % 2 == 0,
        "columns": cols % 2 == 0,
        "checks": (rows + cols) % 2 == 0,
        "diagonals": (rows + cols) % 7 < 3,
    }[TEXTURES[shape]]
    return np.where(bright, 1.0, DARK).astype(np.float32)


class _Canvas:
    """Images plus per-token pixel counts, filled object by object."""

    def __init__(self, n_items: int, rows: int, cols: int, frames_per_item: int = 1):
        self.rows, self.cols, self.per_item = rows, cols, frames_per_item
        self.best = np.zeros(n_items * rows * cols, dtype=np.int32)  # most pixels of one object so far
        self.labels = np.full(n_items * rows * cols, -1, dtype=np.int64)
        self.tokens: dict[int, dict[int, int]] = {}  # object -> token -> pixels

    def paint(
        self,
        image: np.ndarray,
        frame: int,
        index: int,
        colour: tuple[int, int, int],
        shape: str,
        size: int,
        y: int,
        x: int,
    ) -> None:
        mask = render_shape(shape, size)
        surface = texture(shape, size, y, x)[..., None] * np.asarray(colour, dtype=np.float32)  # (size, size, 3)
        image[y : y + size, x : x + size][mask] = surface[mask]
        if index < 0:
            return
        base = (frame // self.per_item) * self.rows * self.cols
        pixels = self.tokens.setdefault(index, {})
        for r in range(y // CELL, (y + size - 1) // CELL + 1):
            for c in range(x // CELL, (x + size - 1) // CELL + 1):
                part = mask[max(r * CELL - y, 0) : (r + 1) * CELL - y, max(c * CELL - x, 0) : (c + 1) * CELL - x]
                token = base + r * self.cols + c
                pixels[token] = pixels.get(token, 0) + int(part.sum())

    def finish(self, n_objects: int) -> tuple[list[tuple[int, ...]], np.ndarray, np.ndarray]:
        shown = []
        for index in range(n_objects):
            pixels = self.tokens.get(index, {})
            shown.append(tuple(sorted(t for t, n in pixels.items() if n >= MIN_PIXELS)))
            for token, n in pixels.items():
                if n >= MIN_PIXELS and n > self.best[token]:
                    self.best[token], self.labels[token] = n, index
        return shown, self.labels, self.best


def _background(spec: ChatSceneSpec, rng: np.random.Generator, height: int, width: int, canvas: _Canvas) -> np.ndarray:
    image = 24.0 + _noise(rng, (height, width, 3), spec.noise)
    for _ in range(spec.n_specks):
        y, x = rng.integers(0, height - 4), rng.integers(0, width - 4)
        image[y : y + 3, x : x + 3] = _DISTRACTOR_COLOURS[rng.integers(len(_DISTRACTOR_COLOURS))]
    if rng.random() < spec.ghost_rate:
        size = int(rng.integers(SMALL_PX[0], LARGE_PX[1] + 1))
        grey = _DISTRACTOR_COLOURS[rng.integers(len(_DISTRACTOR_COLOURS))]
        shape = spec.shapes[rng.integers(len(spec.shapes))]
        canvas.paint(
            image, 0, -1, grey, shape, size, int(rng.integers(0, height - size)), int(rng.integers(0, width - size))
        )
    return image


def _size(rng: np.random.Generator) -> int:
    low, high = SMALL_PX if rng.random() < 0.5 else LARGE_PX
    return int(rng.integers(low, high + 1))


def _place(
    rng: np.random.Generator, size: int, height: int, width: int, taken: list[tuple[int, int, int]]
) -> tuple[int, int] | None:
    """A free top-left corner: no overlap (2 px margin) with ``taken`` boxes ``(y, x, size)``."""
    for _ in range(60):
        y, x = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
        if any(y < ty + ts + 2 and ty < y + size + 2 and x < tx + ts + 2 and tx < x + size + 2 for ty, tx, ts in taken):
            continue
        return y, x
    return None


def _images_scene(spec: ChatSceneSpec, rng: np.random.Generator) -> ChatScene:
    n = int(rng.integers(spec.n_images[0], spec.n_images[1] + 1))
    rows, cols = spec.cells
    if spec.min_visual_tokens:
        rows = cols = math.ceil(math.sqrt(spec.min_visual_tokens / n))
    height, width = rows * CELL, cols * CELL
    canvas = _Canvas(n, rows, cols)
    images, objects = [], []
    for image_index in range(n):
        image = _background(spec, rng, height, width, canvas)
        taken: list[tuple[int, int, int]] = []
        placed = []
        for _ in range(int(rng.integers(spec.objects_per_image[0], spec.objects_per_image[1] + 1))):
            size = _size(rng)
            corner = _place(rng, size, height, width, taken)
            if corner is None:
                continue
            taken.append((*corner, size))
            names = {(o.colour, o.shape) for o in placed}
            free = [(c, s) for c in spec.colours for s in spec.shapes if (c, s) not in names]
            colour, shape = free[int(rng.integers(len(free)))]  # names are unique within an image
            placed.append(ChatObject(colour, shape, size, image_index, *corner))
        placed.sort(key=lambda o: o.x + o.size / 2)  # left to right
        for obj in placed:
            canvas.paint(image, image_index, len(objects), COLOURS[obj.colour], obj.shape, obj.size, obj.y, obj.x)
            objects.append(obj)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    shown, labels, pixels = canvas.finish(len(objects))
    return ChatScene(images, objects, shown, labels, pixels)


def _video_scene(spec: ChatSceneSpec, rng: np.random.Generator) -> ChatScene:
    low, high = spec.video_frames
    frames = 2 * int(rng.integers((low + 1) // 2, high // 2 + 1))
    rows, cols = spec.cells
    height, width = rows * CELL, cols * CELL
    canvas = _Canvas(frames // 2, rows, cols, frames_per_item=2)
    n_still = int(rng.integers(spec.still_objects[0], spec.still_objects[1] + 1))
    names = rng.choice(len(spec.colours) * len(spec.shapes), size=n_still + 2, replace=False)
    attributes = [(spec.colours[k // len(spec.shapes)], spec.shapes[k % len(spec.shapes)]) for k in names]
    direction = list(_DIRECTIONS)[rng.integers(len(_DIRECTIONS))]
    dy, dx = _DIRECTIONS[direction]
    size = _size(rng)  # the moving object: a straight path inside the frame
    span = (width if dx else height) - size
    speed = int(rng.integers(2, max(3, span // (frames - 1) + 1)))
    travel = min(speed * (frames - 1), span)
    speed = travel // (frames - 1)
    start = int(rng.integers(0, span - travel + 1)) + (travel if dx < 0 or dy < 0 else 0)
    across = int(rng.integers(0, (height if dx else width) - size + 1))
    path = [(across, start + dx * speed * t) if dx else (start + dy * speed * t, across) for t in range(frames)]
    band = (path[0][0], size) if dx else (path[0][1], size)  # rows (or columns) the mover sweeps
    taken: list[tuple[int, int, int]] = []
    still: list[tuple[int, int, int]] = []
    for _ in range(n_still + 1):  # still objects, then the flashing one
        for _ in range(20):
            s = _size(rng)
            corner = _place(rng, s, height, width, taken)
            if corner is None:
                continue
            lo = corner[0] if dx else corner[1]
            if lo < band[0] + band[1] + 2 and band[0] < lo + s + 2:
                continue  # would be crossed by the moving object
            taken.append((*corner, s))
            still.append((*corner, s))
            break
    if len(still) < 2:  # no room: a scene with fewer objects is still valid, keep the mover only
        still = still[:1]
    flash_pos, still = (still[-1], still[:-1]) if len(still) >= 2 else (None, still)
    still.sort(key=lambda b: b[1] + b[2] / 2)
    flash_first = 2 * int(rng.integers(frames // 2))
    objects = [ChatObject(*attributes[0], size, 0, *path[0])]
    objects += [ChatObject(*attributes[2 + k], s, 0, y, x) for k, (y, x, s) in enumerate(still)]
    if flash_pos is not None:
        objects.append(ChatObject(*attributes[1], flash_pos[2], flash_first, flash_pos[0], flash_pos[1]))
    base = _background(spec, rng, height, width, canvas)
    images = []
    for t in range(frames):
        frame = base + _noise(rng, base.shape, spec.noise / 2)
        for index, obj in enumerate(objects):
            y, x = path[t] if index == 0 else (obj.y, obj.x)
            if flash_pos is not None and index == len(objects) - 1 and t not in (flash_first, flash_first + 1):
                continue
            canvas.paint(frame, t, index, COLOURS[obj.colour], obj.shape, obj.size, y, x)
        images.append(np.clip(frame, 0, 255).astype(np.uint8))
    shown, labels, pixels = canvas.finish(len(objects))
    flash = (len(objects) - 1, flash_first) if flash_pos is not None else None
    return ChatScene(images, objects, shown, labels, pixels, video=True, moving=(0, direction), flash=flash)


def make_chat_scene(spec: ChatSceneSpec, rng: np.random.Generator) -> ChatScene:
    """A scene drawn with ``rng``: images, or a video when ``spec.video_frames`` is set."""
    return _video_scene(spec, rng) if spec.video_frames[1] else _images_scene(spec, rng)


_Words = list[tuple[str, tuple[int, ...]]]
"""Answer words, each with the objects it is about."""


def _words(text: str, about: tuple[int, ...]) -> _Words:
    return [(word, about) for word in text.split()]


def _listing(items: list[tuple[str, tuple[int, ...]]]) -> _Words:
    """``a``, ``a and b``, ``a , b and c``; a separator is about the item that follows it."""
    words: _Words = []
    for k, (text, about) in enumerate(items):
        if k:
            words.append(("and" if k == len(items) - 1 else ",", about))
        words += _words(text, about)
    return words


def _qa(question: str, words: _Words, kind: str, relevant: tuple[int, ...]) -> ChatQA:
    return ChatQA(question, " ".join(w for w, _ in words), kind, relevant, tuple(about for _, about in words))


def _unique(scene: ChatScene, key) -> list[int]:
    values = [key(o) for o in scene.objects]
    return [i for i, v in enumerate(values) if values.count(v) == 1]


def _tally(objects: list[tuple[int, ChatObject]], colours: tuple[str, ...]) -> _Words:
    """``2 red , 1 blue``: each count and colour is about the objects of that colour."""
    groups = [(c, tuple(i for i, o in objects if o.colour == c)) for c in colours]
    return _listing([(f"{len(group)} {c}", group) for c, group in groups if group])


def _name_rank(obj: ChatObject, spec: ChatSceneSpec) -> tuple[int, int]:
    """Lists name objects in the vocabulary's order: by colour, then shape (names are unique within
    an image and within a video)."""
    return spec.colours.index(obj.colour), spec.shapes.index(obj.shape)


def ask_chat(scene: ChatScene, kind: str, rng: np.random.Generator, spec: ChatSceneSpec) -> ChatQA | None:
    """One question of ``kind`` about ``scene`` or None when the scene cannot support it (e.g. a
    "what colour is the circle ?" needs exactly one circle; a long answer needs >= 5 tokens)."""
    objs = scene.objects
    pick = lambda seq: seq[int(rng.integers(len(seq)))]
    if kind in ("colour", "shape"):
        # several images: name the image too ("the circle in image 3"), a unique shape in a
        # 16-image sample is rare; a video names the object alone
        key = (lambda o: (o.image, o.shape)) if kind == "colour" else (lambda o: (o.image, o.colour))
        if not (cands := _unique(scene, (lambda o: key(o)[1]) if scene.video else key)):
            return None
        i = pick(cands)
        where = "" if scene.video else f" in image {objs[i].image + 1}"
        if kind == "colour":
            return ChatQA(f"what colour is the {objs[i].shape}{where} ?", objs[i].colour, kind, (i,))
        return ChatQA(f"what shape is the {objs[i].colour} object{where} ?", objs[i].shape, kind, (i,))
    if kind == "presence":
        present = sorted({o.name for o in objs})
        if present and rng.random() < 0.5:
            name = pick(present)
        else:  # a hard negative: shares the colour or the shape of a present object
            absent = [f"{c} {s}" for c in spec.colours for s in spec.shapes if f"{c} {s}" not in present]
            near = [
                n for n in absent if any(n.split()[0] == p.split()[0] or n.split()[1] == p.split()[1] for p in present)
            ]
            name = pick(near or absent)
        hits = tuple(i for i, o in enumerate(objs) if o.name == name)
        return ChatQA(f"is there a {name} ?", "yes" if hits else "no", kind, hits)
    if kind == "count":
        counts = [sum(o.colour == c for o in objs) for c in spec.colours]
        weights = np.array([0.3 + n for n in counts], dtype=float)
        colour = spec.colours[rng.choice(len(spec.colours), p=weights / weights.sum())]
        hits = tuple(i for i, o in enumerate(objs) if o.colour == colour)
        return ChatQA(f"how many {colour} objects ?", str(len(hits)), kind, hits)
    if scene.video:
        return _ask_video(scene, kind, rng, spec)
    by_image: dict[int, list[tuple[int, ChatObject]]] = {}
    for i, o in enumerate(objs):
        by_image.setdefault(o.image, []).append((i, o))
    if kind in ("size", "image"):
        if not (cands := _unique(scene, lambda o: o.name)):
            return None
        i = pick(cands)
        if kind == "size":
            return ChatQA(f"is the {objs[i].name} small or large ?", objs[i].size_word, kind, (i,))
        return ChatQA(f"which image shows the {objs[i].name} ?", str(objs[i].image + 1), kind, (i,))
    if kind in ("list", "describe", "tally"):
        distinct = (
            (lambda group: len({o.colour for _, o in group}) >= 2)
            if kind == "tally"
            else (lambda group: 2 <= len(group) <= 4)
        )
        if not (cands := [k for k, group in sorted(by_image.items()) if distinct(group)]):
            return None
        k = pick(cands)
        group = sorted(by_image[k], key=lambda item: _name_rank(item[1], spec))
        relevant = tuple(i for i, _ in group)
        if kind == "list":
            return _qa(
                f"what objects are in image {k + 1} ?", _listing([(o.name, (i,)) for i, o in group]), kind, relevant
            )
        if kind == "describe":
            parts = [(f"{o.size_word} {o.name}", (i,)) for i, o in group]
            return _qa(f"describe image {k + 1} ?", _listing(parts), kind, relevant)
        return _qa(
            f"how many objects of each colour are in image {k + 1} ?", _tally(group, spec.colours), kind, relevant
        )
    if kind == "where":
        queries = sorted({o.name for o in objs} | {f"{o.colour} object" for o in objs} | {o.shape for o in objs})
        matches = {q: sorted({o.image for o in objs if q in (o.name, f"{o.colour} object", o.shape)}) for q in queries}
        if not (cands := [q for q in queries if 2 <= len(matches[q]) <= 5]):
            return None
        q = pick(cands)
        relevant = tuple(i for i, o in enumerate(objs) if q in (o.name, f"{o.colour} object", o.shape))
        per_image = [(str(m + 1), tuple(i for i in relevant if objs[i].image == m)) for m in matches[q]]
        return _qa(f"which images show a {q} ?", _words("images", relevant) + _listing(per_image), kind, relevant)
    if kind == "tally_all":
        if len({o.colour for o in objs}) < 2:
            return None
        return _qa(
            "how many objects of each colour ?",
            _tally(list(enumerate(objs)), spec.colours),
            kind,
            tuple(range(len(objs))),
        )
    return None


def _ask_video(scene: ChatScene, kind: str, rng: np.random.Generator, spec: ChatSceneSpec) -> ChatQA | None:
    objs = scene.objects
    mover, direction = scene.moving
    if kind == "motion":
        return ChatQA(f"which way does the {objs[mover].name} move ?", direction, kind, (mover,))
    still = [i for i in range(len(objs)) if i != mover and (scene.flash is None or i != scene.flash[0])]
    if kind == "still":
        if len(still) < 2:
            return None
        still.sort(key=lambda i: _name_rank(objs[i], spec))
        return _qa("which objects stay still ?", _listing([(objs[i].name, (i,)) for i in still]), kind, tuple(still))
    if scene.flash is None:
        return None
    flash, first = scene.flash
    frames = f"frames {first + 1} and {first + 2}"
    if kind == "flash":
        return ChatQA(f"when does the {objs[flash].name} appear ?", frames, kind, (flash,))
    if kind == "events":
        words = _words(f"{objs[mover].name} moves {direction}", (mover,))
        words += _words(f"and {objs[flash].name} appears in {frames}", (flash,))
        return _qa("what happens ?", words, kind, (mover, flash))
    return None


def make_chat_sample(spec: ChatSceneSpec, kinds: tuple[str, ...], seed: int, index: int, turns: int = 1) -> ChatSample:
    """Sample ``index`` of ``seed``: a question of a kind drawn uniformly from ``kinds`` and a scene
    that supports it (redrawn until one does). Deterministic in ``(spec, kinds, seed, index)``.

    ``turns > 1`` adds up to ``turns - 1`` follow-up questions about the same scene (kinds drawn
    the same way; a kind the scene cannot support is skipped); the first turn is the sample that
    ``turns=1`` gives."""
    rng = np.random.default_rng([seed, index])
    kind = kinds[int(rng.integers(len(kinds)))]  # kinds stay balanced: redraw the scene, not the kind
    for _ in range(50):
        scene = make_chat_scene(spec, rng)
        qa = ask_chat(scene, kind, rng, spec)
        if qa is not None:
            break
    else:
        raise RuntimeError(f"no scene of {spec} supports questions of kind {kind!r}")
    follow_ups = [ask_chat(scene, kinds[int(rng.integers(len(kinds)))], rng, spec) for _ in range(turns - 1)]
    return ChatSample(scene, qa, spec, tuple(f for f in follow_ups if f is not None))


def make_chat_samples(
    spec: ChatSceneSpec, kinds: tuple[str, ...], n: int, seed: int, start: int = 0
) -> list[ChatSample]:
    """Samples ``start .. start + n - 1`` of ``seed``."""
    return [make_chat_sample(spec, kinds, seed, i) for i in range(start, start + n)]


@dataclass(frozen=True)
class ChatSuite:
    """A held-out benchmark set: scenes, question kinds and the seed of its random streams."""

    spec: ChatSceneSpec
    kinds: tuple[str, ...]
    seed: int
    description: str = ""


_VIDEO = ChatSceneSpec(video_frames=(16, 32), cells=(8, 16), still_objects=(2, 4))
SUITES: dict[str, ChatSuite] = {
    "short": ChatSuite(ChatSceneSpec(), IMAGE_SHORT_KINDS, 1001, "16 images x 64 tokens, one-word answers"),
    "long": ChatSuite(ChatSceneSpec(), IMAGE_LONG_KINDS, 1002, "16 images x 64 tokens, 5-20 token answers"),
    "multi_image": ChatSuite(
        ChatSceneSpec(n_images=(8, 16), min_visual_tokens=1024, objects_per_image=(1, 4)),
        IMAGE_SHORT_KINDS + IMAGE_LONG_KINDS,
        1003,
        "8-16 images of 100-144 tokens (>= 1,024), all image kinds",
    ),
    "video": ChatSuite(
        _VIDEO, VIDEO_SHORT_KINDS + VIDEO_LONG_KINDS, 1004, "16-32 frames of 8 x 16 tokens per 2 frames (1,024-2,048)"
    ),
    "stress": ChatSuite(
        ChatSceneSpec(cells=(16, 16), objects_per_image=(1, 4)),
        IMAGE_SHORT_KINDS + IMAGE_LONG_KINDS,
        1005,
        "16 images x 256 tokens (4,096), all image kinds",
    ),
}
"""The held-out suites. Their seeds (1001-1005) differ from :data:`TRAIN_SEED`."""


def suite_samples(name: str, n: int, start: int = 0) -> list[ChatSample]:
    """``n`` held-out samples of suite ``name``."""
    suite = SUITES[name]
    return make_chat_samples(suite.spec, suite.kinds, n, suite.seed, start)
