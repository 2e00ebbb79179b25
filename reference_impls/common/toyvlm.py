"""ToyVLM: a small Qwen2.5-VL trained from scratch on synthetic scenes, bundled with its
vocabulary and input pipeline.

The model is a real ``Qwen2_5_VLForConditionalGeneration`` (vision tower with windowed
attention and 2x2 patch merger, M-RoPE language model), only small, and the inputs are built
exactly like the Qwen2.5-VL processor builds them: 14 px patches, each flattened as
``(channel, temporal, y, x)`` with the frame repeated ``temporal_patch_size`` times for still
images, and patches ordered so that the four patches of each 2x2 merge group are consecutive.
So every method written against Qwen2.5-VL runs on ToyVLM unchanged, and its accuracy cost is
measurable in a minute on CPU.

Examples:
    >>> from reference_impls.common.toyvlm import load_toyvlm
    >>> toy = load_toyvlm()                       # the committed checkpoint
    >>> samples = toy.samples(4, seed=123)         # held-out scenes (training uses seed 0)
    >>> inputs = toy.collate(samples)
    >>> logits = toy.model(**inputs).logits[:, -1]
    >>> [toy.vocab.words[i] for i in logits.argmax(-1).tolist()] == [s.qa.answer for s in samples]
    True

Deviations / guesses:
    Word-level vocabulary (about 60 ids) instead of a BPE tokenizer; no chat template: the prompt
    is ``<bos> question <vision_start> <image>*n <vision_end> ... answer`` (question first, the
    layout ToyVLM is trained on) or the images first (``question_first=False``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from .scenes import COLOURS, COUNT_WORDS, ORDINALS, SHAPES, Sample, SceneSpec, make_samples
from .tiny import qwen25vl_config

__all__ = [
    "CHECKPOINT_DIR",
    "ABLATION_TITLE",
    "Vocab",
    "build_vocab",
    "toyvlm_config",
    "patchify_image",
    "patchify_video",
    "collate",
    "ToyVLM",
    "save_toyvlm",
    "load_toyvlm",
]

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints" / "toyvlm"
ABLATION_TITLE = "ToyVLM v1 (question-first ablation)"
"""How results titles name this model: the benchmarks' model is ToyVLM v2 (chat layout); v1 puts the
question first and answers one word, and its results stay only as that ablation."""
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""The normalisation of the Qwen2-VL image processor (OpenAI CLIP statistics)."""

SPECIALS = ("<pad>", "<bos>", "<eos>", "<vision_start>", "<image>", "<video>", "<vision_end>")
_WORDS = (
    "what which how many is there a the where way does colour shape object objects image frame shows"
    " move ? answer yes no and nothing top-left top-right bottom-left bottom-right left right up down"
)


