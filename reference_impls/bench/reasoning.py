"""Benchmark: confidence-gated answering on ToyVLM, accuracy against compute for thresholds.

Command: ``python -m reference_impls.bench.reasoning`` (``--quick`` for a smoke run).

Each gated method's threshold is chosen on the tuning seed (1) and never on a reported seed (10-19
by default, ``--seeds``); each reported seed draws its own questions, rows are means over seeds with
95% intervals, and at the chosen threshold accuracy and compute are compared with the all-tokens
baseline by paired tests over seeds (``reasoning-toyvlm-tests.json``).

The cheap pass answers from a uniformly pruned quarter of the visual tokens; when the first
answer token's probability is below the threshold, the question is re-asked with all visual
tokens (``full-visual``) or answered by a majority vote over sampled answers from the full
prompt (``self-consistency``). Threshold 0 is "always cheap"; a threshold above 1 is "always
escalate". Compute is counted as tokens the language model processes (prompt tokens of each
pass plus decode inputs) and as wall time; the vision tower runs once in every case.
Without a ToyVLM checkpoint the benchmark runs a random-init model and scores agreement with
the full-visual greedy answer instead of accuracy (stated in the notes).

``--suite long`` (any ToyVLM v2 suite, ``--checkpoint``) runs the same on ToyVLM v2: replies are
decoded until ``<eos>`` and right when every word and the ``<eos>`` match; the gate still reads
the first reply token's confidence. Results go to ``reasoning-toyvlm-v2-<suite>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from reference_impls.bench.speculative import REPLY, chat_setting, load_setting
from reference_impls.common import seeded
from reference_impls.common.chat_scenes import SUITES
from reference_impls.common.results import Column, Plot, Results, command_line, results_id
from reference_impls.common.toyvlm import ABLATION_TITLE
from reference_impls.common.toyvlm_v2 import load_toyvlm_v2
from reference_impls.decoding.reasoning import ConfidenceGatedAnswering
from reference_impls.decoding.speculative import greedy_decode

__all__ = ["THRESHOLDS", "collect", "route", "choose_thresholds", "main"]

THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.995, 0.998, 0.999, 1.01)
FIRST_KEEP = 0.25
MAX_NEW = 2  # ToyVLM answers are one word and <eos>


def _right(tokens: list[int], truth: int | list[int]) -> bool:
    """ToyVLM: the first token is the answer; ToyVLM v2 (a list): the whole reply, ``<eos>`` included."""
    return tokens == truth if isinstance(truth, list) else tokens[:1] == [truth]


def collect(
    setting,
    escalations=("full-visual", "self-consistency"),
    samples: int = 5,
    first_keep: float = FIRST_KEEP,
    max_new: int = MAX_NEW,
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
    truth = setting.replies if setting.replies is not None else setting.answers
    if truth is None:  # no ground truth: score agreement with the full-visual greedy answer
        truth = [greedy_decode(model, inputs, max_new).tokens[0] for inputs in setting.inputs]
    common = dict(first_visual_keep=first_keep, samples=samples, max_new_tokens=max_new)
    runs = {"cheap": ConfidenceGatedAnswering(threshold=0.0, **common)}
    runs |= {e: ConfidenceGatedAnswering(threshold=2.0, escalation=e, **common) for e in escalations}
    records = {name: [] for name in runs}  # (correct, confidence, decoded, lm tokens, seconds)
    records["full-only"] = []  # baseline: one greedy pass with every visual token
    for inputs, answer in zip(setting.inputs, truth):
        start = time.perf_counter()
        result = greedy_decode(model, inputs, max_new)
        seconds = time.perf_counter() - start
        lm_tokens = inputs["input_ids"].shape[1] + len(result.tokens) - 1
        records["full-only"].append((_right(result.tokens, answer), 1.0, len(result.tokens), lm_tokens, seconds))
        for name, method in runs.items():
            start = time.perf_counter()
            result = method(model, inputs)
            seconds = time.perf_counter() - start
            stats = result.stats
            records[name].append(
                (
                    _right(result.tokens, answer),
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


BASELINE = "greedy, all visual tokens (baseline)"
METRICS = ("accuracy", "escalated", "decoded_tokens", "lm_tokens", "ms_per_question")
TUNING_SEEDS = (1,)
"""Seed whose questions choose each gated method's threshold; never reported."""


def evaluate_seed(n: int, seed: int, path: str | None = None, suite: str | None = None) -> tuple[list[dict], object]:
    """Every (method, threshold) row on ``n`` questions drawn from ``seed``, and the setting.

    With ``suite``: ToyVLM v2's held-out ``suite`` (``path``: a v2 checkpoint), replies decoded
    until ``<eos>`` (at most :data:`~reference_impls.bench.speculative.REPLY` tokens) and right
    when they match the answer and ``<eos>`` exactly."""
    if suite is None:
        setting, max_new = load_setting(n, seed=seed, path=path), MAX_NEW
    else:
        bundle = load_toyvlm_v2(path)
        setting = chat_setting(bundle, bundle.samples(n, seed, suite), f"ToyVLM v2 ({suite} suite)")
        max_new = REPLY
    rows = route(collect(setting, max_new=max_new))
    half = collect(setting, escalations=("full-visual",), first_keep=0.5, max_new=max_new)
    del half["full-only"]  # the baseline row is already there
    return rows + route(half, first_keep=0.5), setting


