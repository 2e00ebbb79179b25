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
from reference_impls.common.results import Column, Plot, Results, command_line, save_results
from reference_impls.decoding.reasoning import ConfidenceGatedAnswering
from reference_impls.decoding.speculative import greedy_decode

__all__ = ["THRESHOLDS", "collect", "route", "main"]

THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.995, 0.998, 0.999, 1.01)
FIRST_KEEP = 0.25
MAX_NEW = 2  # ToyVLM answers are one word and <eos>


def collect(
    setting, escalations=("full-visual", "self-consistency"), samples: int = 5, first_keep: float = FIRST_KEEP
) -> dict[str, list[tuple]]:
    """Per question, the always-cheap run and one always-escalate run per escalation.

    Returns ``{"cheap" or escalation: [(correct, confidence, decoded tokens, LM tokens,
    seconds), ...]}``. The routing is deterministic given the cheap pass's confidence, and the escalated answer
    does not depend on the threshold, so each question is run once with threshold 0 (always
    cheap) and once per escalation with a threshold above 1 (always escalate, both passes
    counted); a threshold's row then takes, per question, the first run when the confidence
    is at least the threshold and the second otherwise (what the method itself does).
    """
    model = setting.model
    truth = setting.answers
    if truth is None:  # no ground truth: score agreement with the full-visual greedy answer
        truth = [greedy_decode(model, inputs, MAX_NEW).tokens[0] for inputs in setting.inputs]
    common = dict(first_visual_keep=first_keep, samples=samples, max_new_tokens=MAX_NEW)
    runs = {"cheap": ConfidenceGatedAnswering(threshold=0.0, **common)}
    runs |= {e: ConfidenceGatedAnswering(threshold=2.0, escalation=e, **common) for e in escalations}
    records = {name: [] for name in runs}  # (correct, confidence, decoded, lm tokens, seconds)
    records["full-only"] = []  # baseline: one greedy pass with every visual token
    for inputs, answer in zip(setting.inputs, truth):
        start = time.perf_counter()
        result = greedy_decode(model, inputs, MAX_NEW)
        seconds = time.perf_counter() - start
        lm_tokens = inputs["input_ids"].shape[1] + len(result.tokens) - 1
        records["full-only"].append((result.tokens[:1] == [answer], 1.0, len(result.tokens), lm_tokens, seconds))
        for name, method in runs.items():
            start = time.perf_counter()
            result = method(model, inputs)
            seconds = time.perf_counter() - start
            stats = result.stats
            records[name].append(
                (
                    result.tokens[:1] == [answer],
                    stats["confidence"],
                    stats["decoded_tokens"],
                    stats["lm_tokens"],
                    seconds,
                )
            )
    return records


def route(records: dict[str, list[tuple]], thresholds=THRESHOLDS, first_keep: float = FIRST_KEEP) -> list[dict]:
    """One row per (escalation, threshold): accuracy, escalation rate and compute per question."""
    rows, n = [], len(records["cheap"])
    escalations = [name for name in records if name not in ("cheap", "full-only")]
    if "full-only" in records:
        full = records["full-only"]
        rows.append(
            {
                "method": "greedy, all visual tokens (baseline)",
                "family": "",
                "escalation": "",
                "threshold": "",
                "accuracy": round(100 * sum(r[0] for r in full) / n, 1),
                "escalated": "",
                "decoded_tokens": round(sum(r[2] for r in full) / n, 2),
                "lm_tokens": round(sum(r[3] for r in full) / n, 1),
                "ms_per_question": round(1000 * sum(r[4] for r in full) / n, 1),
            }
        )
    for escalation in escalations:
        for threshold in thresholds:
            chosen = [c if c[1] >= threshold else e for c, e in zip(records["cheap"], records[escalation])]
            rows.append(
                {
                    "method": f"confidence-gated, {first_keep:.0%} cheap, {escalation}",
                    "family": "efficient-reasoning",
                    "escalation": escalation,
                    "threshold": threshold,
                    "accuracy": round(100 * sum(r[0] for r in chosen) / n, 1),
                    "escalated": round(100 * sum(c[1] < threshold for c in records["cheap"]) / n, 1),
                    "decoded_tokens": round(sum(r[2] for r in chosen) / n, 2),
                    "lm_tokens": round(sum(r[3] for r in chosen) / n, 1),
                    "ms_per_question": round(1000 * sum(r[4] for r in chosen) / n, 1),
                }
            )
    return rows


COLUMNS = [
    Column("method", "Method"),
    Column("threshold", "Threshold", "", 3),
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
    parser.add_argument("--toyvlm", default=None, help="ToyVLM checkpoint folder (default: the committed one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n = 6 if args.quick else args.n
    setting = load_setting(n, path=args.toyvlm)
    rows = route(collect(setting))
    half = collect(setting, escalations=("full-visual",), first_keep=0.5)
    del half["full-only"]  # the baseline row is already there
    rows += route(half, first_keep=0.5)
    for row in rows:
        print(" | ".join(f"{row[c.key]}" for c in COLUMNS))
    scored = (
        "accuracy against the ground truth"
        if setting.answers is not None
        else "agreement with the full-visual greedy answer"
    )
    results = Results(
        id="reasoning-toyvlm",
        title="Confidence-gated answering on ToyVLM: accuracy against compute",
        command=command_line("reference_impls.bench.reasoning", argv),
        families=["efficient-reasoning"],
        columns=COLUMNS,
        rows=rows,
        plots=[
            Plot(x="lm_tokens", y="accuracy", group="method", title="Accuracy vs LM tokens per question (thresholds)")
        ],
        notes=(
            f"Model: {setting.name}; {n} held-out questions, batch 1, CPU with 1 thread (shared machine: "
            f"wall times are noisy). Cheap pass: {int(FIRST_KEEP * 100)}% (or 50%) of each image's visual tokens "
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
