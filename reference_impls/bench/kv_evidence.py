"""Which visual evidence the KV-cache methods keep on ToyVLM v2: a prefill-only diagnostic.

``kv_quality`` measures *whether* a reply survives a compressed cache; this benchmark measures one
candidate *cause* of a lost reply: the compression dropped the visual tokens the reply is about.
Every ``kind="kv-cache"`` method (with its defaults) compresses the cache after the prefill of the
whole chat prompt (images first, question and ``answer`` marker last: ``kv_quality``'s default cut
``after-question``), at budgets 10/20/40% (:data:`~reference_impls.bench.kv_quality.BUDGETS`), on
held-out samples of a ToyVLM v2 suite; nothing is decoded. From every layer and every stored head
(:meth:`~reference_impls.decoding.cache.CompressedLayer.head_positions`) we read which prompt
positions it keeps, and measure:

- ``recall``: the share of the question's *evidence* (the visual tokens that show an object the
  question is about, :func:`~reference_impls.common.chat_scenes.evidence_tokens`) that is kept,
  mean over layers and heads; ``recall_lookup`` the same at the layer whose attention ToyVLM v2
  was trained to point at the evidence (the checkpoint manifest's ``attention_layer``: 2);
- ``first_recall`` / ``later_recall`` (and ``_lookup``): recall of the objects the *first* reply
  word is about against the objects that only *later* words are about
  (:attr:`~reference_impls.common.chat_scenes.ChatQA.evidence`: "2 red , 1 blue" -- the first
  word is about the red objects, the blue one is needed later), on the replies whose later words
  name a new object (not ``where``: its first word is about every relevant object), and
  ``later_gap`` (``_lookup``), their difference prompt by prompt (first minus later).
  Observation-window methods score with the last prompt queries, which were trained to find the
  first word's evidence, not the rest;
- ``step_recall`` (``_lookup``): the reference reply is then fed one word per step (teacher-forced)
  through the compressed cache, and for each step we take what it could read -- the entries held
  before it (so H2O's and StreamingLLM's evictions during decoding count) plus the chunks it fetched
  (:meth:`~reference_impls.decoding.cache.CompressedLayer.retrieved_positions`: HybridKV's dynamic
  heads) -- and measure the recall of the evidence of the word that step produces (words after
  the first, mean over steps);
- ``visual_kept``: the share of *all* visual tokens kept (what keeping visual tokens at random
  would recall), so ``recall / visual_kept`` says how much a method favours the evidence;
- ``text_share``: the share of kept prompt entries that are text (image labels, vision markers,
  question), with ``text_tokens`` and ``prompt_tokens`` per prompt and ``kept_entries`` (prompt
  entries a head keeps): a text prior that keeps all text spends that much of the budget on it.

The full cache is read through the same layer API (a compressed cache that never compresses), so
its recall is 1 by measurement, not by definition. Stored heads are KV heads, except SnapKV and
PyramidKV, which by default store one selection per *query* head (their reference code repeats
K/V); each stored head counts once. KIVI is left out: it quantises every entry instead of evicting
any (nothing to recall). HybridKV's dynamic heads fetch chunks of an offloaded pool at every
decode step: every recall but ``step_recall`` counts their resident entries only. LOOK-M merges
evicted visual entries into kept ones; recall counts positions kept, not content merged.

Each reported seed (``--seeds``, default :data:`~reference_impls.common.seeded.REPORTED`, as
``kv_quality``) draws ``--n`` held-out samples with ``ToyVLMv2.samples(n, seed, suite)``: the first
``n`` of the samples ``kv_quality`` decodes for that seed. Rows are means over seeds with 95%
intervals; results go to ``kv-evidence-toyvlm-v2-<suite>.json``.

Run from the repository root::

    python -m reference_impls.bench.kv_evidence --suite long --n 10
    python -m reference_impls.bench.kv_evidence --quick     # smoke run: 3 samples, two seeds
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from reference_impls.bench.kv_quality import BUDGETS, TUNING_SEEDS, _settings, prepare_chat
from reference_impls.common import harness, seeded
from reference_impls.common.chat_scenes import SUITES, ChatSample, evidence_tokens
from reference_impls.common.results import Column, Plot, Results, command_line, results_id
from reference_impls.common.toyvlm_v2 import load_toyvlm_v2
from reference_impls.decoding.cache import CompressedCache, CompressedLayer, KVCacheMethod, prompt_layout
from reference_impls.registry import all_methods

__all__ = [
    "FullCache",
    "METRICS",
    "NOT_EVICTING",
    "evidence_positions",
    "kept_masks",
    "kept_metrics",
    "kind_metrics",
    "object_positions",
    "reply_step_masks",
    "run",
    "step_metrics",
]

NOT_EVICTING = ("kivi",)
"""KV-cache methods that keep every entry (quantised): left out, there is nothing to recall."""
METRICS = (
    "recall",
    "recall_lookup",
    "first_recall",
    "later_recall",
    "first_recall_lookup",
    "later_recall_lookup",
    "later_gap",
    "later_gap_lookup",
    "step_recall",
    "step_recall_lookup",
    "visual_kept",
    "text_share",
    "kept_entries",
    "text_tokens",
    "prompt_tokens",
)


@dataclass
class FullCache(KVCacheMethod):
    """A compressed cache that never compresses: the full cache, read through :meth:`head_positions`."""

    budget: float | int = 1.0

    layer_class = CompressedLayer


def kept_masks(cache: CompressedCache, n: int) -> list[torch.Tensor]:
    """Per layer, ``(heads, n)`` bool: which of the ``n`` prompt positions each stored head keeps."""
    masks = []
    for layer in cache.layers:
        heads = len(layer.head_lengths())
        mask = torch.zeros(heads, n, dtype=torch.bool)
        for head in range(heads):
            positions = layer.head_positions(head).long().cpu()
            mask[head, positions[positions < n]] = True  # decoded tokens are not prompt positions
        masks.append(mask)
    return masks


def object_positions(sample: ChatSample, visual_positions: torch.Tensor, objects) -> torch.Tensor:
    """Sorted prompt positions of the visual tokens that show any of ``objects`` (indices into the scene's
    objects); ``visual_positions`` (``(V,)``) maps the scene's visual-token indices to prompt positions."""
    shown = sample.scene.object_tokens
    return visual_positions[sorted({t for i in objects for t in shown[i]})]


