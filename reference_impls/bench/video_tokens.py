"""Benchmark: temporal token pooling/merging vs frame selection and random pruning on ToyVLM clips.

``python -m reference_impls.bench.video_tokens`` evaluates, at budgets 50/25/12.5% of the visual
tokens, temporal pooling and similarity-based temporal merging
(:mod:`reference_impls.encoding.temporal_merging`, mean and drop), training-free keyframe
selection (:mod:`reference_impls.encoding.keyframes`), ToMe within each image
(:mod:`reference_impls.encoding.tome`) and random pruning, on two settings, each on the same
held-out samples for every method:

- ``clip``: a redundant clip: each of a scene's four images shown twice in a row with fresh
  noise (:func:`~reference_impls.common.scenes.repeat_images`), 8 frames, 512 visual tokens;
  colour and shape questions only (their answers do not change under repetition, and ToyVLM,
  trained on four images, still answers them: see the notes for presence and count);
- ``native``: ToyVLM's own four-image scenes (256 tokens), all four question kinds.

The images of a prompt are the frames of one clip for every method that can use that
(``images_as_frames``). Results: ``reference_impls/results/video-encoders-toyvlm.json``.
Options: ``--n`` samples per setting, ``--seed``, ``--quick`` (n=20, one short timing sweep).

Deviations / guesses:
    Times are CPU wall-clock on a shared machine: compare rows of one run only. "LLM prefill"
    is the language model's forward alone; "prefill" adds the vision tower (which encodes every
    frame for all methods here) and the token selection.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from ..common.harness import evaluate
from ..common.random_pruning import RandomPruning
from ..common.results import Column, Plot, Results, command_line, save_results
from ..common.scenes import Sample, repeat_images
from ..common.toyvlm import ToyVLM, load_toyvlm
from ..encoding.keyframes import KeyframeSelection
from ..encoding.temporal_merging import TemporalMerging
from ..encoding.tome import ToMe

__all__ = ["METHODS", "clip_samples", "run", "main"]

BUDGETS = (0.5, 0.25, 0.125)
CLIP_KINDS = ("colour", "shape")
METHODS: dict[str, tuple[str, Callable[[float], Any]]] = {
    "temporal-pool": ("vision-encoders-video", lambda b: TemporalMerging(budget=b, mode="pool")),
    "temporal-merge": ("vision-encoders-video", lambda b: TemporalMerging(budget=b)),
    "temporal-merge (drop)": ("vision-encoders-video", lambda b: TemporalMerging(budget=b, reduce="drop")),
    "keyframes-maxmin": ("", lambda b: KeyframeSelection(budget=b)),
    "tome (per image)": ("", lambda b: ToMe(budget=b)),
    "random-pruning": ("", lambda b: RandomPruning(budget=b)),
}
"""Row label -> (family, factory of the method at a budget). The comparisons have no family so
that they show next to the temporal methods."""


def clip_samples(
    bundle: ToyVLM, n: int, seed: int, repeats: int = 2, kinds: tuple[str, ...] = CLIP_KINDS
) -> list[Sample]:
    """``n`` held-out scenes as redundant clips: every image shown ``repeats`` times in a row."""
    return [
        Sample(repeat_images(sample.scene, repeats, seed=seed * 1_000_003 + i), sample.qa, sample.spec)
        for i, sample in enumerate(bundle.samples(n, seed, kinds=kinds))
    ]


SETTINGS = ("clip", "native")


def run(
    n: int = 200,
    seed: int = 1,
    budgets=BUDGETS,
    methods: list[str] | None = None,
    timing_n: int = 20,
    rounds: int = 3,
    log=print,
) -> Results:
    """Evaluate every method at every budget on both settings; the :class:`Results` (not saved).

    Accuracy comes from one pass over the ``n`` samples. Times come from a separate pass:
    ``rounds`` round-robin sweeps over every (method, budget, setting) on the first
    ``timing_n`` samples, median of the per-sweep means, so that a load change on the shared
    machine hits every row alike.
    """
    bundle = load_toyvlm()
    samples = {"clip": clip_samples(bundle, n, seed), "native": bundle.samples(n, seed)}
    names = methods or list(METHODS)
    runs = [("none (all tokens)", "", 1.0, None)] + [
        (name, METHODS[name][0], b, METHODS[name][1]) for name in names for b in budgets
    ]
    rows = []
    log(f"{'method':22s} budget | clip: acc tokens | native: acc tokens   (times follow after the timing pass)")
    for name, family, budget, make in runs:
        row: dict[str, Any] = {"method": name, "family": family, "budget": budget}
        start = time.perf_counter()
        for setting in SETTINGS:
            result = evaluate(bundle, make(budget) if make else None, samples=samples[setting], decode_tokens=0)
            row.update(
                {
                    f"{setting}_accuracy": round(100 * result["accuracy"], 2),
                    f"{setting}_tokens": result["visual_tokens"],
                    f"{setting}_accuracy_by_kind": {
                        k: round(100 * v, 1) for k, v in result["accuracy_by_kind"].items()
                    },
                }
            )
        rows.append(row)
        log(_line(row) + f"   ({time.perf_counter() - start:.0f}s)")
    times: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for _ in range(rounds):
        for index, (_, _, budget, make) in enumerate(runs):
            for setting in SETTINGS:
                result = evaluate(
                    bundle, make(budget) if make else None, samples=samples[setting][:timing_n], decode_tokens=0
                )
                times.setdefault((index, setting), []).append((result["prefill_s"], result["language_s"]))
    for index, row in enumerate(rows):
        for setting in SETTINGS:
            prefill, language = (statistics.median(values) for values in zip(*times[(index, setting)]))
            row[f"{setting}_prefill_ms"] = round(1000 * prefill, 3)
            row[f"{setting}_llm_ms"] = round(1000 * language, 3)
        log(_line(row, timed=True))
    full = rows[0]
    notes = (
        f"ToyVLM, {n} held-out samples per setting (seed {seed}), the same samples for every method. "
        f"'Clip': each of the four images of a scene shown twice in a row with fresh Gaussian noise (std 4) "
        f"on every copy, {full['clip_tokens']:.0f} visual tokens, colour and shape questions only. Measured before "
        "choosing it (200 samples, seed 3, all tokens): on such clips ToyVLM answers colour and shape 100% "
        "correctly, but presence only 40% (it answers with count words) and count 42% (the objects are "
        "shown twice), so those kinds are left out; with three copies presence recovers (94%). "
        f"'Native': ToyVLM's four-image scenes, {full['native_tokens']:.0f} tokens, all four question kinds. "
        "The temporal methods and keyframe selection treat the images of a prompt as the frames of one clip; "
        "ToMe merges within each image; random pruning ignores frames. Keyframe and ToMe rows are comparisons "
        "(family left empty so that they show on this page, like the random-pruning baseline). "
        "Purely temporal methods and frame selection cannot go below one frame's worth of tokens "
        "(1/8 of the clip, 1/4 of the native scenes), so their 12.5% rows on 'native' keep 25%: "
        "compare by the visual-token columns. 'LLM prefill' is the language model's forward alone; "
        "'prefill' adds the vision tower (every frame is encoded for every method) and the selection. "
        f"Times: median over {rounds} round-robin sweeps of every row on the first {timing_n} samples "
        "(CPU wall-clock, one thread, on a 2-core machine shared with other jobs): compare rows of this run only."
    )
    columns = [Column("method", "Method"), Column("budget", "Budget (fraction kept)", digits=3)]
    for setting, label in (("clip", "Clip x2"), ("native", "Native")):
        columns += [
            Column(f"{setting}_accuracy", f"{label} accuracy", "%", digits=1),
            Column(f"{setting}_tokens", f"{label} visual tokens", digits=1),
            Column(f"{setting}_prefill_ms", f"{label} prefill (encode + select + LLM)", "ms", digits=1),
            Column(f"{setting}_llm_ms", f"{label} LLM prefill", "ms", digits=1),
        ]
    return Results(
        id="video-encoders-toyvlm",
        title="ToyVLM clips: temporal pooling/merging vs frame selection and random pruning",
        command="",
        families=["vision-encoders-video"],
        columns=columns,
        rows=rows,
        plots=[
            Plot(
                x="clip_tokens",
                y="clip_accuracy",
                group="method",
                title="Redundant clip (8 frames, 512 tokens): accuracy vs tokens kept",
            ),
            Plot(
                x="native_tokens",
                y="native_accuracy",
                group="method",
                title="Native 4-image scenes (256 tokens): accuracy vs tokens kept",
            ),
            Plot(
                x="clip_tokens",
                y="clip_llm_ms",
                group="method",
                title="Redundant clip: LLM prefill time vs tokens kept",
            ),
        ],
        notes=notes,
    )


def _line(row: dict, timed: bool = False) -> str:
    parts = [f"{row['method']:22s} {row['budget']:6.3f}"]
    for setting in SETTINGS:
        times = f" {row[f'{setting}_prefill_ms']:8.1f} {row[f'{setting}_llm_ms']:7.1f}" if timed else ""
        parts.append(f"{row[f'{setting}_accuracy']:5.1f} {row[f'{setting}_tokens']:6.1f}{times}")
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ToyVLM clips: temporal token reduction vs budget")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--budgets", default=",".join(str(b) for b in BUDGETS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="n=20, for a smoke run")
    parser.add_argument("--out", default=None, help="directory for the results JSON (default: reference_impls/results)")
    args = parser.parse_args(argv)
    if args.seed == 0:
        parser.error("seed 0 is ToyVLM's training data; use a held-out seed")
    torch.set_num_threads(args.threads)
    budgets = tuple(float(b) for b in args.budgets.split(","))
    quick = dict(n=20, timing_n=5, rounds=1) if args.quick else dict(n=args.n)
    results = run(seed=args.seed, budgets=budgets, log=lambda *a: print(*a, flush=True), **quick)
    results.command = command_line("reference_impls.bench.video_tokens", argv)
    path = save_results(results, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
