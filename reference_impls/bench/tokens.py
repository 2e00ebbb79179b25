"""Benchmark: ToyVLM accuracy and cost vs the fraction of visual tokens kept.

``python -m reference_impls.bench.tokens`` runs every registered ``kind="visual-token"`` method
(``registry.all_methods(kind="visual-token")``) plus the random-pruning baseline at budgets
100/50/25/10% on the committed ToyVLM (256 visual tokens per sample: four 224 px images), and
records accuracy, visual tokens kept, prefill time, KV bytes and decode ms/token. Each reported
seed (10-19 by default) draws its own held-out samples, shared by every method on that seed;
rows are means over seeds with 95% intervals, and each method's accuracy is compared with random
pruning at the same budget by paired tests over seeds. Results go to
``reference_impls/results/tokens-toyvlm.json`` (families = the methods' families; rows carry their
method's family, the baseline rows none) and the tests to ``tokens-toyvlm-tests.json``.

Options: ``--methods a,b`` (default: all), ``--n`` samples per seed, ``--seeds``, ``--budgets``,
``--checkpoint`` (any local ToyVLM bundle), ``--quick`` (n=10 on two seeds, for smoke runs).

``--model v2 --suite short`` runs the same comparison on ToyVLM v2 in the chat layout (images
first, question last, replies decoded until ``<eos>`` and scored by exact match) on one of its
held-out suites (:data:`reference_impls.common.chat_scenes.SUITES`, 1,024 or more visual tokens),
with accuracy on needle and aggregation questions too; results go to
``tokens-toyvlm-v2-<suite>.json``.

Deviations / guesses:
    Times are CPU wall-clock on a shared machine: compare rows of one run only. Each method is
    instantiated with its dataclass defaults and ``budget`` set.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..common import seeded
from ..common.chat_scenes import SUITES
from ..common.harness import evaluate
from ..common.random_pruning import RandomPruning
from ..common.results import Column, Plot, Results, command_line, results_id
from ..common.toyvlm import ABLATION_TITLE, load_toyvlm
from ..common.toyvlm_v2 import ToyVLMv2, load_toyvlm_v2
from ..registry import all_methods

__all__ = ["Factory", "chat_notes", "columns", "evaluate_seed", "main", "run", "sweep_chat"]

BUDGETS = (1.0, 0.5, 0.25, 0.1)


UNPRUNED = "none (all tokens)"
"""The method name of the unpruned row every ToyVLM v2 sweep of this protocol writes."""
METRICS = ("accuracy", "visual_tokens", "prefill_ms", "llm_prefill_ms", "kv_kib", "decode_ms")
CHAT_METRICS = ("needle_accuracy", "aggregation_accuracy", "reply_tokens")
"""Extra metrics of ToyVLM v2 runs."""
BASELINE = "random-pruning"
TUNING_SEEDS = (1,)
"""Seed of the single-seed runs the methods' settings were developed on; never reported."""


def evaluate_seed(
    bundle, specs: dict, names: list[str], n: int, budgets, seed: int, suite: str | None = None
) -> list[dict]:
    """Every method at every budget on ``n`` held-out samples drawn from ``seed`` (of ToyVLM v2's
    ``suite`` when given); one row per setting."""
    samples = bundle.samples(n, seed) if suite is None else bundle.samples(n, seed, suite)
    rows = [_row(UNPRUNED, "", 1.0, evaluate(bundle, None, samples=samples))]
    for name in names:
        spec = specs[name]
        for budget in budgets:
            family = "" if spec.target is RandomPruning else spec.family
            rows.append(_row(name, family, budget, evaluate(bundle, spec.target(budget=budget), samples=samples)))
    return rows


@dataclass(frozen=True)
class Factory:
    """A method made from a budget, in the shape :func:`evaluate_seed` reads from a registry spec
    (``family``, ``target(budget=...)``): benches whose rows are settings of registered methods
    (ablations, baselines) run them through the same protocol."""

    family: str
    make: Callable[[float], Any]

    def target(self, budget: float):
        return self.make(budget)


def sweep_chat(
    bundle: ToyVLMv2,
    suite: str,
    specs: dict,
    names,
    n: int,
    budgets,
    seeds: seeded.Seeds,
    log=print,
    cache: seeded.SeedCache | None = None,
) -> tuple[list[dict], list[dict], list[float]]:
    """:func:`evaluate_seed` over the reported seeds on ToyVLM v2's ``suite``: the summarised rows
    (means and 95% intervals), the per-seed rows (for paired tests) and the seconds per seed (each
    seed stored in ``cache`` as soon as it finishes, when one is given)."""
    per_seed, seconds = seeded.run_seeds(
        lambda seed: evaluate_seed(bundle, specs, list(names), n, budgets, seed, suite),
        seeds.reported,
        log=log,
        cache=cache,
    )
    rows = seeded.summarise(per_seed, ("method", "budget"), METRICS + CHAT_METRICS)
    for row in rows:
        log(_line(row))
    return rows, per_seed, seconds