def evidence_positions(sample: ChatSample, visual_positions: torch.Tensor) -> dict[str, torch.Tensor]:
    """Prompt positions of the evidence: of every relevant object (``all``), of the objects the first
    reply word is about (``first``) and of those only later words are about (``later``).

    ``visual_positions`` (``(V,)``) maps the scene's visual-token indices to prompt positions."""
    qa = sample.qa
    first = set(qa.evidence[0]) if qa.evidence else set(qa.relevant)  # one-word replies: the relevant objects
    later = {i for about in qa.evidence[1:] for i in about} - first
    return {
        "all": visual_positions[sorted(evidence_tokens(sample))],
        "first": object_positions(sample, visual_positions, first),
        "later": object_positions(sample, visual_positions, later),
    }


def _recall(masks: Sequence[torch.Tensor], positions: torch.Tensor) -> float:
    """Kept share of ``positions``, mean over the heads of every layer in ``masks`` (NaN: no evidence)."""
    if positions.numel() == 0:
        return math.nan
    return sum(float(mask[:, positions].float().mean()) for mask in masks) / len(masks)


def kept_metrics(
    masks: list[torch.Tensor], visual: torch.Tensor, evidence: dict[str, torch.Tensor], lookup_layer: int
) -> dict[str, float]:
    """The metrics of one prompt from its kept masks (:func:`kept_masks`), its ``(N,)`` bool visual
    mask and its :func:`evidence_positions`."""
    if not 0 <= lookup_layer < len(masks):
        raise ValueError(f"lookup layer {lookup_layer} is not a layer of a {len(masks)}-layer cache")
    lookup = masks[lookup_layer : lookup_layer + 1]
    kept = torch.cat(masks)  # (all stored heads, N)
    entries = kept.sum(1).float()
    # first against later words on the same prompts: only replies whose later words name new objects
    first = evidence["first"] if evidence["later"].numel() else evidence["later"]
    words = {
        "first_recall": _recall(masks, first),
        "later_recall": _recall(masks, evidence["later"]),
        "first_recall_lookup": _recall(lookup, first),
        "later_recall_lookup": _recall(lookup, evidence["later"]),
    }
    return {
        "recall": _recall(masks, evidence["all"]),
        "recall_lookup": _recall(lookup, evidence["all"]),
        **words,
        "later_gap": words["first_recall"] - words["later_recall"],
        "later_gap_lookup": words["first_recall_lookup"] - words["later_recall_lookup"],
        "visual_kept": float((kept & visual).sum(1).float().mean() / visual.sum()),
        "text_share": float(((kept & ~visual).sum(1).float() / entries).mean()),
        "kept_entries": float(entries.mean()),
        "text_tokens": float((~visual).sum()),
        "prompt_tokens": float(visual.numel()),
    }


