# %% [markdown]
# # Speculative decoding with a visually pruned draft
#
# A draft proposes a few tokens, the target checks them in one forward and keeps the prefix it
# agrees with, plus one token of its own. Following SpecVLM, the draft sees only a fraction of
# the visual tokens. This notebook shows:
#
# 1. strict verification reproduces greedy decoding token for token (ToyVLM);
# 2. how sensitive the draft is to visual pruning: ToyVLM answers one word, so the question is
#    whether the pruned draft would still pick the target's answer token;
# 3. accepted length against draft length, and what relaxed verification trades, on a model
#    with long outputs (a random-init Qwen2.5-VL: ToyVLM never writes more than one word);
# 4. the wall-clock speedup on this CPU, best case and low-acceptance case.
#
# Without a ToyVLM checkpoint, parts 1 and 2 also run on the random model.

# %%
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.bench.speculative import ignoring_eos, load_setting, random_setting
from reference_impls.decoding.speculative import SpeculativeDecoding, greedy_decode

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
toy = load_setting(2 if QUICK else 8)
long = random_setting(2 if QUICK else 3)
LONG = 8 if QUICK else 16
print(toy.name, "|", len(toy.inputs), "samples |", int(toy.inputs[0]["mm_token_type_ids"].sum()), "visual tokens each")


def words(tokens):
    return " ".join(toy.words[t] for t in tokens) if toy.words else str(tokens)


# %% [markdown]
# ## 1. Strict verification is lossless
# The draft is the target itself seeing a quarter of the visual tokens (chosen by SpecVLM's
# verifier-guided rule, the default).

# %%
for inputs in toy.inputs[:2]:
    greedy = greedy_decode(toy.model, inputs, LONG).tokens
    result = SpeculativeDecoding(draft_visual_keep=0.25, num_draft=4)(toy.model, inputs, LONG)
    print("greedy:", words(greedy), "| speculative:", words(result.tokens), "| identical:", result.tokens == greedy)

# %% [markdown]
# ## 2. How much does visual pruning move the draft?
# Share of samples where the draft's own first token equals the target's answer token, against
# the fraction of visual tokens the draft keeps, for evenly spaced tokens ("uniform"), the
# largest embedding norms ("norm"), and an early-exit draft (first half of the layers).

# %%
half = max(1, toy.model.config.text_config.num_hidden_layers // 2)
keeps = (0.1, 1.0) if QUICK else (0.05, 0.1, 0.25, 0.5, 1.0)
targets = [greedy_decode(toy.model, inputs, 1).tokens[0] for inputs in toy.inputs]
drafts = {"uniform": {}, "norm": {}, f"uniform, first {half} layers": {"draft_layers": half}}
for label, extra in drafts.items():
    rule = "norm" if label == "norm" else "uniform"
    agreement = []
    for keep in keeps:
        method = SpeculativeDecoding(draft_visual_keep=keep, prune=rule, **extra)
        agree = sum(method.draft_first_token(toy.model, x) == t for x, t in zip(toy.inputs, targets))
        agreement.append(100 * agree / len(targets))
    plt.plot(keeps, agreement, marker="o", label=label)
    print(label, [f"{a:.0f}%" for a in agreement])
plt.xscale("log")
plt.xlabel("fraction of visual tokens the draft keeps")
plt.ylabel("draft's first token = target's (%)")
plt.legend()
plt.show()

# %% [markdown]
# ## 3. Accepted length and relaxed verification on long outputs
# Random-init model, so the numbers show the mechanics only. Mean accepted length = tokens
# emitted per target forward. Relaxation accepts a draft token in the target's top 2 with
# probability r (draft: the target seeing 25% of the visual tokens); agreement is the share
# of positions equal to greedy decoding.

# %%
draft_lengths = (1, 4) if QUICK else (1, 3, 6)
for keep in (0.25, 1.0):
    accepted = []
    for k in draft_lengths:
        lengths = []
        for inputs in long.inputs:
            lengths += SpeculativeDecoding(draft_visual_keep=keep, num_draft=k)(long.model, inputs, LONG).stats[
                "accepted_lengths"
            ]
        accepted.append(sum(lengths) / len(lengths))
    plt.plot(draft_lengths, accepted, marker="o", label=f"draft keeps {keep:.0%} of visual tokens")
plt.xlabel("draft tokens per verification")
plt.ylabel("mean accepted length")
plt.legend()
plt.show()

relaxed = []
for rate in (0.0, 1.0) if QUICK else (0.0, 0.25, 0.5, 1.0):
    method = SpeculativeDecoding(draft_visual_keep=0.25, num_draft=4, relax_rate=rate, relax_top_k=2)
    lengths, agree, total = [], 0, 0
    for inputs in long.inputs:
        greedy = greedy_decode(long.model, inputs, LONG).tokens
        result = method(long.model, inputs, LONG)
        lengths += result.stats["accepted_lengths"]
        agree += sum(a == b for a, b in zip(result.tokens, greedy))
        total += len(greedy)
    relaxed.append((rate, sum(lengths) / len(lengths), 100 * agree / total))
    print(f"r={rate:.2f}: mean accepted length {relaxed[-1][1]:.2f}, agreement with greedy {relaxed[-1][2]:.1f}%")
plt.plot([r[1] for r in relaxed], [r[2] for r in relaxed], marker="o")
for rate, length, agreement in relaxed:
    plt.annotate(f"r={rate}", (length, agreement))
plt.xlabel("mean accepted length")
plt.ylabel("token agreement with greedy (%)")
plt.show()

# %% [markdown]
# ## 4. Wall-clock speedup on this CPU (noisy: the machine is shared)
# Decode phase only (after the vision tower and the prefills). The best case is ToyVLM decoding
# past `<eos>` (it repeats `<eos>`, every proposal is accepted); the low-acceptance case is the
# random model. A draft as large as the target costs a full forward per proposed token, so even
# perfect acceptance gains little; the early-exit draft halves that cost.

# %%
for name, setting, guard in (
    ("best case (ToyVLM after <eos>)", toy, ignoring_eos(toy.model)),
    ("random model", long, None),
):
    half_layers = max(1, setting.model.config.text_config.num_hidden_layers // 2)
    configs = {
        "self, 25% visual": SpeculativeDecoding(draft_visual_keep=0.25, num_draft=4),
        f"first {half_layers} layers, 25% visual": SpeculativeDecoding(
            draft_visual_keep=0.25, draft_layers=half_layers, num_draft=4
        ),
    }
    if guard is not None:
        guard.__enter__()
    base = sum(greedy_decode(setting.model, inputs, LONG).stats["decode_seconds"] for inputs in setting.inputs)
    for label, method in configs.items():
        stats = [method(setting.model, inputs, LONG).stats for inputs in setting.inputs]
        lengths = [n for s in stats for n in s["accepted_lengths"]]
        spent = sum(s["decode_seconds"] for s in stats)
        print(
            f"{name}, {label}: mean accepted length {sum(lengths) / len(lengths):.2f}, decode speedup {base / spent:.2f}x"
        )
    if guard is not None:
        guard.__exit__(None, None, None)
