"""KV-cache memory and decode speed at long context, every method against the full cache in one run.

Model: a random-init Qwen2.5-VL-architecture text model, larger than the test models (default
4 layers, hidden 512, 8 query / 4 KV heads of 64 dims, float32), on CPU. Prompt: about 9.8K tokens,
most of them visual (five images of 1,936 merged tokens, text around them). The vision tower is
bypassed: the prompt holds real image token ids (so M-RoPE positions, ``mm_token_type_ids`` and
the visual spans are the real ones) but the embeddings are fed as ``inputs_embeds``, with random
vectors at visual positions. Quality numbers mean nothing on a random model; fidelity to the
full cache (greedy token agreement) is reported instead.

Protocol (``reference_impls/decoding/hybridkv/README.md`` §9): batch 1, greedy, EOS off, fixed ``T`` decode steps;
decode ms/token = mean and median wall time of steps 2..T (prefill and first step excluded),
1 warm-up round plus ``--repeats`` rounds; in each round every method decodes once from a copy
of its post-prefill cache (interleaved, so CPU contention hits all alike); ms/token is the median
of the round means (min-max given), the speed-up the median over rounds of the within-round
ratio full / method. Bytes are exact tensor sizes after the prefill and after the last step.

``--suite stress`` (``--checkpoint``, ``--seed``) runs the same protocol on ToyVLM v2's own weights
and a real prompt instead: the first held-out sample of that suite (stress: 16 images x 256 tokens,
4,096 visual tokens), collated by ``bundle.collate``, with the vision tower's output precomputed;
results go to ``kv-memory-toyvlm-v2-<suite>.json``, next to the random-model ``kv-memory-cpu``.

Run from the repository root::

    python -m reference_impls.bench.kv_memory            # full run (<= 5 min on one CPU thread)
    python -m reference_impls.bench.kv_memory --quick    # smoke run
    python -m reference_impls.bench.kv_memory --suite stress
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import weakref

import torch
from transformers import DynamicCache

from reference_impls.common.chat_scenes import SUITES
from reference_impls.common.results import Column, Plot, Results, command_line, results_id, save_results
from reference_impls.common.tiny import IDS, tiny_qwen25vl
from reference_impls.common.toyvlm_v2 import load_toyvlm_v2
from reference_impls.decoding.cache import ATTN_NAME, CompressedCache, KVCacheMethod
from reference_impls.registry import get_method

__all__ = ["build_inputs", "chat_inputs", "main"]

METHODS = ("hybridkv", "hybridkv-resident", "hybridkv-rank", "snapkv", "pyramidkv", "adakv", "kivi")


def build_inputs(model, n_images: int, grid: int, text_before: int, text_after: int, seed: int = 0) -> dict:
    """Prompt ids with ``n_images`` square images of ``grid x grid`` patches, embeddings given directly."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    text = lambda n: torch.randint(IDS.first_text, cfg.text_config.vocab_size, (n,), generator=g).tolist()
    ids = text(text_before)
    for _ in range(n_images):
        ids += (
            [cfg.vision_start_token_id]
            + [cfg.image_token_id] * (grid * grid // 4)
            + [cfg.vision_end_token_id]
            + text(4)
        )
    ids += text(text_after)
    input_ids = torch.tensor([ids])
    visual = input_ids == cfg.image_token_id
    embeds = model.get_input_embeddings()(input_ids).detach()
    embeds[visual] = torch.randn(int(visual.sum()), embeds.shape[-1], generator=g) * embeds.std()
    return {
        "input_ids": input_ids,
        "inputs_embeds": embeds,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": visual.long(),
        "image_grid_thw": torch.tensor([[1, grid, grid]] * n_images),
    }


def chat_inputs(bundle, suite: str, seed: int) -> dict:
    """The first held-out sample of ToyVLM v2's ``suite`` for ``seed``, collated (``bundle.collate``),
    with the vision tower's output precomputed (``mm_encoder_outputs``) so that prefills time the
    language model only."""
    from reference_impls.bench.kv_quality import encode_vision

    inputs = bundle.collate(bundle.samples(1, seed, suite))
    encoded = encode_vision(bundle.model, inputs)  # pops the pixels
    return {**inputs, "mm_encoder_outputs": encoded}


def _method(name: str, budget: float) -> KVCacheMethod | None:
    if name == "full":
        return None
    if name == "hybridkv-resident":
        return get_method("hybridkv").target(budget=budget, memory_mode="resident_pool")
    if name == "hybridkv-rank":
        return get_method("hybridkv").target(budget=budget, typing="rank")
    if name == "kivi":
        return get_method("kivi").target(budget=budget, group_size=32, residual_length=32)
    return get_method(name).target(budget=budget)


def _bytes(cache) -> tuple[int, int]:
    if isinstance(cache, CompressedCache):
        return cache.resident_bytes(), cache.offloaded_bytes()
    return sum(t.element_size() * t.nelement() for layer in cache.layers for t in (layer.keys, layer.values)), 0


def _copy(cache, model):
    clone = copy.deepcopy(cache)
    if isinstance(clone, CompressedCache):
        for layer in clone.layers:
            layer._cache_ref = weakref.ref(clone)
        clone.bind(model)
    return clone


@torch.no_grad()
def _decode(model, cache, token, last_pos, steps):
    times, tokens = [], []
    for _ in range(steps):
        last_pos = last_pos + 1
        start = time.perf_counter()
        out = model(input_ids=token, cache=cache, use_cache=True, position_ids=last_pos)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        times.append(time.perf_counter() - start)
        tokens.append(int(token))
    return times, tokens


@torch.no_grad()
def prefill(name: str, model, inputs, budget: float) -> dict:
    """Prefill once with ``name``'s cache; returns the post-prefill state the decode rounds copy."""
    method = _method(name, budget)
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
    )
    _set_attention(model, method)
    cache = DynamicCache() if method is None else method.make_cache(model, inputs["input_ids"])
    start = time.perf_counter()
    out = model(**inputs, cache=cache, use_cache=True, position_ids=positions)
    seconds = time.perf_counter() - start
    resident, offloaded = _bytes(cache)
    return {
        "name": name,
        "method": method,
        "cache": cache,
        "token": out.logits[:, -1].argmax(-1, keepdim=True),
        "last": positions[..., -1:],
        "prefill_s": seconds,
        "resident_prefill": resident,
        "offloaded_prefill": offloaded,
        "means": [],
        "medians": [],
    }