def choose_thresholds(rows: list[dict]) -> dict[str, float]:
    """Per gated method, the threshold with the best accuracy among those that process fewer LM tokens
    than the baseline (ties: the lower threshold); ``rows`` are tuning-seed rows (means over seeds)."""
    budget = next(r["lm_tokens"] for r in rows if r["method"] == BASELINE)
    chosen: dict[str, float] = {}
    for row in sorted((r for r in rows if r["method"] != BASELINE), key=lambda r: r["threshold"]):
        best = chosen.get(row["method"])
        current = next((r for r in rows if r["method"] == row["method"] and r["threshold"] == best), None)
        if row["lm_tokens"] < budget and (current is None or row["accuracy"] > current["accuracy"]):
            chosen[row["method"]] = row["threshold"]
    return chosen


def main(argv: list[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few questions on two seeds, no results file")
    parser.add_argument("-n", type=int, default=16, help="questions drawn per seed")
    parser.add_argument("--toyvlm", default=None, help="ToyVLM checkpoint folder (default: the committed one)")
    parser.add_argument(
        "--suite", default=None, choices=sorted(SUITES), help="run on ToyVLM v2's held-out suite (default: ToyVLM v1)"
    )
    parser.add_argument("--checkpoint", default=None, help="ToyVLM v2 checkpoint folder (with --suite)")
    args, seeds = seeded.parse_seeded(parser, argv, TUNING_SEEDS)
    path = args.toyvlm if args.suite is None else args.checkpoint
    torch.set_num_threads(1)
    n = 3 if args.quick else args.n
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    facts: dict = {}

    def one_seed(seed: int) -> list[dict]:
        rows, facts["setting"] = evaluate_seed(n, seed, path, args.suite)
        return rows

    tuning_rows, _ = seeded.run_seeds(one_seed, seeds.tuning, log=log)
    chosen = choose_thresholds(seeded.summarise(tuning_rows, ("method", "threshold"), METRICS))
    log(f"thresholds chosen on seeds {list(seeds.tuning)}: {chosen}")
    per_seed, seconds = seeded.run_seeds(one_seed, seeds.reported, log=log)
    rows = seeded.summarise(per_seed, ("method", "threshold"), METRICS)
    for row in rows:
        row["chosen"] = "yes" if chosen.get(row["method"]) == row["threshold"] else ""
        print(" | ".join(f"{row[c.key]}" for c in COLUMNS))
    at_chosen = [r for r in per_seed if r["method"] == BASELINE or chosen.get(r["method"]) == r["threshold"]]
    tests = seeded.paired_tests(at_chosen, "accuracy", BASELINE) + seeded.paired_tests(at_chosen, "lm_tokens", BASELINE)
    setting = facts["setting"]
    result_id = "reasoning-toyvlm" if args.suite is None else results_id("reasoning-toyvlm-v2", args.suite)
    scored = (
        "the exact match of the whole reply and its <eos> (decoded until <eos>, at most "
        f"{REPLY} tokens; the confidence is the first reply token's)"
        if setting.replies is not None
        else "accuracy against the ground truth"
        if setting.answers is not None
        else "agreement with the full-visual greedy answer"
    )
    results = Results(
        id=result_id,
        ablation=args.suite is None,
        title=f"Confidence-gated answering on {ABLATION_TITLE}: accuracy against compute"
        if args.suite is None
        else f"Confidence-gated answering on ToyVLM v2 ({args.suite} suite): exact match against compute",
        command=command_line("reference_impls.bench.reasoning", argv),
        families=["efficient-reasoning"],
        columns=seeded.interval_columns([*COLUMNS, Column("chosen", "Chosen on tuning seeds")], ("accuracy",)),
        rows=rows,
        plots=[
            Plot(
                x="lm_tokens",
                y="accuracy",
                group="method",
                title="Accuracy vs LM tokens per question (thresholds)",
                error="accuracy_ci",
            )
        ],
        notes=(
            f"Model: {setting.name}. Each of {len(seeds.reported)} reported seeds "
            f"({', '.join(map(str, seeds.reported))}) draws its own {n} held-out questions; mean over seeds with the "
            f"half-width of a Student-t 95% interval ({sum(seconds) / len(seconds):.0f} s per seed). Each gated "
            f"method's threshold was chosen on tuning seed(s) {', '.join(map(str, seeds.tuning))} (never reported): "
            "the best accuracy among thresholds that process fewer LM tokens than the baseline "
            f"({', '.join(f'{k}: {v}' for k, v in chosen.items())}; rows marked 'chosen'); at that threshold accuracy "
            f"and LM tokens are compared with the baseline, paired by seed ({result_id}-tests). Batch 1, CPU with "
            f"1 thread (shared machine: wall times are noisy). Cheap pass: {int(FIRST_KEEP * 100)}% (or 50%) of "
            "each image's visual tokens (uniform). Escalation: re-ask with all visual tokens, or a majority vote over "
            f"5 answers sampled at temperature 1 from the full prompt. Accuracy is {scored}. Threshold 0 = always "
            "the cheap answer; 1.01 = always escalate (both passes counted)."
        ),
    )
    if not args.quick:
        for path in seeded.save_seeded(results, tests, seeds, "the greedy all-tokens baseline", args.out):
            print("wrote", path)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
