# %% [markdown]
# # Training-aware speculative decoding with a distilled twig draft
#
# TwigVLM-style self-speculation: the draft is the target's own first `k` decoder layers plus a
# small trained *twig* (one decoder layer and a copy of the final norm and LM head), distilled to
# match the target's next-token distributions on the target's own greedy outputs. Verification
# is the unchanged loop of `SpeculativeDecoding`, so strict decoding still reproduces greedy
# decoding exactly. ToyVLM answers one word, which leaves nothing to speculate on, so the main
# target here is the hallucination benchmark's captioner (ToyVLM architecture, 3 layers,
# captions like "circle and square and cross"). This notebook shows:
#
# 1. strict twig decoding reproduces greedy captions, with longer accepted runs than the
#    training-free early-exit drafts;
# 2. distillation itself: a fresh twig trained for a few seconds, against the untrained twig
#    (which is exactly early exit at `k + 1` layers);
# 3. accepted length and wall-clock speed against the number of draft tokens, and why there is
#    no speed-up at these sizes on a CPU;
# 4. on ToyVLM, how often each draft's first token is the target's answer when the draft sees
#    fewer visual tokens.
#
# The ToyVLM here is v1 (question first, one-word answers), the layout ablation, not v2 as in the
# other notebooks: the committed ToyVLM twig was distilled from v1, so it only drafts for v1.

# %%
import os
import time
from dataclasses import replace

import matplotlib.pyplot as plt
import torch

from reference_impls.decoding._speculative_prompt import encode_prompt, forward, prefill, text_positions
from reference_impls.decoding.speculative import SpeculativeDecoding, greedy_decode
from reference_impls.decoding.train_twig import CHECKPOINTS, load_prompts
from reference_impls.decoding.twig_draft import (
    DistillConfig,
    TwigSpeculativeDecoding,
    distill_twig,
    grow_twig,
    load_twig,
    twig_agreement,
)

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
N = 8 if QUICK else 40
captioner, captions, words = load_prompts("captioner", N, seed=22)  # held out: the twig was trained on seed 21
twig = load_twig(captioner, CHECKPOINTS / "twig-captioner")
print(
    "captioner layers:",
    captioner.config.text_config.num_hidden_layers,
    "| twig on layer",
    twig.twig_shared_layers,
    "| twig parameters:",
    sum(
        p.numel()
        for n, p in twig.named_parameters()
        if not n.startswith(("model.visual", "model.language_model.embed", "model.language_model.layers.0."))
    ),
)


def text(tokens):
    return " ".join(words[t] for t in tokens)


# %% [markdown]
# ## 1. Lossless, with longer accepted runs
# Each caption decoded greedily and with three drafts (4 draft tokens per verification). The
# accepted lengths are the tokens each target forward emitted (the first token comes from the
# prefill).

# %%
drafts = {
    "early exit, 1 layer": SpeculativeDecoding(draft_visual_keep=1.0, draft_layers=1, num_draft=4),
    "early exit, 2 layers (= untrained twig)": SpeculativeDecoding(draft_visual_keep=1.0, draft_layers=2, num_draft=4),
    "twig (1 layer + distilled layer)": TwigSpeculativeDecoding(twig=twig, num_draft=4),
}
for inputs in captions[:3]:
    greedy = greedy_decode(captioner, inputs, 16).tokens
    print("greedy:", text(greedy))
    for name, method in drafts.items():
        result = method(captioner, inputs, 16)
        print(f"  {name}: identical {result.tokens == greedy}, accepted lengths {result.stats['accepted_lengths']}")

# %% [markdown]
# ## 2. Distillation: what training buys
# Teacher-forced top-1 agreement with the captioner on held-out captions, at the positions a
# draft proposes during decoding. A fresh twig is distilled here for a few seconds from 1 layer
# of the captioner; the committed twig (`python -m reference_impls.decoding.train_twig`) was
# trained longer on more captions.

# %%
_, train, _ = load_prompts("captioner", 40 if QUICK else 100, seed=21)
fresh = grow_twig(captioner, shared_layers=1, twig_layers=1)
start = time.perf_counter()
log = distill_twig(captioner, fresh, train, DistillConfig(steps=30 if QUICK else 100, log_every=10))
print(f"distilled a fresh twig in {time.perf_counter() - start:.1f}s; KL", log[0]["loss"], "->", log[-1]["loss"])
candidates = {
    "early exit 1 layer": grow_twig(captioner, 1, 0),
    "untrained twig\n(= early exit 2)": grow_twig(captioner, 1, 1),
    "fresh twig": fresh,
    "committed twig": twig,
}
scores = {name: twig_agreement(captioner, draft, captions) for name, draft in candidates.items()}
for name, score in scores.items():
    print(f"{name.replace(chr(10), ' ')}: decode positions {score['decode']:.1f}%, first token {score['first']:.1f}%")