def _set_attention(model, method) -> None:
    model.set_attn_implementation({"text_config": "sdpa" if method is None else ATTN_NAME})


@torch.no_grad()
def decode_round(state: dict, model, steps: int, record: bool) -> None:
    """One decode run of ``steps`` tokens on a fresh copy of the post-prefill cache."""
    _set_attention(model, state["method"])
    work = _copy(state["cache"], model)
    times, tokens = _decode(model, work, state["token"], state["last"], steps)
    if record:
        state["means"].append(1000 * statistics.mean(times[1:]))
        state["medians"].append(1000 * statistics.median(times[1:]))
    state["tokens"], state["final"] = [int(state["token"])] + tokens, work


def summarise(state: dict, full: dict) -> dict:
    final = state["final"]
    resident, offloaded = _bytes(final)
    ratios = [f / m for f, m in zip(full["means"], state["means"])]  # same round, same CPU conditions
    row = {
        "method": state["name"],
        "budget": 1.0 if state["method"] is None else state["method"].budget,
        "prefill_s": round(state["prefill_s"], 2),
        "resident_bytes_prefill": state["resident_prefill"],
        "offloaded_bytes_prefill": state["offloaded_prefill"],
        "resident_bytes": resident,
        "offloaded_bytes": offloaded,
        "transient_bytes": getattr(final, "transient_bytes", 0),
        "decode_ms": round(statistics.median(state["means"]), 2),
        "decode_ms_min": round(min(state["means"]), 2),
        "decode_ms_max": round(max(state["means"]), 2),
        "decode_ms_median_step": round(statistics.median(state["medians"]), 2),
        "memory_reduction": round(full_resident(full) / resident, 2),
        "speedup": round(statistics.median(ratios), 2),
        "speedup_min": round(min(ratios), 2),
        "speedup_max": round(max(ratios), 2),
        "token_agreement": round(sum(a == b for a, b in zip(state["tokens"], full["tokens"])) / len(full["tokens"]), 3),
        "family": "" if state["method"] is None else get_method(state["name"].split("-")[0]).family,
    }
    if isinstance(final, CompressedCache) and getattr(final, "plan", None):
        row["dynamic_heads"] = int((~final.plan["static"]).sum())
        row["effective_ratio"] = round(final.plan["effective_ratio"], 4)
    return row


