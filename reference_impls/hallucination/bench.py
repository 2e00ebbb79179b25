"""Hallucination-unlearning benchmark: GA, NPO, EFUF, SARE and controls on the biased captioner.

``python -m reference_impls.hallucination.bench`` loads the committed captioner
(:mod:`.train_captioner`), builds EFUF-style forget / grounded / retain data from its own
captions of trigger scenes (shape A without B), unlearns with every method from the same data
order (paired seeds), then measures each model

- as unlearned: targeted hallucination rate (captions naming B on A-without-B scenes), CHAIR,
  clean-caption object F1, POPE F1, and the worst-case probe (hallucination probability after a
  push of norm 0.1 along the hallucination gradient);
- after the relearning attack (fine-tuning on 32 hallucinated captions for each budget), next
  to the never-unlearned captioner relearned with the same budget;
- under Gaussian weight noise.

It prints a table of means over seeds with 95% confidence intervals, SARE's paired comparison
with every other method (sign test and bootstrap over seeds) and writes
``reference_impls/results/hallucination-unlearning.json`` and ``hallucination-unlearning-tests.json``.
``--quick`` is a smoke run.

Seeds: 0-2 were used while developing the settings and 99 for the calibration split; the reported
seeds are 10-29 (20 seeds; until December 2026 10-19). Twenty because the spread over seeds is not
normal: in 5 of 60 runs an NPO-family method (NPO, untargeted SAM, NPO with SARE's compute) loses
12-18 points of clean F1, a second mode that ten seeds may miss entirely. Seeds 7-8 and 21-23 were
run once with an earlier configuration (issue 17's report, before rho was calibrated along each
method's own run; nothing was chosen on them); 30-35 and 20-29 (before they joined the reported
seeds) as unused seeds against the 10-seed table, and 40-43 against this one. Seeds 10-19 re-run
bit-identically to the 10-seed table (one thread).

Besides the mean and its interval, the table publishes, for the hallucination rate and clean F1,
the lowest and highest value over the reported seeds. That range is what "a seed nobody used lands
inside the published numbers" is checked against: with n exchangeable seeds a new one falls inside
with probability at least (n - 1) / (n + 1), 90.5% for 20 seeds, whatever the distribution
(:func:`~reference_impls.common.seed_stats.range_coverage`); a normal prediction interval would
assume a shape the failure mode above breaks. ``--check RESULTS --seeds ...`` runs the given seeds
and prints how many of their values land inside the ranges of the results file ``RESULTS``.

``--cache DIR`` keeps the rho calibration and every seed's rows under ``DIR``
(:class:`~reference_impls.common.seeded.SeedCache`): a later run of the same configuration reads
those seeds back instead of re-running them (about 4 minutes a seed on one thread), so the table
over 20 seeds is what one command writes whether the seeds ran in one go or in pieces. The
committed files were written by::

    python -m reference_impls.hallucination.bench --seeds 20 ... 29 --cache .cache/hallucination-unlearning --out /tmp/x
    python -m reference_impls.hallucination.bench --seeds 10 ... 19 --cache .cache/hallucination-unlearning --out /tmp/x
    python -m reference_impls.hallucination.bench --cache .cache/hallucination-unlearning

(the first two only fill the cache) and the check of unused seeds by::

    python -m reference_impls.hallucination.bench --seeds 40 41 42 43 --cache .cache/hallucination-unlearning \
        --check reference_impls/results/hallucination-unlearning.json

Deviations / guesses: only the language model is trained (the vision tower is frozen, as LoRA
variants of EFUF/SARE train the LLM); EFUF's CLIP scores are simulated (no CLIP here): N(18, 3)
per hallucinated span, N(36, 3) per grounded span and N(30, 1.5) per clean sentence, each on the
side of EFUF's thresholds (23, 32, 27.5) where its data filter would put it, the spreads our
guess; each SAM method's rho is calibrated along its own
unlearning run from the base captioner, on the calibration split (package README section 5).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from reference_impls.common import seeded
from reference_impls.common.results import (
    Column,
    Plot,
    Results,
    command_line,
    paired_tests_results,
    save_results,
)
from reference_impls.common.seed_stats import interval_fields, paired_rows, range_coverage, range_fields

from .captioner import (
    CAPTION_PROMPT,
    build_splits,
    encode,
    evaluate_captioner,
    make_eval_set,
    retain_batch,
    split_batch,
)
from .efuf import EFUF
from .gradient_ascent import GradientAscent
from .npo import NPO
from .robustness import gaussian_noise, relearn, worst_case_probe
from .sare import SARE, SAMConfig, calibrate_rho, saturated_steps
from .train_captioner import load_captioner

__all__ = ["BenchConfig", "methods", "make_data", "run", "aggregate", "check"]


TUNING_SEEDS = (0, 1, 2)
"""Seeds the settings below were developed on; never reported."""
CALIBRATION_SEED = 99
"""Seed of the held-out probe and rho-calibration split (``build_splits(seed=99)``,
``make_data(seed=99)``); never reported."""


HALLUCINATED_SCORE = (18.0, 3.0)
"""Mean and sd of the simulated CLIP score of a hallucinated span (EFUF's threshold: below 23)."""
GROUNDED_SCORE = (36.0, 3.0)
"""The same for a grounded span (EFUF keeps spans scoring above 32)."""
SENTENCE_SCORE = (30.0, 1.5)
"""The same for a whole clean sentence (EFUF keeps sentences with a mean above 27.5)."""


@dataclass
class BenchConfig:
    seeds: tuple[int, ...] = tuple(range(10, 30))
    steps: int = 60
    batch: int = 16
    n_forget: int = 256
    n_eval: int = 100
    retain_pool: int = 600
    relearn_budgets: tuple[int, ...] = (5, 10, 20, 30)
    relearn_n: int = 32
    relearn_batch: int = 16
    relearn_lr: float = 5e-4
    noise: tuple[float, ...] = (0.1, 0.3)
    rhos: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)
    push_rho: float = 0.1


