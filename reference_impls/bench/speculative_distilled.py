"""Benchmark: a distilled twig draft against training-free drafts, on the captioner and ToyVLM.

Command: ``python -m reference_impls.bench.speculative_distilled`` (``--quick`` for a smoke run).

ToyVLM answers one word, so speculation has nothing to accelerate there (see the
``speculative-toyvlm`` results). Two settings instead:

- ``captions``: the hallucination benchmark's captioner (ToyVLM architecture, 3 layers, captions
  of 1-7 words) decodes held-out scenes with greedy decoding and every speculative method,
  interleaved scene by scene (the order rotates per scene) so that load from other processes
  hits all alike. Reported: mean accepted length (tokens per target forward), draft-token
  acceptance rate, end-to-end and decode-phase speedup over greedy, and output quality
  (identical to greedy; object F1 and CHAIR_i against the scene's ground truth).
- ``vqa``: ToyVLM's held-out questions; for each draft, how often its own greedy first token
  (never used in decoding, where the first token comes from the target's prefill) equals the
  target's answer, and is the right answer: the quality of a draft under visual pruning.

Each reported seed (10-19 by default, ``--seeds``) draws its own scenes and questions; rows are
means over seeds with 95% intervals and the twig is compared with every other draft by paired tests
over seeds (``speculative-distilled-toyvlm-tests.json``).

The twig drafts are the committed checkpoints of ``python -m reference_impls.decoding.train_twig``
(``--target captioner`` / ``--target toyvlm`` / ``--target toyvlm-v2``).

``--suite long`` (any of :data:`reference_impls.common.chat_scenes.SUITES`; ``--checkpoint``, ``--twig``)
runs on ToyVLM v2 instead, whose chat-layout replies run to 5-20 tokens, with the protocol of
``python -m reference_impls.bench.speculative --suite`` (:func:`~reference_impls.bench.speculative.run_chat`,
the same loop, rows and draft-cost column): greedy, the ToyVLM v2 twig and the training-free early
exits at its shared depth and at its full depth (the untrained twig), each draft on 100% and 10% of
the visual tokens, strict verification (outputs must equal greedy). Reported: mean accepted length,
end-to-end and decode-phase speed-up over greedy, the draft's forward cost relative to the target's,
exact match of the whole reply; paired tests against greedy and between the twigs and the other
drafts. Results go to ``speculative-distilled-toyvlm-v2-<suite>.json`` (+ ``-tests.json``). Seeds 1
and 2 (the twig's held-out check and its training prompts) cannot be reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from reference_impls.bench import speculative
from reference_impls.common import seeded
from reference_impls.common.chat_scenes import SUITES
from reference_impls.common.results import Column, Plot, Results, command_line, results_id
from reference_impls.common.toyvlm import ABLATION_TITLE
from reference_impls.common.toyvlm_v2 import load_toyvlm_v2
from reference_impls.decoding._speculative_prompt import encode_prompt, forward, prefill, text_positions
from reference_impls.decoding.speculative import SpeculativeDecoding, greedy_decode
from reference_impls.decoding.train_twig import CHECKPOINTS, SETTINGS, load_prompts
from reference_impls.decoding.twig_draft import TwigSpeculativeDecoding

__all__ = ["caption_methods", "chat_drafts", "vqa_drafts", "run_captions", "run_vqa", "main", "main_chat"]

MAX_NEW = 16
FREE, AWARE = "speculative-training-free", "speculative-training-aware"


def caption_methods() -> dict[str, tuple[str, str, str, SpeculativeDecoding]]:
    """Name -> (family, draft description, verification, method); the captioner has 3 layers."""
    twig = TwigSpeculativeDecoding(twig=CHECKPOINTS / "twig-captioner", num_draft=4)
    early = SpeculativeDecoding(draft_visual_keep=1.0, draft_layers=1, num_draft=4)
    return {
        "early exit 1 layer": (FREE, "target's first layer", "strict", early),
        "early exit 1 layer relaxed r=0.5": (
            FREE,
            "target's first layer",
            "random r=0.5, top-2",
            replace(early, relax_rate=0.5),
        ),
        "early exit 2 layers": (
            FREE,
            "target's first 2 layers (= untrained twig)",
            "strict",
            SpeculativeDecoding(draft_visual_keep=1.0, draft_layers=2, num_draft=4),
        ),
        "self 25% visual": (
            FREE,
            "target, 25% visual tokens",
            "strict",
            SpeculativeDecoding(draft_visual_keep=0.25, num_draft=4),
        ),
        "self 100% visual": (
            FREE,
            "target itself, all visual tokens (acceptance upper bound)",
            "strict",
            SpeculativeDecoding(draft_visual_keep=1.0, num_draft=4),
        ),
        "twig": (AWARE, "1 target layer + distilled twig layer and head", "strict", twig),
        "twig relaxed r=0.5": (
            AWARE,
            "1 target layer + distilled twig layer and head",
            "random r=0.5, top-2",
            replace(twig, relax_rate=0.5),
        ),
    }


def vqa_drafts() -> dict[str, tuple[str, str, SpeculativeDecoding]]:
    """Name -> (family, draft description, method) for ToyVLM (4 layers)."""
    drafts = {}
    for keep in (1.0, 0.25):
        tag = f"{keep:.0%} visual"
        if keep < 1:
            drafts[f"self {tag}"] = (FREE, f"target, {tag} tokens", SpeculativeDecoding(draft_visual_keep=keep))
        drafts[f"early exit 2 layers, {tag}"] = (
            FREE,
            f"target's first 2 layers, {tag} tokens",
            SpeculativeDecoding(draft_visual_keep=keep, draft_layers=2),
        )
        drafts[f"early exit 3 layers, {tag}"] = (
            FREE,
            f"target's first 3 layers (= untrained twig), {tag} tokens",
            SpeculativeDecoding(draft_visual_keep=keep, draft_layers=3),
        )
        drafts[f"twig, {tag}"] = (
            AWARE,
            f"2 target layers + distilled twig layer and head, {tag} tokens",
            TwigSpeculativeDecoding(twig=CHECKPOINTS / "twig-toyvlm", draft_visual_keep=keep),
        )
    return drafts


def chat_drafts(
    twig: str | Path = CHECKPOINTS / "twig-toyvlm-v2",
) -> Callable[[speculative.Setting], speculative.Drafts]:
    """The drafts of the ToyVLM v2 run: the twig checkpoint ``twig`` and the training-free early exits at its
    shared depth and at its full depth (= the untrained twig), each on 100% and 10% of the visual tokens
    (pruned uniformly per image, the rule the twig was distilled with); strict verification, 4 draft tokens, and
    the 10% twig with 2 draft tokens (the fastest of 1-4 on tuning seed 1, where decode-phase speed-ups were 0.74,
    0.76, 0.68 and 0.66)."""
    manifest = json.loads((Path(twig) / "manifest.json").read_text())
    shared, depth = manifest["shared_layers"], manifest["shared_layers"] + manifest["twig_layers"]

    def named(setting: speculative.Setting) -> speculative.Drafts:
        drafts: speculative.Drafts = {}
        for keep in (1.0, 0.1):
            tag = f"{keep:.0%} visual"
            for layers, extra in ((shared, ""), (depth, " (= untrained twig)")):
                count = f"{layers} layer{'s' if layers > 1 else ''}"
                drafts[f"early exit {count}, {tag}"] = (
                    f"target's first {count}{extra}, {tag}",
                    "strict",
                    SpeculativeDecoding(draft_visual_keep=keep, prune="uniform", draft_layers=layers, num_draft=4),
                )
            drafts[f"twig, {tag}"] = (
                f"{shared} target layer(s) + distilled twig ({depth - shared} layer(s)) and head, {tag}",
                "strict",
                TwigSpeculativeDecoding(twig=Path(twig), draft_visual_keep=keep, prune="uniform", num_draft=4),
            )
        twig_draft, _, method = drafts["twig, 10% visual"]
        drafts["twig, 10% visual, 2 draft tokens"] = (twig_draft, "strict", replace(method, num_draft=2))
        return drafts

    return named


def run_captions(n: int, seed: int = SETTINGS["captioner"].held_out_seed) -> list[dict]:
    """Greedy and every caption method on ``n`` held-out scenes drawn from ``seed``, interleaved; one row per method."""
    from reference_impls.hallucination.captioner import CaptionWorld
    from reference_impls.hallucination.hallucination_metrics import chair, extract_objects, object_f1

    model, prompts, words = load_prompts("captioner", n, seed)
    world = CaptionWorld()
    truths = [scene.truth for scene in world.scenes(n, seed)]
    named = caption_methods()
    names = ["greedy"] + list(named)
    seconds = {name: [0.0, 0.0] for name in names}  # (end to end, decode phase)
    outputs, stats = {name: [] for name in names}, {name: [] for name in names}
    run = {name: (lambda x, m=method: m(model, x, MAX_NEW)) for name, (*_, method) in named.items()}
    run["greedy"] = lambda x: greedy_decode(model, x, MAX_NEW)
    for name in names:  # warm-up
        run[name](prompts[0])
    for i, inputs in enumerate(prompts):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            start = time.perf_counter()
            result = run[name](inputs)
            seconds[name][0] += time.perf_counter() - start
            seconds[name][1] += result.stats["decode_seconds"]
            outputs[name].append(result.tokens)
            stats[name].append(dict(result.stats))
    first = {
        name: sum(method.draft_first_token(model, x) == g[0] for x, g in zip(prompts, outputs["greedy"]))
        for name, (*_, method) in named.items()
    }
    rows = []
    for name in names:
        family, draft, verification = named[name][:3] if name != "greedy" else ("", "-", "-")
        mentions = [extract_objects([words[t] for t in tokens], world.shapes) for tokens in outputs[name]]
        lengths = [k for s in stats[name] for k in s.get("accepted_lengths", [])]
        proposed = sum(s.get("draft_proposed", 0) for s in stats[name])
        agree = sum(sum(a == b for a, b in zip(o, g)) for o, g in zip(outputs[name], outputs["greedy"]))
        rows.append(
            {
                "setting": "captions",
                "method": name,
                "family": family,
                "draft": draft,
                "verification": verification,
                "mean_accepted_length": round(sum(lengths) / len(lengths), 2) if lengths else 1.0,
                "acceptance_rate": round(100 * sum(s["draft_accepted"] for s in stats[name]) / proposed, 1)
                if proposed
                else "",
                "speedup": round(seconds["greedy"][0] / seconds[name][0], 2),
                "decode_speedup": round(seconds["greedy"][1] / seconds[name][1], 2),
                "ms_per_token": round(1000 * seconds[name][0] / sum(len(o) for o in outputs[name]), 2),
                "draft_first_token": round(100 * first[name] / n, 1) if name in first else "",
                "draft_answer_accuracy": "",
                "identical": round(100 * sum(o == g for o, g in zip(outputs[name], outputs["greedy"])) / n, 1),
                "token_agreement": round(
                    100 * agree / sum(max(len(o), len(g)) for o, g in zip(outputs[name], outputs["greedy"])), 1
                ),
                "caption_f1": round(100 * object_f1(mentions, truths)["f1"], 1),
                "chair_i": round(100 * chair(mentions, truths)["chair_i"], 1),
            }
        )
    return rows


@torch.no_grad()
def forward_ms(model, inputs, repeats: int = 30) -> dict[int, float]:
    """Milliseconds per one-token decoding forward of ``model`` truncated to each depth (interleaved)."""
    prompt = encode_prompt(model, inputs)
    depths = range(1, model.config.text_config.num_hidden_layers + 1)
    caches = {d: prefill(model, prompt, d)[0] for d in depths}
    spent = dict.fromkeys(depths, 0.0)
    for i in range(repeats):
        for d in depths:
            start = time.perf_counter()
            forward(model, caches[d], text_positions(prompt.next_position + i, 1), ids=[7], layers=d)
            spent[d] += time.perf_counter() - start
    return {d: round(1000 * t / repeats, 2) for d, t in spent.items()}


def run_vqa(n: int, seed: int = SETTINGS["toyvlm"].held_out_seed) -> list[dict]:
    """First-token agreement of each draft with ToyVLM's answer on ``n`` held-out questions drawn from ``seed``."""
    from reference_impls.common.toyvlm import load_toyvlm

    toy = load_toyvlm()
    samples = toy.samples(n, seed=seed)
    prompts, answers = [toy.collate([s]) for s in samples], [toy.vocab.id(s.qa.answer) for s in samples]
    target = [greedy_decode(toy.model, x, 1).tokens[0] for x in prompts]
    rows = [_vqa_row("target (greedy)", "", "-", target, target, answers)]
    for name, (family, draft, method) in vqa_drafts().items():
        rows.append(
            _vqa_row(name, family, draft, [method.draft_first_token(toy.model, x) for x in prompts], target, answers)
        )
    return rows