def full_resident(full: dict) -> int:
    return _bytes(full["final"])[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--suite", default=None, choices=sorted(SUITES), help="prompt: a sample of ToyVLM v2's suite (e.g. stress)"
    )
    parser.add_argument("--checkpoint", default=None, help="ToyVLM v2 checkpoint folder (with --suite)")
    parser.add_argument(
        "--seed", type=int, default=10, help="with --suite: the held-out seed whose first sample is used"
    )
    parser.add_argument("--out", default=None, help="directory for the results JSON (default: reference_impls/results)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.suite is not None:  # ToyVLM v2's own weights and a real prompt of the suite
        bundle = load_toyvlm_v2(args.checkpoint)
        model, dims = bundle.model, {}
        inputs = chat_inputs(bundle, args.suite, args.seed)
        steps, repeats = (8, 1) if args.quick else (args.steps, args.repeats)
    elif args.quick:
        dims = dict(num_layers=2, hidden_size=128, num_heads=2, num_kv_heads=2, intermediate_size=256)
        n_images, grid, steps, repeats = 2, 16, 8, 1
    else:
        dims = dict(num_layers=4, hidden_size=512, num_heads=8, num_kv_heads=4, intermediate_size=1024)
        n_images, grid, steps, repeats = 5, 88, args.steps, args.repeats
    if args.suite is None:
        model = tiny_qwen25vl(seed=0, vocab_size=256, **dims)
        inputs = build_inputs(model, n_images, grid, text_before=40, text_after=60)
    wall, load_start = time.perf_counter(), os.getloadavg()
    states = [prefill(name, model, inputs, args.budget) for name in ["full", *args.methods]]
    print(f"prefills done in {time.perf_counter() - wall:.0f} s", flush=True)
    # Rounds: every method decodes once per round, so CPU contention drifts hit all of them alike;
    # round 0 is the warm-up. Speed-ups are full/method ratios within a round, median over rounds.
    for r in range(repeats + 1):
        order = states if r % 2 == 0 else [states[0], *reversed(states[1:])]
        for state in order:
            decode_round(state, model, steps, record=r > 0)
        print(f"round {r}: " + ", ".join(f"{s['name']} {s['means'][-1]:.1f}" for s in states if s["means"]), flush=True)
    load_end = os.getloadavg()
    rows = [summarise(state, states[0]) for state in states]
    n_prompt = inputs["input_ids"].shape[1]
    for row in rows:
        row["prompt_tokens"] = n_prompt
        print(
            {
                k: row[k]
                for k in (
                    "method",
                    "resident_bytes",
                    "offloaded_bytes",
                    "memory_reduction",
                    "decode_ms",
                    "speedup",
                    "speedup_min",
                    "speedup_max",
                    "token_agreement",
                )
            }
        )
    full = rows[0]
    elapsed = time.perf_counter() - wall
    print(f"total {elapsed:.0f} s")
    if args.quick:
        return
    if args.suite is not None:
        text = model.config.get_text_config()
        shape = (
            f"{text.num_hidden_layers} layers, hidden {text.hidden_size}, {text.num_attention_heads} query / "
            f"{text.num_key_value_heads} KV heads"
        )
        model_line = (
            f"ToyVLM v2 ({bundle.manifest.get('parameters', '?')} parameters: {shape}), float32, its own weights "
            f"(prompt: the first held-out sample of seed {args.seed} of the {args.suite} suite, "
            f"{SUITES[args.suite].description}, {int((inputs['mm_token_type_ids'] > 0).sum())} visual tokens, collated "
            "in the chat layout: images first, question last; the vision tower runs once before the prefills, its "
            "output passed as mm_encoder_outputs, so prefill times are the language model's; EOS off: every method "
            f"decodes the same {steps} steps and greedy agreement with the full cache is over those steps)"
        )
        result_id, model_title = results_id("kv-memory-toyvlm-v2", args.suite), f"ToyVLM v2, {args.suite} suite sample"
    else:
        model_line = f"Random-init model ({dims}), float32"
        result_id, model_title = "kv-memory-cpu", "random-init Qwen2.5-VL architecture"
    save_results(
        Results(
            id=result_id,
            title=f"KV cache bytes and decode ms/token at {full['prompt_tokens']} tokens ({model_title}, CPU)",
            command=command_line("reference_impls.bench.kv_memory", argv),
            families=["kv-token-level", "kv-layer-level", "kv-head-level", "kv-bit-level"],
            columns=[
                Column("method", "Method"),
                Column("budget", "Budget"),
                Column("resident_bytes", "Resident KV", "B"),
                Column("offloaded_bytes", "Offloaded KV", "B"),
                Column("memory_reduction", "Memory reduction", "x", 2),
                Column("decode_ms", "Decode", "ms/token", 2),
                Column("decode_ms_min", "min", "ms", 2),
                Column("decode_ms_max", "max", "ms", 2),
                Column("speedup", "Speed-up", "x", 2),
                Column("speedup_min", "min", "x", 2),
                Column("speedup_max", "max", "x", 2),
                Column("token_agreement", "Greedy agreement with full", "", 3),
            ],
            rows=rows,
            plots=[
                Plot(x="memory_reduction", y="speedup", group="method", title="Memory reduction vs decode speed-up")
            ],
            notes=(
                f"{model_line}, one CPU thread on a 2-core machine shared with other jobs "
                f"(load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end; timings are noisy). "
                f"All methods in the same run ({elapsed:.0f} s), decoded in interleaved rounds; the speed-up is the "
                "median over rounds of full/method ms within a round (min-max in speedup_min/max). Vision tower bypassed via inputs_embeds "
                "(visual ids kept for positions and spans). Decode ms/token = median over repeats of the mean of "
                f"steps 2..{steps}; min/max over {repeats} repeats after one warm-up. Resident bytes are every tensor "
                "the cache keeps for attention (entries, int32 positions, chunk metadata, quantisation scales); "
                "offloaded = HybridKV's retrieval pools in the cold store. hybridkv-rank types the 25% lowest-TCA "
                "heads dynamic (ablation)"
                + (
                    "; the default threshold typing makes nearly every head dynamic on a random model."
                    if args.suite is None
                    else "."
                )
            ),
        ),
        args.out,
    )


if __name__ == "__main__":
    main()