def chat_notes(bundle: ToyVLMv2, suite: str, seeds: seeded.Seeds, n: int, seconds: list[float]) -> str:
    """The protocol sentences every ToyVLM v2 run of this bench's shape starts its notes with."""
    trained = bundle.manifest.get("held_out_exact_match", {}).get(suite, {}).get("all", "?")
    return (
        f"ToyVLM v2 ({bundle.manifest.get('parameters', '?')} parameters, held-out exact match {trained} on the "
        f"{suite} suite at training time), chat layout: images first, question last; each reply is decoded "
        "greedily through the method until <eos> and is right only when every word and the <eos> match. Suite "
        f"{suite}: {SUITES[suite].description}. Each of {len(seeds.reported)} reported seeds "
        f"({', '.join(map(str, seeds.reported))}) draws its own {n} held-out samples, shared by every method; "
        "mean over seeds with the half-width of a Student-t 95% interval "
        f"({sum(seconds) / len(seconds):.0f} s per seed); seed {', '.join(map(str, seeds.tuning))} is not "
        "reported. Batch 1, 1 thread, CPU wall-clock on a shared machine: compare times within one run only; "
        "'LLM prefill' excludes the vision tower. "
    )


def run(
    methods: list[str] | None = None,
    n: int = 20,
    budgets=BUDGETS,
    checkpoint: str | None = None,
    seeds: seeded.Seeds | None = None,
    log=print,
    suite: str | None = None,
) -> tuple[Results, list[dict]]:
    """Evaluate the methods at each budget on every seed's samples (ToyVLM v2's ``suite`` when
    given, else ToyVLM v1); returns the :class:`Results` (not yet saved, means and 95% intervals
    over seeds) and the paired tests against random pruning."""
    seeds = seeds or seeded.Seeds(seeded.REPORTED, TUNING_SEEDS)
    bundle = load_toyvlm(checkpoint) if suite is None else load_toyvlm_v2(checkpoint)
    specs = {spec.name: spec for spec in all_methods(kind="visual-token")}
    specs.setdefault(BASELINE, next(s for s in all_methods() if s.target is RandomPruning))
    names = sorted(specs) if not methods else methods
    per_seed, seconds = seeded.run_seeds(
        lambda seed: evaluate_seed(bundle, specs, names, n, budgets, seed, suite), seeds.reported, log=log
    )
    rows = seeded.summarise(per_seed, ("method", "budget"), METRICS + (CHAT_METRICS if suite else ()))
    log(f"{'method':24s} budget  acc    tokens  prefill_ms  llm_ms  kv_KiB  decode_ms")
    for row in rows:
        log(_line(row))
    tests = seeded.paired_tests(per_seed, "accuracy", BASELINE, within=("budget",)) if BASELINE in names else []
    families = sorted({specs[name].family for name in names})
    manifest = bundle.manifest
    result_id = "tokens-toyvlm" if suite is None else results_id("tokens-toyvlm-v2", suite)
    if suite is None:
        model_line = (
            f"ToyVLM ({manifest.get('parameters', '?')} parameters, held-out accuracy "
            f"{manifest.get('held_out_accuracy', {}).get('all', '?')} at training time). "
        )
        layout = f"{rows[0]['visual_tokens_full']:.0f} visual tokens per sample (four 224 px images). "
    else:
        trained = manifest.get("held_out_exact_match", {}).get(suite, {}).get("all", "?")
        model_line = (
            f"ToyVLM v2 ({manifest.get('parameters', '?')} parameters, held-out exact match {trained} on the "
            f"{suite} suite at training time), chat layout: images first, question last, the reply decoded "
            "greedily through the method's cache until <eos> and right only when every word and the <eos> match. "
        )
        layout = (
            f"Suite {suite}: {SUITES[suite].description}; {rows[0]['visual_tokens_full']:.0f} visual tokens per "
            f"sample on average, replies of {rows[0]['reply_tokens']:.1f} tokens (unpruned model). "
        )
    notes = (
        model_line + f"Each of {len(seeds.reported)} "
        f"reported seeds ({', '.join(map(str, seeds.reported))}) draws its own {n} held-out samples, shared by every "
        f"method; mean over seeds with the half-width of a Student-t 95% interval (one seed took "
        f"{sum(seconds) / len(seconds):.0f} s). Methods run with their defaults and the budget set; seed "
        f"{', '.join(map(str, seeds.tuning))}, on which they were developed, is not reported. "
        + layout
        + "Random pruning is the baseline (family left empty so that it shows on every page); every method's accuracy "
        f"is compared with it at the same budget, paired by seed ({result_id}-tests). Prefill includes "
        "the vision tower, which still encodes every patch; 'LLM prefill' excludes it. Times are "
        "CPU wall-clock on a 2-core machine shared with other jobs: compare rows of this run only."
    )
    results = Results(
        id=result_id,
        ablation=suite is None,
        title=f"{ABLATION_TITLE}: accuracy and cost vs visual tokens kept"
        if suite is None
        else f"ToyVLM v2 ({suite} suite): exact match and cost vs visual tokens kept",
        command="",
        families=families,
        columns=seeded.interval_columns(columns(chat=suite is not None), ("accuracy",)),
        rows=rows,
        plots=[
            Plot(
                x="visual_tokens",
                y="accuracy",
                group="method",
                title="Accuracy vs visual tokens kept",
                error="accuracy_ci",
            ),
            Plot(x="visual_tokens", y="llm_prefill_ms", group="method", title="LLM prefill time vs visual tokens kept"),
        ],
        notes=notes,
        seeds=seeds.record(),
    )
    return results, tests


