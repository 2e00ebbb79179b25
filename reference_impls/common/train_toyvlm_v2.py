"""Train ToyVLM v2 from scratch on CPU: ``python -m reference_impls.common.train_toyvlm_v2``.

A Qwen2.5-VL with a 192-wide, 6-layer language model and a 96-wide vision tower (2.9M parameters) learns the chat-layout
scenes of :mod:`reference_impls.common.chat_scenes`: images or a video first, the question last,
one-word and 5-20 token answers ending in ``<eos>``. The recipe carries over what trained v1
(:mod:`reference_impls.common.train_toyvlm`):

0. A vision-only stage (``--vision-steps``, 800 by default): the vision tower alone (no language
   model: ~0.2 s per batch of 16 phase-``a`` samples) trains on the dense per-token losses of 2.,
   so the language model sees informative visual tokens from its first step.
1. A curriculum of :data:`PHASES`: ``one`` (one image of 16 tokens, one-word colour / shape /
   presence / size questions; batch 16: the question-dependent lookup is learnt here, cheaply),
   ``a`` (2-3 images of 16 tokens, every kind; 2-4 temporal tokens of 32 for videos; batch 16),
   ``m`` (4-16 images of 16 tokens: image numbers up to 16 at a low cost; batch 8), ``b`` (2-6
   images of 64 tokens, 8-16 frames; batch 8), ``c`` (the benchmark setting: 16 images of 64
   tokens, 16-32 frames of 128 tokens per frame pair; batch 4). Every ``--video-every``-th batch
   holds videos, the others images. The long prompts of ``c`` must be trained on: v1 showed that a
   model perfect on short prompts can fail on long ones. Each training prompt is a multi-turn
   chat about one scene (:attr:`PhaseV2.turns`: 4-8 questions, each after the previous reply):
   the visual tokens, most of a step's cost, serve several questions. Held-out prompts hold one
   question.
2. Dense auxiliary losses on the vision tower's merged tokens: linear heads predict, per token,
   the colour, shape and size class of the object that covers most of it (or "empty"); a token
   holding fewer than :data:`LABEL_PIXELS` of its object's pixels is left out. A further dense
   loss (``--index-layer``, hidden state 2 by default) makes the language model's visual tokens
   predict the index of their image (or temporal token): questions name images ("in image 3"),
   and each image is preceded by its label (``image 3``, as Qwen2-VL's template writes
   ``Picture 3:``), which the visual tokens must pick up; a video's temporal tokens have no label.
3. Attention supervision: at layer ``--attention-layer``, the first ``--attention-heads`` heads of
   every position that predicts a reply token should put their attention on the visual tokens
   that show what that word is about (:attr:`~reference_impls.common.chat_scenes.ChatQA.evidence`:
   a list is read item by item; the question's objects for one-word answers and ``<eos>``;
   ``-log`` of that mass, weight ``--attention-weight``), in the phases of
   ``--attention-phases``. The model runs with sdpa, which returns no weights: the supervised
   heads' weights are recomputed from that layer's input for the reply rows only
   (:func:`supervised_attention`, equal to eager attention's; materialising every layer's map in
   eager mode made a phase-``a`` step about twice as slow). With the question last, visual tokens cannot see the question (causal attention), so this is where the
   lookup is learnt. Its first hop is taught directly (``--question-weight``): the same positions'
   hidden state at that layer predicts the colour, shape and image number the question names.
   Optionally (``--exit-layer``) a later hidden state is also trained to name the reply word
   through the model's own norm and head (deep supervision; off by default).
4. Loss on the reply tokens and ``<eos>`` only; a higher learning rate for the vision tower; the
   training-only matmul patch embedding of v1. One thread (``--threads 1``): on the shared 2-core
   machine a forward and backward pass of a phase-``a`` batch took 1.1 s with one thread and 9-14 s
   with two (load average 6-8; two threads stall whenever the other core is taken). On an idle
   2-core machine two threads are 1.69x faster (a 150-step probe of every phase: 119 against 202 s)
   and ran ``make toyvlm``'s recipe in 40.4 min of training (2026-12-07), but that model scored
   short 0.58 / long 0.23 against the committed one-thread run's 0.75 / 0.28.

Training samples use seed ``--seed`` (default :data:`~reference_impls.common.chat_scenes.TRAIN_SEED`,
0), sample ``i`` the random stream ``(seed, i)``; the held-out suites use their own seeds
(1001-1005, :data:`~reference_impls.common.chat_scenes.SUITES`), so no stream is shared. The
manifest records both, the exact command, the steps and wall time, and the held-out exact match
per suite.

Status: the recipe does NOT reach the goals (>= 95% / >= 90% held-out exact match on short / long
answers in <= 60 min). Its best run (``make toyvlm``, the defaults; figures at the end of the runs
below) is committed as ``checkpoints/toyvlm_v2`` all the same, and the benchmarks run on it: a
question-last model that answers 75% of the short suite (needles 88%) and lists and tallies of one
image is a closer stand-in for real VLM use than v1's question-first one-word model, whose layout
made observation-window methods fail for a reason no real prompt has. Every v2 results file states
the checkpoint's held-out exact match next to its own figures; question kinds the model does not
answer (counts and lists over many images, descriptions, frame comparisons) say little about a
compression method, whatever it keeps.

What changed the picture (2026-12-06, third session): shape was not readable from a merged token.
An unaligned 14-28 px object leaves only part of its outline in each 28 px token, and a linear
head on the vision tower's tokens read shape at 0.18-0.26 (chance 0.20) however long the tower
trained; every question names an object by colour *and* shape, so nothing could be looked up
(earlier runs: the supervised heads put 0.99 of their mass on object tokens but only the asked
object's share of it, whatever the question). With each shape's surface pattern anchored to the
pixel grid (:func:`~reference_impls.common.chat_scenes.texture`) and slivers left out of the
per-token labels, the same probe reads shape at 0.89 (tower 64 wide) / 0.98 (96 wide) and colour
at 1.00 on tokens holding >= 40 px of their object, after 800 vision-only steps of batch 16
(held-out phase-``a`` scenes of seed 2000, 433 object tokens; 0.41 / 0.60 with object-anchored
2 px stripes). The lookup is then learnt: in phase ``one`` alone (300 vision steps, 500 steps,
~3 min) held-out exact match rose 0.40 -> 0.69 (colour 0.93, shape 0.55), attention loss 0.97 ->
0.14.

The best full run (``--vision-steps 300 --phases one:1500,a:1000,m:400,b:200,c:100
--attention-phases one,a,m,b``, earlier per-question attention targets; 41.2 min of training,
one thread, load average 2-4, then 3.0 min of final evaluation): phase held-out exact match 0.88
after ``one`` (presence 1.0, colour 0.88, shape 0.75), 0.44 after ``a`` (colour 1.0, shape 1.0,
count 0.67, where 0.67, every list-like kind 0.0), 0.38 after ``b``, 0.13 after 100 steps of
``c``. Final held-out exact match (64 per suite, stress 16): short 0.27, long 0.02, multi_image
0.22, video 0.34 (colour, shape and presence 1.0; motion, flash, events 0.0), stress 0.00. A
pilot with per-word attention targets (``one:1000,a:1000``) reached 0.48 on phase ``a``
(tally 0.33 instead of 0.0; list and describe still 0.0) after 1,000 ``a`` steps. The same
curriculum with per-word targets (``make toyvlm-v2``'s command, capped at 40 min; all 3,200 steps
in 33.7 min, load 1.1-3.0, then 2.0 min of evaluation; its phase-``one`` evaluations repeat the
first run's exactly): 0.47 after ``a``, 0.41 after ``b``, 0.28 after ``c``; final short 0.34,
long 0.00, multi_image 0.11, video 0.36, stress 0.06. Long answers do come with more steps of
``a``: a pilot of ``one:600,a:2400`` (per-word targets, 24 min at load ~1) scored 0.25, 0.52, 0.63
and 0.71 on phase-``a`` held-out samples (48) after 600, 1,200, 1,800 and 2,400 ``a`` steps
(list 0.0 -> 0.4, tally 0.0 -> 0.67, still 0.0 -> 1.0; describe and tally_all still 0.0), still
rising.

What is still missing, from these runs: (1) long answers: lists, descriptions and tallies need
many more steps than 52 min buy (phase ``a`` costs ~1 s per step here, most of it eager
attention materialising every layer's map to supervise one layer; computing the supervised
heads' weights alone under sdpa would make ``a``-``b`` steps cheaper); (2) the benchmark setting:
each switch to larger images (16 -> 64 tokens) sets the per-token and image-index losses back
(vision loss 0.12 -> 6.3 for ~20 steps), and ``which image`` questions over 16 images of 64
tokens stay near chance (0.08), so ``c`` needs far more than 100 steps; (3) the needle goal
(evidence in 1-3% of the visual tokens) cannot be met with single-object needles: an object spans
<= 4 merged tokens, 0.39% of 1,024 (measured on 40 samples per suite: 0.1-0.4% single-object,
0.2-0.9% one-image lists; videos: colour 0.8-3.1%, motion 1.2-1.4%, events 1.6-3.1%).

Changes of 2026-12-07, measured only in short pilots on a machine shared with four other jobs
(load 5-7; this process got about a quarter of the CPU, so wall times are not comparable):
image labels, lists in the vocabulary's order, multi-turn prompts, sdpa with recomputed
supervised weights. Pilot ``--vision-steps 300 --phases one:300,a:900`` (one thread): phase
held-out exact match 0.27 / 0.42 after 150 / 300 ``one`` steps, 0.31 / 0.33 / 0.42 after 150 /
300 / 450 ``a`` steps (the earlier pilot: 0.25 after 600 ``a`` steps), list and describe still
0.0 (tally 0.67, where 0.67). Per step, learning is faster; per second it could not be judged
here. In phase ``one`` shape stays near chance (0.07-0.33 after 300-400 steps while colour
reaches 0.56-0.69): the shape features of 300 vision steps are too weak (the probe above needed
800). A learning rate of 3e-3 was worse (0.33 after 400 ``one`` steps); deep supervision at
hidden state 4 (``--exit-layer 4``) about the same as without (0.44). With a vision stage of 800
steps (``--vision-steps 800 --phases one:600,a:1500``, stopped after 600 ``a`` steps): phase
``one`` held-out 0.25 / 0.63 / 0.71 / 0.81 after 150 / 300 / 450 / 600 steps (colour 0.94, shape
0.93, presence 0.89, size 0.33), phase ``a`` 0.52 / 0.71 / 0.71 after 300 / 450 / 600 steps (list
0.4-0.6, tally 0.67, tally_all 0.75, still 1.0 once; describe and motion 0.0): the level the earlier
recipe reached after 2,400 ``a`` steps.

The full curriculum with these changes (``make toyvlm-v2``: ``--vision-steps 800 --phases
one:500,a:900,m:200,b:120,c:40``, attention supervised in ``one,a,m,b``; one thread, load 2.4-3.7,
all 1,760 steps in 29.5 min, then 2.4 min of final evaluation): phase held-out 0.88 after ``one``
(colour and shape 1.0), 0.66-0.72 during ``a`` (tally 0.5-1.0, list 0.4, where 0.67; describe 0.0),
0.38 on ``m`` (4-16 images: shape and image 0.0), 0.59 on ``b`` (2-6 images of 64 tokens: colour,
shape, image 1.0), 0.28 after 40 steps of ``c``. **Final held-out exact match (64 per suite,
stress 16): short 0.34, long 0.02, multi_image 0.22, video 0.45, stress 0.25** (short: presence
1.0, colour 0.18, shape 0.40, image 0.17, count 0.14). So the lookup works on up to 6 images and
fails on 16: the many-image phases ``m`` and ``c`` got 240 steps of 1,760, and ``c`` ran without
attention supervision (``--attention-phases`` excludes it; with recomputed weights it is no longer
expensive). Next: give ``m``, ``b`` and ``c`` most of the remaining 25 min of the budget, with
``--attention-phases ''`` (all phases), and check describe (size words: size was 0.3-0.7
throughout; the size of an object spread over 2-4 tokens is not readable from any one of them).
That run (``--phases one:400,a:700,m:500,b:250,c:120 --attention-phases ''``, other settings as
above; all 1,970 steps in 38.9 min at load 1-2.5, then 2.1 min of evaluation): phase held-out
0.59 on ``a`` after 700 steps, 0.47 on ``m`` after 500 (shape 0.0 on 4-16 images), 0.75 on ``b``
after 250 (list 0.8, describe 1.0), 0.34 after 120 steps of ``c``; **final short 0.44, long 0.11,
multi_image 0.30, video 0.48, stress 0.19**. Better than the run above on every suite but stress,
and still far from the goals: scenes of 16 images need many more steps than 55 min leave.

The longest run so far, the defaults of ``make toyvlm-v2`` (2026-12-07, fifth session: ``--phases
one:400,a:700,m:500,b:450,c:650``, attention supervised in every phase, phase checks on 48 samples;
all 2,700 steps in 89.5 min at load 1.2-5.8, beside the continual-AD bench on the other core and,
for an hour, two or three other jobs; then 2.0 min of evaluation): phase held-out exact match 0.52
after 300 ``one`` steps, 0.60 after 500 steps of ``a``, 0.50 after 400 of ``m``, 0.69 after 200 of
``b``, 0.44 / 0.60 / 0.60 after 50 / 350 / 650 steps of ``c`` (reply loss 0.61 -> 0.44). **Final
held-out exact match (64 per suite, stress 16): short 0.75, long 0.28, multi_image 0.41, video
0.58, stress 0.25.** Short: colour 0.91, shape 1.0, presence 1.0, image 0.75, size 0.71, count 0.29
(needles 0.88, aggregation 0.29). Long: list 0.53, tally 0.67, describe 0.08, where 0.07, tally_all
0.0. Video: colour, shape, presence 1.0, flash 0.91, count 0.86; motion 0.0, still 0.09, events
0.0. So five times the steps of ``c`` raised short from 0.44 to 0.75 (needles over 16 images of 64
tokens now mostly work), and what stays near zero is aggregation over many images (count,
``where``, ``tally_all``) and the video kinds that compare frames (motion, still, events). The
checkpoint is the committed one (see Status above). Resumed from it for 250 more steps of ``c`` (lr 3e-4,
vision lr 1e-3, fresh auxiliary heads; a throwaway script, 17 min): phase
held-out 0.60 -> 0.69, final short 0.77 (0.75), long 0.25 (0.28), count 0.36, describe 0.08,
``tally_all`` 0.0. More steps of the same recipe barely move it: what fails (aggregation over many
images, descriptions) needs another training signal, not more of this one.

A vision stage on both image sizes (``--vision-phases a,b``: phase-``a`` and phase-``b`` scenes in
turn, 2026-12-07, fifth session, machine shared with two other jobs) was meant to stop the jump of
the per-token loss at each switch to 64-token images; it cost more than it saved. Its tower reached
a vision loss of 0.34 after 800 steps (0.23 with ``a`` alone), 0.61 during phase ``one`` (0.34), and
phase ``one`` held-out exact match was 0.33 after 300 steps (0.59). The jump it was meant to prevent
is short: in the runs above the loss fell from 3.8 back to 0.04 within 20 steps of phase ``b``. The
option stays (default ``a``).

Deviations / guesses:
    The auxiliary heads and the attention supervision are our training devices (not a paper's)
    and are not saved: the checkpoint is a plain ``Qwen2_5_VLForConditionalGeneration``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

from .chat_scenes import (
    IMAGE_LONG_KINDS,
    IMAGE_SHORT_KINDS,
    MAX_NUMBER,
    SUITES,
    TRAIN_SEED,
    VIDEO_LONG_KINDS,
    VIDEO_SHORT_KINDS,
    ChatQA,
    ChatSample,
    ChatSceneSpec,
    answer_words,
    make_chat_sample,
    suite_samples,
)
from .results import command_line
from .toyvlm_v2 import CHECKPOINT_DIR_V2, ToyVLMv2, build_vocab_v2, save_toyvlm_v2, toyvlm_v2_config
from .train_toyvlm import _fast_patch_embed, _update

__all__ = [
    "PHASES",
    "PhaseV2",
    "attention_targets",
    "cell_targets_v2",
    "main",
    "phase_held_out",
    "train_v2",
    "training_samples",
]

IMAGE_KINDS = IMAGE_SHORT_KINDS + IMAGE_LONG_KINDS
VIDEO_KINDS = VIDEO_SHORT_KINDS + VIDEO_LONG_KINDS
EVAL_SUITES = ("short", "long", "multi_image", "video")
"""Suites evaluated during training; ``stress`` (4,096 tokens) only at the end."""
GOALS = {"short": 0.95, "long": 0.90}
"""Held-out exact match the v2 checkpoint is meant to reach (short and long answers)."""
LABEL_PIXELS = 40
"""A merged token holding fewer pixels (but some) of its object is left out of the per-token losses:
a 4-39 px sliver does not show enough of the object to name it."""
PHASE_EVAL_SEED = 2000
"""Held-out samples drawn like the current phase's training samples (a cheap learning curve)."""


