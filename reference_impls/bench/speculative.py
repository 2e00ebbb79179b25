"""Benchmark: speculative decoding with a visually pruned draft, on ToyVLM.

Command: ``python -m reference_impls.bench.speculative`` (``--quick`` for a smoke run). Each
reported seed (10-19 by default, ``--seeds``) draws its own samples; rows are means over seeds with
95% intervals and speed-ups are tested against greedy by paired tests over seeds
(``speculative-toyvlm-tests.json``).

Every method decodes the same samples as plain greedy decoding (the same explicit-position
loop, one token per forward), interleaved sample by sample so that load from other processes
hits all methods alike; speedup is greedy wall time over the method's wall time. ToyVLM only
ever answers one word and ``<eos>``, so three settings bracket what speculation can do:

- ``answer``: ToyVLM's question answering, decoding until ``<eos>``: two tokens, the first
  from the target's prefill, so speculation can save nothing and relaxation cannot change the
  answer. Quality is answer accuracy and agreement with greedy.
- ``after-eos``: the same prompts with ``<eos>`` ignored for ``LONG`` tokens; ToyVLM then
  repeats ``<eos>``, which every draft predicts: the best case (all proposals accepted).
- ``random-model``: a random-init Qwen2.5-VL (hidden 128, 4 layers, 1024 visual tokens) for
  ``LONG`` tokens: a draft that often disagrees. Only acceptance and speed mean anything here.

Without a ToyVLM checkpoint only the random-model setting runs (stated in the notes).

``--suite long`` (any of :data:`reference_impls.common.chat_scenes.SUITES`, ``--checkpoint``) runs
the same methods on ToyVLM v2 instead, whose chat-layout replies run to 5-20 tokens: every
method decodes until ``<eos>`` (at most ``--max-new-tokens``), answer accuracy is the exact match
of the whole reply, strict modes must stay identical to greedy, and each method's row carries
its draft's forward cost relative to the target's (:func:`draft_cost`), with one more draft: the
first quarter of the layers on 10% of the visual tokens. Results go to
``speculative-toyvlm-v2-<suite>.json``. :func:`run_chat` takes another set of drafts
(``drafts``): :mod:`reference_impls.bench.speculative_distilled` runs its twig drafts through it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from reference_impls.common import seeded
from reference_impls.common.chat_scenes import SUITES, answer_words
from reference_impls.common.results import Column, Plot, Results, command_line, results_id
from reference_impls.common.toyvlm import ABLATION_TITLE
from reference_impls.common.toyvlm_v2 import load_toyvlm_v2
from reference_impls.decoding._speculative_prompt import crop, encode_prompt, forward, prefill, text_positions
from reference_impls.decoding.speculative import SpeculativeDecoding, greedy_decode
from reference_impls.registry import all_methods

__all__ = [
    "Setting",
    "chat_setting",
    "draft_cost",
    "chat_arguments",
    "evaluate_chat_seed",
    "load_setting",
    "method_family",
    "random_setting",
    "run_chat",
    "ignoring_eos",
    "main",
]

LONG = 16
REPLY = 24
"""Most reply tokens decoded on ToyVLM v2 (its answers have at most 20 tokens with ``<eos>``)."""
FUNCTION_WORDS = ("a", "the", "is", "there", "and", "?", "answer", "what", "how", "many", "which", "object", "objects")


@dataclass
class Setting:
    """A model and batch-1 samples to decode; ``answers`` is None when there is no ground truth."""

    name: str
    model: torch.nn.Module
    inputs: list[dict[str, torch.Tensor]]
    answers: list[int] | None
    function_words: frozenset[int]
    words: tuple[str, ...] | None = None
    replies: list[list[int]] | None = None
    """ToyVLM v2: the whole expected reply of each sample (answer words and ``<eos>``)."""


def load_setting(n: int, seed: int = 1, path: str | None = None) -> Setting:
    """``n`` held-out ToyVLM questions (the committed checkpoint, or ``path``), or random-model
    inputs when no checkpoint is available."""
    try:
        from reference_impls.common.toyvlm import load_toyvlm

        toy = load_toyvlm(path)
    except (ImportError, FileNotFoundError, OSError):
        return random_setting(n, seed)
    samples = toy.samples(n, seed=seed)
    words = set(toy.vocab.words)
    if toy.model.generation_config.eos_token_id is None:
        toy.model.generation_config.eos_token_id = toy.vocab.eos
    return Setting(
        name="ToyVLM",
        model=toy.model.eval(),
        inputs=[toy.collate([sample]) for sample in samples],
        answers=[toy.vocab.id(sample.qa.answer) for sample in samples],
        function_words=frozenset(toy.vocab.id(w) for w in FUNCTION_WORDS if w in words),
        words=tuple(toy.vocab.words),
    )


def chat_setting(bundle, samples, name: str) -> Setting:
    """ToyVLM v2 samples in the chat layout (``bundle.collate``), scored by exact match of the whole reply."""
    if bundle.model.generation_config.eos_token_id is None:
        bundle.model.generation_config.eos_token_id = bundle.vocab.eos
    words = set(bundle.vocab.words)
    return Setting(
        name=name,
        model=bundle.model.eval(),
        inputs=[bundle.collate([sample]) for sample in samples],
        answers=None,
        function_words=frozenset(bundle.vocab.id(w) for w in FUNCTION_WORDS if w in words),
        words=tuple(bundle.vocab.words),
        replies=[[bundle.vocab.id(w) for w in answer_words(sample)] for sample in samples],
    )


def random_setting(n: int, seed: int = 1) -> Setting:
    """A random-init Qwen2.5-VL (hidden 128, 4 layers) and ``n`` inputs of four 16x16-patch images."""
    from reference_impls.common.tiny import tiny_inputs, tiny_qwen25vl

    model = tiny_qwen25vl(seed=0, hidden_size=128, num_layers=4, intermediate_size=256)
    inputs = [tiny_inputs(model, grids=((16, 16),) * 4, seed=seed * 1000 + i) for i in range(n)]
    return Setting("random Qwen2.5-VL (no ToyVLM checkpoint)", model, inputs, None, frozenset(range(7, 20)))


@contextmanager
def ignoring_eos(model: torch.nn.Module):
    """Decode past end-of-sequence (the ``after-eos`` setting)."""
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None
    try:
        yield
    finally:
        model.generation_config.eos_token_id = saved


def methods(setting: Setting) -> dict[str, tuple[str, str, SpeculativeDecoding]]:
    """Name -> (draft description, verification description, method)."""
    layers = setting.model.config.text_config.num_hidden_layers
    half = max(1, layers // 2)
    self_draft = SpeculativeDecoding(draft_visual_keep=0.25, num_draft=4)
    quarter = {}
    if setting.replies is not None:  # ToyVLM v2: a draft costing about a quarter of a target forward
        quarter["early-exit 1/4 layers 10% visual"] = (
            f"first {max(1, layers // 4)} layers, 10% visual",
            "strict",
            SpeculativeDecoding(draft_visual_keep=0.1, draft_layers=max(1, layers // 4), num_draft=4),
        )
    return {
        "self 25% visual": ("target, 25% visual tokens", "strict", self_draft),
        "self 10% visual": (
            "target, 10% visual tokens",
            "strict",
            SpeculativeDecoding(draft_visual_keep=0.1, num_draft=4),
        ),
        "early-exit 25% visual": (
            f"first {half} layers, 25% visual",
            "strict",
            SpeculativeDecoding(draft_visual_keep=0.25, draft_layers=half, num_draft=4),
        ),
        "self 25% relaxed r=0.5": (
            "target, 25% visual tokens",
            "random r=0.5, top-2",
            replace(self_draft, relax_rate=0.5),
        ),
        "self 25% relaxed function words": (
            "target, 25% visual tokens",
            "function words, top-2",
            replace(self_draft, relax_rate=1.0, relax_ids=setting.function_words),
        ),
        **quarter,
    }


@torch.no_grad()
def draft_cost(method: SpeculativeDecoding, model: torch.nn.Module, inputs: dict, repeats: int = 9) -> float:
    """Seconds of one draft forward over one new token divided by one target forward's, each
    after its own prefill of ``inputs``: medians of ``repeats`` interleaved pairs (so that load
    from other processes hits both alike; the token is cropped off again after each)."""
    prompt = encode_prompt(model, inputs)
    target_cache, logits = prefill(model, prompt)
    draft_model, draft_prompt = method._draft_prompt(model, inputs)
    draft_cache, _ = prefill(draft_model, draft_prompt, method.draft_layers)
    token = [int(logits.argmax())]
    runs = ((draft_model, draft_cache, draft_prompt, method.draft_layers), (model, target_cache, prompt, None))
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for spent, (net, cache, at, layers) in zip(times, runs):
            start = time.perf_counter()
            forward(net, cache, text_positions(at.next_position, 1), ids=token, layers=layers)
            spent.append(time.perf_counter() - start)
            crop(cache, at.length)
    draft, target = (sorted(spent)[len(spent) // 2] for spent in times)
    return draft / target


Drafts = dict[str, tuple[str, str, SpeculativeDecoding]]
"""Method name -> (draft description, verification description, method), as :func:`methods` returns."""


def run(setting: Setting, max_new_tokens: int, label: str, named: Drafts | None = None) -> list[dict]:
    """Decode every sample with greedy and each method (default: :func:`methods`); one row per method."""
    model, named = setting.model, methods(setting) if named is None else named
    greedy_seconds, greedy_tokens = [0.0, 0.0], []  # (end to end, decode phase)
    seconds = {name: [0.0, 0.0] for name in named}
    outputs = {name: [] for name in named}
    lengths = {name: [] for name in named}
    first = {name: 0 for name in named}  # draft's first token == target's first token
    greedy_decode(model, setting.inputs[0], max_new_tokens)  # warm-up
    for inputs in setting.inputs:
        start = time.perf_counter()
        result = greedy_decode(model, inputs, max_new_tokens)
        greedy_seconds[0] += time.perf_counter() - start
        greedy_seconds[1] += result.stats["decode_seconds"]
        greedy_tokens.append(result.tokens)
        for name, (_, _, method) in named.items():
            start = time.perf_counter()
            result = method(model, inputs, max_new_tokens)
            seconds[name][0] += time.perf_counter() - start
            seconds[name][1] += result.stats["decode_seconds"]
            outputs[name].append(result.tokens)
            lengths[name] += result.stats["accepted_lengths"]
            first[name] += method.draft_first_token(model, inputs) == greedy_tokens[-1][0]
    rows = [
        _row(setting, label, "greedy", "", "-", "-", greedy_tokens, greedy_tokens, greedy_seconds, greedy_seconds, [])
    ]
    rows[0]["draft_first_token"] = ""
    for name, (draft, verification, method) in named.items():
        rows.append(
            _row(
                setting,
                label,
                name,
                method_family(method),
                draft,
                verification,
                outputs[name],
                greedy_tokens,
                seconds[name],
                greedy_seconds,
                lengths[name],
            )
        )
        rows[-1]["draft_first_token"] = round(100 * first[name] / len(setting.inputs), 1)
    return rows


def method_family(method: SpeculativeDecoding) -> str:
    """The taxonomy family ``method``'s class is registered under (e.g. a twig: training-aware)."""
    return next(spec.family for spec in all_methods("decoding") if spec.target is type(method))


