"""ToyVLM answer accuracy of every ``kind="kv-cache"`` method at 10/20/40% budgets.

A KV cache only matters for tokens decoded *after* it was compressed, and ToyVLM's answer is
the token right after the prompt's final ``answer`` word. So the prompt is cut: the prefill
covers the prompt up to a cut point, the cache is compressed, and the remaining prompt tokens
are fed one per decode step (teacher-forced) through the compressed cache; the answer is the
argmax over ToyVLM's answer words at the last step. Two cuts:

- ``question-first`` (ToyVLM's training layout: question, images, ``answer``): only the final
  ``answer`` word is decoded; the compression saw the question (query-aware setting).
- ``images-first`` (images, question, ``answer``): the question and ``answer`` are decoded, so
  the compression could not see the question (query-agnostic setting, the harder one).

Every method runs batch 1 with explicit M-RoPE positions from ``get_rope_index`` of the whole
prompt, on the same held-out samples (the vision tower runs once per sample and its output is
reused); the full cache is the reference row. ToyVLM is trained on the question-first layout
only, so images-first measures robustness off the training layout as well. Resident bytes are
the mean ratio to the full cache at the answer step.

Each reported seed (10-19 by default, ``--seeds``) draws its own held-out samples; rows are means
over seeds with 95% intervals, and every method is compared with H2O and with HybridKV at the same
budget by paired tests over seeds (``kv-quality-toyvlm-tests.json``).

ToyVLM v2 (``--suite short|long|multi_image|video|stress``, ``--checkpoint``): the prompt is already
in the chat layout (images first, question last; built by ``bundle.collate``), so nothing is cut
for the answer: the cache is compressed after the prefill of the whole prompt (cut
``after-question``, the default; query-aware) and/or of the images only (``--cuts
before-question``: the question is then fed one token per step through the compressed cache, as
the images-first layout above; query-agnostic). The reply is then decoded greedily through the
compressed cache until ``<eos>`` (:func:`chat_reply`, on
:func:`~reference_impls.common.harness.prefill` and
:func:`~reference_impls.common.harness.decode_steps`) and scored by exact match of every word and
the ``<eos>``, overall, per scope (needle / aggregation) and per question kind, with the mean
reply length, the resident KV against a full cache at the end of the reply, decode ms/token and
its speed-up against the full cache and ratio to SnapKV at the same budget, both measured within
each seed's run. Every ``kind="kv-cache"`` method runs with its defaults (``--window`` overrides
the windows) and is compared with the full cache, H2O and HybridKV at each budget and cut, paired
by seed. Results go to ``kv-quality-toyvlm-v2-<suite>.json``.

Run from the repository root::

    python -m reference_impls.bench.kv_quality            # full run
    python -m reference_impls.bench.kv_quality --quick    # smoke run
    python -m reference_impls.bench.kv_quality --suite long --cuts after-question before-question
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging

import torch
from transformers import DynamicCache

from reference_impls.common import harness, seeded
from reference_impls.common.chat_scenes import SUITES, answer_words
from reference_impls.common.results import Column, Plot, Results, command_line, results_id
from reference_impls.common.toyvlm import ABLATION_TITLE
from reference_impls.common.toyvlm_v2 import load_toyvlm_v2
from reference_impls.decoding.cache import CompressedCache
from reference_impls.registry import all_methods, get_method

__all__ = ["answer_accuracy", "chat_quality", "chat_reply", "encode_vision", "run_chat"]

BUDGETS = (0.1, 0.2, 0.4)
METRICS = ("accuracy", "resident_ratio")
TUNING_SEEDS = (1234,)
"""Seed of the single-seed runs the windows and ablations were chosen on; never reported."""
REFERENCES = ("h2o", "hybridkv")
"""Methods every other one is tested against at each budget: H2O (the classic eviction baseline) and
HybridKV (the head-level method whose accuracy goal the findings discuss)."""
CUTS = ("after-question", "before-question")
"""Where a ToyVLM v2 cache is compressed: after the prefill of the whole prompt (the compression sees
the question) or after the images (the question is decoded through the compressed cache: query-agnostic)."""
CHAT_METRICS = (
    "accuracy",
    "needle_accuracy",
    "aggregation_accuracy",
    "reply_tokens",
    "resident_ratio",
    "offloaded_ratio",
    "kv_smaller",
    "decode_ms",
    "decode_speedup",
    "decode_vs_snapkv",
)
"""Metrics of ToyVLM v2 runs (plus the exact match per question kind of the suite)."""
GQA_MEAN = [
    ("snapkv-gqa-mean", get_method("snapkv"), {"gqa": "mean"}),
    ("pyramidkv-gqa-mean", get_method("pyramidkv"), {"gqa": "mean"}),
]
"""Ablations: SnapKV and PyramidKV select per query head by default (their reference code repeats
K/V, so they hold G copies per KV head: 2 on ToyVLM, 3 on ToyVLM v2); "gqa-mean" selects per KV
head, at equal memory."""
_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


def encode_vision(model, inputs: dict) -> dict:
    """The vision tower's output for ``inputs``, whose pixels it pops (the tower does not depend on
    the KV method: it runs once per sample and its output is reused by every method)."""
    encoded = {}
    if "pixel_values" in inputs:
        encoded["image"] = model.model.get_image_features(
            inputs.pop("pixel_values"), inputs["image_grid_thw"], return_dict=True
        )
    if "pixel_values_videos" in inputs:
        encoded["video"] = model.model.get_video_features(
            inputs.pop("pixel_values_videos"), inputs["video_grid_thw"], return_dict=True
        )
    return encoded


def _after_images(model, ids: torch.Tensor) -> int:
    """Index of the first prompt token after the last ``<vision_end>`` (where the question starts)."""
    return int((ids[0] == model.config.vision_end_token_id).nonzero().max()) + 1


@torch.no_grad()
def prepare(toy, samples, layout: str = "question-first") -> list[dict]:
    """Per sample: inputs with the vision tower's output precomputed, M-RoPE positions and the cut."""
    model = toy.model
    prepared = []
    for sample in samples:
        inputs = toy.collate([sample], question_first=layout == "question-first")
        ids = inputs["input_ids"]
        grids = {k: inputs[k] for k in ("image_grid_thw", "video_grid_thw") if k in inputs}
        positions, _ = model.model.get_rope_index(
            ids, mm_token_type_ids=inputs["mm_token_type_ids"], attention_mask=inputs["attention_mask"], **grids
        )
        encoded = encode_vision(model, inputs)
        # question-first: only the final answer word is decoded; images-first: everything after the images
        cut = ids.shape[1] - 1 if layout == "question-first" else _after_images(model, ids)
        prepared.append(
            {
                "inputs": inputs,
                "encoded": encoded,
                "positions": positions,
                "cut": cut,
                "answer": toy.vocab.id(sample.qa.answer),
            }
        )
    return prepared