@dataclass(frozen=True)
class PhaseV2:
    """A curriculum phase: scenes and question kinds for image and for video samples, a batch size."""

    name: str
    images: ChatSceneSpec
    video: ChatSceneSpec
    batch_size: int
    image_kinds: tuple[str, ...] = IMAGE_KINDS
    video_kinds: tuple[str, ...] = VIDEO_KINDS
    turns: int = 1
    """Questions per training prompt (a multi-turn chat about one scene): the visual tokens, most of
    a step's cost, then serve several questions."""


PHASES: dict[str, PhaseV2] = {
    "one": PhaseV2(
        "one",
        ChatSceneSpec(n_images=(1, 1), cells=(4, 4)),
        ChatSceneSpec(video_frames=(4, 4), cells=(4, 4), still_objects=(1, 2)),
        16,
        image_kinds=("colour", "shape", "presence", "size"),
        video_kinds=("colour", "shape", "presence"),
        turns=4,
    ),
    "a": PhaseV2(
        "a",
        ChatSceneSpec(n_images=(2, 3), cells=(4, 4)),
        ChatSceneSpec(video_frames=(4, 8), cells=(4, 8), still_objects=(1, 3)),
        16,
        turns=6,
    ),
    "m": PhaseV2(
        "m",
        ChatSceneSpec(n_images=(4, 16), cells=(4, 4)),
        ChatSceneSpec(video_frames=(8, 16), cells=(4, 8), still_objects=(2, 4)),
        8,
        turns=6,
    ),
    "b": PhaseV2(
        "b",
        ChatSceneSpec(n_images=(2, 6), cells=(8, 8)),
        ChatSceneSpec(video_frames=(8, 16), cells=(8, 8), still_objects=(2, 4)),
        8,
        turns=8,
    ),
    "c": PhaseV2("c", SUITES["short"].spec, SUITES["video"].spec, 4, turns=8),
}