@torch.no_grad()
def reply_step_masks(
    model, cache, next_position: torch.Tensor, reply: Sequence[int], n: int
) -> list[list[torch.Tensor]]:
    """What each decode step could read: the reply ``reply`` (token ids) is fed one token per step
    (teacher-forced) through ``cache`` after its prefill; for the step that produces ``reply[j]``
    (``j >= 1``), per layer, the ``(heads, n)`` prompt positions held before the step (later evictions
    included) plus those fetched during it (:meth:`~reference_impls.decoding.cache.CompressedLayer.retrieved_positions`)."""
    steps = []
    for j in range(1, len(reply)):
        readable = kept_masks(cache, n)
        position = (next_position.view(1, 1, 1) + j - 1).expand(3, 1, 1)
        model(input_ids=torch.tensor([[reply[j - 1]]]), cache=cache, position_ids=position, use_cache=True)
        for layer, mask in zip(cache.layers, readable):
            for head in range(mask.shape[0]):
                fetched = layer.retrieved_positions(head).long().cpu()
                mask[head, fetched[fetched < n]] = True
        steps.append(readable)
    return steps


def step_metrics(steps: list[list[torch.Tensor]], words: list[torch.Tensor], lookup_layer: int) -> dict[str, float]:
    """``step_recall`` (``_lookup``): recall of the evidence of the word each step produces, from what that
    step could read (:func:`reply_step_masks`; ``words[j]`` holds the positions of word ``j + 1``'s
    evidence), mean over the steps whose word has evidence."""
    pairs = [(masks, positions) for masks, positions in zip(steps, words) if positions.numel()]
    return {
        "step_recall": _mean([_recall(masks, positions) for masks, positions in pairs]),
        "step_recall_lookup": _mean(
            [_recall(masks[lookup_layer : lookup_layer + 1], positions) for masks, positions in pairs]
        ),
    }