def _row(setting, label, name, family, draft, verification, outputs, greedy, seconds, greedy_seconds, lengths) -> dict:
    agree = sum(sum(a == b for a, b in zip(out, ref)) for out, ref in zip(outputs, greedy))
    total = sum(max(len(out), len(ref)) for out, ref in zip(outputs, greedy))
    accuracy = ""
    if setting.replies is not None:  # ToyVLM v2: every word and the <eos>
        accuracy = round(100 * sum(out == reply for out, reply in zip(outputs, setting.replies)) / len(outputs), 1)
    elif setting.answers is not None and label == "answer":
        accuracy = round(100 * sum(out[:1] == [a] for out, a in zip(outputs, setting.answers)) / len(outputs), 1)
    return {
        "setting": label,
        "method": name,
        "family": family,
        "draft": draft,
        "verification": verification,
        "mean_accepted_length": round(sum(lengths) / len(lengths), 2) if lengths else 1.0,
        "speedup": round(greedy_seconds[0] / seconds[0], 2),
        "decode_speedup": round(greedy_seconds[1] / seconds[1], 2),
        "ms_per_token": round(1000 * seconds[0] / sum(len(o) for o in outputs), 2),
        "prefill_share": round(100 * (1 - seconds[1] / seconds[0]), 1),  # vision tower and prefills, before decoding
        "token_agreement": round(100 * agree / total, 1),
        "identical": round(100 * sum(o == g for o, g in zip(outputs, greedy)) / len(outputs), 1),
        "accuracy": accuracy,
    }


