# %% [markdown]
# # Speculative decoding with a visually pruned draft
#
# A draft proposes a few tokens, the target checks them in one forward and keeps the prefix it
# agrees with. Following SpecVLM, the draft sees only a fraction of the visual tokens. This
# notebook shows, on ToyVLM (or a random-init Qwen2.5-VL when no checkpoint is available):
# that strict verification reproduces greedy decoding token for token; how the mean accepted
# length depends on the draft length and on how many visual tokens the draft keeps; what
# relaxed verification buys in accepted length and costs in agreement and accuracy; and the
# wall-clock speedup on this CPU. ToyVLM answers are one word and `<eos>`, so the acceptance
# sweeps decode past `<eos>` (off-distribution text) to get outputs long enough to measure.

# %%
import os
import time

import matplotlib.pyplot as plt
import torch

from reference_impls.bench.speculative import ignoring_eos, load_setting
from reference_impls.decoding.speculative import SpeculativeDecoding, greedy_decode

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
setting = load_setting(2 if QUICK else 4)
model, samples = setting.model, setting.inputs
LONG = 8 if QUICK else 16
print(setting.name, "|", len(samples), "samples |", int(samples[0]["mm_token_type_ids"].sum()), "visual tokens each")


def words(tokens):
    return " ".join(setting.words[t] for t in tokens) if setting.words else str(tokens)


# %% [markdown]
# ## Strict verification is lossless
# The target's greedy answer and the speculative answer for the first samples, with the draft
# seeing a quarter of the visual tokens.

# %%
for inputs in samples[:2]:
    greedy = greedy_decode(model, inputs, LONG).tokens
    result = SpeculativeDecoding(draft_visual_keep=0.25, num_draft=4)(model, inputs, LONG)
    print("greedy:     ", words(greedy))
    print("speculative:", words(result.tokens), "| identical:", result.tokens == greedy)
    print("  accepted lengths per verification:", result.stats["accepted_lengths"])

# %% [markdown]
# ## Mean accepted length vs draft length and visual tokens kept by the draft
# Decoding past `<eos>` for a fixed number of tokens (ToyVLM's answers are too short otherwise).

# %%
keeps = (0.1, 1.0) if QUICK else (0.05, 0.25, 1.0)
drafts = (1, 4) if QUICK else (1, 3, 6)
accepted = {}
with ignoring_eos(model):
    for keep in keeps:
        for k in drafts:
            lengths = []
            for inputs in samples:
                lengths += SpeculativeDecoding(draft_visual_keep=keep, num_draft=k)(model, inputs, LONG).stats["accepted_lengths"]
            accepted[keep, k] = sum(lengths) / len(lengths)
for keep in keeps:
    plt.plot(drafts, [accepted[keep, k] for k in drafts], marker="o", label=f"draft keeps {keep:.0%} of visual tokens")
plt.xlabel("draft tokens per verification")
plt.ylabel("mean accepted length (tokens per target forward)")
plt.legend()
plt.show()

# %% [markdown]
# ## Relaxed verification: longer runs, lower fidelity
# A draft that stops after half of the layers disagrees more often; relaxation accepts its
# tokens anyway when they are in the target's top 2, with probability `r`. Agreement is the
# share of positions equal to greedy; for ToyVLM the answer accuracy is also shown.

# %%
half = max(1, model.config.text_config.num_hidden_layers // 2)
rates = (0.0, 1.0) if QUICK else (0.0, 0.25, 0.5, 1.0)
relaxed = []
for rate in rates:
    method = SpeculativeDecoding(draft_visual_keep=0.25, draft_layers=half, num_draft=4, relax_rate=rate)
    lengths, agree, total, correct = [], 0, 0, 0
    for i, inputs in enumerate(samples):
        with ignoring_eos(model):
            greedy = greedy_decode(model, inputs, LONG).tokens
            result = method(model, inputs, LONG)
        lengths += result.stats["accepted_lengths"]
        agree += sum(a == b for a, b in zip(result.tokens, greedy))
        total += len(greedy)
        if setting.answers is not None:
            correct += method(model, inputs, 2).tokens[:1] == [setting.answers[i]]
    relaxed.append((rate, sum(lengths) / len(lengths), 100 * agree / total, 100 * correct / len(samples)))
    print(f"r={rate:.2f}: mean accepted length {relaxed[-1][1]:.2f}, agreement {relaxed[-1][2]:.1f}%"
          + (f", answer accuracy {relaxed[-1][3]:.1f}%" if setting.answers is not None else ""))
plt.plot([r[1] for r in relaxed], [r[2] for r in relaxed], marker="o")
for rate, length, agreement, _ in relaxed:
    plt.annotate(f"r={rate}", (length, agreement))
plt.xlabel("mean accepted length")
plt.ylabel("token agreement with greedy (%)")
plt.show()

# %% [markdown]
# ## Wall-clock speedup on this CPU (noisy: the machine is shared)
# With a draft as large as the target, every proposed token costs a full forward, so
# speculation only pays when the accepted length exceeds the draft's cost; the early-exit
# draft halves that cost. Decode phase only (after the vision tower and the prefills).

# %%
configs = {"self, 25% visual": SpeculativeDecoding(draft_visual_keep=0.25, num_draft=4),
           f"first {half} layers, 25% visual": SpeculativeDecoding(draft_visual_keep=0.25, draft_layers=half, num_draft=4)}
with ignoring_eos(model):
    base = sum(greedy_decode(model, inputs, LONG).stats["decode_seconds"] for inputs in samples)
    for name, method in configs.items():
        spent, lengths = 0.0, []
        for inputs in samples:
            stats = method(model, inputs, LONG).stats
            spent += stats["decode_seconds"]
            lengths += stats["accepted_lengths"]
        print(f"{name}: mean accepted length {sum(lengths) / len(lengths):.2f}, decode speedup {base / spent:.2f}x")