@torch.no_grad()
def answer_accuracy(toy, method, prepared: list[dict]) -> dict:
    """Accuracy and mean resident-byte ratio of ``method`` (None = full cache) on prepared samples."""
    model = toy.model
    answer_ids = torch.tensor(toy.answer_ids)
    correct, ratios = 0, []
    for item in prepared:
        inputs, positions, cut = item["inputs"], item["positions"], item["cut"]
        ids, n = inputs["input_ids"], inputs["input_ids"].shape[1]
        prefill = {
            k: (v[:, :cut] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v)
            for k, v in inputs.items()
        }
        cache = DynamicCache() if method is None else method.make_cache(model, prefill["input_ids"])
        out = model(
            **prefill,
            mm_encoder_outputs=dict(item["encoded"]),
            cache=cache,
            use_cache=True,
            position_ids=positions[..., :cut],
        )
        for t in range(cut, n):
            out = model(
                input_ids=ids[:, t : t + 1], cache=cache, use_cache=True, position_ids=positions[..., t : t + 1]
            )
        prediction = answer_ids[out.logits[0, -1, answer_ids].argmax()]
        correct += int(prediction == item["answer"])
        if isinstance(cache, CompressedCache):
            report = cache.byte_report()
            ratios.append(report["resident_bytes"] / report["full_bytes"])
        else:
            ratios.append(1.0)
    return {"accuracy": 100.0 * correct / len(prepared), "resident_ratio": sum(ratios) / len(ratios)}