def _vqa_row(name, family, draft, tokens, target, answers) -> dict:
    row = {key: "" for key in (c.key for c in COLUMNS)}
    return row | {
        "setting": "vqa",
        "method": name,
        "family": family,
        "draft": draft,
        "verification": "-",
        "draft_first_token": round(100 * sum(t == g for t, g in zip(tokens, target)) / len(tokens), 1),
        "draft_answer_accuracy": round(100 * sum(t == a for t, a in zip(tokens, answers)) / len(tokens), 1),
    }


COLUMNS = [
    Column("setting", "Setting"),
    Column("method", "Method"),
    Column("draft", "Draft"),
    Column("verification", "Verification"),
    Column("mean_accepted_length", "Mean accepted length", "tokens/verify", 2),
    Column("acceptance_rate", "Draft tokens accepted", "%", 1),
    Column("speedup", "Speedup vs greedy (end to end)", "x", 2),
    Column("decode_speedup", "Speedup vs greedy (decode phase)", "x", 2),
    Column("ms_per_token", "Wall time per token", "ms", 2),
    Column("draft_first_token", "Draft's first token = target's", "%", 1),
    Column("draft_answer_accuracy", "Draft's first token = right answer", "%", 1),
    Column("identical", "Outputs identical to greedy", "%", 1),
    Column("token_agreement", "Token agreement with greedy", "%", 1),
    Column("caption_f1", "Caption object F1", "%", 1),
    Column("chair_i", "CHAIR_i", "%", 1),
]