SAM_METHODS = ("sare", "sare-ga", "sam-untargeted")
"""The methods with a perturbation radius; each gets its own calibrated rho."""


def methods(rhos: dict[str, float], steps: int) -> dict[str, tuple[object, int]]:
    """Name -> (method, steps); the controls are untargeted SAM and NPO with SARE's compute.

    ``rhos`` maps each of :data:`SAM_METHODS` to its radius (see :func:`calibrate`).
    """
    return {
        "ga": (GradientAscent(lr=1e-4), steps),
        "npo": (NPO(beta=0.5, lr=5e-4), steps),
        "efuf": (EFUF(lr=1e-4), steps),
        "sare": (SARE(beta=0.5, lr=5e-4, sam=SAMConfig(rho=rhos["sare"])), steps),
        "sare-ga": (SARE(forget="ga", lr=1e-4, sam=SAMConfig(rho=rhos["sare-ga"])), steps),
        "sam-untargeted": (SARE(beta=0.5, lr=5e-4, sam=SAMConfig(rho=rhos["sam-untargeted"], scope="all")), steps),
        "npo-same-compute": (NPO(beta=0.5, lr=5e-4), int(1.5 * steps)),
    }


def calibrate(base, vocab, world, config: BenchConfig, log=print) -> tuple[dict[str, float], dict[str, list]]:
    """Each SAM method's rho along its own unlearning run from ``base``, on the calibration split.

    The calibration data come from :data:`CALIBRATION_SEED`, never a reported seed, and the run
    mirrors the reported one (same method, learning rate and steps), so the radius is safe where
    the method actually operates: no step may lift the target probability over the saturation
    threshold (:func:`~reference_impls.hallucination.sare.calibrate_rho`).
    """
    _, calib_batches, _ = make_data(base, vocab, world, replace(config, n_forget=64), seed=CALIBRATION_SEED)
    placeholder = methods({name: 0.0 for name in SAM_METHODS}, config.steps)
    rhos, sweeps = {}, {}
    for name in SAM_METHODS:
        method, steps = placeholder[name]
        torch.manual_seed(CALIBRATION_SEED)
        rhos[name], sweeps[name] = calibrate_rho(method, base, calib_batches, steps, rhos=config.rhos)
        log(f"rho calibration {name}: {json.dumps(sweeps[name])} -> rho={rhos[name]}")
    return rhos, sweeps