def _configure(spec, budget: float, window: int | None):
    fields = {f.name for f in dataclasses.fields(spec.target)}
    kwargs = {"budget": budget}
    if window is not None and "window" in fields:
        kwargs["window"] = window
    return spec.target(**kwargs)


def _settings(variants: list, budgets, window: int | None) -> list[tuple]:
    """``(name, family, budget, method)``: the full cache (method None) first, then every variant
    at every budget."""
    settings: list[tuple] = [("full", "", 1.0, None)]
    for name, spec, overrides in variants:
        for budget in budgets:
            settings.append(
                (name, spec.family, budget, dataclasses.replace(_configure(spec, budget, window), **overrides))
            )
    return settings


def _active(method, model):
    """``with method(model)`` for a KV-cache method, nothing for the full cache (None)."""
    return method(model) if method is not None else contextlib.nullcontext()


def evaluate_seed(toy, variants: list, layouts: list[str], budgets, n: int, window: int, seed: int) -> list[dict]:
    """The full cache and every variant at every budget on ``n`` held-out samples drawn from ``seed``."""
    rows = []
    samples = toy.samples(n, seed=seed)
    for layout in layouts:
        prepared = prepare(toy, samples, layout)
        for name, family, budget, method in _settings(variants, budgets, window):
            with _active(method, toy.model):
                result = answer_accuracy(toy, method, prepared)
            rows.append({"method": name, "family": family, "layout": layout, "budget": budget, **result})
    return rows


@torch.no_grad()
def prepare_chat(bundle, samples) -> list[dict]:
    """ToyVLM v2 samples in the chat layout (``bundle.collate``), the vision tower's output
    precomputed, and the index where the question starts."""
    prepared = []
    for sample in samples:
        inputs = bundle.collate([sample])
        cut = _after_images(bundle.model, inputs["input_ids"])
        prepared.append(
            {"inputs": inputs, "encoded": encode_vision(bundle.model, inputs), "cut": cut, "sample": sample}
        )
    return prepared


@torch.no_grad()
def chat_reply(bundle, item: dict, cut: str = "after-question", max_reply_tokens: int = 24) -> dict:
    """One ToyVLM v2 reply decoded greedily until ``<eos>`` (at most ``max_reply_tokens``) through
    the cache of the method active on the model (a full ``DynamicCache`` when none is).

    ``cut`` is where the cache is compressed (:data:`CUTS`): after the prefill of the whole prompt,
    or after the prefill of the images only, the question then being fed one token per step
    through the compressed cache (:func:`~reference_impls.common.harness.decode_steps`, forced).

    Returns the reply words, the seconds of each decode step that produced a reply token, and the
    resident and offloaded bytes of the cache at the end of the reply with the bytes a full cache
    of the same tokens would hold.
    """
    model = bundle.model
    inputs = {**item["inputs"], "mm_encoder_outputs": dict(item["encoded"])}
    if cut == "after-question":
        logits, cache, position, _ = harness.prefill(model, inputs)
        first, forced, reply, steps = logits.argmax(-1), [], [int(logits.argmax(-1))], max_reply_tokens - 1
    elif cut == "before-question":
        at = item["cut"]
        images = {k: v[:, :at] if k in _TOKEN_KEYS else v for k, v in inputs.items()}
        _, cache, position, _ = harness.prefill(model, images)
        question = inputs["input_ids"][0, at:]  # its last token is the answer marker
        first, forced, reply, steps = question[0], question[1:].tolist(), [], max_reply_tokens
    else:
        raise ValueError(f"unknown cut {cut!r}; expected one of {CUTS}")
    rest, seconds = harness.decode_steps(model, first, cache, position, steps, stop=bundle.vocab.eos, forced=forced)
    resident, offloaded = harness.cache_bytes(cache)
    full = cache.byte_report()["full_bytes"] if isinstance(cache, CompressedCache) else resident
    words = [bundle.vocab.words[i] for i in reply + rest]
    return {
        "reply": words,
        "seconds": seconds,
        "resident_bytes": resident,
        "offloaded_bytes": offloaded,
        "full_bytes": full,
    }


