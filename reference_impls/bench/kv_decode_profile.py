"""Where a decode step's time goes: the full cache, SnapKV and HybridKV on ToyVLM v2's long suite.

A diagnostic for the decode figures of ``kv-quality-toyvlm-v2-long``; it writes no results file.
For each setting it prefills the same held-out prompts (chat layout, cache compressed after the
question) and times every one-token step of a 24-token greedy continuation in thread CPU time
(one thread, so the load of other processes on a shared machine counts less than in wall time).
It prints the mean step time; for the full cache, the part spent in its attention over the cache
(sdpa); for HybridKV, the parts spent in its cache update, decode attention, chunk selection and
gather plan. ``hybridkv-reference`` runs HybridKV's straightforward step (per-head storage
concatenated every step, ``HybridKVLayer._reference_path``), which computes the same outputs.
Times move with the machine: compare settings within one run only.

    python -m reference_impls.bench.kv_decode_profile --n 4 --seed 10 --budget 0.1
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections import defaultdict

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from reference_impls.bench.kv_quality import _active, _configure, prepare_chat
from reference_impls.common import harness
from reference_impls.common.toyvlm_v2 import load_toyvlm_v2
from reference_impls.decoding.hybridkv.layer import HybridKVLayer
from reference_impls.registry import get_method


@contextlib.contextmanager
def _timed(owner, name: str, label: str, totals: dict[str, float]):
    """Add the thread CPU time of every call of ``owner.name`` (a class attribute or a mapping entry) to ``totals[label]``."""
    is_dict = not isinstance(owner, type)  # a mapping (the attention-function registry) or a class
    original = owner[name] if is_dict else getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            totals[label] += time.thread_time() - start

    if is_dict:
        owner[name] = wrapper
    else:
        setattr(owner, name, wrapper)
    try:
        yield
    finally:
        if is_dict:
            owner[name] = original
        else:
            setattr(owner, name, original)


@torch.no_grad()
def profile(bundle, prepared: list[dict], method, steps: int = 24) -> tuple[float, dict[str, float]]:
    """Mean thread CPU seconds of one decode step and the seconds per step of each timed part."""
    parts: dict[str, float] = defaultdict(float)  # every timed call, prefills included
    decode: dict[str, float] = defaultdict(float)  # decode steps only
    total, count = 0.0, 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(_timed(ALL_ATTENTION_FUNCTIONS, "sdpa", "full-cache attention (sdpa)", parts))
        for name, label in (
            ("_append", "cache update"),
            ("decode_attention", "decode attention (all of it)"),
            ("_select", "  chunk selection (bounds, sort, greedy fill)"),
            ("_retrieval_rows", "  gather plan"),
        ):
            stack.enter_context(_timed(HybridKVLayer, name, label, parts))
        for item in prepared:
            with _active(method, bundle.model):
                inputs = {**item["inputs"], "mm_encoder_outputs": dict(item["encoded"])}
                logits, cache, position, _ = harness.prefill(bundle.model, inputs)
                after_prefill = dict(parts)
                token = logits.argmax(-1).view(1, 1)
                for step in range(steps):
                    at = (position.view(1, 1, 1) + step).expand(3, 1, 1)
                    start = time.thread_time()
                    out = bundle.model(input_ids=token, cache=cache, position_ids=at, use_cache=True)
                    total += time.thread_time() - start
                    count += 1
                    token = out.logits[:, -1].argmax(-1).view(1, 1)
                for key, seconds in parts.items():
                    decode[key] += seconds - after_prefill.get(key, 0.0)
    return total / count, {k: v / count for k, v in decode.items()}
    return total / count, {k: v / count for k, v in parts.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default="long")
    parser.add_argument("--n", type=int, default=4, help="held-out prompts")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--budget", type=float, default=0.1)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("reference_impls.decoding.hybridkv.plan").setLevel(logging.ERROR)  # short-window notices
    bundle = load_toyvlm_v2()
    prepared = prepare_chat(bundle, bundle.samples(args.n, args.seed, args.suite))
    hybridkv = _configure(get_method("hybridkv"), args.budget, None)
    settings = [
        ("full", None, False),
        ("snapkv", _configure(get_method("snapkv"), args.budget, None), False),
        ("hybridkv", hybridkv, False),
        ("hybridkv-reference", hybridkv, True),
    ]
    results = {}
    for round_prompts in (prepared[:1], prepared):  # a warm-up round on one prompt, then the timed round
        for name, method, reference in settings:
            HybridKVLayer._reference_path = reference
            try:
                results[name] = profile(bundle, round_prompts, method)
            finally:
                HybridKVLayer._reference_path = False
    for name, (step, parts) in results.items():
        print(f"{name:20s} {1000 * step:6.2f} ms CPU per decode step")
        for label, seconds in parts.items():
            if seconds > 0:
                print(f"    {label:46s} {1000 * seconds:6.2f} ms ({100 * seconds / step:4.1f}%)")


if __name__ == "__main__":
    main()