def training_samples(
    phase: PhaseV2, seed: int, start: int, n: int, video: bool, turns: int | None = None
) -> list[ChatSample]:
    """Samples ``start .. start + n - 1`` of ``seed`` with the phase's turns (or ``turns``): all videos
    or all images (a batch of one kind is not padded to the longest of two very different prompt lengths)."""
    spec, kinds = (phase.video, phase.video_kinds) if video else (phase.images, phase.image_kinds)
    turns = phase.turns if turns is None else turns
    return [make_chat_sample(spec, kinds, seed, i, turns) for i in range(start, start + n)]


def phase_held_out(phase: PhaseV2, n: int, video_every: int) -> list[ChatSample]:
    """``n`` held-out one-question samples drawn like the phase's training samples (seed
    :data:`PHASE_EVAL_SEED`)."""
    videos = n // video_every if video_every > 0 else 0
    return training_samples(phase, PHASE_EVAL_SEED, 0, n - videos, False, 1) + training_samples(
        phase, PHASE_EVAL_SEED, n, videos, True, 1
    )


def cell_targets_v2(
    samples: list[ChatSample], spec_colours: tuple[str, ...], spec_shapes: tuple[str, ...]
) -> tuple[torch.Tensor, ...]:
    """Per merged visual token, in the order the vision tower emits them (all images of the batch,
    then all videos): colour, shape and size class (0: empty) of the object covering most of it;
    -100 (ignored) on tokens with fewer than :data:`LABEL_PIXELS` of its pixels."""
    colour, shape, size = [], [], []
    for videos in (False, True):
        for sample in samples:
            if sample.scene.video != videos:
                continue
            objects = sample.scene.objects
            for label, pixels in zip(sample.scene.token_labels.tolist(), sample.scene.token_pixels.tolist()):
                obj = objects[label] if label >= 0 else None
                if obj is None:
                    values = (0, 0, 0)
                elif pixels < LABEL_PIXELS:
                    values = (-100, -100, -100)
                else:
                    values = (
                        1 + spec_colours.index(obj.colour),
                        1 + spec_shapes.index(obj.shape),
                        1 + (obj.size_word == "large"),
                    )
                for target, value in zip((colour, shape, size), values):
                    target.append(value)
    return torch.tensor(colour), torch.tensor(shape), torch.tensor(size)