def chat_quality(prepared: list[dict], replies: list[dict], kinds=()) -> dict:
    """Exact match of whole replies (answer words and ``<eos>``; overall, per scope and per kind
    in ``kinds``, %), mean reply tokens, resident KV against a full cache and decode ms/token."""
    mean = lambda values: sum(values) / len(values) if values else float("nan")  # noqa: E731
    hits = [r["reply"] == answer_words(item["sample"]) for item, r in zip(prepared, replies)]
    qas = [item["sample"].qa for item in prepared]
    by = lambda keep: 100.0 * mean([h for h, qa in zip(hits, qas) if keep(qa)])  # noqa: E731
    resident = [r["resident_bytes"] for r in replies]
    full = [r["full_bytes"] for r in replies]
    return {
        "accuracy": by(lambda qa: True),
        "needle_accuracy": by(lambda qa: qa.scope == "needle"),
        "aggregation_accuracy": by(lambda qa: qa.scope == "aggregation"),
        **{f"kind_{kind}": by(lambda qa, kind=kind: qa.kind == kind) for kind in kinds},
        "reply_tokens": mean([len(r["reply"]) for r in replies]),
        "resident_ratio": mean([r / f for r, f in zip(resident, full)]),
        "offloaded_ratio": mean([r.get("offloaded_bytes", 0) / f for r, f in zip(replies, full)]),
        "kv_smaller": sum(full) / sum(resident),
        "decode_ms": 1000.0 * mean([t for r in replies for t in r["seconds"]]),
    }


def evaluate_chat_seed(
    bundle,
    variants: list,
    cuts,
    budgets,
    n: int,
    window: int | None,
    seed: int,
    suite: str,
    max_reply_tokens: int = 24,
) -> list[dict]:
    """The full cache and every variant at every budget and cut on ``n`` held-out samples of
    ToyVLM v2's ``suite`` drawn from ``seed``, with decode speed-ups measured against the full
    cache (and SnapKV at the same budget) of this seed's run, the settings interleaved sample by sample."""
    rows = []
    prepared = prepare_chat(bundle, bundle.samples(n, seed, suite))
    kinds = SUITES[suite].kinds
    settings = _settings(variants, budgets, window)
    for cut in cuts:
        # sample by sample, every setting in turn: a change of load on the shared CPU hits all alike
        replies: list[list[dict]] = [[] for _ in settings]
        for item in prepared:
            for index, (_, _, _, method) in enumerate(settings):
                with _active(method, bundle.model):
                    replies[index].append(chat_reply(bundle, item, cut, max_reply_tokens))
        for (name, family, budget, _), setting_replies in zip(settings, replies):
            quality = chat_quality(prepared, setting_replies, kinds)
            rows.append({"method": name, "family": family, "cut": cut, "budget": budget, **quality})
    for row in rows:
        same = {(r["method"], r["budget"]): r for r in rows if r["cut"] == row["cut"]}
        row["decode_speedup"] = same[("full", 1.0)]["decode_ms"] / row["decode_ms"]
        snapkv = same.get(("snapkv", row["budget"]))
        row["decode_vs_snapkv"] = row["decode_ms"] / snapkv["decode_ms"] if snapkv else float("nan")
    return rows