plt.bar(range(len(scores)), [s["decode"] for s in scores.values()])
plt.xticks(range(len(scores)), list(scores), fontsize=8)
plt.ylabel("agreement with the target (%)")
plt.ylim(80, 100)
plt.title("Draft = target's next token, held-out captions")
plt.show()

# %% [markdown]
# ## 3. Accepted length and speed against draft length
# Accepted length grows with the number of draft tokens until it reaches the caption length
# (at most 8 tokens here). Wall-clock speed is the catch: on this CPU a forward of the tiny
# captioner has a large fixed cost (Python and per-operator overhead) whatever its depth, so a
# 2-layer draft forward costs about three quarters of the 3-layer target's, and proposing a
# token costs nearly as much as the target forward it saves. The timings are noisy (the
# machine is shared).

# %%
prompt = encode_prompt(captioner, captions[0])
per_forward = {}
for layers in (1, 2, 3):
    cache, logits = prefill(captioner, prompt, layers)
    start = time.perf_counter()
    for i in range(20):
        forward(
            captioner, cache, text_positions(prompt.next_position + i, 1), ids=[int(logits.argmax())], layers=layers
        )
    per_forward[layers] = 1000 * (time.perf_counter() - start) / 20
print("ms per one-token forward by depth:", {k: round(v, 2) for k, v in per_forward.items()})

lengths = (1, 2, 4) if QUICK else (1, 2, 4, 6)
base = sum(greedy_decode(captioner, x, 16).stats["decode_seconds"] for x in captions)
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
for name, method in drafts.items():
    accepted, speed = [], []
    for k in lengths:
        runner = replace(method, num_draft=k)
        stats = [runner(captioner, x, 16).stats for x in captions]
        spent = sum(s["decode_seconds"] for s in stats)
        steps = [n for s in stats for n in s["accepted_lengths"]]
        accepted.append(sum(steps) / len(steps))
        speed.append(base / spent)
    left.plot(lengths, accepted, marker="o", label=name)
    right.plot(lengths, speed, marker="o", label=name)
left.set_xlabel("draft tokens per verification")
left.set_ylabel("mean accepted length")
right.set_xlabel("draft tokens per verification")
right.set_ylabel("decode speedup vs greedy")
right.axhline(1.0, color="grey", lw=0.5)
left.legend(fontsize=7)
plt.show()

# %% [markdown]
# ## 4. ToyVLM: the draft's answer when it sees fewer visual tokens
# For one-word answers the draft's first token is the only content token; decoding never asks
# the draft for it, but its agreement with the target's answer measures what the draft loses
# under visual pruning. The ToyVLM twig (2 target layers + 1 twig layer) was distilled with the
# draft seeing 100% and 25% of the visual tokens.

# %%
toy, questions, _ = load_prompts("toyvlm", 10 if QUICK else 40, seed=1)
answers = [greedy_decode(toy, x, 1).tokens[0] for x in questions]
keeps = (0.25, 1.0) if QUICK else (0.1, 0.25, 0.5, 1.0)
toy_twig = load_twig(toy, CHECKPOINTS / "twig-toyvlm")
makers = {
    "target (all layers)": lambda keep: SpeculativeDecoding(draft_visual_keep=keep),
    "early exit 2 layers": lambda keep: SpeculativeDecoding(draft_visual_keep=keep, draft_layers=2),
    "early exit 3 layers (= untrained twig)": lambda keep: SpeculativeDecoding(draft_visual_keep=keep, draft_layers=3),
    "twig (2 layers + distilled layer)": lambda keep: TwigSpeculativeDecoding(twig=toy_twig, draft_visual_keep=keep),
}
for name, make in makers.items():
    agreement = []
    for keep in keeps:
        method = make(keep)
        agreement.append(
            100 * sum(method.draft_first_token(toy, x) == a for x, a in zip(questions, answers)) / len(answers)
        )
    plt.plot(keeps, agreement, marker="o", label=name)
    print(name, [f"{a:.0f}%" for a in agreement])
plt.xscale("log")
plt.xlabel("fraction of visual tokens the draft sees")
plt.ylabel("draft's first token = target's answer (%)")
plt.legend(fontsize=7)
plt.show()

# %% [markdown]
# **What this shows.** On the captioner, distillation makes the one-layer-plus-twig draft agree
# with the target almost everywhere, so nearly every proposal is accepted, and strict
# verification keeps the captions identical to greedy decoding. It does not make decoding
# faster here: the captions are short and a 2-layer draft forward of this tiny model costs
# about three quarters of a target forward on a CPU, so the draft's forwards eat what the saved
# target forwards give back. On
# ToyVLM, the twig barely improves on early exit at 3 layers (the untrained twig), and no draft
# recovers the answer once most visual tokens are gone: the missing tokens carry it.
