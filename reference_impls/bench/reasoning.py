"""Benchmark: confidence-gated answering on ToyVLM, accuracy against compute for thresholds.

Command: ``python -m reference_impls.bench.reasoning`` (``--quick`` for a smoke run).

The cheap pass answers from a uniformly pruned quarter of the visual tokens; when the first
answer token's probability is below the threshold, the question is re-asked with all visual
tokens (``full-visual``) or answered by a majority vote over sampled answers from the full
prompt (``self-consistency``). Threshold 0 is "always cheap"; a threshold above 1 is "always
escalate". Compute is counted as tokens the language model processes (prompt tokens of each
pass plus decode inputs) and as wall time; the vision tower runs once in every case.
Without a ToyVLM checkpoint the benchmark runs a random-init model and scores agreement with
the full-visual greedy answer instead of accuracy (stated in the notes).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from reference_impls.bench.speculative import load_setting
from reference_impls.common.results import Column, Plot, Results, save_results
from reference_impls.decoding.reasoning import ConfidenceGatedAnswering
from reference_impls.decoding.speculative import greedy_decode

__all__ = ["THRESHOLDS", "sweep", "main"]

THRESHOLDS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.01)
FIRST_KEEP = 0.25
MAX_NEW = 2  # ToyVLM answers are one word and <eos>


def sweep(setting, thresholds=THRESHOLDS, escalations=("full-visual", "self-consistency"), samples: int = 5) -> list[dict]:
    """One row per (escalation, threshold): accuracy, escalation rate and compute per question."""
    model = setting.model
    truth = setting.answers
    if truth is None:  # no ground truth: score agreement with the full-visual greedy answer
        truth = [greedy_decode(model, inputs, MAX_NEW).tokens[0] for inputs in setting.inputs]
    rows = []
    for escalation in escalations:
        for threshold in thresholds:
            method = ConfidenceGatedAnswering(
                threshold=threshold,
                first_visual_keep=FIRST_KEEP,
                escalation=escalation,
                samples=samples,
                max_new_tokens=MAX_NEW,
            )
            correct = escalated = decoded = lm_tokens = 0
            start = time.perf_counter()
            for inputs, answer in zip(setting.inputs, truth):
                result = method(model, inputs)
                correct += result.tokens[:1] == [answer]
                escalated += result.stats["escalated"]
                decoded += result.stats["decoded_tokens"]
                lm_tokens += result.stats["lm_tokens"]
            n = len(setting.inputs)
            rows.append(
                {
                    "method": f"confidence-gated, {escalation}",
                    "family": "efficient-reasoning",
                    "escalation": escalation,
                    "threshold": threshold,
                    "accuracy": round(100 * correct / n, 1),
                    "escalated": round(100 * escalated / n, 1),
                    "decoded_tokens": round(decoded / n, 2),
                    "lm_tokens": round(lm_tokens / n, 1),
                    "ms_per_question": round(1000 * (time.perf_counter() - start) / n, 1),
                }
            )
    return rows


COLUMNS = [
    Column("method", "Method"),
    Column("threshold", "Threshold", "", 2),
    Column("accuracy", "Accuracy", "%", 1),
    Column("escalated", "Escalated", "%", 1),
    Column("decoded_tokens", "Decoded tokens per question", "", 2),
    Column("lm_tokens", "LM tokens per question", "", 1),
    Column("ms_per_question", "Wall time per question", "ms", 1),
]


def main(argv: list[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few samples, no results file")
    parser.add_argument("-n", type=int, default=128, help="questions")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n = 6 if args.quick else args.n
    setting = load_setting(n)
    rows = sweep(setting, thresholds=(0.0, 0.9, 1.01) if args.quick else THRESHOLDS)
    for row in rows:
        print(" | ".join(f"{row[c.key]}" for c in COLUMNS))
    scored = "accuracy against the ground truth" if setting.answers is not None else "agreement with the full-visual greedy answer"
    results = Results(
        id="reasoning-toyvlm",
        title="Confidence-gated answering on ToyVLM: accuracy against compute",
        command="python -m reference_impls.bench.reasoning" + (f" -n {args.n}" if args.n != 128 else ""),
        families=["efficient-reasoning"],
        columns=COLUMNS,
        rows=rows,
        plots=[Plot(x="lm_tokens", y="accuracy", group="method", title="Accuracy vs LM tokens per question (thresholds)")],
        notes=(
            f"Model: {setting.name}; {n} held-out questions, batch 1, CPU with 1 thread (shared machine: "
            f"wall times are noisy). Cheap pass: {int(FIRST_KEEP * 100)}% of each image's visual tokens "
            "(uniform). Escalation: re-ask with all visual tokens, or a majority vote over 5 answers "
            f"sampled at temperature 1 from the full prompt. Accuracy is {scored}. Threshold 0 = always "
            "the cheap answer; 1.01 = always escalate (both passes counted)."
        ),
    )
    if not args.quick:
        print("wrote", save_results(results))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