def run_chat(
    suite: str,
    methods: list[str] | None = None,
    n: int = 20,
    budgets=BUDGETS,
    cuts=CUTS[:1],
    checkpoint: str | None = None,
    seeds: seeded.Seeds | None = None,
    window: int | None = None,
    max_reply_tokens: int = 24,
    log=print,
) -> tuple[Results, list[dict]]:
    """Every ``kind="kv-cache"`` method (or ``methods``) on ToyVLM v2's ``suite``; returns the
    :class:`Results` (not yet saved; means and 95% intervals over seeds) and the paired tests
    against the full cache, H2O and HybridKV at each budget and cut."""
    seeds = seeds or seeded.Seeds(seeded.REPORTED, TUNING_SEEDS)
    bundle = load_toyvlm_v2(checkpoint)
    specs = {spec.name: spec for spec in all_methods(kind="kv-cache")}
    variants = [(name, specs[name], {}) for name in methods] if methods else [(n, specs[n], {}) for n in sorted(specs)]
    variants += [] if methods else GQA_MEAN
    per_seed, seconds = seeded.run_seeds(
        lambda seed: evaluate_chat_seed(bundle, variants, cuts, budgets, n, window, seed, suite, max_reply_tokens),
        seeds.reported,
        log=log,
    )
    kinds = SUITES[suite].kinds
    metrics = CHAT_METRICS + tuple(f"kind_{kind}" for kind in kinds)
    rows = seeded.summarise(per_seed, ("method", "cut", "budget"), metrics)
    for row in rows:
        log(
            f"{row['cut']:15s} {row['method']:14s} {row['budget']:.2f}  exact {row['accuracy']:5.1f}  "
            f"reply {row['reply_tokens']:4.1f}  resident {row['resident_ratio']:.3f}  "
            f"decode {row['decode_ms']:6.2f} ms ({row['decode_speedup']:.2f}x full)"
        )
    # the full cache is tested against every method at each budget: its rows are repeated per budget
    paired = per_seed + [{**r, "budget": b} for r in per_seed if r["method"] == "full" for b in budgets]
    tests = [
        test
        for reference in ("full",) + REFERENCES
        for test in seeded.paired_tests(paired, "accuracy", reference, within=("cut", "budget"))
        if test["budget"] != 1.0
    ]
    result_id = results_id("kv-quality-toyvlm-v2", suite)
    manifest = bundle.manifest
    trained = manifest.get("held_out_exact_match", {}).get(suite, {}).get("all", "?")
    text_config = bundle.model.config.get_text_config()
    groups = text_config.num_attention_heads // text_config.num_key_value_heads
    notes = (
        f"ToyVLM v2 ({manifest.get('parameters', '?')} parameters, held-out exact match {trained} on the {suite} "
        f"suite at training time), chat layout: images first, question last. Suite {suite}: "
        f"{SUITES[suite].description}. Each of {len(seeds.reported)} reported seeds "
        f"({', '.join(map(str, seeds.reported))}) draws its own {n} held-out samples, shared by every method; mean "
        "over seeds with the half-width of a Student-t 95% interval. The cache is compressed after the prefill of "
        "the whole prompt (cut after-question: the compression sees the question) or of the images only (cut "
        "before-question: the question is then fed one token per step through the compressed cache, "
        "query-agnostic); the reply is decoded greedily through it until <eos> (at most "
        f"{max_reply_tokens} tokens) and is right only when every word and the <eos> match. Resident KV / full and "
        "'smaller' compare the bytes the cache keeps resident at the end of the reply (metadata and decoded "
        "tokens included) with a full cache of the same tokens; offloaded bytes (HybridKV's cold pools) are shown "
        "apart. Decode is the mean time of one reply step; the speed-up "
        "divides the full cache's (a plain DynamicCache with sdpa) by the method's, and 'vs SnapKV' the method's by "
        "SnapKV's at the same budget, both within each seed's run. SnapKV and PyramidKV keep their budget per query "
        f"head by default (as their reference code, which repeats K/V: G = {groups} copies per KV head on ToyVLM v2); the "
        "-gqa-mean rows select per KV head, at equal memory. Methods run with their defaults and the budget "
        + (f"and a window of {window} " if window is not None else "")
        + f"set; seed {', '.join(map(str, seeds.tuning))} is never reported. Every method is compared with the full "
        f"cache, H2O and HybridKV at the same budget and cut, paired by seed ({result_id}-tests). Batch 1, CPU, one "
        f"thread, {sum(seconds) / len(seconds):.0f} s per seed: compare times within this run only."
    )
    columns = [
        Column("method", "Method"),
        Column("cut", "Compressed"),
        Column("budget", "Budget"),
        Column("accuracy", "Exact match", "%", 1),
        Column("needle_accuracy", "Needle", "%", 1),
        Column("aggregation_accuracy", "Aggregation", "%", 1),
        *(Column(f"kind_{kind}", kind.replace("_", " ").capitalize(), "%", 1) for kind in kinds),
        Column("reply_tokens", "Reply tokens", "", 1),
        Column("resident_ratio", "Resident KV / full", "", 3),
        Column("offloaded_ratio", "Offloaded KV / full", "", 3),
        Column("kv_smaller", "Resident KV smaller", "x", 2),
        Column("decode_ms", "Decode", "ms/token", 2),
        Column("decode_speedup", "Decode speed-up vs full", "x", 2),
        Column("decode_vs_snapkv", "Decode vs SnapKV", "x", 2),
    ]
    results = Results(
        id=result_id,
        title=f"ToyVLM v2 ({suite} suite): exact match of decoded replies with KV-cache methods at 10/20/40%",
        command="",
        families=sorted({specs[name].family for name in (methods or specs)}),
        columns=seeded.interval_columns(columns, ("accuracy", "decode_ms", "decode_speedup")),
        rows=rows,
        plots=[
            Plot(x="budget", y="accuracy", group="method", title="Exact match vs KV budget", error="accuracy_ci"),
            Plot(x="budget", y="decode_ms", group="method", title="Decode ms/token vs KV budget", error="decode_ms_ci"),
        ],
        notes=notes,
        seeds=seeds.record(),
    )
    return results, tests


