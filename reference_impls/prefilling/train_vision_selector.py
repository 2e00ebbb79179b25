"""Train VisionSelector's scorer on a frozen ToyVLM v2 (upstream's losses, soft top-k and curriculum).

``python -m reference_impls.prefilling.train_vision_selector`` writes ``scorer.pt`` and
``manifest.json`` to :data:`~reference_impls.prefilling.vision_selector.CHECKPOINT_DIR`.

Only the scorer learns; ToyVLM v2 (the committed checkpoint) stays frozen. Each step draws a batch
of training samples (the short suite's question kinds and scenes, but ``--n-images`` images each,
from :data:`~reference_impls.common.chat_scenes.TRAIN_SEED`'s random streams, never a held-out
suite's seed), runs the vision tower without gradients, scores the merged visual tokens, turns the
scores into the soft top-k mask at ``--budget`` (per row, over all its images), multiplies the
visual embeddings by it and runs the frozen LLM on prompt + reply. Loss = the reply's
cross-entropy + w(step) x BCE(soft mask, hard top-k mask), w linear from ``--reg-start`` to
``--reg-end`` (upstream's ``ScheduledWeightTrainer``). At the end the held-out reply
cross-entropy with the hard selection (tokens outside the top-k zeroed, as the soft mask at its
limit) is measured for the trained scorer, the untrained one and random scores, on samples of the
training seed past every training index.

Differences from upstream's recipe (``sft_3b_debug.sh``: lr 5e-5, cosine, warmup 3%, batch 8 x 4
accumulation x 8 GPUs, one epoch of ChartQA/COCO/OCR-VQA at budget 0.2): Adam at ``--lr`` 3e-3 with
the same cosine and warmup shape, 160 steps of 8 samples, and scenes of 4 images (256 visual tokens)
instead of the benchmark's 16, so that training fits ~10 minutes of one shared CPU thread.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling

from reference_impls.common.chat_scenes import SUITES, TRAIN_SEED, ChatSceneSpec, make_chat_samples
from reference_impls.common.results import command_line, without_option
from reference_impls.prefilling.vision_selector import (
    CHECKPOINT_DIR,
    SelectorScorer,
    curriculum_weight,
    hard_topk_mask,
    save_selector,
    soft_topk_mask,
)

HELDOUT_START = 1_000_000
"""First training-seed stream index of the end-of-training check (training uses 0 .. steps x batch)."""


def masked_loss(bundle, samples, scorer_fn, budget: float, soft: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Reply cross-entropy with the visual embeddings scaled by the (soft or hard) top-k mask of
    ``scorer_fn``'s scores, and the BCE between the soft and the hard mask (0 when ``soft`` is False)."""
    model = bundle.model
    batch = bundle.collate(samples, with_answer=True)
    grids = batch.pop("image_grid_thw")
    with torch.no_grad():
        merged = model.model.visual(batch.pop("pixel_values"), grid_thw=grids).pooler_output  # (B * n, D)
    rows = merged.view(len(samples), -1, merged.shape[-1])  # same visual count per sample here
    scores = scorer_fn(rows)  # (B, n)
    k = max(1, round(rows.shape[1] * budget))
    hard = hard_topk_mask(scores, k)
    mask = soft_topk_mask(scores, k) if soft else hard
    sizes = (grids.prod(-1) // model.model.visual.spatial_merge_size**2).tolist()
    pooled = torch.split((rows * mask[..., None]).reshape(-1, rows.shape[-1]), sizes)
    out = model(
        **batch, image_grid_thw=grids, mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=pooled)}
    )
    bce = F.binary_cross_entropy(mask, hard) if soft else torch.zeros(())
    return out.loss, bce


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--n-images", type=int, default=4)
    parser.add_argument("--budget", type=float, default=0.2, help="training budget (upstream: 0.2)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--reg-start", type=float, default=0.1)
    parser.add_argument("--reg-end", type=float, default=2.0)
    parser.add_argument("--heldout-n", type=int, default=48)
    parser.add_argument("--max-minutes", type=float, default=12.0, help="stop early (recorded) past this wall time")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint", default=None, help="ToyVLM v2 checkpoint folder (default: the committed one)")
    parser.add_argument("--out", default=str(CHECKPOINT_DIR))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from reference_impls.common.toyvlm_v2 import load_toyvlm_v2

    bundle = load_toyvlm_v2(args.checkpoint)
    for parameter in bundle.model.parameters():
        parameter.requires_grad_(False)
    suite = SUITES["short"]
    spec = ChatSceneSpec(n_images=(args.n_images, args.n_images))
    torch.manual_seed(TRAIN_SEED)
    width = bundle.model.config.text_config.hidden_size
    scorer = SelectorScorer(width)
    untrained = SelectorScorer(width)
    untrained.load_state_dict(scorer.state_dict())
    optimizer = torch.optim.Adam(scorer.parameters(), lr=args.lr)
    warmup = max(1, math.ceil(0.03 * args.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (args.steps - warmup)))
        ),
    )
    start, log = time.time(), []
    step = 0
    for step in range(args.steps):
        if time.time() - start > args.max_minutes * 60:
            break
        samples = make_chat_samples(spec, suite.kinds, args.batch, TRAIN_SEED, step * args.batch)
        weight = curriculum_weight(step, args.steps, args.reg_start, args.reg_end)
        ce, bce = masked_loss(bundle, samples, scorer, args.budget, soft=True)
        loss = ce + weight * bce
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(scorer.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 20 == 0 or step == args.steps - 1:
            entry = {"step": step, "ce": round(ce.item(), 4), "bce": round(bce.item(), 4), "weight": round(weight, 3)}
            log.append(entry)
            print(entry, f"{time.time() - start:.0f}s", flush=True)
    steps_done = step + 1
    wall = time.time() - start

    heldout = make_chat_samples(spec, suite.kinds, args.heldout_n, TRAIN_SEED, HELDOUT_START)
    generator = torch.Generator().manual_seed(TRAIN_SEED)
    check = {}
    with torch.no_grad():
        for name, fn, budget in (
            ("trained", scorer, args.budget),
            ("untrained", untrained, args.budget),
            ("random", lambda rows: torch.rand(rows.shape[:2], generator=generator), args.budget),
            ("all_tokens", untrained, 1.0),
        ):
            losses = [
                masked_loss(bundle, heldout[i : i + 8], fn, budget, soft=False)[0].item()
                for i in range(0, len(heldout), 8)
            ]
            check[name] = round(sum(losses) / len(losses), 4)
    print("held-out reply CE with the hard selection:", check)
    recorded = without_option(without_option(list(sys.argv[1:] if argv is None else argv), "--out"), "--checkpoint")
    manifest = {
        "command": command_line("reference_impls.prefilling.train_vision_selector", recorded),
        "seed": TRAIN_SEED,
        "streams": f"training sample i: chat_scenes stream (TRAIN_SEED={TRAIN_SEED}, i), i < steps x batch; "
        f"held-out check: streams ({TRAIN_SEED}, {HELDOUT_START} + j); the suites' seeds (1001-1005) are never used",
        "scenes": f"short suite kinds, {args.n_images} images x 64 tokens (the benchmark has 16)",
        "steps_planned": args.steps,
        "steps_done": steps_done,
        "batch": args.batch,
        "budget": args.budget,
        "lr": args.lr,
        "reg_weight": [args.reg_start, args.reg_end],
        "threads": args.threads,
        "wall_seconds": round(wall, 1),
        "wall_note": "1 thread on a 2-core machine shared with other jobs",
        "parameters": sum(p.numel() for p in scorer.parameters()),
        "stored_dtype": "float16",
        "log": log,
        "heldout_hard_selection_ce": check,
        "heldout_n": args.heldout_n,
        "toyvlm_v2": {
            "parameters": bundle.manifest.get("parameters"),
            "command": bundle.manifest.get("command"),
        },
    }
    save_selector(scorer, args.out, manifest)
    print(f"saved {args.out} ({steps_done} steps, {wall:.0f} s)")


if __name__ == "__main__":
    main()