METRICS = tuple(c.key for c in COLUMNS[4:])
TUNING_SEEDS = (SETTINGS["captioner"].held_out_seed, SETTINGS["toyvlm"].held_out_seed)
"""Held-out seeds the twigs and drafts were checked on while they were developed; never reported (the twigs'
distillation seeds, like the models' training seeds, are training data)."""
CHAT_TUNING_SEEDS = tuple(sorted({SETTINGS["toyvlm-v2"].held_out_seed, SETTINGS["toyvlm-v2"].train_seed}))
"""ToyVLM v2: the twig's held-out check and its training prompts (both drawn by :meth:`ToyVLMv2.samples` with
these seeds); never reported."""
CHAT_REFERENCES = ("twig, 100% visual", "twig, 10% visual")
VQA_REFERENCES = ("twig, 100% visual", "twig, 25% visual")


def main_chat(args: argparse.Namespace, seeds: seeded.Seeds, argv: list[str] | None) -> Results:
    """The ``--suite`` run: the twig and early-exit drafts on ToyVLM v2, replies decoded until ``<eos>``."""
    bundle, suite, twig = load_toyvlm_v2(args.checkpoint), args.suite, Path(args.twig)
    n = 4 if args.quick else args.n
    per_seed, rows, tests, seconds = speculative.run_chat(
        bundle, suite, n, seeds, args.max_new_tokens, chat_drafts(twig)
    )
    drafts = [name for name in dict.fromkeys(row["method"] for row in per_seed) if name != "greedy"]
    for reference in CHAT_REFERENCES:
        for metric in ("mean_accepted_length", "speedup", "decode_speedup"):
            tests += seeded.paired_tests(per_seed, metric, reference, within=("setting",), versus=drafts)
    twig_manifest = json.loads((twig / "manifest.json").read_text())
    agreement = twig_manifest.get("held_out_agreement", {})
    result_id = results_id("speculative-distilled-toyvlm-v2", suite)
    trained = bundle.manifest.get("held_out_exact_match", {}).get(suite, {}).get("all", "?")
    results = Results(
        id=result_id,
        title=f"Distilled twig draft vs early-exit drafts on ToyVLM v2 ({suite} suite)",
        command=command_line("reference_impls.bench.speculative_distilled", argv),
        families=[AWARE, FREE],
        columns=seeded.interval_columns(
            speculative.CHAT_COLUMNS, ("speedup", "decode_speedup", "mean_accepted_length", "draft_cost", "accuracy")
        ),
        rows=rows,
        plots=[Plot(x="mean_accepted_length", y="speedup", group="method", title="Speed-up vs mean accepted length")],
        notes=(
            f"ToyVLM v2 ({bundle.manifest.get('parameters', '?')} parameters, {bundle.model.config.text_config.num_hidden_layers} "
            f"layers, held-out exact match {trained} on the {suite} suite at training time); suite {suite}: "
            f"{SUITES[suite].description}. Same protocol as {results_id('speculative-toyvlm-v2', suite)} (benchmark speculative, "
            "--suite): each reported seed "
            f"({', '.join(map(str, seeds.reported))}) draws its own {n} held-out samples shared by every method, "
            f"replies decoded until <eos> (at most {args.max_new_tokens} tokens), mean over seeds with the half-width "
            f"of a Student-t 95% interval ({sum(seconds) / len(seconds):.0f} s per seed), batch 1, CPU with 1 thread, "
            "wall times interleaved per sample on a shared machine; end to end includes the vision tower and both "
            "prefills. The twig: "
            f"{twig_manifest.get('shared_layers')} shared target layer(s) + {twig_manifest.get('twig_layers')} "
            "trained layer(s) and head, distilled by train_twig --target toyvlm-v2 on the target's greedy replies to "
            f"{twig_manifest.get('train_prompts', '?')} prompts of seed {twig_manifest.get('train_data_seed', '?')} "
            f"({twig_manifest.get('steps', '?')} steps, {twig_manifest.get('train_seconds', '?')} s); its teacher-forced "
            "top-1 agreement on the later reply tokens of held-out seed "
            f"{twig_manifest.get('held_out_seed', '?')}: "
            + "; ".join(
                f"{keep}: twig {d.get('twig', {}).get('decode', '?')}%, untrained {d.get('untrained twig', {}).get('decode', '?')}%"
                for keep, d in agreement.items()
            )
            + ". Drafts see 100% or 10% of the visual tokens, pruned uniformly per image; strict verification, 4 "
            "draft tokens per step (2 for the row that says so: the fastest of 1-4 on tuning seed 1), so outputs must "
            "be identical to greedy (identical column); answer accuracy is the "
            "exact match of the whole reply and <eos>. Mean accepted length: tokens emitted per target verification "
            "forward (the first token, from the prefill, not counted). 'Draft forward / target forward': median "
            "time of one draft forward over one new token after its own prefill over the target's (first sample of "
            "each seed). 'Wall time before decoding': the share of a method's end-to-end time spent in the vision "
            "tower and the prefills, which speculation cannot shorten. "
            f"Seeds {', '.join(map(str, seeds.tuning))} (the twig's held-out check and training data) "
            f"are not reported. Paired tests over seeds ({result_id}-tests): every draft against greedy (speed-ups, "
            "accepted length) and each twig against the other drafts."
        ),
    )
    if not args.quick:
        for path in seeded.save_seeded(results, tests, seeds, "greedy and the twig drafts", args.out):
            print("wrote", path)
    return results