def main(argv: list[str] | None = None) -> None:
    from reference_impls.common.toyvlm import load_toyvlm

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 samples on two seeds, one budget")
    parser.add_argument("--n", type=int, default=None, help="held-out samples drawn per seed (default 40; v2: 20)")
    parser.add_argument(
        "--window",
        type=int,
        default=None,
        help="observation/recent window (default: 8 on ToyVLM v1, whose prompts are short; each method's own on v2)",
    )
    parser.add_argument(
        "--layouts",
        nargs="*",
        default=["question-first"],
        help="question-first (ToyVLM's training layout) and/or images-first (query-agnostic)",
    )
    parser.add_argument(
        "--suite", default=None, choices=sorted(SUITES), help="run on ToyVLM v2's held-out suite (default: ToyVLM v1)"
    )
    parser.add_argument("--checkpoint", default=None, help="a ToyVLM v2 checkpoint (with --suite; default: committed)")
    parser.add_argument("--methods", default="", help="comma-separated kv-cache methods (v2; default: all)")
    parser.add_argument(
        "--cuts", nargs="*", default=list(CUTS[:1]), choices=CUTS, help="v2: where the cache is compressed"
    )
    parser.add_argument("--max-reply-tokens", type=int, default=24, help="v2: decoding stops here without <eos>")
    args, seeds = seeded.parse_seeded(parser, argv, TUNING_SEEDS)
    torch.set_num_threads(1)
    logging.getLogger("reference_impls.decoding.hybridkv.plan").setLevel(logging.ERROR)  # short-window notices
    budgets = BUDGETS[:1] if args.quick else BUDGETS
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    if args.suite is not None:
        results, tests = run_chat(
            args.suite,
            [m for m in args.methods.split(",") if m] or None,
            n=6 if args.quick else args.n or 20,
            budgets=budgets,
            cuts=tuple(args.cuts),
            checkpoint=args.checkpoint,
            seeds=seeds,
            window=args.window,
            max_reply_tokens=args.max_reply_tokens,
            log=log,
        )
        results.command = command_line("reference_impls.bench.kv_quality", argv)
        for path in seeded.save_seeded(results, tests, seeds, "full, " + " and ".join(REFERENCES), args.out):
            print("wrote", path)
        return
    toy = load_toyvlm()
    n = 6 if args.quick else args.n or 40
    window = 8 if args.window is None else args.window
    specs = all_methods(kind="kv-cache")
    # Ablation: Quest-size chunks (16) exceed a 10% head budget of ToyVLM's ~270-token prompts.
    variants = (
        [(spec.name, spec, {}) for spec in specs]
        + [("hybridkv-chunk4", get_method("hybridkv"), {"chunk_size": 4})]
        + GQA_MEAN
    )
    per_seed, seconds = seeded.run_seeds(
        lambda seed: evaluate_seed(toy, variants, args.layouts, budgets, n, window, seed),
        seeds.reported,
        log=log,
    )
    rows = seeded.summarise(per_seed, ("method", "layout", "budget"), METRICS)
    for row in rows:
        print(
            f"{row['layout']:14s} {row['method']:20s} {row['budget']:.2f}  acc {row['accuracy']:5.1f} "
            f"(+-{row['accuracy_ci'] or 0:4.1f})  resident {row['resident_ratio']:.3f}",
            flush=True,
        )
    tests = [
        test
        for reference in REFERENCES
        for test in seeded.paired_tests(per_seed, "accuracy", reference, within=("layout", "budget"))
    ]
    results = Results(
        id="kv-quality-toyvlm",
        ablation=True,
        title=f"{ABLATION_TITLE}: accuracy of KV-cache methods at 10/20/40% budgets",
        command=command_line("reference_impls.bench.kv_quality", argv),
        families=["kv-token-level", "kv-layer-level", "kv-head-level", "kv-bit-level"],
        columns=seeded.interval_columns(
            [
                Column("method", "Method"),
                Column("layout", "Prompt layout"),
                Column("budget", "Budget"),
                Column("accuracy", "Accuracy", "%", 1),
                Column("resident_ratio", "Resident KV / full", "", 3),
            ],
            ("accuracy",),
        ),
        rows=rows,
        plots=[Plot(x="budget", y="accuracy", group="method", title="Accuracy vs KV budget", error="accuracy_ci")],
        notes=(
            f"Each of {len(seeds.reported)} reported seeds ({', '.join(map(str, seeds.reported))}) draws its own {n} "
            "held-out ToyVLM samples, shared by every method; mean over seeds with the half-width of a Student-t 95% "
            f"interval. Batch 1, CPU, one thread, {sum(seconds) / len(seconds):.0f} s per seed. Windows are set to "
            f"{window} because ToyVLM prompts are short (chosen on seed {', '.join(map(str, seeds.tuning))}, not "
            "reported). Every method is compared "
            f"with {' and with '.join(REFERENCES)} at the same budget, paired by seed (kv-quality-toyvlm-tests). "
            "KIVI's budget selects its bit width "
            "(<0.25: 2 bits, else 4). Budgets are per KV head, except SnapKV and PyramidKV, which by default "
            "(as their reference code, which repeats K/V) keep the budget per query head: G = 2 copies per KV "
            "head on ToyVLM; the -gqa-mean rows select per KV head instead. Resident ratio includes metadata "
            "and the decoded tokens."
        ),
    )
    for path in seeded.save_seeded(results, tests, seeds, " and ".join(REFERENCES), args.out):
        print("wrote", path)


if __name__ == "__main__":
    main()