def attention_targets(
    samples: list[ChatSample], batch: dict[str, torch.Tensor], config, colours: tuple[str, ...], shapes: tuple[str, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rows (B, S)``: positions that predict a reply token and have evidence; ``target (B, S, S)``:
    for each such position, 1 on the visual tokens that show what the predicted word is about (the
    word's own objects, :attr:`ChatQA.evidence`, so that a list is read item by item; the question's
    objects for one-word answers and ``<eos>``); ``asked (B, S, 3)``: the colour, shape and image
    number its turn's question names (:func:`question_targets`)."""
    ids, labels = batch["input_ids"], batch["labels"]
    visual = (ids == config.image_token_id) | (ids == config.video_token_id)
    target = torch.zeros((*ids.shape, ids.shape[1]), dtype=torch.float)
    rows = torch.zeros(ids.shape, dtype=torch.bool)
    asked = torch.zeros((*ids.shape, 3), dtype=torch.long)
    for b, sample in enumerate(samples):
        positions = visual[b].nonzero().squeeze(-1)
        tokens = sample.scene.object_tokens
        predicting = (labels[b, 1:] != -100).nonzero().squeeze(-1).tolist()  # positions predicting reply words
        words = [
            (qa, qa.evidence[k] if k < len(qa.evidence) else qa.relevant)
            for qa in (sample.qa, *sample.follow_ups)
            for k in range(len(answer_words(qa)))
        ]
        for row, (qa, about) in zip(predicting, words, strict=True):
            evidence = sorted({t for i in about for t in tokens[i]})
            if evidence:
                target[b, row, positions[evidence]] = 1.0
                rows[b, row] = True
                asked[b, row] = torch.tensor(question_targets(qa, colours, shapes))
    return rows, target, asked


def supervised_attention(
    attention: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    key_mask: torch.Tensor,
    first_row: int,
    heads: int,
) -> torch.Tensor:
    """Attention weights ``(B, heads, S - first_row, S)`` of the first ``heads`` heads of a Qwen2.5-VL
    text attention layer for the queries from ``first_row`` on, recomputed from the layer's input
    ``hidden (B, S, D)`` (M-RoPE cos/sin as the layer got them; ``key_mask (B, S)``: 1 on real
    tokens). The model itself runs with sdpa, which returns no weights; recomputing a few heads'
    rows is far cheaper than materialising every layer's map in eager attention."""
    batch, length, _ = hidden.shape
    dim = attention.head_dim
    groups = attention.num_key_value_groups
    query = attention.q_proj(hidden).view(batch, length, -1, dim).transpose(1, 2)[:, :heads]  # (B, h, S, d)
    key = attention.k_proj(hidden).view(batch, length, -1, dim).transpose(1, 2)  # (B, h_kv, S, d)
    key = key[:, [h // groups for h in range(heads)]]  # (B, h, S, d)
    query, key = apply_rotary_pos_emb(query, key, *position_embeddings)
    scores = torch.einsum("bhqd,bhkd->bhqk", query[:, :, first_row:], key) * attention.scaling  # (B, h, Q, S)
    causal = torch.arange(length)[None, :] <= torch.arange(first_row, length)[:, None]  # (Q, S)
    allowed = causal[None, None] & key_mask.bool()[:, None, None, :]
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1)


def _vision_loss(
    heads: _AuxHeads, cells: torch.Tensor, samples: list[ChatSample], colours: tuple, shapes: tuple
) -> torch.Tensor:
    """Cross-entropy of the per-token colour, shape and size heads on the merged tokens ``cells (N, D)``."""
    colour, shape, size = cell_targets_v2(samples, colours, shapes)
    return (
        F.cross_entropy(heads.colour(cells), colour)
        + F.cross_entropy(heads.shape(cells), shape)
        + F.cross_entropy(heads.size(cells), size)
    )


def index_targets(samples: list[ChatSample], batch: dict[str, torch.Tensor], config) -> torch.Tensor:
    """``(B, S)``: per visual token, the index of its image (or of its temporal token in a video);
    -100 elsewhere. The question names images ("in image 3"); each image's tokens must pick up the
    label before it (``image 3``; a video's temporal tokens have none): this dense target teaches it."""
    ids = batch["input_ids"]
    visual = (ids == config.image_token_id) | (ids == config.video_token_id)
    target = torch.full(ids.shape, -100, dtype=torch.long)
    for b, sample in enumerate(samples):
        per_item = sample.scene.n_visual_tokens // (len(sample.scene.images) // (2 if sample.scene.video else 1))
        target[b, visual[b]] = torch.arange(sample.scene.n_visual_tokens) // per_item
    return target


def question_targets(qa: ChatQA, colours: tuple[str, ...], shapes: tuple[str, ...]) -> tuple[int, int, int]:
    """The colour, the shape (1-based; 0: not named) and the image number (0: none) that a question
    names. Predicted from the reply positions' hidden state at the supervised attention layer, this
    teaches the first hop of the lookup (gather the question into the position that then looks at
    the images) directly."""
    words = qa.question.split()
    colour = next((1 + colours.index(w) for w in words if w in colours), 0)
    shape = next((1 + shapes.index(w) for w in words if w in shapes), 0)
    image = next((int(b) for a, b in zip(words, words[1:]) if a == "image" and b.isdigit()), 0)
    return colour, shape, image


class _AuxHeads(nn.Module):
    def __init__(self, width: int, n_colours: int, n_shapes: int, text_width: int):
        super().__init__()
        self.colour = nn.Linear(width, n_colours + 1)
        self.shape = nn.Linear(width, n_shapes + 1)
        self.size = nn.Linear(width, 3)
        self.index = nn.Linear(text_width, MAX_NUMBER + 1)
        self.question = nn.ModuleList([nn.Linear(text_width, n) for n in (n_colours + 1, n_shapes + 1, MAX_NUMBER + 1)])


def evaluate_suites(
    bundle: ToyVLMv2, n: int, suites: tuple[str, ...] = EVAL_SUITES, start: int = 0
) -> dict[str, dict[str, float]]:
    """Held-out exact match (greedy ``generate`` until ``<eos>``) on ``n`` samples of each suite."""
    return {name: bundle.exact_match(suite_samples(name, n, start), max_new_tokens=22, batch_size=4) for name in suites}


def train_v2(
    *,
    phases: list[tuple[PhaseV2, int, int]],
    config_kwargs: dict,
    lr: float = 1e-3,
    vision_lr: float = 3e-3,
    aux_weight: float = 1.0,
    attention_weight: float = 1.0,
    vision_steps: int = 0,
    index_layer: int | None = None,
    vision_phases: tuple[str, ...] = ("a",),
    attention_layer: int | None = 2,
    attention_heads: int = 2,
    attention_phases: tuple[str, ...] | None = None,
    question_weight: float = 0.0,
    exit_layer: int | None = None,
    exit_weight: float = 0.0,
    video_every: int = 4,
    seed: int = TRAIN_SEED,
    max_minutes: float = 1e9,
    eval_every: int = 300,
    eval_n: int = 12,
    phase_eval_every: int = 100,
    phase_eval_n: int = 32,
    log=print,
    fixed_batch: list[ChatSample] | None = None,
) -> tuple[ToyVLMv2, dict]:
    """Train from scratch; ``phases`` is a list of ``(phase, steps, batch_size)``. Attention is
    supervised in the phases named in ``attention_phases`` (all when None); the others run with
    sdpa attention (no attention map is materialised: a phase-``c`` step is several times cheaper).
    Returns the bundle and a history (losses, evaluations, steps, wall seconds)."""
    if seed in {suite.seed for suite in SUITES.values()} | {PHASE_EVAL_SEED}:
        raise ValueError(f"training seed {seed} is a held-out suite seed")
    torch.manual_seed(seed)
    vocab = build_vocab_v2()
    config = toyvlm_v2_config(vocab, **config_kwargs)
    if attention_layer is not None and not 0 <= attention_layer < config.text_config.num_hidden_layers:
        raise ValueError(
            f"attention_layer {attention_layer} is not a layer of a {config.text_config.num_hidden_layers}-layer model"
        )
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = vocab.pad
    model.generation_config.eos_token_id = vocab.eos
    bundle = ToyVLMv2(model, vocab)
    colours, shapes = PHASES["a"].images.colours, PHASES["a"].images.shapes
    heads = _AuxHeads(config.vision_config.out_hidden_size, len(colours), len(shapes), config.text_config.hidden_size)
    _fast_patch_embed(model)
    captured: list[torch.Tensor] = []
    hook = model.model.visual.register_forward_hook(lambda m, a, out: captured.append(out.pooler_output))
    attention_inputs: dict = {}
    hooks = [hook]
    if attention_layer is not None:  # the supervised layer's input, to recompute its weights
        supervised = model.model.language_model.layers[attention_layer].self_attn
        hooks.append(
            supervised.register_forward_pre_hook(
                lambda m, args, kwargs: attention_inputs.update(
                    hidden=kwargs.get("hidden_states", args[0] if args else None),
                    position_embeddings=kwargs["position_embeddings"],
                ),
                with_kwargs=True,
            )
        )
    groups = [
        {"params": list(model.model.visual.parameters()) + list(heads.parameters()), "lr": vision_lr},
        {"params": list(model.model.language_model.parameters()) + list(model.lm_head.parameters()), "lr": lr},
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    total = sum(steps for _, steps, _ in phases)
    warmup = min(50, total // 10 + 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, total) / max(total, 1))))
        ),
    )
    history: dict = {"loss": [], "eval": [], "phase_eval": []}
    start, step, counter, seconds_in_eval = time.perf_counter(), 0, 0, 0.0
    model.train()
    if vision_steps:
        # stage 1: the vision tower alone on the dense per-token losses (no language model: cheap),
        # so that the language model sees informative visual tokens from its first step
        vision_optimizer = torch.optim.AdamW(groups[0]["params"], lr=vision_lr, weight_decay=0.01)
        vision_schedule = torch.optim.lr_scheduler.LambdaLR(
            vision_optimizer,
            lambda s: min(1.0, (s + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / vision_steps))),
        )
        for vision_step in range(vision_steps):
            # phases in turn: the tower must serve every image size it will meet (its 2D RoPE and
            # its full-attention blocks see other positions on 64-token images than on 16-token ones)
            source = PHASES[vision_phases[vision_step % len(vision_phases)]]
            video = video_every > 0 and vision_step // len(vision_phases) % video_every == video_every - 1
            samples = training_samples(source, seed, counter, source.batch_size, video)
            counter += source.batch_size
            batch = bundle.collate(samples)
            captured.clear()
            if video:
                model.model.visual(batch["pixel_values_videos"], grid_thw=batch["video_grid_thw"])
            else:
                model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
            vision = _vision_loss(heads, torch.cat(captured), samples, colours, shapes)
            _update(vision, vision_optimizer, vision_schedule, groups[0]["params"])
            history.setdefault("vision_loss", []).append((vision_step + 1, round(vision.item(), 4)))
            if (vision_step + 1) % 10 == 0:
                recent = np.mean([h[1] for h in history["vision_loss"][-10:]])
                log(
                    f"vision step {vision_step + 1}/{vision_steps} loss {recent:.3f} {time.perf_counter() - start:.0f}s"
                )
    stop = False
    for phase, steps, batch_size in phases:
        supervise = attention_layer is not None and (attention_phases is None or phase.name in attention_phases)
        for _ in range(steps):
            if fixed_batch is not None:
                samples = fixed_batch
            else:
                video = video_every > 0 and step % video_every == video_every - 1  # every video_every-th batch
                samples = training_samples(phase, seed, counter, batch_size, video)
                counter += batch_size
            batch = bundle.collate(samples, with_answer=True)
            captured.clear()
            out = model(**batch, output_hidden_states=index_layer is not None or question_weight > 0 or exit_weight > 0)
            cells = torch.cat(captured)  # (N_visual, D): images of the batch, then videos
            vision = _vision_loss(heads, cells, samples, colours, shapes)
            if index_layer is not None:
                index = index_targets(samples, batch, config)
                keep = index >= 0
                vision = vision + F.cross_entropy(heads.index(out.hidden_states[index_layer][keep]), index[keep])
            attend = torch.zeros(())
            if supervise:
                rows, target, asked = attention_targets(samples, batch, config, colours, shapes)
                if rows.any():
                    first = int(rows.any(0).nonzero()[0])  # (left padding: replies sit at the end)
                    weights = supervised_attention(
                        supervised,
                        attention_inputs["hidden"],
                        attention_inputs["position_embeddings"],
                        batch["attention_mask"],
                        first,
                        attention_heads,
                    )  # (B, h, S - first, S)
                    mass = torch.einsum("bhqk,bqk->bqh", weights, target[:, first:])[rows[:, first:]]  # (rows, h)
                    attend = -torch.log(mass + 1e-6).mean()
                    if question_weight > 0:
                        hidden = out.hidden_states[attention_layer][rows]  # (rows, D)
                        attend = attend + question_weight * sum(
                            F.cross_entropy(head(hidden), asked[rows][:, k]) for k, head in enumerate(heads.question)
                        )
            loss = out.loss + aux_weight * vision + attention_weight * attend
            if exit_weight > 0 and exit_layer is not None:
                # deep supervision: the hidden state right after the lookup already names the reply word
                hidden = model.model.language_model.norm(out.hidden_states[exit_layer][:, :-1])
                loss = loss + exit_weight * F.cross_entropy(
                    model.lm_head(hidden).flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100
                )
            _update(loss, optimizer, schedule, [*model.parameters(), *heads.parameters()])
            step += 1
            history["loss"].append((step, round(out.loss.item(), 4), round(vision.item(), 4), round(attend.item(), 4)))
            elapsed = time.perf_counter() - start
            if step % 10 == 0:
                recent = np.mean([h[1:] for h in history["loss"][-10:]], axis=0)
                log(
                    f"step {step}/{total} phase {phase.name} reply loss {recent[0]:.3f} vision {recent[1]:.3f}"
                    f" attention {recent[2]:.3f} {elapsed:.0f}s"
                )
            suites_due = eval_every and (step % eval_every == 0 or step == total)
            phase_due = phase_eval_every and (step % phase_eval_every == 0 or step == total)
            if fixed_batch is None and (suites_due or phase_due):
                tick = time.perf_counter()
                if phase_due:
                    held = phase_held_out(phase, phase_eval_n, video_every)
                    accuracy = bundle.exact_match(held, max_new_tokens=22, batch_size=8)
                    history["phase_eval"].append((step, phase.name, round(elapsed), accuracy))
                    log(f"  phase {phase.name} held-out exact match at step {step}: {accuracy}")
                if suites_due:
                    accuracy = evaluate_suites(bundle, eval_n)
                    history["eval"].append((step, round(elapsed), accuracy))
                    log(
                        f"  suites at step {step} ({elapsed:.0f}s): "
                        + ", ".join(f"{k} {v['all']:.2f}" for k, v in accuracy.items())
                    )
                seconds_in_eval += time.perf_counter() - tick
            if elapsed > max_minutes * 60:
                log(f"stopping at step {step}: time limit of {max_minutes} min reached")
                stop = True
                break
        if stop:
            break
    history.update(
        steps=step,
        planned_steps=total,
        wall_seconds=round(time.perf_counter() - start, 1),
        eval_seconds=round(seconds_in_eval, 1),
    )
    model.eval()
    del model.model.visual.patch_embed.forward  # back to the real Conv3d for inference
    for handle in hooks:
        handle.remove()
    return bundle, history


def micro_run(steps: int = 20) -> dict:
    """A micro model trained ``steps`` steps on one fixed batch of small chat samples (for tests)."""
    torch.set_num_threads(1)
    phase = PhaseV2(
        "micro",
        ChatSceneSpec(n_images=(2, 2), cells=(2, 2), objects_per_image=(1, 2), n_specks=1),
        ChatSceneSpec(video_frames=(2, 2), cells=(2, 4), still_objects=(1, 1)),
        6,
        image_kinds=("colour", "list", "tally_all"),
        video_kinds=("motion", "events"),
    )
    batch = training_samples(phase, TRAIN_SEED, 0, 4, video=False) + training_samples(
        phase, TRAIN_SEED, 4, 2, video=True
    )
    _, history = train_v2(
        phases=[(phase, steps, 6)],
        config_kwargs=dict(
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            num_kv_heads=1,
            intermediate_size=64,
            vision_depth=1,
            vision_hidden=32,
        ),
        lr=3e-3,
        vision_lr=3e-3,
        attention_layer=1,
        attention_heads=1,
        index_layer=1,
        fixed_batch=batch,
        eval_every=0,
        log=lambda *_: None,
    )
    return history


def _parse_phases(text: str, batch_override: int | None = None) -> list[tuple[PhaseV2, int, int]]:
    phases = []
    for item in text.split(","):
        name, steps, *batch = item.split(":")
        phase = PHASES[name]
        phases.append((phase, int(steps), int(batch[0]) if batch else batch_override or phase.batch_size))
    return phases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--phases",
        default="one:400,a:700,m:500,b:450,c:650",
        help="curriculum name:steps[:batch],... (names in PHASES)",
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--vision-lr", type=float, default=3e-3)
    parser.add_argument("--aux-weight", type=float, default=1.0)
    parser.add_argument(
        "--attention-layer", type=int, default=2, help="layer whose reply-token attention is supervised (-1: none)"
    )
    parser.add_argument("--attention-heads", type=int, default=2)
    parser.add_argument(
        "--question-weight",
        type=float,
        default=1.0,
        help="weight of the reply positions' prediction of the question's colour, shape and image (0: off)",
    )
    parser.add_argument("--attention-phases", default="", help="phases whose attention is supervised ('': all)")
    parser.add_argument("--attention-weight", type=float, default=1.0)
    parser.add_argument(
        "--exit-layer", type=int, default=-1, help="hidden state whose early-exit logits are also trained (-1: none)"
    )
    parser.add_argument("--exit-weight", type=float, default=0.5)
    parser.add_argument(
        "--vision-steps", type=int, default=800, help="steps of the vision-only stage on the per-token losses"
    )
    parser.add_argument("--vision-phases", default="a", help="phases whose scenes the vision-only stage uses, in turn")
    parser.add_argument(
        "--index-layer",
        type=int,
        default=2,
        help="hidden state (0: embeddings) whose visual tokens predict their image / temporal index (-1: none)",
    )
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--vision-hidden", type=int, default=96)
    parser.add_argument("--vision-depth", type=int, default=2)
    parser.add_argument("--video-every", type=int, default=4)
    parser.add_argument("--seed", type=int, default=TRAIN_SEED)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-minutes", type=float, default=55.0)
    parser.add_argument("--eval-every", type=int, default=300)
    parser.add_argument(
        "--eval-n", type=int, default=12, help="held-out samples per suite for the periodic evaluations"
    )
    parser.add_argument("--phase-eval-every", type=int, default=100)
    parser.add_argument(
        "--phase-eval-n", type=int, default=32, help="held-out samples like the current phase's (seed 2000)"
    )
    parser.add_argument("--final-n", type=int, default=64, help="held-out samples per suite for the final accuracy")
    parser.add_argument("--stress-n", type=int, default=16, help="held-out samples of the 4,096-token stress suite")
    parser.add_argument("--out", default=str(CHECKPOINT_DIR_V2))
    parser.add_argument("--log-json", default=None, help="also write the loss and evaluation history here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()
    phases = _parse_phases(args.phases)
    config_kwargs = dict(
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        intermediate_size=args.intermediate,
        vision_hidden=args.vision_hidden,
        vision_depth=args.vision_depth,
    )
    bundle, history = train_v2(
        phases=phases,
        config_kwargs=config_kwargs,
        lr=args.lr,
        vision_lr=args.vision_lr,
        aux_weight=args.aux_weight,
        attention_layer=None if args.attention_layer < 0 else args.attention_layer,
        attention_heads=args.attention_heads,
        attention_phases=tuple(args.attention_phases.split(",")) if args.attention_phases else None,
        question_weight=args.question_weight,
        attention_weight=args.attention_weight,
        exit_layer=None if args.exit_layer < 0 else args.exit_layer,
        exit_weight=args.exit_weight,
        vision_steps=args.vision_steps,
        vision_phases=tuple(args.vision_phases.split(",")),
        index_layer=None if args.index_layer < 0 else args.index_layer,
        video_every=args.video_every,
        seed=args.seed,
        max_minutes=args.max_minutes,
        eval_every=args.eval_every,
        eval_n=args.eval_n,
        phase_eval_every=args.phase_eval_every,
        phase_eval_n=args.phase_eval_n,
        log=lambda *a: print(*a, flush=True),
    )
    tick = time.perf_counter()
    # the final evaluation uses samples after the periodic ones (same held-out seeds, other streams)
    final = evaluate_suites(bundle, args.final_n, start=args.eval_n)
    final.update(evaluate_suites(bundle, args.stress_n, ("stress",), start=0))
    print(f"final held-out exact match ({time.perf_counter() - tick:.0f}s): {json.dumps(final)}", flush=True)
    params = sum(p.numel() for p in bundle.model.parameters())
    manifest = dict(
        command=command_line("reference_impls.common.train_toyvlm_v2", argv),
        layout="<bos> (<vision_start> <image|video>... <vision_end>)+ question ? answer reply <eos>",
        training_seed=args.seed,
        training_streams=f"training sample i uses numpy stream (seed={args.seed}, i);"
        f" every {args.video_every}th batch is videos",
        held_out_seeds={name: suite.seed for name, suite in SUITES.items()},
        held_out_streams=f"periodic evaluations: indices 0..{args.eval_n - 1};"
        f" final: {args.eval_n}..{args.eval_n + args.final_n - 1} "
        f"(stress 0..{args.stress_n - 1})",
        phases=[
            dict(name=p.name, steps=s, batch_size=b, images=asdict(p.images), video=asdict(p.video))
            for p, s, b in phases
        ],
        hyperparameters=dict(
            lr=args.lr,
            vision_lr=args.vision_lr,
            aux_weight=args.aux_weight,
            attention_layer=args.attention_layer,
            attention_heads=args.attention_heads,
            attention_phases=args.attention_phases or "all",
            question_weight=args.question_weight,
            attention_weight=args.attention_weight,
            vision_steps=args.vision_steps,
            vision_phases=tuple(args.vision_phases.split(",")),
            index_layer=args.index_layer,
            video_every=args.video_every,
        ),
        config=config_kwargs,
        parameters=params,
        steps=history["steps"],
        planned_steps=history["planned_steps"],
        wall_seconds=history["wall_seconds"],
        eval_seconds_during_training=history["eval_seconds"],
        threads=args.threads,
        held_out_exact_match=final,
        held_out_n=dict(per_suite=args.final_n, stress=args.stress_n),
        eval_history=history["eval"],
        phase_eval_history=history["phase_eval"],
        phase_eval_seed=PHASE_EVAL_SEED,
        goals=GOALS,
        meets_goals=all(final[name]["all"] >= goal for name, goal in GOALS.items()),
        load_average=dict(start=load_at_start, end=os.getloadavg(), cores=os.cpu_count()),
        note="wall time measured on a 2-core machine shared with other jobs",
    )
    if args.log_json:
        Path(args.log_json).write_text(json.dumps(dict(manifest, loss=history["loss"]), default=str) + "\n")
    path = save_toyvlm_v2(bundle, args.out, manifest)
    print(f"saved to {path} ({params / 1e6:.2f}M parameters)")


if __name__ == "__main__":
    main()