def make_data(model, vocab, world, config: BenchConfig, seed: int):
    """Per-seed forget split, retain pool, relearning set and the step -> batches function."""
    splits = build_splits(model, vocab, world, n=config.n_forget, seed=100 + seed)
    retain_pool = world.scenes(config.retain_pool, seed=0)  # the training distribution (seed 0)
    attack_scenes = world.scenes(config.relearn_n, seed=200 + seed, kind="trigger")
    attack_caps = [world.caption(set(s.truth) | {world.b}) for s in attack_scenes]
    n = len(splits["scenes"])

    def batches(step: int) -> dict[str, dict]:
        rng = np.random.default_rng([seed, step])
        index = rng.choice(n, size=min(config.batch, n), replace=False).tolist()
        forget = split_batch(splits, index, vocab, model.config, "forget")
        forget["scores"] = torch.from_numpy(rng.normal(*HALLUCINATED_SCORE, len(index))).float()
        grounded = split_batch(splits, index, vocab, model.config, "grounded")
        retain = retain_batch(
            world,
            [retain_pool[i] for i in rng.choice(len(retain_pool), config.batch, replace=False)],
            vocab,
            model.config,
            rng,
        )
        # Drawn last so that every other method sees the same batches as before EFUF read them.
        grounded["scores"] = torch.from_numpy(rng.normal(*GROUNDED_SCORE, len(index))).float()
        retain["scores"] = torch.from_numpy(rng.normal(*SENTENCE_SCORE, config.batch)).float()
        return {"forget": forget, "grounded": grounded, "retain": retain}

    def attack(step: int) -> dict[str, dict]:
        rng = np.random.default_rng([seed, 999, step])
        index = rng.choice(len(attack_scenes), size=config.relearn_batch, replace=False)
        chosen = [attack_scenes[i] for i in index]
        return {
            "relearn": encode(
                chosen, [CAPTION_PROMPT] * len(chosen), [attack_caps[i] for i in index], vocab, model.config
            )
        }

    return splits, batches, attack


def _measure(name, model, base, vocab, world, eval_set, probe_batch, attack, config, seed) -> list[dict]:
    evaluate = lambda m: evaluate_captioner(m, vocab, world, eval_set)
    rows = [{"method": name, "condition": "unlearned", "relearn_steps": 0, **evaluate(model)}]
    push = worst_case_probe(model, probe_batch, rhos=(config.push_rho,))[0]
    rows[0]["p_hal"], rows[0]["p_hal_push"] = 100 * push["p_target"], 100 * push["p_target_pushed"]
    for row in relearn(model, attack, checkpoints=config.relearn_budgets, lr=config.relearn_lr, evaluate=evaluate):
        rows.append({"method": name, "condition": "relearned", "relearn_steps": row.pop("steps"), **row})
    for alpha in config.noise:
        rows.append(
            {
                "method": name,
                "condition": f"noise {alpha}",
                "relearn_steps": None,
                **evaluate(gaussian_noise(model, alpha, seed=seed)),
            }
        )
    for row in rows:
        row["seed"] = seed
    return rows


def cache_key(config: BenchConfig, manifest: dict) -> dict:
    """What a seed's rows depend on besides the seed: the configuration, the captioner, the threads."""
    settings = {k: v for k, v in asdict(config).items() if k != "seeds"}
    return {"config": settings, "captioner": manifest, "threads": torch.get_num_threads()}