COLUMNS = [
    Column("setting", "Setting"),
    Column("method", "Method"),
    Column("draft", "Draft"),
    Column("verification", "Verification"),
    Column("mean_accepted_length", "Mean accepted length", "tokens/verify", 2),
    Column("speedup", "Speedup vs greedy (end to end)", "x", 2),
    Column("decode_speedup", "Speedup vs greedy (decode phase)", "x", 2),
    Column("ms_per_token", "Wall time per token", "ms", 2),
    Column("prefill_share", "Wall time before decoding (vision, prefills)", "%", 1),
    Column("draft_first_token", "Draft's first token = target's", "%", 1),
    Column("token_agreement", "Token agreement with greedy", "%", 1),
    Column("identical", "Outputs identical to greedy", "%", 1),
    Column("accuracy", "Answer accuracy", "%", 1),
]


METRICS = (
    "mean_accepted_length",
    "speedup",
    "decode_speedup",
    "ms_per_token",
    "prefill_share",
    "draft_first_token",
    "token_agreement",
    "identical",
    "accuracy",
)
TUNING_SEEDS = (1,)
"""Seed of the single-seed runs the draft settings (keep ratios, draft length, relaxation) were set on."""


def evaluate_seed(n: int, seed: int, path: str | None = None) -> tuple[list[dict], str, int]:
    """Every setting on samples drawn from ``seed``: rows, the model's name and the random-model count."""
    setting = load_setting(n, seed=seed, path=path)
    rows = []
    if setting.answers is not None:
        rows += run(setting, max_new_tokens=LONG, label="answer")
        with ignoring_eos(setting.model):
            rows += run(setting, max_new_tokens=LONG, label="after-eos")
    long = random_setting(max(2, n // 4), seed=seed)
    rows += run(long, max_new_tokens=LONG, label="random-model")
    return rows, setting.name, len(long.inputs)


def evaluate_chat_seed(
    bundle,
    n: int,
    seed: int,
    suite: str,
    max_new_tokens: int = REPLY,
    drafts: Callable[[Setting], Drafts] = methods,
) -> list[dict]:
    """Greedy and every method of ``drafts(setting)`` on ``n`` held-out samples of ToyVLM v2's
    ``suite`` drawn from ``seed``, decoding until ``<eos>``; each method's row carries its draft's
    forward cost relative to the target's (:func:`draft_cost`, on the first sample)."""
    setting = chat_setting(bundle, bundle.samples(n, seed, suite), f"ToyVLM v2 ({suite} suite)")
    named = drafts(setting)
    rows = run(setting, max_new_tokens=max_new_tokens, label=suite, named=named)
    for row in rows:
        method = named.get(row["method"])
        row["draft_cost"] = 1.0 if method is None else round(draft_cost(method[2], setting.model, setting.inputs[0]), 3)
    return rows


CHAT_COLUMNS = [*COLUMNS[:4], Column("draft_cost", "Draft forward / target forward", "x", 2), *COLUMNS[4:]]
"""Columns of a ToyVLM v2 (``--suite``) results file."""


def run_chat(
    bundle, suite: str, n: int, seeds: seeded.Seeds, max_new_tokens: int, drafts: Callable[[Setting], Drafts] = methods
) -> tuple[list[dict], list[dict], list[dict], list[float]]:
    """:func:`evaluate_chat_seed` over the reported seeds: ``(per-seed rows, summary rows, paired
    tests of speed-ups and accepted lengths against greedy, seconds per seed)``; prints the summary."""
    per_seed, seconds = seeded.run_seeds(
        lambda seed: evaluate_chat_seed(bundle, n, seed, suite, max_new_tokens, drafts),
        seeds.reported,
        log=lambda *a: print(*a, flush=True),
    )
    rows = seeded.summarise(per_seed, ("setting", "method"), METRICS + ("draft_cost",))
    for row in rows:
        print(" | ".join(f"{row[c.key]}" for c in CHAT_COLUMNS))
    tests = [
        test
        for metric in ("speedup", "decode_speedup", "mean_accepted_length")
        for test in seeded.paired_tests(per_seed, metric, "greedy", within=("setting",))
    ]
    return per_seed, rows, tests, seconds


def main_chat(args: argparse.Namespace, seeds: seeded.Seeds, argv: list[str] | None) -> Results:
    """The ``--suite`` run: ToyVLM v2, replies decoded until ``<eos>`` (see :func:`evaluate_chat_seed`)."""
    bundle, suite = load_toyvlm_v2(args.checkpoint), args.suite
    n = 4 if args.quick else args.n
    _, rows, tests, seconds = run_chat(bundle, suite, n, seeds, args.max_new_tokens)
    result_id = results_id("speculative-toyvlm-v2", suite)
    trained = bundle.manifest.get("held_out_exact_match", {}).get(suite, {}).get("all", "?")
    results = Results(
        id=result_id,
        title=f"Speculative decoding with pruned and early-exit drafts on ToyVLM v2 ({suite} suite)",
        command=command_line("reference_impls.bench.speculative", argv),
        families=["speculative-training-free"],
        columns=seeded.interval_columns(
            CHAT_COLUMNS, ("speedup", "decode_speedup", "mean_accepted_length", "accuracy")
        ),
        rows=rows,
        plots=[Plot(x="mean_accepted_length", y="speedup", group="method", title="Speed-up vs mean accepted length")],
        notes=(
            f"ToyVLM v2 ({bundle.manifest.get('parameters', '?')} parameters, held-out exact match {trained} on the "
            f"{suite} suite at training time), chat layout: images first, question last, replies decoded until <eos> "
            f"(at most {args.max_new_tokens} tokens). Suite {suite}: {SUITES[suite].description}. Each of "
            f"{len(seeds.reported)} reported seeds ({', '.join(map(str, seeds.reported))}) draws its own {n} "
            "held-out samples, shared by every method; mean over seeds with the half-width of a Student-t 95% "
            f"interval ({sum(seconds) / len(seconds):.0f} s per seed). The draft settings were fixed on seed "
            f"{', '.join(map(str, seeds.tuning))}, which is not reported. Batch 1, CPU with 1 thread, wall times "
            "interleaved per sample (the machine is shared, so speed-ups are noisy); end to end includes the vision "
            "tower and the prefills (the draft's own included), the decode phase starts after them. Greedy is our "
            "explicit-position loop, one token per forward. Strict verification must give outputs identical to "
            "greedy (the identical column); answer accuracy is the exact match of the whole reply and <eos>. 'Draft "
            "forward / target forward': the median time of one draft forward over one new token after its pruned "
            "prefill divided by the target's (first sample of each seed). 'Wall time before decoding': the share of "
            "a method's end-to-end time spent in the vision tower and the prefills, which speculation cannot "
            "shorten. Speed-ups and mean accepted lengths are "
            f"compared with greedy, paired by seed ({result_id}-tests). Function words for the relaxed rule: "
            + ", ".join(FUNCTION_WORDS)
            + "."
        ),
    )
    if not args.quick:
        for path in seeded.save_seeded(results, tests, seeds, "greedy", args.out):
            print("wrote", path)
    return results


def chat_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """``--suite``, ``--checkpoint`` and ``--max-new-tokens``: the ToyVLM v2 run of a speculative benchmark."""
    parser.add_argument(
        "--suite", default=None, choices=sorted(SUITES), help=f"run on ToyVLM v2's held-out suite (default: {default})"
    )
    parser.add_argument("--checkpoint", default=None, help="ToyVLM v2 checkpoint folder (with --suite)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=REPLY, help="ToyVLM v2: decoding stops here without <eos>"
    )


def main(argv: list[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few samples on two seeds, no results file")
    parser.add_argument("-n", type=int, default=8, help="samples per setting drawn per seed")
    parser.add_argument("--toyvlm", default=None, help="ToyVLM checkpoint folder (default: the committed one)")
    chat_arguments(parser, "ToyVLM v1")
    args, seeds = seeded.parse_seeded(parser, argv, TUNING_SEEDS)
    torch.set_num_threads(1)
    if args.suite is not None:
        return main_chat(args, seeds, argv)
    n = 4 if args.quick else args.n
    facts: dict = {}

    def one_seed(seed: int) -> list[dict]:
        rows, facts["model"], facts["long"] = evaluate_seed(n, seed, args.toyvlm)
        return rows

    per_seed, seconds = seeded.run_seeds(one_seed, seeds.reported, log=lambda *a: print(*a, flush=True))
    rows = seeded.summarise(per_seed, ("setting", "method"), METRICS)
    for row in rows:
        print(" | ".join(f"{row[c.key]}" for c in COLUMNS))
    tests = seeded.paired_tests(per_seed, "speedup", "greedy", within=("setting",))
    tests += seeded.paired_tests(per_seed, "decode_speedup", "greedy", within=("setting",))
    tests += seeded.paired_tests(per_seed, "draft_first_token", "self 25% visual", within=("setting",))
    results = Results(
        id="speculative-toyvlm",
        ablation=True,
        title=f"Speculative decoding with a visually pruned draft on {ABLATION_TITLE}",
        command=command_line("reference_impls.bench.speculative", argv),
        families=["speculative-training-free"],
        columns=seeded.interval_columns(COLUMNS, ("speedup", "decode_speedup", "draft_first_token", "accuracy")),
        rows=rows,
        plots=[Plot(x="mean_accepted_length", y="speedup", group="setting", title="Speedup vs mean accepted length")],
        notes=(
            f"Model: {facts['model']}. Each of {len(seeds.reported)} reported seeds "
            f"({', '.join(map(str, seeds.reported))}) draws its own {n} held-out samples ({facts['long']} for "
            "random-model), shared by every method; mean over seeds with the half-width of a Student-t 95% interval "
            f"({sum(seconds) / len(seconds):.0f} s per seed). The draft settings were fixed on seed "
            f"{', '.join(map(str, seeds.tuning))}, which is not reported. Speed-ups are compared with greedy (1.0 by "
            "definition) and the draft's first-token agreement with the 25% self-draft's, paired by seed "
            "(speculative-toyvlm-tests). Batch 1, CPU with 1 thread, wall times "
            "interleaved per sample (the machine is shared, so speedups are noisy). End to end includes the vision tower and the prefills (the draft's own prefill included); the decode phase starts after them. Greedy is our "
            "explicit-position loop, one token per forward. 'answer': decode until <eos> (ToyVLM "
            "answers are one word + <eos>; the first token comes from the target's prefill, so "
            "neither speed nor answers can change). 'after-eos': <eos> ignored for "
            f"{LONG} tokens; ToyVLM repeats <eos>, every draft predicts it: best-case acceptance. "
            f"'random-model': random-init Qwen2.5-VL, {LONG} tokens, a draft that often disagrees "
            "(only acceptance and speed are meaningful). Strict verification is lossless by "
            "construction (identical = 100%). \"Draft's first token = target's\": the draft's own "
            "greedy first token (never used in decoding, it comes from the target's prefill) agrees "
            "with the target's: for one-word answers the acceptance a content token would get. Function words for the relaxed rule: "
            + ", ".join(FUNCTION_WORDS)
            + " (ToyVLM) / ids 7-19 (random model)."
        ),
    )
    if not args.quick:
        for path in seeded.save_seeded(results, tests, seeds, "greedy (speed-ups) and the 25% self-draft", args.out):
            print("wrote", path)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
