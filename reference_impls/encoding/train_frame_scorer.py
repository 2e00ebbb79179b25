"""Train the frame scorer of :mod:`reference_impls.encoding.learned_keyframes` on ToyVLM or ToyVLM v2 clips.

``python -m reference_impls.encoding.train_frame_scorer`` (a few minutes on one CPU thread):

1. Labels from the model itself (Frame-Voyager-style, our reconstruction): for every training
   clip (ToyVLM's four images as frames, scenes of ToyVLM's training seed 0) the vision tower
   runs once, then the language model answers from every combination of 1, 2 and 3 frames
   (the other frames' tokens dropped, positions kept), and we record its log-probability of the
   correct answer (:func:`subset_log_probs`). Scene ground truth is not used.
2. Features: 8x8 thumbnails of the raw frames and the prompt's mean word embedding
   (:func:`clip_features`), exactly what the method sees at inference.
3. Fit with the listwise combination loss (:func:`fit_scorer`); report ranking quality on
   held-out clips (:func:`ranking_metrics`) and write ``scorer.safetensors`` + ``manifest.json``
   to ``reference_impls/encoding/checkpoints/frame_scorer/``.

``--target toyvlm-v2`` does the same for ToyVLM v2 (:mod:`reference_impls.common.toyvlm_v2`, chat
layout, question last) and writes ``checkpoints/frame_scorer_v2/``: clips of the ``video`` suite
(frames = temporal slices, 8-16 per clip) and of the ``short`` suite (16 images as frames, the prompts
the tokens benchmark runs), 240 of each drawn from ToyVLM v2's own training streams (seed 0: stream
``(0, i)`` with the suite's scenes and question kinds); held-out ranking on 60 of each from streams
``(2, i)``. The suites' held-out seeds (1001-1005), which the benchmarks sample, are never used.
Labels: the log-probability of the whole correct reply (teacher-forced, summed over its tokens and
``<eos>``) from every single frame and 16 sampled 2- and 3-frame combinations per clip (all of them
when there are fewer; seeded with the data seed). The v2 scorer adds frame-index embeddings
(``--positions 16``) and fits 1,000 steps at lr 1e-2: these were chosen among five fits of the same
labels (with and without index embeddings; lr 3e-3, 1e-2, 3e-2; 32 or 16 wide), compared on the
held-out clips of stream seed 2 (no benchmark seed); without index embeddings the scorer did not
beat an untrained one there (top-1 agreement 0.29 against 0.42 on 24 decisive clips).

Options: ``--target``, ``--clips``, ``--heldout`` (ToyVLM v2: per suite), ``--combos``, ``--steps``,
``--lr``, ``--seed``, ``--heldout-seed``, ``--out``, ``--threads``, ``--data`` (labelled clips cached in a
file, to refit without labelling again). For a real Qwen2.5-VL see the paper card of ``learned_keyframes``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from reference_impls.common.chat_scenes import SUITES, answer_words, make_chat_samples
from reference_impls.common.results import command_line, without_option
from reference_impls.common.toyvlm import load_toyvlm
from reference_impls.common.visual_tokens import Selection, build_context, next_positions, reduce_inputs
from reference_impls.encoding.keyframes import _frame_tokens, item_thumbnails
from reference_impls.encoding.learned_keyframes import (
    CHECKPOINT_DIR,
    CHECKPOINT_DIR_V2,
    FrameScorer,
    combination_loss,
    frame_subsets,
    question_embedding,
    sample_subsets,
    save_frame_scorer,
)

__all__ = ["subset_log_probs", "clip_features", "make_dataset", "fit_scorer", "ranking_metrics", "main"]


@torch.no_grad()
def subset_log_probs(
    model,
    inputs: dict[str, torch.Tensor],
    answer: int | Sequence[int],
    sizes=(1, 2, 3),
    subsets: dict[int, torch.Tensor] | None = None,
    batch: int = 32,
) -> dict[int, torch.Tensor]:
    """The model's log-probability of the reply ``answer`` from combinations of frames, for one
    prompt (batch 1).

    Frames are the prompt's visual items when it has several (images as frames), else the
    temporal slices of its one video. The tower runs once; each combination keeps its frames'
    tokens at their original positions (:mod:`reference_impls.common.visual_tokens`). A reply of
    several tokens (ToyVLM v2: its words and ``<eos>``) is teacher-forced after the prompt at the
    positions decoding would give it (:func:`~reference_impls.common.visual_tokens.next_positions`),
    and its tokens' log-probabilities are summed; a one-token ``answer`` (ToyVLM) is the next
    token after the prompt.

    Args:
        answer: the reply's token ids, or one id.
        sizes: combination sizes, every combination of each (when ``subsets`` is None).
        subsets: ``{size: (n_subsets, T)}`` 0/1 membership of the combinations to score
            (:func:`~reference_impls.encoding.learned_keyframes.sample_subsets`); overrides ``sizes``.
        batch: combinations per language-model forward.

    Returns:
        ``{size: (n_subsets,)}`` in the order of ``subsets`` (default:
        :func:`~reference_impls.encoding.learned_keyframes.frame_subsets` order).
    """
    reply = torch.tensor([answer] if isinstance(answer, int) else list(answer))  # (L,)
    ctx = build_context(model, inputs)
    items = ctx.items[0]
    if len(items) > 1:
        spans = [torch.arange(start, start + t * h * w) for start, t, h, w in items]
    else:
        start, t, h, w = items[0]
        spans = [start + _frame_tokens(torch.tensor([k]), h * w) for k in range(t)]
    if subsets is None:
        subsets = {size: frame_subsets(len(spans), size) for size in sizes}
    forced = model.get_input_embeddings()(reply[:-1])  # (L-1, D): reply tokens fed back in
    result = {}
    for size, member in subsets.items():
        parts = [
            reduce_inputs(ctx, Selection(keep=[torch.cat([spans[k] for k in row.nonzero().flatten().tolist()])]))[0]
            for row in member.bool()
        ]
        values = []
        for first in range(0, len(parts), batch):
            chunk = _left_pad([_append_reply(p, forced) for p in parts[first : first + batch]])
            hidden = model.model(**chunk).last_hidden_state[:, -reply.numel() :]  # (n, L, D)
            log_probs = model.lm_head(hidden).float().log_softmax(-1)  # (n, L, V)
            values.append(log_probs.gather(-1, reply.expand(log_probs.shape[0], -1)[..., None]).sum((-1, -2)))
        result[size] = torch.cat(values)
    return result


def _append_reply(part: dict[str, torch.Tensor], forced: torch.Tensor) -> dict[str, torch.Tensor]:
    """One reduced prompt (batch 1) with the teacher-forced reply tokens ``forced (L-1, D)`` after it."""
    if forced.shape[0] == 0:
        return part
    steps = torch.arange(forced.shape[0])
    positions = next_positions(part["position_ids"])[:, None] + steps  # (1, L-1), the same on all 3 axes
    return {
        "inputs_embeds": torch.cat([part["inputs_embeds"], forced[None].to(part["inputs_embeds"])], dim=1),
        "position_ids": torch.cat([part["position_ids"], positions[None].expand(3, -1, -1)], dim=2),
        "attention_mask": torch.cat([part["attention_mask"], torch.ones_like(steps)[None]], dim=1),
    }


def _left_pad(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Batch-1 language-model inputs of different lengths as one left-padded batch."""
    length = max(p["attention_mask"].shape[1] for p in parts)
    pad = lambda x, dim: F.pad(x, (0, 0) * (x.dim() - 1 - dim) + (length - x.shape[dim], 0))  # noqa: E731
    return {
        "inputs_embeds": torch.cat([pad(p["inputs_embeds"], 1) for p in parts]),
        "position_ids": torch.cat([pad(p["position_ids"], 2) for p in parts], dim=1),
        "attention_mask": torch.cat([pad(p["attention_mask"], 1) for p in parts]),
    }