def run(config: BenchConfig, log=print, captioner=None, cache_dir: Path | str | None = None) -> tuple[list[dict], dict]:
    """All seeds; returns the per-seed rows and run facts (rho sweep, timings).

    With ``cache_dir``, the calibration and every seed's rows are kept there
    (:class:`~reference_impls.common.seeded.SeedCache`) and read back by a later run of the same
    configuration, so adding seeds re-runs only the new ones.
    """
    base, vocab, world, manifest = load_captioner(captioner)
    base.model.visual.requires_grad_(False)  # unlearning trains the language model only
    eval_set = make_eval_set(world, config.n_eval, config.n_eval)
    held_out = build_splits(base, vocab, world, n=64, seed=CALIBRATION_SEED)
    probe_batch = split_batch(held_out, list(range(min(16, len(held_out["scenes"])))), vocab, base.config, "forget")
    cache = None if cache_dir is None else seeded.SeedCache(cache_dir, cache_key(config, manifest))

    def calibration() -> dict:
        rhos, sweeps = calibrate(base, vocab, world, config, log)
        return {"rho": rhos, "rho_sweep": sweeps}

    calibrated = calibration() if cache is None else cache.get("calibration", calibration)
    rhos = calibrated["rho"]

    def one_seed(seed: int) -> list[dict]:
        splits, batches, attack = make_data(base, vocab, world, config, seed)
        log(f"seed {seed}: {len(splits['scenes'])} hallucinating captions of {config.n_forget} trigger scenes")
        rows = _measure("base", base, base, vocab, world, eval_set, probe_batch, attack, config, seed)
        for name, (method, steps) in methods(rhos, config.steps).items():
            torch.manual_seed(seed)
            model = copy.deepcopy(base)
            start = time.time()
            history = method.unlearn(model, batches, steps=steps)
            seconds = time.time() - start
            measured = _measure(name, model, base, vocab, world, eval_set, probe_batch, attack, config, seed)
            # the unlearned row (first) carries the run's facts, so that a cached seed keeps them
            measured[0].update(train_seconds=seconds, saturated_steps=saturated_steps(history))
            rows += measured
            log(
                f"  {name:18s} {seconds:5.1f}s hal {measured[0]['hal_rate']:5.1f} f1 {measured[0]['clean_f1']:5.1f} "
                f"pope {measured[0]['pope_f1']:5.1f} | relearn "
                + " ".join(f"{r['hal_rate']:5.1f}" for r in measured if r["condition"] == "relearned")
            )
        return rows

    rows, seconds = seeded.run_seeds(one_seed, config.seeds, log=log, cache=cache)
    unlearned = [r for r in rows if r["condition"] == "unlearned" and r["method"] != "base"]
    timings, saturated = {}, {}
    for row in unlearned:
        timings.setdefault(row["method"], []).append(row["train_seconds"])
        saturated.setdefault(row["method"], []).append(row["saturated_steps"])
    return rows, {
        **calibrated,
        "saturated_steps": saturated,
        "train_seconds": {k: float(np.mean(v)) for k, v in timings.items()},
        "seed_seconds": seconds,
        "captioner": manifest.get("eval", {}),
    }


METRICS = ("hal_rate", "chair_s", "chair_i", "clean_f1", "pope_f1", "pope_b_yes", "p_hal", "p_hal_push")


RANGE_METRICS = ("hal_rate", "clean_f1")
"""Metrics published with their range over the reported seeds, the range a new seed is checked against."""
SETTING = ("method", "condition", "relearn_steps")
"""The fields that name one row of the table (one setting)."""


def per_seed(rows: list[dict], methods_: tuple[str, ...] = ("sare", "npo", "ga")) -> dict[str, dict[int, list[float]]]:
    """Hallucination rate per seed after each relearning budget (for paired comparisons)."""
    out: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        if row["method"] in methods_ + ("base",) and row["condition"] in ("unlearned", "relearned"):
            out.setdefault(row["method"], {}).setdefault(row["relearn_steps"], []).append(round(row["hal_rate"], 1))
    return out


