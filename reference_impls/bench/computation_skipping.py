"""Benchmark: operation skipping for visual tokens on ToyVLM v2, against the full model and token dropping.

``python -m reference_impls.bench.computation_skipping --suite short`` runs, through the tokens
bench's per-sample chat protocol (:func:`reference_impls.bench.tokens.sweep_chat`: replies decoded
until ``<eos>``, exact match, batch 1), the unmodified model and, at each budget b (the fraction of
leading layers that compute every visual operation; the deeper layers skip):

- ``op-skip``: the visual tokens skip their query and FFN operations (they pass those layers
  unchanged but stay keys/values);
- ``op-skip-mlp``: they skip the FFN only (Skip-Vision's FFN skipping, applied training-free);
- ``op-skip-query``: they skip their attention update only;
- ``random@0 (equal FLOPs)``: random pruning before the LLM keeping the fraction of visual tokens
  that spends the same visual linear-layer FLOPs as ``op-skip`` at b (token dropping at equal cost);
- ``withdraw@K``: random pruning to one visual token at layer K = round(b L), the first skipping
  layer (the visual tokens leave the sequence there instead of staying as frozen keys/values).

Each reported seed (10-19 by default) draws its own held-out samples; rows are means over seeds
with 95% intervals; ``op-skip`` is compared with each other setting at the same budget by paired
tests over seeds. Results: ``reference_impls/results/computation-skipping-toyvlm-v2-<suite>.json``
and its ``-tests`` file. ``--quick``: 4 samples on two seeds, nothing written.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from ..common import seeded
from ..common.architectures import adapter_for
from ..common.chat_scenes import SUITES
from ..common.random_pruning import RandomPruning
from ..common.results import Column, Plot, Results, command_line, results_id, without_option
from ..common.toyvlm_v2 import load_toyvlm_v2
from ..prefilling.bench import RandomDrop
from ..prefilling.op_skip import OperationSkip, skipped_layers, visual_flop_fraction
from . import tokens

__all__ = ["BUDGETS", "REFERENCE", "factories", "flops", "main", "run"]

BUDGETS = (0.67, 0.5, 0.33)
"""Fractions of leading layers that compute every visual operation (6 layers: 4, 3 and 2)."""
REFERENCE = "op-skip"
FULL = tokens.UNPRUNED
TUNING_SEEDS = (1,)
"""Seed of the single-seed smoke runs; never reported."""
VARIANTS = {"op-skip": ("query", "mlp"), "op-skip-mlp": ("mlp",), "op-skip-query": ("query",)}


def flops(config, name: str, budget: float) -> float:
    """Fraction of the visual tokens' linear-layer FLOPs a setting computes (attention scores left out)."""
    layers = config.num_hidden_layers
    if name in VARIANTS:
        return visual_flop_fraction(config, {i: VARIANTS[name] for i in skipped_layers(budget, layers)})
    if name == "withdraw@K":
        return round(budget * layers) / layers
    if name == "random@0 (equal FLOPs)":
        return flops(config, REFERENCE, budget)
    return 1.0


def factories(config) -> dict[str, tokens.Factory]:
    """name -> method made from the budget (the op-skip layer share)."""
    family = "computation-skipping"
    made: dict[str, tokens.Factory] = {
        name: tokens.Factory(family, lambda b, ops=ops: OperationSkip(budget=b, ops=ops))
        for name, ops in VARIANTS.items()
    }
    made["random@0 (equal FLOPs)"] = tokens.Factory("", lambda b: RandomPruning(budget=flops(config, REFERENCE, b)))
    layers = config.num_hidden_layers
    made["withdraw@K"] = tokens.Factory("", lambda b: RandomDrop(budget=1e-9, layer=round(b * layers)))
    return made


