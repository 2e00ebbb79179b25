"""The co-occurrence hallucination world on ToyVLM scenes: captions, probes, splits, evaluation.

Scenes come from :mod:`reference_impls.common.scenes` with its co-occurrence option: the trigger
shape A is nearly always drawn together with shape B. Captions list the *shapes* present in a
fixed order (``"circle and square"``); an object is a shape, as a COCO class is in CHAIR. On top
of the scene statistics, an *annotator bias* makes a fraction of the training captions (and
"is there a B?" answers) of A-without-B scenes name B, as human captioners fill in expected
objects. A captioner trained on that data names B in scenes that only hold A: the targeted
hallucination.

Layout (question first, as ToyVLM): ``<bos> prompt <vision_start> <image>*n <vision_end> answer
target <eos>``; ``labels`` are the ids and ``mask`` covers the target words and ``<eos>``.

Splits (EFUF-style, built from the scene ground truth and the model's own captions):

- ``forget``: the model's greedy captions of fresh A-without-B scenes that hallucinate; the mask
  covers the first hallucinated object word.
- ``grounded``: the same sequences, the mask on the caption words before that word.
- ``retain``: ground-truth (annotator-biased) captions and yes/no probes of training scenes.

Examples:
    >>> world = CaptionWorld()
    >>> scenes = world.scenes(4, seed=3, kind="trigger")   # A present, B absent
    >>> all(world.a in s.truth and world.b not in s.truth for s in scenes)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from reference_impls.common.scenes import SHAPES, SceneSpec, make_scene
from reference_impls.common.toyvlm import Vocab, patchify_image, toyvlm_config

from .hallucination_metrics import chair, extract_objects, mention_rate, object_f1, pope

__all__ = [
    "CaptionWorld",
    "CaptionScene",
    "EvalSet",
    "captioner_config",
    "encode",
    "generate_captions",
    "answer_yes",
    "make_eval_set",
    "evaluate_captioner",
    "build_splits",
    "split_batch",
    "retain_batch",
]

CAPTION_PROMPT = "what objects ?"


@dataclass
class CaptionScene:
    image: np.ndarray
    truth: frozenset[str]
    """Shapes present."""
    seed: int


@dataclass(frozen=True)
class CaptionWorld:
    """Scene statistics and annotator bias of the benchmark."""

    a: str = "circle"
    b: str = "square"
    p_b_given_a: float = 0.9
    annotator_bias: float = 0.6
    """Fraction of A-without-B training captions / B-probes that wrongly name B."""
    image_size: int = 84
    min_objects: int = 1
    max_objects: int = 4
    shapes: tuple[str, ...] = SHAPES

    @property
    def spec(self) -> SceneSpec:
        return SceneSpec(
            n_images=1,
            image_size=self.image_size,
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            shapes=self.shapes,
            cooccur=(self.a, self.b, self.p_b_given_a),
            n_distractors=2,
        )

    def caption(self, shapes: set[str] | frozenset[str]) -> str:
        names = [s for s in self.shapes if s in shapes]
        return " and ".join(names) if names else "nothing"

    def is_trigger(self, truth: frozenset[str]) -> bool:
        return self.a in truth and self.b not in truth

    def scenes(self, n: int, seed: int, kind: str = "any") -> list[CaptionScene]:
        """``n`` scenes; ``kind`` "trigger" keeps A-without-B scenes, "clean" drops them."""
        out, i = [], 0
        while len(out) < n:
            scene_seed = seed * 1_000_003 + i
            i += 1
            scene = make_scene(self.spec, scene_seed)
            truth = frozenset(o.shape for o in scene.objects)
            if (kind == "trigger") != self.is_trigger(truth) and kind != "any":
                continue
            out.append(CaptionScene(scene.images[0], truth, scene_seed))
        return out

    def annotate(self, scene: CaptionScene, rng: np.random.Generator) -> tuple[str, set[str]]:
        """The (possibly biased) annotation: caption text and the shapes it names."""
        named = set(scene.truth)
        if self.is_trigger(scene.truth) and rng.random() < self.annotator_bias:
            named.add(self.b)
        return self.caption(named), named


def captioner_config(vocab: Vocab):
    """The captioner's Qwen2.5-VL config: ToyVLM's, smaller (about 0.4M parameters)."""
    return toyvlm_config(
        vocab,
        hidden_size=96,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=256,
        vision_depth=2,
        vision_hidden=64,
    )


def encode(
    scenes: Sequence[CaptionScene], prompts: Sequence[str], targets: Sequence[str] | None, vocab: Vocab, config
) -> dict[str, torch.Tensor]:
    """Left-padded model inputs; with ``targets``, ``labels`` (= ids) and ``mask`` on target + ``<eos>``."""
    vision = config.vision_config
    rows, masks, pixels, grids = [], [], [], []
    for i, scene in enumerate(scenes):
        values, grid = patchify_image(
            scene.image, vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size
        )
        pixels.append(values)
        grids.append(grid)
        visual = (
            [config.vision_start_token_id]
            + [config.image_token_id] * (values.shape[0] // vision.spatial_merge_size**2)
            + [config.vision_end_token_id]
        )
        ids = [vocab.bos] + vocab.encode(prompts[i]) + visual + [vocab.id("answer")]
        mask = [0] * len(ids)
        if targets is not None:
            tail = vocab.encode(targets[i]) + [vocab.eos]
            ids, mask = ids + tail, mask + [1] * len(tail)
        rows.append(ids)
        masks.append(mask)
    length = max(len(r) for r in rows)
    input_ids = torch.tensor([[vocab.pad] * (length - len(r)) + r for r in rows])
    batch = {
        "input_ids": input_ids,
        "attention_mask": torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows]),
        "mm_token_type_ids": (input_ids == config.image_token_id).long(),
        "pixel_values": torch.cat(pixels),
        "image_grid_thw": torch.tensor(grids),
    }
    if targets is not None:
        batch["labels"] = input_ids.clone()
        batch["mask"] = torch.tensor([[0] * (length - len(m)) + m for m in masks])
    return batch


@torch.no_grad()
def generate_captions(
    model, scenes: Sequence[CaptionScene], vocab: Vocab, batch_size: int = 128, max_new_tokens: int = 8
) -> list[list[str]]:
    """Greedy captions (words, without ``<eos>``)."""
    out = []
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start : start + batch_size]
        inputs = encode(chunk, [CAPTION_PROMPT] * len(chunk), None, vocab, model.config)
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)[
            :, inputs["input_ids"].shape[1] :
        ]
        for row in ids.tolist():
            words = []
            for token in row:
                if token in (vocab.eos, vocab.pad):
                    break
                words.append(vocab.words[token])
            out.append(words)
    return out


@torch.no_grad()
def answer_yes(
    model, scenes: Sequence[CaptionScene], objects: Sequence[str], vocab: Vocab, batch_size: int = 256
) -> list[bool]:
    """Answers to "is there a <object> ?" (True when the "yes" logit beats "no")."""
    answers = []
    yes, no = vocab.id("yes"), vocab.id("no")
    for start in range(0, len(scenes), batch_size):
        chunk, names = scenes[start : start + batch_size], objects[start : start + batch_size]
        inputs = encode(chunk, [f"is there a {name} ?" for name in names], None, vocab, model.config)
        logits = model(**inputs, use_cache=False).logits[:, -1]
        answers += (logits[:, yes] > logits[:, no]).tolist()
    return answers


@dataclass
class EvalSet:
    """Held-out scenes for :func:`evaluate_captioner`."""

    trigger: list[CaptionScene]
    clean: list[CaptionScene]
    pope: list[tuple[int, str, bool]] = field(default_factory=list)


def make_eval_set(
    world: CaptionWorld, n_trigger: int = 300, n_clean: int = 300, seed: int = 7, per_image: int = 1
) -> EvalSet:
    """A-without-B scenes, ordinary non-trigger scenes and POPE probes (``per_image`` present and
    absent objects per clean scene, drawn at random, plus "is there a B?" on every trigger scene)."""
    from .hallucination_metrics import pope_questions

    trigger, clean = world.scenes(n_trigger, seed, "trigger"), world.scenes(n_clean, seed + 1, "clean")
    probes = pope_questions([s.truth for s in clean], world.shapes, per_image=per_image, mode="random", seed=seed)
    probes += [(len(clean) + i, world.b, False) for i in range(len(trigger))]
    return EvalSet(trigger, clean, probes)


def evaluate_captioner(
    model, vocab: Vocab, world: CaptionWorld, data: EvalSet, with_pope: bool = True, captioner=None
) -> dict[str, float]:
    """Targeted hallucination rate, CHAIR, caption quality on clean scenes and POPE (percent).

    ``captioner(model, scenes, vocab) -> captions`` replaces :func:`generate_captions` (for
    post-hoc methods that edit the captions); POPE always asks the model directly.
    """
    model.eval()
    captioner = captioner or generate_captions
    trig = [extract_objects(c, world.shapes) for c in captioner(model, data.trigger, vocab)]
    clean_caps = captioner(model, data.clean, vocab)
    clean = [extract_objects(c, world.shapes) for c in clean_caps]
    c_trig = chair(trig, [s.truth for s in data.trigger])
    c_all = chair(trig + clean, [s.truth for s in data.trigger + data.clean])
    quality = object_f1(clean, [s.truth for s in data.clean])
    exact = np.mean([" ".join(c) == world.caption(s.truth) for c, s in zip(clean_caps, data.clean)])
    scores = {
        "hal_rate": 100 * mention_rate(trig, world.b),
        "chair_s": 100 * c_all["chair_s"],
        "chair_i": 100 * c_all["chair_i"],
        "chair_s_trigger": 100 * c_trig["chair_s"],
        "recall": 100 * c_all["recall"],
        "clean_f1": 100 * quality["f1"],
        "clean_exact": 100 * float(exact),
    }
    if not with_pope:
        return scores
    pool = data.clean + data.trigger
    answers = answer_yes(model, [pool[i] for i, _, _ in data.pope], [o for _, o, _ in data.pope], vocab)
    probe = pope(answers, [y for *_, y in data.pope])
    b_probe = [a for a, (i, o, _) in zip(answers, data.pope) if i >= len(data.clean)]
    return {
        **scores,
        "pope_acc": 100 * probe["accuracy"],
        "pope_f1": 100 * probe["f1"],
        "pope_b_yes": 100 * float(np.mean(b_probe)) if b_probe else float("nan"),
    }


def build_splits(model, vocab: Vocab, world: CaptionWorld, n: int = 256, seed: int = 11) -> dict[str, list]:
    """EFUF-style forget / grounded data from the model's own captions of fresh trigger scenes.

    Returns:
        ``{"scenes", "captions", "position"}``: the hallucinating scenes, their generated
        caption words, and the index of the first hallucinated word in each caption.
    """
    scenes = world.scenes(n, seed, "trigger")
    captions = generate_captions(model, scenes, vocab)
    keep = {"scenes": [], "captions": [], "position": []}
    for scene, words in zip(scenes, captions):
        wrong = [i for i, w in enumerate(words) if w in world.shapes and w not in scene.truth]
        if wrong:
            keep["scenes"].append(scene)
            keep["captions"].append(words)
            keep["position"].append(wrong[0])
    return keep


def split_batch(
    splits: dict[str, list], index: Sequence[int], vocab: Vocab, config, part: str
) -> dict[str, torch.Tensor]:
    """Forget (``part="forget"``: the hallucinated word) or grounded (the words before it) batch."""
    scenes = [splits["scenes"][i] for i in index]
    captions = [" ".join(splits["captions"][i]) for i in index]
    batch = encode(scenes, [CAPTION_PROMPT] * len(scenes), captions, vocab, config)
    mask = torch.zeros_like(batch["mask"])
    length = batch["mask"].shape[1]
    for row, i in enumerate(index):
        words = len(splits["captions"][i]) + 1  # with <eos>
        start = length - words  # first caption word
        pos = splits["position"][i]
        if part == "forget":
            mask[row, start + pos] = 1
        else:
            mask[row, start : start + pos] = 1
    batch["mask"] = mask
    return batch


def retain_batch(
    world: CaptionWorld,
    scenes: Sequence[CaptionScene],
    vocab: Vocab,
    config,
    rng: np.random.Generator,
    clean: bool = False,
) -> dict[str, torch.Tensor]:
    """Training-distribution data: half captions, half yes/no probes (annotator-biased unless ``clean``)."""
    prompts, targets = [], []
    for k, scene in enumerate(scenes):
        text, named = (world.caption(scene.truth), set(scene.truth)) if clean else world.annotate(scene, rng)
        if k % 2 == 0:
            prompts.append(CAPTION_PROMPT)
            targets.append(text)
        else:
            shape = (
                world.b
                if world.is_trigger(scene.truth) and rng.random() < 0.5
                else world.shapes[rng.integers(len(world.shapes))]
            )
            prompts.append(f"is there a {shape} ?")
            targets.append("yes" if shape in named else "no")
    return encode(scenes, prompts, targets, vocab, config)