def main(argv: list[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few samples on two seeds, no results file")
    parser.add_argument("--captions", type=int, default=20, help="held-out captioner scenes drawn per seed")
    parser.add_argument("--vqa", type=int, default=20, help="held-out ToyVLM questions drawn per seed")
    speculative.chat_arguments(parser, "ToyVLM v1 and the captioner")
    parser.add_argument("-n", type=int, default=8, help="ToyVLM v2: samples drawn per seed")
    parser.add_argument(
        "--twig", default=str(CHECKPOINTS / "twig-toyvlm-v2"), help="ToyVLM v2 twig checkpoint folder (with --suite)"
    )
    seeded.seed_arguments(parser)
    parser.add_argument("--out", default=None, help="directory for the results JSON (default: reference_impls/results)")
    args = parser.parse_args(argv)
    seeds = seeded.seeds_from_args(args, TUNING_SEEDS if args.suite is None else CHAT_TUNING_SEEDS)
    torch.set_num_threads(1)
    if args.suite is not None:
        return main_chat(args, seeds, argv)
    n_captions, n_vqa = (3, 4) if args.quick else (args.captions, args.vqa)
    per_seed, seconds = seeded.run_seeds(
        lambda seed: run_captions(n_captions, seed) + run_vqa(n_vqa, seed),
        seeds.reported,
        log=lambda *a: print(*a, flush=True),
    )
    rows = seeded.summarise(per_seed, ("setting", "method"), METRICS)
    captions = [r for r in per_seed if r["setting"] == "captions"]
    vqa = [r for r in per_seed if r["setting"] == "vqa"]
    tests = seeded.paired_tests(captions, "mean_accepted_length", "twig") + seeded.paired_tests(
        captions, "decode_speedup", "twig"
    )
    tests += [t for ref in VQA_REFERENCES for t in seeded.paired_tests(vqa, "draft_first_token", ref)]
    model, prompts, _ = load_prompts("captioner", 1, seeds.reported[0])
    costs = forward_ms(model, prompts[0])
    print("captioner ms per one-token forward by depth:", costs)
    for row in rows:
        print(" | ".join(f"{row[c.key]}" for c in COLUMNS))
    reported = ", ".join(map(str, seeds.reported))
    results = Results(
        id="speculative-distilled-toyvlm",
        ablation=True,
        title=f"Distilled twig draft vs training-free drafts (captioner and {ABLATION_TITLE})",
        command=command_line("reference_impls.bench.speculative_distilled", argv),
        families=[AWARE, FREE],
        columns=seeded.interval_columns(COLUMNS, ("mean_accepted_length", "decode_speedup", "draft_first_token")),
        rows=rows,
        plots=[
            Plot(
                x="mean_accepted_length",
                y="decode_speedup",
                group="setting",
                title="Decode speedup vs mean accepted length (captions)",
            )
        ],
        notes=(
            f"Each of {len(seeds.reported)} reported seeds ({reported}) draws its own held-out scenes and questions; "
            f"mean over seeds with the half-width of a Student-t 95% interval ({sum(seconds) / len(seconds):.0f} s "
            f"per seed). Seeds {', '.join(map(str, seeds.tuning))} (held-out checks while developing the twigs) are "
            "not reported. The twig is compared with every other draft (captions: mean accepted length and decode "
            "speed-up; vqa: first-token agreement), paired by seed (speculative-distilled-toyvlm-tests). "
            f"captions: the hallucination benchmark's captioner (3 layers, hidden 96, 9 visual tokens), {n_captions} "
            f"scenes per seed (the twig was distilled on seed {SETTINGS['captioner'].train_seed}), up to {MAX_NEW} tokens, "
            "4 draft tokens per verification, batch 1, CPU with 1 thread on a machine shared with other jobs: wall times are "
            "interleaved per scene (rotating order) but still noisy; compare rows within this file only. End to end includes "
            "the vision tower and both prefills; the decode phase starts after them. Greedy is our explicit-position loop "
            "(one token per forward). Mean accepted length = tokens emitted per target forward (the first token comes from "
            "the prefill and is not counted); draft tokens accepted = accepted / proposed draft tokens. A one-token decoding forward "
            f"of the captioner truncated to 1, 2, 3 layers took {', '.join(f'{v:.2f}' for v in costs.values())} ms (measured in this run): "
            "a fixed per-call cost dominates at this size, so a 2-layer draft forward costs "
            f"{costs[2] / costs[3]:.0%} of a target forward. F1 and CHAIR_i: "
            "objects named in the caption against the scene's ground truth (the captioner is trained to hallucinate a "
            "square next to circles, so greedy's CHAIR_i is not 0). Strict verification reproduces greedy by construction. "
            f"vqa: ToyVLM (4 layers), {n_vqa} questions per seed (twig distilled on seed "
            f"{SETTINGS['toyvlm'].train_seed} with the draft seeing 100% and 25% of the visual tokens); the draft's own greedy first "
            "token against the target's answer (100% for the target) and the ground truth; visual tokens pruned uniformly per image."
        ),
    )
    if not args.quick:
        for path in seeded.save_seeded(results, tests, seeds, "the twig draft", args.out):
            print("wrote", path)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