def run(
    suite: str,
    n: int,
    budgets=BUDGETS,
    checkpoint: str | None = None,
    seeds=None,
    log=print,
    cache_dir: str | None = None,
) -> tuple[Results, list[dict[str, Any]]]:
    """Every setting at every budget on ToyVLM v2's ``suite``; the results (not saved) and paired tests."""
    seeds = seeds or seeded.Seeds(seeded.REPORTED, TUNING_SEEDS)
    bundle = load_toyvlm_v2(checkpoint)
    config = adapter_for(bundle.model).text_model(bundle.model).config
    specs = factories(config)
    names = list(specs)
    key = {"suite": suite, "n": n, "budgets": list(budgets), "names": names, "checkpoint": checkpoint}
    cache = None if cache_dir is None else seeded.SeedCache(cache_dir, key)
    rows, per_seed, seconds = tokens.sweep_chat(bundle, suite, specs, names, n, budgets, seeds, log, cache)
    for row in rows:
        row["visual_flops"] = round(flops(config, row["method"], row["budget"]), 4)
    tests = seeded.paired_tests(per_seed, "accuracy", REFERENCE, within=("budget",))
    # The full model (budget 1.0) against each skipping setting: its rows repeated at every budget.
    full = [row for row in per_seed if row["method"] == FULL]
    repeated = per_seed + [{**row, "budget": budget} for row in full for budget in budgets]
    tests += seeded.paired_tests(repeated, "accuracy", FULL, within=("budget",), versus=list(VARIANTS))
    result_id = results_id("computation-skipping-toyvlm-v2", suite)
    columns = tokens.columns(chat=True)
    at = next(i for i, c in enumerate(columns) if c.key == "visual_tokens") + 1
    columns.insert(at, Column("visual_flops", "Visual linear FLOPs computed", digits=3))
    results = Results(
        id=result_id,
        title=f"Operation skipping for visual tokens on ToyVLM v2 ({suite} suite): exact match and cost",
        command="",
        families=["computation-skipping"],
        columns=seeded.interval_columns(columns, ("accuracy",)),
        rows=rows,
        plots=[
            Plot(
                x="budget",
                y="accuracy",
                group="method",
                title="Exact match vs layers computing visual operations",
                error="accuracy_ci",
            ),
            Plot(
                x="budget",
                y="llm_prefill_ms",
                group="method",
                title="LLM prefill time vs layers computing visual operations",
            ),
        ],
        notes=tokens.chat_notes(bundle, suite, seeds, n, seconds)
        + f"Budget = fraction of the {config.num_hidden_layers} LLM layers, from the first, in which the visual "
        "tokens compute every operation (round(budget x layers)); in the others op-skip skips their query and FFN "
        "operations (they pass the layer unchanged but stay keys/values), op-skip-mlp the FFN only, op-skip-query "
        "the attention update only; no token is dropped ('visual tokens' stays at the full count). 'Visual linear "
        "FLOPs computed' counts the visual tokens' q/k/v/o projections and FFN (upstream's count, attention scores "
        "left out). 'random@0 (equal FLOPs)' prunes visual tokens at random before the LLM down to op-skip's FLOP "
        "fraction; 'withdraw@K' prunes them at random to one at the first skipping layer K. op-skip is compared "
        "with every other setting at the same budget, and the full model with each op-skip setting, paired by seed "
        f"({result_id}-tests). Training-free on "
        "ToyVLM v2 (GSOP is tuning-free; Skip-Vision trains with its skipping, which this run does not).",
        seeds=seeds.record(),
    )
    return results, tests


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default="short", choices=sorted(SUITES))
    parser.add_argument("--n", type=int, default=20, help="held-out samples drawn per seed")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="comma-separated layer shares")
    parser.add_argument("--checkpoint", default=None, help="ToyVLM v2 checkpoint folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="4 samples on two seeds, nothing written")
    parser.add_argument("--cache", default=None, help="folder keeping each finished seed (a rerun reads them back)")
    args, seeds = seeded.parse_seeded(parser, argv, TUNING_SEEDS)
    torch.set_num_threads(args.threads)
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    if args.quick:
        seeds = seeded.Seeds(seeds.reported[:2], seeds.tuning)
    n = 4 if args.quick else args.n
    budgets = tuple(float(b) for b in args.budgets.split(","))
    results, tests = run(args.suite, n, budgets, args.checkpoint, seeds, log, args.cache)
    argv = sys.argv[1:] if argv is None else argv
    results.command = command_line("reference_impls.bench.computation_skipping", without_option(argv, "--cache"))
    for row in results.rows:
        log(f"{row['method']:24s} {row['budget']:.2f} flops {row['visual_flops']:.3f} acc {row['accuracy']:5.1f}")
    if args.quick:
        return
    reference = f"{REFERENCE} (and the full model against each op-skip setting)"
    for path in seeded.save_seeded(results, tests, seeds, reference, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
