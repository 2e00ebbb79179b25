"""Train the frame scorer of :mod:`reference_impls.encoding.learned_keyframes` on ToyVLM clips.

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

Options: ``--clips``, ``--heldout``, ``--steps``, ``--lr``, ``--seed``, ``--heldout-seed``,
``--out``, ``--threads``. For a real Qwen2.5-VL see the paper card of ``learned_keyframes``.
"""

from __future__ import annotations

import argparse
import time

import torch

from reference_impls.common.results import command_line
from reference_impls.common.toyvlm import ToyVLM, load_toyvlm
from reference_impls.common.visual_tokens import Selection, build_context, reduce_inputs
from reference_impls.encoding.keyframes import _frame_tokens, item_thumbnails
from reference_impls.encoding.learned_keyframes import (
    CHECKPOINT_DIR,
    FrameScorer,
    combination_loss,
    frame_subsets,
    question_embedding,
    save_frame_scorer,
)

__all__ = ["subset_log_probs", "clip_features", "make_dataset", "fit_scorer", "ranking_metrics", "main"]


@torch.no_grad()
def subset_log_probs(
    model, inputs: dict[str, torch.Tensor], answer_id: int, sizes=(1, 2, 3)
) -> dict[int, torch.Tensor]:
    """The model's log-probability of ``answer_id`` (next token after the prompt) from every
    combination of frames, for one prompt (batch 1).

    Frames are the prompt's visual items when it has several (images as frames), else the
    temporal slices of its one video. The tower runs once; each combination keeps its frames'
    tokens at their original positions (:mod:`reference_impls.common.visual_tokens`).

    Returns:
        ``{size: (n_subsets,)}`` in :func:`~reference_impls.encoding.learned_keyframes.frame_subsets` order.
    """
    ctx = build_context(model, inputs)
    items = ctx.items[0]
    if len(items) > 1:
        spans = [torch.arange(start, start + t * h * w) for start, t, h, w in items]
    else:
        start, t, h, w = items[0]
        spans = [start + _frame_tokens(torch.tensor([k]), h * w) for k in range(t)]
    result = {}
    for size in sizes:
        member = frame_subsets(len(spans), size).bool()
        parts = [
            reduce_inputs(ctx, Selection(keep=[torch.cat([spans[k] for k in row.nonzero().flatten().tolist()])]))[0]
            for row in member
        ]
        batch = {key: torch.cat([p[key] for p in parts], dim=1 if key == "position_ids" else 0) for key in parts[0]}
        hidden = model.model(**batch).last_hidden_state[:, -1]  # (n_subsets, D)
        result[size] = model.lm_head(hidden).float().log_softmax(-1)[:, answer_id]
    return result


def clip_features(model, inputs: dict[str, torch.Tensor], thumb: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """What the method sees of one prompt (batch 1, images as frames): ``(thumbnails (T, F),
    question (D,))``."""
    config = model.config
    thumbs = torch.cat(
        item_thumbnails(inputs["pixel_values"], inputs["image_grid_thw"], config.vision_config, thumb)
    )  # (T, F)
    skip = (
        config.vision_start_token_id,
        config.vision_end_token_id,
        config.image_token_id,
        config.video_token_id,
        config.text_config.pad_token_id,
    )
    return thumbs, question_embedding(model.get_input_embeddings(), inputs["input_ids"][0], skip)


def make_dataset(bundle: ToyVLM, n: int, seed: int, thumb: int = 8, log=None) -> dict:
    """Features and model-made labels of ``bundle.samples(n, seed)``."""
    thumbs, questions, labels, kinds = [], [], {}, []
    for index, sample in enumerate(bundle.samples(n, seed)):
        inputs = bundle.collate([sample])
        frames, question = clip_features(bundle.model, inputs, thumb)
        thumbs.append(frames)
        questions.append(question)
        for size, values in subset_log_probs(bundle.model, inputs, bundle.vocab.id(sample.qa.answer)).items():
            labels.setdefault(size, []).append(values)
        kinds.append(sample.qa.kind)
        if log and (index + 1) % 250 == 0:
            log(f"  labelled {index + 1}/{n}")
    return {
        "thumbs": torch.stack(thumbs),
        "questions": torch.stack(questions),
        "log_probs": {size: torch.stack(v) for size, v in labels.items()},
        "kinds": kinds,
    }


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
        loss = combination_loss(scores, {size: v[index] for size, v in data["log_probs"].items()})
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
      model's best ``k``-frame combination.
    """
    scores = scorer(data["thumbs"], data["questions"])  # (N, T)
    single = data["log_probs"][1]  # (N, T)
    top2 = single.topk(2, dim=-1).values
    decisive = top2[:, 0] - top2[:, 1] >= margin
    agree = scores.argmax(-1) == single.argmax(-1)
    result = {"top1_agreement": float(agree[decisive].float().mean()), "decisive_clips": int(decisive.sum())}
    for size, values in data["log_probs"].items():
        picked = (scores @ frame_subsets(scores.shape[-1], size).T).argmax(-1)  # (N,)
        regret = values.max(-1).values - values.gather(1, picked[:, None]).squeeze(1)
        result[f"best_combination_{size}"] = float((regret < 0.1).float().mean())
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="train the ToyVLM frame scorer from the model's own answer log-probs")
    parser.add_argument("--clips", type=int, default=1500)
    parser.add_argument("--heldout", type=int, default=300)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument(
        "--seed", type=int, default=0, help="scene seed of the training clips (ToyVLM's own training seed)"
    )
    parser.add_argument("--heldout-seed", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(CHECKPOINT_DIR))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    bundle = load_toyvlm()
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    log(
        f"labelling {args.clips} training clips (seed {args.seed}) and {args.heldout} held-out clips (seed {args.heldout_seed})"
    )
    train = make_dataset(bundle, args.clips, args.seed, log=log)
    heldout = make_dataset(bundle, args.heldout, args.heldout_seed, log=log)
    labelled = time.perf_counter() - start
    scorer = FrameScorer(question_dim=bundle.model.get_input_embeddings().embedding_dim)
    before = ranking_metrics(scorer, heldout)
    losses = fit_scorer(scorer, train, steps=args.steps, lr=args.lr, seed=args.seed)
    metrics = ranking_metrics(scorer, heldout)
    wall = time.perf_counter() - start
    log(f"loss {losses[0]:.3f} -> {sum(losses[-50:]) / 50:.3f}; held-out untrained {before}; trained {metrics}")
    manifest = {
        "command": command_line("reference_impls.encoding.train_frame_scorer", argv),
        "seed": args.seed,
        "training_clips": args.clips,
        "heldout_clips": args.heldout,
        "heldout_seed": args.heldout_seed,
        "steps": args.steps,
        "lr": args.lr,
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
    path = save_frame_scorer(scorer, args.out, manifest)
    log(f"wrote {path} in {wall:.0f}s")


if __name__ == "__main__":
    main()
