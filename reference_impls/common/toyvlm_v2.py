"""ToyVLM v2: a small Qwen2.5-VL trained from scratch in the chat-template layout, with its
vocabulary, input pipeline and greedy decoding.

v1 (:mod:`reference_impls.common.toyvlm`) puts the question before four images and answers one
word. v2 is shaped like real VLM use: the images (or one video) come first, the question last, and
the answer is decoded with ``model.generate`` until ``<eos>``::

    <bos> (image k <vision_start> <image|video>... <vision_end>)+ question ? answer  reply words <eos>

(``answer`` plays the role of the assistant turn marker of a chat template; ``image k`` labels
each image like Qwen2-VL's template with ``add_vision_id``, a video has no label.) The data are the
scenes of :mod:`reference_impls.common.chat_scenes`: 16 images or 16-32 frames, >= 1,024 visual
tokens, one-word and 5-20 token answers. Pixels are patchified exactly like the Qwen2.5-VL
processors (:func:`~reference_impls.common.toyvlm.patchify_image`, ``patchify_video``); a video
is one Qwen video item (two frames per temporal token).

Examples:
    >>> import torch
    >>> from transformers import Qwen2_5_VLForConditionalGeneration
    >>> from reference_impls.common.chat_scenes import ChatSceneSpec, IMAGE_LONG_KINDS, make_chat_samples
    >>> vocab = build_vocab_v2()
    >>> _ = torch.manual_seed(0)
    >>> sizes = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=32, vision_hidden=32, vision_depth=1)
    >>> config = toyvlm_v2_config(vocab, **sizes)
    >>> toy = ToyVLMv2(Qwen2_5_VLForConditionalGeneration(config).eval(), vocab)
    >>> samples = make_chat_samples(ChatSceneSpec(n_images=(2, 2), cells=(4, 4)), IMAGE_LONG_KINDS, 2, seed=5)
    >>> toy.vocab.decode(toy.collate(samples[:1])["input_ids"][0].tolist()[-2:])  # the prompt ends with the question
    '? answer'
    >>> len(toy.generate(samples, max_new_tokens=3))  # an untrained model: 3 random words each
    2

Deviations / guesses:
    Word-level vocabulary (numbers are words ``0`` .. ``40``) instead of a BPE tokenizer, and a
    one-token ``answer`` marker instead of the chat template's role tokens. Videos use the
    processors' default ``second_per_grid_ts`` of 1 (so 4 M-RoPE time steps per temporal token).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from .chat_scenes import MAX_NUMBER, ChatSample, answer_words, suite_samples
from .scenes import COLOURS, SHAPES
from .toyvlm import SPECIALS, Vocab, patchify_image, patchify_video, toyvlm_config

__all__ = [
    "CHECKPOINT_DIR_V2",
    "ToyVLMv2",
    "build_vocab_v2",
    "collate_chat",
    "load_toyvlm_v2",
    "save_toyvlm_v2",
    "tiny_toyvlm_v2",
    "toyvlm_v2_config",
]

CHECKPOINT_DIR_V2 = Path(__file__).resolve().parent / "checkpoints" / "toyvlm_v2"
_WORDS = (
    "answer what which how many is are there a the in of each or image images object objects shape colour"
    " small large shows show describe when does appear appears frames way move moves stay still happens"
    " yes no and , ? top-left top-right bottom-left bottom-right left right up down"
)


def build_vocab_v2() -> Vocab:
    """The fixed v2 vocabulary: v1's special tokens (same ids), question and answer words,
    colours, shapes and the numbers ``0`` .. ``MAX_NUMBER``."""
    words = list(SPECIALS)
    for word in _WORDS.split() + list(COLOURS) + list(SHAPES) + [str(n) for n in range(MAX_NUMBER + 1)]:
        if word not in words:
            words.append(word)
    return Vocab(tuple(words))


def toyvlm_v2_config(
    vocab: Vocab,
    *,
    hidden_size: int = 192,
    num_layers: int = 6,
    num_heads: int = 6,
    num_kv_heads: int = 2,
    intermediate_size: int = 512,
    vision_depth: int = 2,
    vision_hidden: int = 96,
    vision_heads: int = 4,
    attn_implementation: str = "sdpa",
) -> Qwen2_5_VLConfig:
    """The Qwen2.5-VL config of ToyVLM v2 (same builder as v1, larger language model by default)."""
    return toyvlm_config(
        vocab,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        vision_depth=vision_depth,
        vision_hidden=vision_hidden,
        vision_heads=vision_heads,
        attn_implementation=attn_implementation,
    )


def collate_chat(
    samples: Sequence[ChatSample], vocab: Vocab, config: Qwen2_5_VLConfig, *, with_answer: bool = False
) -> dict[str, torch.Tensor]:
    """Model inputs for a batch, left-padded, in the chat layout (images first, question last).

    Each image is preceded by its label (``image 3``), as Qwen2-VL's chat template writes
    ``Picture 3:`` with ``add_vision_id``: questions name images by number. With ``with_answer``
    the answer words and ``<eos>`` are appended (then each follow-up turn: question, ``answer``,
    reply, ``<eos>``) and ``labels`` (aligned with ``input_ids``; -100 outside the replies) is
    returned too. Image pixels of the whole batch come
    first in ``pixel_values`` (sample by sample), video pixels in ``pixel_values_videos``.
    """
    vision = config.vision_config
    patch, merge, temporal = vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size
    rows, labels, images, image_grids, videos, video_grids = [], [], [], [], [], []
    for sample in samples:
        ids = [vocab.bos]
        if sample.scene.video:
            pixels, grid = patchify_video(np.stack(sample.scene.images), patch, merge, temporal)
            videos.append(pixels)
            video_grids.append(grid)
            ids += (
                [config.vision_start_token_id]
                + [config.video_token_id] * (pixels.shape[0] // merge**2)
                + [config.vision_end_token_id]
            )
        else:
            for number, image in enumerate(sample.scene.images, start=1):
                pixels, grid = patchify_image(image, patch, merge, temporal)
                images.append(pixels)
                image_grids.append(grid)
                ids += (
                    vocab.encode(f"image {number}")  # like Qwen2-VL's chat template with add_vision_id
                    + [config.vision_start_token_id]
                    + [config.image_token_id] * (pixels.shape[0] // merge**2)
                    + [config.vision_end_token_id]
                )
        ids += vocab.encode(sample.qa.question) + [vocab.id("answer")]
        label = [-100] * len(ids)
        if with_answer:
            for turn, qa in enumerate((sample.qa, *sample.follow_ups)):
                if turn:
                    question = vocab.encode(qa.question) + [vocab.id("answer")]
                    ids += question
                    label += [-100] * len(question)
                reply = [vocab.id(word) for word in answer_words(qa)]
                ids += reply
                label += reply
        rows.append(ids)
        labels.append(label)
    length = max(len(r) for r in rows)
    input_ids = torch.tensor([[vocab.pad] * (length - len(r)) + r for r in rows])
    batch: dict[str, torch.Tensor] = {
        "input_ids": input_ids,
        "attention_mask": torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows]),
        "mm_token_type_ids": (input_ids == config.image_token_id).long()
        + 2 * (input_ids == config.video_token_id).long(),
    }
    if images:
        batch["pixel_values"] = torch.cat(images)
        batch["image_grid_thw"] = torch.tensor(image_grids)
    if videos:
        batch["pixel_values_videos"] = torch.cat(videos)
        batch["video_grid_thw"] = torch.tensor(video_grids)
    if with_answer:
        batch["labels"] = torch.tensor([[-100] * (length - len(r)) + r for r in labels])
    return batch


@dataclass
class ToyVLMv2:
    """A ToyVLM v2 model with its vocabulary and input pipeline."""

    model: Qwen2_5_VLForConditionalGeneration
    vocab: Vocab
    manifest: dict[str, Any] = field(default_factory=dict)

    def samples(self, n: int, seed: int, suite: str = "short") -> list[ChatSample]:
        """``n`` held-out samples of ``suite`` for evaluation seed ``seed``: the suite's random
        streams ``seed * 1000 .. seed * 1000 + n - 1`` (training-time evaluations use streams below
        1,000, so benchmark seeds >= 1 never reuse them; distinct seeds never share a sample)."""
        if not 0 < n <= 1000 or seed < 1:
            raise ValueError(f"need 0 < n <= 1000 and seed >= 1, got n={n}, seed={seed}")
        return suite_samples(suite, n, start=seed * 1000)

    def collate(self, samples: Sequence[ChatSample], *, with_answer: bool = False) -> dict[str, torch.Tensor]:
        return collate_chat(samples, self.vocab, self.model.config, with_answer=with_answer)

    @torch.no_grad()
    def generate(
        self, samples: Sequence[ChatSample], *, max_new_tokens: int = 24, batch_size: int = 8
    ) -> list[list[str]]:
        """Greedy replies (``model.generate``), as words up to and including ``<eos>`` when produced."""
        replies: list[list[str]] = []
        for start in range(0, len(samples), batch_size):
            batch = self.collate(samples[start : start + batch_size])
            out = self.model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.vocab.pad,
                eos_token_id=self.vocab.eos,
            )
            for row in out[:, batch["input_ids"].shape[1] :].tolist():
                words = [self.vocab.words[i] for i in row]
                replies.append(words[: words.index("<eos>") + 1] if "<eos>" in words else words)
        return replies

    def exact_match(self, samples: Sequence[ChatSample], **generate_kwargs) -> dict[str, float]:
        """Share of replies equal to the answer followed by ``<eos>``: overall, per kind and per scope."""
        was_training = self.model.training
        self.model.eval()
        replies = self.generate(samples, **generate_kwargs)
        self.model.train(was_training)
        hits: dict[str, list[bool]] = {}
        for sample, reply in zip(samples, replies):
            hit = reply == answer_words(sample)
            for key in ("all", sample.qa.kind, sample.qa.scope):
                hits.setdefault(key, []).append(hit)
        return {key: round(sum(h) / len(h), 4) for key, h in sorted(hits.items())}


def tiny_toyvlm_v2(seed: int = 0) -> ToyVLMv2:
    """A random-init micro ToyVLM v2 (language model 32 wide, 2 layers; vision tower 32 wide, 1
    block) in eval mode, for tests and examples: same vocabulary, layout and code paths as v2."""
    vocab = build_vocab_v2()
    torch.manual_seed(seed)
    config = toyvlm_v2_config(
        vocab, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vision_hidden=32, vision_depth=1
    )
    return ToyVLMv2(Qwen2_5_VLForConditionalGeneration(config).eval(), vocab)


def save_toyvlm_v2(bundle: ToyVLMv2, path: str | os.PathLike, manifest: dict[str, Any] | None = None) -> Path:
    """Save the model (safetensors), ``vocab.json`` and ``manifest.json`` (how it was made)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    bundle.model.save_pretrained(path)
    (path / "vocab.json").write_text(json.dumps(list(bundle.vocab.words)) + "\n")
    bundle.manifest = {**bundle.manifest, **(manifest or {})}
    (path / "manifest.json").write_text(json.dumps(bundle.manifest, indent=1, default=str) + "\n")
    return path


def load_toyvlm_v2(path: str | os.PathLike | None = None) -> ToyVLMv2:
    """Load a ToyVLM v2 bundle (default: the committed v2 checkpoint), eval mode, sdpa attention."""
    path = Path(path) if path is not None else CHECKPOINT_DIR_V2
    if not (path / "manifest.json").exists():
        raise FileNotFoundError(f"no ToyVLM v2 checkpoint at {path} (train one: make toyvlm)")
    vocab = Vocab(tuple(json.loads((path / "vocab.json").read_text())))
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, attn_implementation="sdpa").eval()
    model.generation_config.pad_token_id = vocab.pad
    model.generation_config.eos_token_id = vocab.eos
    return ToyVLMv2(model, vocab, json.loads((path / "manifest.json").read_text()))