def _mean(values: list[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else math.nan


@torch.no_grad()
def evaluate_seed(bundle, settings: list[tuple], n: int, seed: int, suite: str, lookup_layer: int) -> list[dict]:
    """Every setting ``(name, family, budget, method)`` on ``n`` held-out samples of ``suite`` drawn from
    ``seed``: one row per setting, each metric the mean over samples (where defined), with the recalls
    per question kind of the suite (:func:`kind_metrics`)."""
    model = bundle.model
    kinds = SUITES[suite].kinds
    per_setting: list[list[dict]] = [[] for _ in settings]
    for item in prepare_chat(bundle, bundle.samples(n, seed, suite)):
        visual = prompt_layout(model.config, item["inputs"]["input_ids"]).visual
        evidence = evidence_positions(item["sample"], visual.nonzero().view(-1))
        inputs = {**item["inputs"], "mm_encoder_outputs": dict(item["encoded"])}
        sample = item["sample"]
        reply = [bundle.vocab.id(word) for word in sample.qa.answer.split()]
        words = [object_positions(sample, visual.nonzero().view(-1), about) for about in sample.qa.evidence[1:]]
        for index, (_, _, _, method) in enumerate(settings):
            with method(model):
                _, cache, position, _ = harness.prefill(model, inputs)
                metrics = kept_metrics(kept_masks(cache, visual.numel()), visual, evidence, lookup_layer)
                steps = reply_step_masks(model, cache, position, reply, visual.numel())
            metrics.update(step_metrics(steps, words, lookup_layer))
            per_setting[index].append({**metrics, **kind_metrics(metrics, item["sample"].qa.kind, kinds)})
    return [
        {
            "method": name,
            "family": family,
            "budget": budget,
            **{m: _mean([s[m] for s in found]) for m in METRICS + _kind_keys(kinds)},
        }
        for (name, family, budget, _), found in zip(settings, per_setting)
    ]


def _kind_keys(kinds: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"{metric}_{kind}" for kind in kinds for metric in ("recall", "recall_lookup"))


def kind_metrics(metrics: dict[str, float], kind: str, kinds: Sequence[str]) -> dict[str, float]:
    """``recall_<k>`` and ``recall_lookup_<k>`` for every kind ``k`` of ``kinds``: the prompt's recalls
    under its own ``kind``, NaN (undefined) under the others, so that means over prompts are per kind."""
    return {
        key: metrics[key.removesuffix(f"_{k}")] if k == kind else math.nan
        for k in kinds
        for key in (f"recall_{k}", f"recall_lookup_{k}")
    }


def run(
    suite: str = "long",
    methods: list[str] | None = None,
    n: int = 10,
    budgets=BUDGETS,
    checkpoint: str | None = None,
    seeds: seeded.Seeds | None = None,
    log=print,
) -> Results:
    """Every evicting ``kind="kv-cache"`` method (or ``methods``) on ToyVLM v2's ``suite``; returns the
    :class:`Results` (not yet saved; means and 95% intervals over seeds)."""
    seeds = seeds or seeded.Seeds(seeded.REPORTED, TUNING_SEEDS)
    specs = {spec.name: spec for spec in all_methods(kind="kv-cache") if spec.name not in NOT_EVICTING}
    unknown = sorted(set(methods or ()) - set(specs))
    if unknown:
        raise ValueError(f"unknown or non-evicting kv-cache methods {unknown}; expected some of {sorted(specs)}")
    bundle = load_toyvlm_v2(checkpoint)
    lookup_layer = int(bundle.manifest.get("attention_layer", 2))
    if not 0 <= lookup_layer < bundle.model.config.get_text_config().num_hidden_layers:
        raise ValueError(
            f"{checkpoint or 'the committed checkpoint'}: manifest attention_layer {lookup_layer} is not a layer"
        )
    variants = [(name, specs[name], {}) for name in (methods or sorted(specs))]
    settings = [
        (name, family, budget, FullCache() if method is None else method)
        for name, family, budget, method in _settings(variants, budgets, None)
    ]
    per_seed, seconds = seeded.run_seeds(
        lambda seed: evaluate_seed(bundle, settings, n, seed, suite, lookup_layer), seeds.reported, log=log
    )
    kinds = SUITES[suite].kinds
    rows = seeded.summarise(per_seed, ("method", "budget"), METRICS + _kind_keys(kinds))
    for row in rows:
        log(
            f"{row['method']:13s} {row['budget']:.2f}  recall {row['recall']:.3f} (layer {lookup_layer} "
            f"{row['recall_lookup']:.3f})  first {row['first_recall']:.3f} later {row['later_recall']:.3f}  "
            f"visual kept {row['visual_kept']:.3f}  text share {row['text_share']:.3f}"
        )
    text_config = bundle.model.config.get_text_config()
    groups = text_config.num_attention_heads // text_config.num_key_value_heads
    notes = (
        f"ToyVLM v2 ({bundle.manifest.get('parameters', '?')} parameters), chat layout: images first, question last. "
        f"Suite {suite}: {SUITES[suite].description}. Prefill only: each method compresses the cache after the "
        "prefill of the whole prompt (cut after-question, as kv-quality-toyvlm-v2's default) with its defaults and "
        "the budget set; nothing is decoded. From every layer and stored head we read the prompt positions kept. "
        "Recall: share of the question's evidence (the visual tokens showing an object the question is about) "
        f"kept, mean over layers and heads; 'layer {lookup_layer}': the same at the layer whose attention ToyVLM v2 "
        "was trained to point at the evidence. First / later word: recall of the objects the first reply word is "
        "about, and of the objects only later words are about, on the replies whose later words name a new object "
        "(not kind 'where'); the gap is first minus later, prompt by prompt. Step recall: the reference reply is fed one "
        "word per step through the compressed cache; each step's recall of the evidence of the word it produces, "
        "from the entries held before the step plus the chunks fetched during it (HybridKV's dynamic heads), mean over "
        "the words after the first. Visual kept: share of all visual tokens kept (what a random "
        "choice of visual tokens would recall). Text share: share of the kept prompt entries that are text (image "
        "labels, vision markers, question, answer marker); text tokens and prompt tokens per prompt; kept entries "
        "per head. Recall per question kind: the prompts of that kind only. The full cache is read through the same API (a cache that never compresses). Stored heads are "
        f"KV heads, except SnapKV and PyramidKV, which keep one selection per query head ({groups} per KV head, as "
        "their reference code); every stored head counts once. KIVI is left out (it quantises, evicting nothing). "
        "HybridKV's dynamic heads fetch chunks of an offloaded pool at each decode step: every recall but the step "
        "recall counts their resident entries only. LOOK-M merges evicted visual entries into kept ones: recall counts positions, not "
        f"merged content. Each of {len(seeds.reported)} reported seeds ({', '.join(map(str, seeds.reported))}) "
        f"draws its own {n} held-out samples (the first {n} of the samples {results_id('kv-quality-toyvlm-v2', suite)} decodes for "
        "that seed), shared by every method; mean over seeds with the half-width of a Student-t 95% interval. "
        f"Batch 1, CPU, one thread, {sum(seconds) / len(seconds):.0f} s per seed."
    )
    columns = [
        Column("method", "Method"),
        Column("budget", "Budget"),
        Column("recall", "Evidence recall", "", 3),
        Column("recall_lookup", f"Recall, layer {lookup_layer}", "", 3),
        Column("first_recall", "First word", "", 3),
        Column("later_recall", "Later words", "", 3),
        Column("first_recall_lookup", f"First word, layer {lookup_layer}", "", 3),
        Column("later_recall_lookup", f"Later words, layer {lookup_layer}", "", 3),
        Column("later_gap", "First - later", "", 3),
        Column("later_gap_lookup", f"First - later, layer {lookup_layer}", "", 3),
        Column("step_recall", "Step recall", "", 3),
        Column("step_recall_lookup", f"Step recall, layer {lookup_layer}", "", 3),
        *(
            Column(f"{key}_{kind}", f"{label}, {kind.replace('_', ' ')}", "", 3)
            for kind in kinds
            for key, label in (("recall", "Recall"), ("recall_lookup", f"Recall layer {lookup_layer}"))
        ),
        Column("visual_kept", "Visual tokens kept", "", 3),
        Column("text_share", "Text share of kept", "", 3),
        Column("kept_entries", "Kept entries / head", "", 1),
        Column("text_tokens", "Text tokens", "", 1),
        Column("prompt_tokens", "Prompt tokens", "", 1),
    ]
    return Results(
        id=results_id("kv-evidence-toyvlm-v2", suite),
        title=f"ToyVLM v2 ({suite} suite): visual evidence kept by KV-cache methods after the prefill at 10/20/40%",
        command="",
        families=sorted({specs[name].family for name in (methods or specs)}),
        columns=seeded.interval_columns(
            columns,
            (
                "recall",
                "recall_lookup",
                "later_gap",
                "later_gap_lookup",
                "step_recall",
                "step_recall_lookup",
                "text_share",
            ),
        ),
        rows=rows,
        plots=[Plot(x="budget", y="recall", group="method", title="Evidence recall vs KV budget", error="recall_ci")],
        notes=notes,
        seeds=seeds.record(),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 samples on two seeds")
    parser.add_argument("--suite", default="long", choices=sorted(SUITES), help="ToyVLM v2 held-out suite")
    parser.add_argument("--n", type=int, default=10, help="held-out samples drawn per seed")
    parser.add_argument("--checkpoint", default=None, help="a ToyVLM v2 checkpoint (default: committed)")
    parser.add_argument("--methods", default="", help="comma-separated evicting kv-cache methods (default: all)")
    args, seeds = seeded.parse_seeded(parser, argv, TUNING_SEEDS)
    torch.set_num_threads(1)
    logging.getLogger("reference_impls.decoding.hybridkv.plan").setLevel(logging.ERROR)  # short-window notices
    try:
        results = run(
            args.suite,
            [m for m in args.methods.split(",") if m] or None,
            n=3 if args.quick else args.n,
            checkpoint=args.checkpoint,
            seeds=seeds,
            log=lambda *a: print(*a, flush=True),
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    results.command = command_line("reference_impls.bench.kv_evidence", argv)
    for path in seeded.save_seeded(results, [], seeds, "", args.out):
        print("wrote", path)


if __name__ == "__main__":
    main()