def aggregate(rows: list[dict]) -> list[dict]:
    """Per (method, condition, relearn_steps): mean over seeds with a 95% confidence interval and, for
    :data:`RANGE_METRICS`, the lowest and highest seed (``<metric>_low``, ``<metric>_high``)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["condition"], row["relearn_steps"]), []).append(row)
    out = []
    for (method, condition, steps), members in groups.items():
        agg = {
            "method": method,
            "family": "" if method == "base" else "hallucination-unlearning",
            "condition": condition,
            "relearn_steps": steps,
            "seeds": len(members),
        }
        for key in METRICS:
            agg.update(interval_fields(key, [m.get(key) for m in members]))
            if key in RANGE_METRICS:
                agg.update(range_fields(key, [m.get(key) for m in members]))
        out.append(agg)
    return out


def paired_tests(rows: list[dict], reference: str = "sare") -> list[dict]:
    """``reference`` against every other unlearning method, paired by seed: hallucination rate as
    unlearned and after each relearning budget (lower is better), and clean-caption F1."""
    out = []
    conditions = sorted(
        {(r["condition"], r["relearn_steps"]) for r in rows if r["condition"] in ("unlearned", "relearned")},
        key=lambda c: (c[0] != "unlearned", c[1] or 0),
    )
    for condition, steps in conditions:
        selected = [
            r for r in rows if r["condition"] == condition and r["relearn_steps"] == steps and r["method"] != "base"
        ]
        label = "as unlearned" if condition == "unlearned" else f"after {steps} relearning steps"
        for key, higher in (("hal_rate", "hallucinates more"), ("clean_f1", "higher clean F1")):
            if key == "clean_f1" and condition != "unlearned":
                continue
            per_seed: dict[str, list[float]] = {}
            for row in sorted(selected, key=lambda r: r["seed"]):
                per_seed.setdefault(row["method"], []).append(row[key])
            if reference in per_seed and len(per_seed[reference]) > 1:
                for test in paired_rows(f"{key} {label}", per_seed, reference, "hallucination-unlearning", higher):
                    out.append(test)
    return out


def check(published: Path | str, rows: list[dict]) -> list[dict]:
    """Print how many of ``rows``' values of :data:`RANGE_METRICS` land inside the published per-seed ranges.

    ``published`` is a results file of this benchmark; its seeds must not include the checked ones
    (a seed inside its own range proves nothing): :func:`~reference_impls.common.seeded.check_published`.
    """
    return seeded.check_published(published, rows, SETTING, RANGE_METRICS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="hallucination-unlearning benchmark on the biased captioner")
    parser.add_argument("--quick", action="store_true", help="one seed, short runs (smoke test, no results file)")
    seeded.seed_arguments(parser, BenchConfig.seeds)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--captioner", default=None, help="captioner checkpoint (default: the committed one)")
    parser.add_argument(
        "--cache",
        default=None,
        help="directory keeping the calibration and each seed's rows: a seed found there is read back, not re-run",
    )
    parser.add_argument("--out", default=None, help="directory for the results JSON (default: reference_impls/results)")
    parser.add_argument(
        "--check",
        default=None,
        metavar="RESULTS",
        help="check the seeds against the per-seed ranges of this published results file instead of writing one",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # Seeds refuses reported seeds that were used for tuning or calibration
    seeds = seeded.seeds_from_args(args, (*TUNING_SEEDS, CALIBRATION_SEED), BenchConfig.seeds)
    config = BenchConfig(seeds=seeds.reported)
    if args.quick:
        config = replace(
            config,
            seeds=config.seeds[:1],
            steps=10,
            n_eval=50,
            relearn_budgets=(5,),
            noise=(0.1,),
            n_forget=64,
            rhos=(0.03, 0.1),
        )
    start = time.time()
    rows, facts = run(config, captioner=args.captioner, cache_dir=args.cache)
    table = aggregate(rows)
    print(
        f"\n{'method':18s} {'condition':10s} {'N':>3s} {'hal %':>13s} {'CHAIR_s':>7s} {'CHAIR_i':>7s} {'clean F1':>13s} {'POPE F1':>7s} {'p_push':>6s}"
    )
    for r in table:
        push = "" if r["p_hal_push"] is None else f"{r['p_hal_push']:6.1f}"
        print(
            f"{r['method']:18s} {r['condition']:10s} {'-' if r['relearn_steps'] is None else r['relearn_steps']:>3} {r['hal_rate']:6.1f}±{r['hal_rate_ci'] or 0:5.1f} {r['chair_s']:7.1f} {r['chair_i']:7.1f} {r['clean_f1']:6.1f}±{r['clean_f1_ci'] or 0:5.1f} {r['pope_f1']:7.1f} {push}"
        )
    if args.check:
        check(args.check, rows)
        return
    tests = paired_tests(rows)
    for test in tests:
        print(f"{test['metric']}: {test['verdict']}")
    print(f"saturated steps per run: {json.dumps(facts['saturated_steps'])}")
    print(f"total {time.time() - start:.0f}s")
    if args.quick:
        return
    columns = [
        Column("method", "Method"),
        Column("condition", "Condition"),
        Column("relearn_steps", "Relearn steps", digits=0),
        Column("hal_rate", "Hallucinated-object rate", "%", 1),
        Column("hal_rate_ci", "± 95% CI", "%", 1),
        Column("hal_rate_low", "Hallucinated-object rate, lowest - highest seed", "%", 1),
        Column("hal_rate_high", "highest seed", "%", 1),
        Column("chair_s", "CHAIR_s", "%", 1),
        Column("chair_i", "CHAIR_i", "%", 1),
        Column("clean_f1", "Clean-caption object F1", "%", 1),
        Column("clean_f1_ci", "± 95% CI", "%", 1),
        Column("clean_f1_low", "Clean-caption object F1, lowest - highest seed", "%", 1),
        Column("clean_f1_high", "highest seed", "%", 1),
        Column("pope_f1", "POPE F1", "%", 1),
        Column("pope_b_yes", "'yes' to 'is there a B?' on A-only scenes", "%", 1),
        Column("p_hal", "p(hallucinated word)", "%", 1),
        Column("p_hal_push", f"p after worst-case push ρ'={config.push_rho}", "%", 1),
        Column("seeds", "Seeds", digits=0),
    ]
    notes = (
        f"Biased ToyVLM-scene captioner (shape A='circle' nearly always with B='square', annotator bias). "
        f"{len(config.seeds)} seeds (paired data order), {config.steps} unlearning steps, batch {config.batch}, language model trained, vision frozen. "
        f"Mean over seeds with the half-width of a Student-t 95% confidence interval. "
        f"'Lowest - highest seed': the range over the {len(config.seeds)} reported seeds, which an unused seed is checked "
        f"against (--check): an exchangeable new seed lands inside with probability at least "
        f"{range_coverage(len(config.seeds)):.1%} whatever the spread's shape. rho calibrated per SAM method along its own unlearning run from the base captioner on the calibration split (seed {CALIBRATION_SEED}): the largest value in {list(config.rhos)} with no step where the perturbation lifts the hallucinated word's probability over 0.9 and a positive mean forget-loss increase: {json.dumps(facts['rho'])} (sweep {json.dumps(facts['rho_sweep'])}). "
        f"Steps that saturated in the reported runs, per method and seed: {json.dumps(facts['saturated_steps'])}. "
        f"Relearning: fine-tune on {config.relearn_n} hallucinated captions, batch {config.relearn_batch}, lr {config.relearn_lr}; 'base' is the never-unlearned captioner relearned with the same budget. "
        f"Mean unlearning seconds per run (2 shared CPU cores, noisy): {json.dumps({k: round(v, 1) for k, v in facts['train_seconds'].items()})}. "
        f"Seconds per seed (all methods, one thread): {json.dumps([round(x) for x in facts['seed_seconds']])}. Hallucination rate per seed by relearning budget (paired): {json.dumps(per_seed(rows))}. "
        "The rate moves in steps of about 30 points because the trigger scenes fall into a few shape combinations and the model's behaviour is nearly constant within one."
    )
    command = command_line("reference_impls.hallucination.bench", argv)
    results = Results(
        id="hallucination-unlearning",
        title="Hallucination unlearning on a biased ToyVLM captioner: GA, NPO, EFUF, SARE, controls; relearning and weight noise",
        command=command,
        families=["hallucination-unlearning"],
        columns=columns,
        rows=table,
        seeds=seeds.record(),
        plots=[
            Plot(
                x="relearn_steps",
                y="hal_rate",
                group="method",
                title="Hallucinated-object rate vs relearning steps",
                error="hal_rate_ci",
            )
        ],
        notes=notes,
    )
    print(save_results(results, args.out))
    tests_file = paired_tests_results(
        "hallucination-unlearning-tests",
        "Hallucination unlearning: SARE against each method, paired over seeds",
        command,
        ["hallucination-unlearning"],
        tests,
        seeds.record(),
        "SARE",
        "Pairs share the data order. " + notes,
    )
    print(save_results(tests_file, args.out))


if __name__ == "__main__":
    main()