def columns(chat: bool = False) -> list[Column]:
    """The columns of :func:`_row`'s rows (``chat``: ToyVLM v2, with exact match per scope)."""
    return [
        Column("method", "Method"),
        Column("budget", "Budget (fraction kept)", digits=2),
        Column("accuracy", "Exact match" if chat else "Accuracy", "%", digits=1),
        *(
            [
                Column("needle_accuracy", "Needle", "%", digits=1),
                Column("aggregation_accuracy", "Aggregation", "%", digits=1),
                Column("reply_tokens", "Reply tokens", digits=1),
            ]
            if chat
            else []
        ),
        Column("visual_tokens", "Visual tokens", digits=1),
        Column("prefill_ms", "Prefill (encode + LLM)", "ms", digits=1),
        Column("llm_prefill_ms", "LLM prefill", "ms", digits=1),
        Column("kv_kib", "KV cache", "KiB", digits=1),
        Column("decode_ms", "Decode", "ms/token", digits=2),
    ]


def _row(method: str, family: str, budget: float, result: dict) -> dict:
    row = {
        "method": method,
        "family": family,
        "budget": budget,
        "accuracy": round(100 * result["accuracy"], 2),
        "visual_tokens": result["visual_tokens"],
        "visual_tokens_full": result["visual_tokens_full"],
        "prefill_ms": round(1000 * result["prefill_s"], 3),
        "llm_prefill_ms": round(1000 * (result["prefill_s"] - result["encode_s"]), 3),
        "kv_kib": round(result["kv_bytes"] / 1024, 2),
        "decode_ms": round(result["decode_ms_per_token"], 3),
    }
    if "accuracy_by_scope" in result:  # ToyVLM v2: needle and aggregation questions, reply length
        for scope in ("needle", "aggregation"):
            row[f"{scope}_accuracy"] = round(100 * result["accuracy_by_scope"].get(scope, float("nan")), 2)
        row["reply_tokens"] = result["reply_tokens"]
    return row


def _line(row: dict) -> str:
    return f"{row['method']:24s} {row['budget']:5.2f}  {row['accuracy']:5.1f}  {row['visual_tokens']:6.1f}  {row['prefill_ms']:10.1f}  {row['llm_prefill_ms']:6.1f}  {row['kv_kib']:6.1f}  {row['decode_ms']:8.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ToyVLM accuracy vs visual tokens kept")
    parser.add_argument(
        "--methods",
        default="",
        help="comma-separated registered names (default: all visual-token methods + random-pruning)",
    )
    parser.add_argument("--n", type=int, default=20, help="held-out samples drawn per seed")
    parser.add_argument("--budgets", default=",".join(str(b) for b in BUDGETS))
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument(
        "--suite", default=None, choices=sorted(SUITES), help="run on ToyVLM v2's held-out suite (default: ToyVLM v1)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="n=10 on two seeds, for a smoke run")
    args, seeds = seeded.parse_seeded(parser, argv, TUNING_SEEDS)
    torch.set_num_threads(args.threads)
    n = 10 if args.quick else args.n
    methods = [m for m in args.methods.split(",") if m] or None
    budgets = tuple(float(b) for b in args.budgets.split(","))
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    results, tests = run(
        methods, n=n, budgets=budgets, checkpoint=args.checkpoint, seeds=seeds, log=log, suite=args.suite
    )
    results.command = command_line("reference_impls.bench.tokens", argv)
    for path in seeded.save_seeded(results, tests, seeds, BASELINE, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