@dataclass(frozen=True)
class Vocab:
    """Word-level vocabulary: one id per whitespace-separated word."""

    words: tuple[str, ...]

    @property
    def index(self) -> dict[str, int]:
        return {word: i for i, word in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def id(self, word: str) -> int:
        return self.index[word]

    def encode(self, text: str) -> list[int]:
        index = self.index
        try:
            return [index[word] for word in text.split()]
        except KeyError as error:
            raise KeyError(f"word {error.args[0]!r} is not in the ToyVLM vocabulary") from None

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        words = [self.words[i] for i in ids]
        if skip_special:
            words = [w for w in words if w not in SPECIALS]
        return " ".join(words)

    pad = property(lambda self: self.id("<pad>"))
    bos = property(lambda self: self.id("<bos>"))
    eos = property(lambda self: self.id("<eos>"))


def build_vocab() -> Vocab:
    """The fixed ToyVLM vocabulary: special tokens, then question and answer words."""
    words = list(SPECIALS)
    for word in _WORDS.split() + list(COLOURS) + list(SHAPES) + list(COUNT_WORDS) + list(ORDINALS):
        if word not in words:
            words.append(word)
    return Vocab(tuple(words))


def toyvlm_config(
    vocab: Vocab,
    *,
    hidden_size: int = 96,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    vision_depth: int = 2,
    vision_hidden: int = 64,
    vision_heads: int = 4,
    attn_implementation: str = "sdpa",
) -> Qwen2_5_VLConfig:
    """The Qwen2.5-VL config of ToyVLM (0.67M parameters with the defaults, the trained sizes).

    Special ids are the vocabulary's ``<vision_start>``, ``<image>``, ``<video>``, ``<vision_end>``.
    """
    half = hidden_size // num_heads // 2
    ids = vocab.index
    return qwen25vl_config(
        vocab_size=len(vocab),
        special_ids={
            "bos": vocab.bos,
            "eos": vocab.eos,
            "pad": vocab.pad,
            "vision_start": ids["<vision_start>"],
            "vision_end": ids["<vision_end>"],
            "image": ids["<image>"],
            "video": ids["<video>"],
        },
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        mrope_section=[half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8],  # [4, 4, 4] for head_dim 24
        vision_depth=vision_depth,
        vision_hidden=vision_hidden,
        vision_intermediate=2 * vision_hidden,
        vision_heads=vision_heads,
        window_size=112,
        attn_implementation=attn_implementation,
    )


def _normalise(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` -> float ``(T, 3, H, W)``, rescaled and CLIP-normalised."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(255.0)
    mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
    return ((x - mean) / std).permute(0, 3, 1, 2)


def patchify_video(
    frames: np.ndarray, patch: int = 14, merge: int = 2, temporal: int = 2
) -> tuple[torch.Tensor, list[int]]:
    """Qwen2-VL patch layout of ``frames`` (uint8 ``(T, H, W, 3)``; H, W multiples of 28).

    Returns ``pixel_values (t*h*w, 3*temporal*patch*patch)`` and ``grid_thw [t, h, w]``. The
    last frame is repeated to make T a multiple of ``temporal``, like the video processor does.
    """
    x = _normalise(frames)  # (T, C, H, W)
    if pad := -x.shape[0] % temporal:
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
    T, C, H, W = x.shape
    t, h, w = T // temporal, H // patch, W // patch
    x = x.view(t, temporal, C, h // merge, merge, patch, w // merge, merge, patch)
    # order (t, h-group, w-group, h-in-group, w-in-group) for rows; (C, temporal, y, x) inside a patch
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(t * h * w, C * temporal * patch * patch), [t, h, w]


def patchify_image(
    image: np.ndarray, patch: int = 14, merge: int = 2, temporal: int = 2
) -> tuple[torch.Tensor, list[int]]:
    """Qwen2-VL patch layout of one uint8 ``(H, W, 3)`` image: the frame is repeated ``temporal``
    times. Returns ``pixel_values (h*w, 3*temporal*patch*patch)`` and ``grid_thw [1, h, w]``."""
    pixels, (_, h, w) = patchify_video(image[None], patch, merge, temporal=1)
    # repeating the frame inside each patch equals patchifying ``temporal`` identical frames
    C = image.shape[-1]
    pixels = pixels.view(h * w, C, 1, patch * patch).expand(-1, -1, temporal, -1)
    return pixels.reshape(h * w, C * temporal * patch * patch), [1, h, w]


def collate(
    samples: Sequence[Sample],
    vocab: Vocab,
    config: Qwen2_5_VLConfig,
    *,
    question_first: bool = True,
    with_answer: bool = False,
    video_as_images: bool = True,
) -> dict[str, torch.Tensor]:
    """Model inputs for a batch of samples, left-padded.

    Layout: ``<bos> question <vision_start> <image>*n <vision_end> (per image) answer`` with
    ``question_first``, else the images come first. The model's next token after the final
    ``answer`` word is the answer. With ``with_answer`` the answer word and ``<eos>`` are appended
    and ``labels`` (-100 except on those two tokens) is returned too. Video scenes are fed as one
    image per frame unless ``video_as_images=False`` (then one Qwen video item).

    Returns:
        ``input_ids, attention_mask, mm_token_type_ids, pixel_values, image_grid_thw`` (and
        ``pixel_values_videos, video_grid_thw`` for videos, ``labels`` with answers).
    """
    vision = config.vision_config
    merge = vision.spatial_merge_size
    rows, labels, images, image_grids, videos, video_grids = [], [], [], [], [], []
    for sample in samples:
        scene = sample.scene
        visual: list[int] = []
        if scene.video and not video_as_images:
            pixels, grid = patchify_video(np.stack(scene.images), vision.patch_size, merge, vision.temporal_patch_size)
            videos.append(pixels)
            video_grids.append(grid)
            visual += (
                [config.vision_start_token_id]
                + [config.video_token_id] * (pixels.shape[0] // merge**2)
                + [config.vision_end_token_id]
            )
        else:
            for image in scene.images:
                pixels, grid = patchify_image(image, vision.patch_size, merge, vision.temporal_patch_size)
                images.append(pixels)
                image_grids.append(grid)
                visual += (
                    [config.vision_start_token_id]
                    + [config.image_token_id] * (pixels.shape[0] // merge**2)
                    + [config.vision_end_token_id]
                )
        question = vocab.encode(sample.qa.question)
        ids = [vocab.bos] + (question + visual if question_first else visual + question) + [vocab.id("answer")]
        label = [-100] * len(ids)
        if with_answer:
            ids += [vocab.id(sample.qa.answer), vocab.eos]
            label += [ids[-2], ids[-1]]
        rows.append(ids)
        labels.append(label)
    length = max(len(r) for r in rows)
    input_ids = torch.tensor([[vocab.pad] * (length - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    mm_token_type_ids = (input_ids == config.image_token_id).long() + 2 * (input_ids == config.video_token_id).long()
    batch: dict[str, torch.Tensor] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mm_token_type_ids": mm_token_type_ids,
    }
    if images:
        batch["pixel_values"] = torch.cat(images)
        batch["image_grid_thw"] = torch.tensor(image_grids)
    if videos:
        batch["pixel_values_videos"] = torch.cat(videos)
        batch["video_grid_thw"] = torch.tensor(video_grids)
    if with_answer:
        # labels are aligned with input_ids (the model shifts them itself)
        batch["labels"] = torch.tensor([[-100] * (length - len(r)) + r for r in labels])
    return batch


@dataclass
class ToyVLM:
    """A ToyVLM model with its vocabulary, data spec and input pipeline."""

    model: Qwen2_5_VLForConditionalGeneration
    vocab: Vocab
    spec: SceneSpec = field(default_factory=SceneSpec)
    kinds: tuple[str, ...] = ("colour", "shape", "presence", "count")
    question_first: bool = True
    manifest: dict[str, Any] = field(default_factory=dict)

    def collate(
        self, samples: Sequence[Sample], *, with_answer: bool = False, question_first: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """Model inputs for ``samples`` (see :func:`collate`)."""
        order = self.question_first if question_first is None else question_first
        return collate(samples, self.vocab, self.model.config, question_first=order, with_answer=with_answer)

    def samples(
        self, n: int, seed: int = 1, spec: SceneSpec | None = None, kinds: tuple[str, ...] | None = None
    ) -> list[Sample]:
        """``n`` scenes with questions; training uses seed 0, so any other seed is held out."""
        return make_samples(spec or self.spec, n, seed, kinds or self.kinds)

    @property
    def answer_ids(self) -> list[int]:
        """Ids of every word that can be an answer."""
        answers = list(COLOURS) + list(SHAPES) + list(COUNT_WORDS) + list(ORDINALS)
        answers += ["yes", "no", "top-left", "top-right", "bottom-left", "bottom-right", "left", "right", "up", "down"]
        return sorted({self.vocab.id(a) for a in answers})


def save_toyvlm(bundle: ToyVLM, path: str | os.PathLike, manifest: dict[str, Any] | None = None) -> Path:
    """Save the model (``save_pretrained``, safetensors), ``vocab.json`` and ``manifest.json``.

    The manifest should record how the checkpoint was made: seed, command, data spec, training
    steps and wall time, and measured held-out accuracy.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    bundle.model.save_pretrained(path)
    (path / "vocab.json").write_text(json.dumps(list(bundle.vocab.words)) + "\n")
    full = dict(bundle.manifest)
    full.update(manifest or {})
    full.update(spec=asdict(bundle.spec), kinds=list(bundle.kinds), question_first=bundle.question_first)
    (path / "manifest.json").write_text(json.dumps(full, indent=1, default=str) + "\n")
    bundle.manifest = full
    return path


def load_toyvlm(path: str | os.PathLike | None = None) -> ToyVLM:
    """Load a ToyVLM bundle (default: the committed checkpoint), in eval mode, sdpa attention."""
    path = Path(path) if path is not None else CHECKPOINT_DIR
    if not (path / "manifest.json").exists():
        raise FileNotFoundError(
            f"no ToyVLM checkpoint at {path} (train one: python -m reference_impls.common.train_toyvlm)"
        )
    manifest = json.loads((path / "manifest.json").read_text())
    vocab = Vocab(tuple(json.loads((path / "vocab.json").read_text())))
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, attn_implementation="sdpa").eval()
    model.generation_config.pad_token_id = vocab.pad
    model.generation_config.eos_token_id = vocab.eos
    spec = manifest.get("spec", {})
    if spec.get("cooccur") is not None:
        spec["cooccur"] = tuple(spec["cooccur"])
    for key in ("colours", "shapes"):
        if key in spec:
            spec[key] = tuple(spec[key])
    return ToyVLM(
        model=model,
        vocab=vocab,
        spec=SceneSpec(**spec),
        kinds=tuple(manifest.get("kinds", ToyVLM.kinds)),
        question_first=manifest.get("question_first", True),
        manifest=manifest,
    )
