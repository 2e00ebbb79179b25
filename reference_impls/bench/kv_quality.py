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

Run from the repository root::

    python -m reference_impls.bench.kv_quality            # full run
    python -m reference_impls.bench.kv_quality --quick    # smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time

import torch
from transformers import DynamicCache

from reference_impls.common.results import Column, Plot, Results, command_line, save_results
from reference_impls.decoding.cache import CompressedCache
from reference_impls.registry import all_methods, get_method

__all__ = ["answer_accuracy"]

BUDGETS = (0.1, 0.2, 0.4)


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
        encoded = {}
        if "pixel_values" in inputs:  # the vision tower does not depend on the KV method: run it once
            encoded["image"] = model.model.get_image_features(
                inputs.pop("pixel_values"), inputs["image_grid_thw"], return_dict=True
            )
        if "pixel_values_videos" in inputs:
            encoded["video"] = model.model.get_video_features(
                inputs.pop("pixel_values_videos"), inputs["video_grid_thw"], return_dict=True
            )
        if layout == "question-first":
            cut = ids.shape[1] - 1
        else:  # everything after the last vision_end is decoded
            cut = int((ids[0] == model.config.vision_end_token_id).nonzero().max()) + 1
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


def _configure(spec, budget: float, window: int):
    fields = {f.name for f in dataclasses.fields(spec.target)}
    kwargs = {"budget": budget}
    if "window" in fields:
        kwargs["window"] = window
    return spec.target(**kwargs)


def main(argv: list[str] | None = None) -> None:
    from reference_impls.common.toyvlm import load_toyvlm

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--window", type=int, default=8, help="observation/recent window (ToyVLM prompts are short)")
    parser.add_argument(
        "--layouts",
        nargs="*",
        default=["question-first"],
        help="question-first (ToyVLM's training layout) and/or images-first (query-agnostic)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("reference_impls.decoding.hybridkv.plan").setLevel(logging.ERROR)  # short-window notices
    toy = load_toyvlm()
    n = 12 if args.quick else args.n
    samples = toy.samples(n, seed=args.seed)
    specs = all_methods(kind="kv-cache")
    # Ablations: Quest-size chunks (16) exceed a 10% head budget of ToyVLM's ~270-token prompts;
    # SnapKV/PyramidKV select per query head by default (their reference code repeats K/V, so
    # they hold G = 2 copies per KV head): "gqa-mean" selects per KV head, at equal memory.
    variants = [(spec.name, spec, {}) for spec in specs] + [
        ("hybridkv-chunk4", get_method("hybridkv"), {"chunk_size": 4}),
        ("snapkv-gqa-mean", get_method("snapkv"), {"gqa": "mean"}),
        ("pyramidkv-gqa-mean", get_method("pyramidkv"), {"gqa": "mean"}),
    ]
    rows, start = [], time.perf_counter()
    for layout in args.layouts:
        prepared = prepare(toy, samples, layout)
        full = answer_accuracy(toy, None, prepared)
        rows.append({"method": "full", "family": "", "layout": layout, "budget": 1.0, **full})
        print(rows[-1], flush=True)
        for name, spec, overrides in variants:
            for budget in BUDGETS[:1] if args.quick else BUDGETS:
                method = dataclasses.replace(_configure(spec, budget, args.window), **overrides)
                with method(toy.model):
                    result = answer_accuracy(toy, method, prepared)
                rows.append({"method": name, "family": spec.family, "layout": layout, "budget": budget, **result})
                print(rows[-1], flush=True)
    elapsed = time.perf_counter() - start
    for row in rows:
        row["accuracy"] = round(row["accuracy"], 2)
        row["resident_ratio"] = round(row["resident_ratio"], 4)
    print(f"total {elapsed:.0f} s")
    if args.quick:
        return
    save_results(
        Results(
            id="kv-quality-toyvlm",
            title="ToyVLM accuracy of KV-cache methods at 10/20/40% budgets",
            command=command_line("reference_impls.bench.kv_quality", argv),
            families=["kv-token-level", "kv-layer-level", "kv-head-level", "kv-bit-level"],
            columns=[
                Column("method", "Method"),
                Column("layout", "Prompt layout"),
                Column("budget", "Budget"),
                Column("accuracy", "Accuracy", "%", 1),
                Column("resident_ratio", "Resident KV / full", "", 3),
            ],
            rows=rows,
            plots=[Plot(x="budget", y="accuracy", group="method", title="Accuracy vs KV budget")],
            notes=(
                f"{n} held-out ToyVLM samples (seed {args.seed}), batch 1, CPU, one thread, {elapsed:.0f} s. "
                f"Windows set to {args.window} (ToyVLM prompts are short). KIVI's budget selects its bit width "
                "(<0.25: 2 bits, else 4). Budgets are per KV head, except SnapKV and PyramidKV, which by default "
                "(as their reference code, which repeats K/V) keep the budget per query head: G = 2 copies per KV "
                "head on ToyVLM; the -gqa-mean rows select per KV head instead. Resident ratio includes metadata "
                "and the decoded tokens."
            ),
        )
    )


if __name__ == "__main__":
    main()