def clip_features(model, inputs: dict[str, torch.Tensor], thumb: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """What the method sees of one prompt (batch 1): ``(thumbnails (T, F), question (D,))``, the
    frames being its images, or the temporal slices of its video."""
    config = model.config
    pixels, grid = (
        (inputs["pixel_values_videos"], inputs["video_grid_thw"])
        if inputs.get("pixel_values_videos") is not None
        else (inputs["pixel_values"], inputs["image_grid_thw"])
    )
    thumbs = torch.cat(item_thumbnails(pixels, grid, config.vision_config, thumb))  # (T, F)
    skip = (
        config.vision_start_token_id,
        config.vision_end_token_id,
        config.image_token_id,
        config.video_token_id,
        config.text_config.pad_token_id,
    )
    return thumbs, question_embedding(model.get_input_embeddings(), inputs["input_ids"][0], skip)


def make_dataset(
    bundle,
    n: int,
    seed: int,
    thumb: int = 8,
    log=None,
    suites: Sequence[str] | None = None,
    combos: int | None = None,
) -> dict:
    """Features and model-made labels of ``n`` clips.

    ToyVLM (``suites`` None): ``bundle.samples(n, seed)``, its four images as frames, every 1-, 2-
    and 3-frame combination. ToyVLM v2: ``n`` clips of each of ``suites`` (their scenes and question
    kinds), drawn from the random streams ``(seed, i)`` (seed 0: the streams ToyVLM v2 trained on;
    the suites' held-out seeds are 1001-1005), every single frame and ``combos`` sampled 2- and
    3-frame combinations per clip (:func:`~reference_impls.encoding.learned_keyframes.sample_subsets`,
    seeded with ``seed``); clips are padded to the most frames (``frames``, a mask) and carry their
    combinations (``members``)."""
    if suites is None:
        prompts = [(s, bundle.vocab.id(s.qa.answer)) for s in bundle.samples(n, seed)]
    else:
        drawn = [s for name in suites for s in make_chat_samples(SUITES[name].spec, SUITES[name].kinds, n, seed)]
        prompts = [(s, [bundle.vocab.id(w) for w in answer_words(s)]) for s in drawn]
    generator = torch.Generator().manual_seed(seed)
    thumbs, questions, labels, members, kinds = [], [], {}, {}, []
    for index, (sample, answer) in enumerate(prompts):
        inputs = bundle.collate([sample])
        frames, question = clip_features(bundle.model, inputs, thumb)
        subsets = None
        if suites is not None:
            t = frames.shape[0]
            subsets = {
                size: frame_subsets(t, size)
                if size == 1 or combos is None
                else sample_subsets(t, size, combos, generator)
                for size in (1, 2, 3)
            }
            for size, member in subsets.items():
                members.setdefault(size, []).append(member)
        thumbs.append(frames)
        questions.append(question)
        for size, values in subset_log_probs(bundle.model, inputs, answer, subsets=subsets).items():
            labels.setdefault(size, []).append(values)
        kinds.append(sample.qa.kind)
        if log and (index + 1) % 250 == 0:
            log(f"  labelled {index + 1}/{len(prompts)}")
    if suites is None:
        return {
            "thumbs": torch.stack(thumbs),
            "questions": torch.stack(questions),
            "log_probs": {size: torch.stack(v) for size, v in labels.items()},
            "kinds": kinds,
        }
    longest = max(t.shape[0] for t in thumbs)
    return {
        "thumbs": torch.stack([F.pad(t, (0, 0, 0, longest - t.shape[0])) for t in thumbs]),  # (N, T, F)
        "frames": torch.stack([torch.arange(longest) < t.shape[0] for t in thumbs]),  # (N, T)
        "questions": torch.stack(questions),
        "log_probs": {size: _stack_padded(v) for size, v in labels.items()},  # (N, n_subsets)
        "members": {
            size: _stack_padded([F.pad(m, (0, longest - m.shape[1])) for m in v]) for size, v in members.items()
        },  # (N, n_subsets, T)
        "kinds": kinds,
    }


def _stack_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack along a new first dim, zero-padding the first dim of each to the longest."""
    longest = max(t.shape[0] for t in tensors)
    return torch.stack([torch.cat([t, t.new_zeros(longest - t.shape[0], *t.shape[1:])]) for t in tensors])


def fit_scorer(
    scorer: FrameScorer, data: dict, steps: int = 2000, lr: float = 3e-3, batch: int = 128, seed: int = 0
) -> list[float]:
    """Adam on :func:`~reference_impls.encoding.learned_keyframes.combination_loss`; returns the losses."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(scorer.parameters(), lr=lr)
    n, losses = data["thumbs"].shape[0], []
    scorer.train()
    for _ in range(steps):
        index = torch.randint(n, (min(batch, n),), generator=generator)
        scores = scorer(data["thumbs"][index], data["questions"][index])  # (B, T)
        members = {size: v[index] for size, v in data["members"].items()} if "members" in data else None
        loss = combination_loss(scores, {size: v[index] for size, v in data["log_probs"].items()}, members=members)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    scorer.eval()
    return losses


@torch.no_grad()
def ranking_metrics(scorer: FrameScorer, data: dict, margin: float = 1.0) -> dict[str, float]:
    """How well the scorer reproduces the model's own ranking.

    - ``top1_agreement``: on clips where one frame alone beats every other by ``margin`` nats,
      the fraction where the scorer ranks that frame first (``decisive_clips`` of them);
    - ``best_combination_k``: fraction of clips whose top-``k`` frames are (within 0.1 nat) the
      model's best ``k``-frame combination; with sampled combinations (``members``), the
      scorer's best of the sampled ones against the best of them.
    """
    scores = scorer(data["thumbs"], data["questions"])  # (N, T)
    if "frames" in data:
        scores = scores.masked_fill(~data["frames"], -torch.inf)
    values, valid = {}, {}
    for size, target in data["log_probs"].items():
        member = data["members"][size] if "members" in data else frame_subsets(scores.shape[-1], size)[None]
        valid[size] = member.any(-1).expand(target.shape)  # (N, n_subsets)
        values[size] = target.masked_fill(~valid[size], -torch.inf)
    # each frame alone, (N, T); padding combinations write to an extra column, dropped
    member = data["members"][1] if "members" in data else torch.eye(scores.shape[-1]).expand(scores.shape[0], -1, -1)
    column = member.argmax(-1).masked_fill(~valid[1], scores.shape[-1])  # (N, n_subsets)
    single = torch.full((scores.shape[0], scores.shape[-1] + 1), -torch.inf).scatter(1, column, values[1])[:, :-1]
    top2 = single.topk(2, dim=-1).values
    decisive = top2[:, 0] - top2[:, 1] >= margin
    agree = scores.argmax(-1) == single.argmax(-1)
    result = {"top1_agreement": float(agree[decisive].float().mean()), "decisive_clips": int(decisive.sum())}
    for size, target in values.items():
        member = data["members"][size] if "members" in data else frame_subsets(scores.shape[-1], size)[None]
        predicted = (member.to(scores) @ scores.nan_to_num(neginf=0.0)[..., None]).squeeze(-1)  # (N, n_subsets)
        picked = predicted.masked_fill(~valid[size], -torch.inf).argmax(-1)  # (N,)
        regret = target.max(-1).values - target.gather(1, picked[:, None]).squeeze(1)
        result[f"best_combination_{size}"] = float((regret < 0.1).float().mean())
    return result


@dataclass(frozen=True)
class ScorerTarget:
    """Data and defaults of the scorer of one model (configuration only)."""

    clips: int
    """Training clips (ToyVLM v2: per suite)."""
    heldout: int
    """Held-out clips (ToyVLM v2: per suite)."""
    out: Path
    suites: tuple[str, ...] | None = None
    """ToyVLM v2 suites whose scenes and question kinds the clips follow (None: ToyVLM)."""
    combos: int | None = None
    """Sampled 2- and 3-frame combinations per clip (None: all of them)."""
    steps: int = 2000
    lr: float = 3e-3
    positions: int = 0
    """Frame-index embeddings of the scorer (0: none)."""


TARGETS = {
    "toyvlm": ScorerTarget(1500, 300, CHECKPOINT_DIR),
    "toyvlm-v2": ScorerTarget(
        240, 60, CHECKPOINT_DIR_V2, suites=("video", "short"), combos=16, steps=1000, lr=1e-2, positions=16
    ),
}


def _without_cache(argv: list[str] | None) -> list[str]:
    """The arguments minus ``--data PATH``: a label cache changes no result (the command without it
    labels the same clips afresh), and its path is local to the machine that ran it."""
    return without_option(list(sys.argv[1:] if argv is None else argv), "--data")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="train a frame scorer from the model's own answer log-probs")
    parser.add_argument("--target", choices=sorted(TARGETS), default="toyvlm")
    parser.add_argument("--clips", type=int, default=None, help="default: the target's (ToyVLM v2: per suite)")
    parser.add_argument("--heldout", type=int, default=None, help="default: the target's (ToyVLM v2: per suite)")
    parser.add_argument("--combos", type=int, default=None, help="ToyVLM v2: sampled combinations per size")
    parser.add_argument("--steps", type=int, default=None, help="default: the target's (2000; ToyVLM v2: 1000)")
    parser.add_argument("--lr", type=float, default=None, help="default: the target's (3e-3; ToyVLM v2: 1e-2)")
    parser.add_argument(
        "--positions",
        type=int,
        default=None,
        help="frame-index embeddings of the scorer (default: the target's, 0 / 16)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="scene seed of the training clips (the model's own training seed)"
    )
    parser.add_argument("--heldout-seed", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="default: the target's committed checkpoint folder")
    parser.add_argument(
        "--data", type=Path, default=None, help="labelled clips: read from this file if it exists, else written to it"
    )
    args = parser.parse_args(argv)
    spec = TARGETS[args.target]
    clips, heldout_clips = args.clips or spec.clips, args.heldout or spec.heldout
    combos = args.combos or spec.combos
    steps, lr = args.steps or spec.steps, args.lr or spec.lr
    positions = spec.positions if args.positions is None else args.positions
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    if spec.suites is None:
        bundle = load_toyvlm()
    else:
        from reference_impls.common.toyvlm_v2 import load_toyvlm_v2

        bundle = load_toyvlm_v2()
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    log(
        f"labelling {clips} training clips (seed {args.seed}) and {heldout_clips} held-out clips (seed {args.heldout_seed})"
        + (f" of each of the suites {', '.join(spec.suites)}" if spec.suites else "")
    )
    cached = args.data is not None and args.data.exists()
    if cached:
        train, heldout, labelled = torch.load(args.data)
        log(f"read the labelled clips of {args.data} ({labelled:.0f} s of labelling)")
    else:
        train = make_dataset(bundle, clips, args.seed, log=log, suites=spec.suites, combos=combos)
        heldout = make_dataset(bundle, heldout_clips, args.heldout_seed, log=log, suites=spec.suites, combos=combos)
        labelled = time.perf_counter() - start
        if args.data is not None:
            torch.save((train, heldout, labelled), args.data)
    scorer = FrameScorer(question_dim=bundle.model.get_input_embeddings().embedding_dim, positions=positions)
    before = ranking_metrics(scorer, heldout)
    losses = fit_scorer(scorer, train, steps=steps, lr=lr, seed=args.seed)
    metrics = ranking_metrics(scorer, heldout)
    wall = time.perf_counter() - start + (labelled if cached else 0.0)  # with cached labels: their time too
    log(f"loss {losses[0]:.3f} -> {sum(losses[-50:]) / 50:.3f}; held-out untrained {before}; trained {metrics}")
    manifest = {
        "command": command_line("reference_impls.encoding.train_frame_scorer", _without_cache(argv)),
        "seed": args.seed,
        "training_clips": clips * len(spec.suites or ("",)),
        "heldout_clips": heldout_clips * len(spec.suites or ("",)),
        "heldout_seed": args.heldout_seed,
        "steps": steps,
        "lr": lr,
        "batch": 128,
        "threads": args.threads,
        "parameters": sum(p.numel() for p in scorer.parameters()),
        "labelling_seconds": round(labelled, 1),
        "wall_seconds": round(wall, 1),
        "final_loss": round(sum(losses[-50:]) / 50, 4),
        "heldout_ranking": {k: round(v, 4) for k, v in metrics.items()},
        "heldout_ranking_untrained": {k: round(v, 4) for k, v in before.items()},
        "labels": "ToyVLM log-prob of the correct answer from every 1-, 2- and 3-frame combination (no scene ground truth)",
        "toyvlm": {"parameters": bundle.manifest.get("parameters"), "command": bundle.manifest.get("command")},
    }
    if spec.suites is not None:
        manifest |= {
            "target": args.target,
            "suites": list(spec.suites),
            "combinations": combos,
            "streams": f"training clip i of suite s: numpy stream ({args.seed}, i) with s's scenes and question kinds "
            f"(ToyVLM v2's own training streams); held-out: ({args.heldout_seed}, i); the suites' held-out seeds "
            "(1001-1005, the benchmarks' samples) are never used",
            "clips_per_suite": {"training": clips, "heldout": heldout_clips},
            "labels": "ToyVLM v2 log-prob of the whole correct reply (teacher-forced sum over its tokens, <eos> "
            f"included) from every single frame and {combos} sampled 2- and 3-frame combinations per clip "
            f"(torch generator seeded {args.seed} / {args.heldout_seed}; all of them when fewer); a frame is a "
            "temporal slice (two raw frames) of a video or one image of a 16-image prompt; no scene ground truth",
            "ranking_note": "best_combination_k: the scorer's best of the sampled k-frame combinations against the "
            "model's best of them (within 0.1 nat)",
            "wall_note": "1 thread on a 2-core machine shared with other jobs",
        }
        manifest["toyvlm_v2"] = manifest.pop("toyvlm")
    path = save_frame_scorer(scorer, args.out or spec.out, manifest)
    log(f"wrote {path} in {wall:.0f}s")


if __name__ == "__main__":
    main()
