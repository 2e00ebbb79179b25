# %% [markdown]
# # Token-level KV-cache compression: StreamingLLM, H2O, SnapKV and LOOK-M
#
# Four ways to decide which prompt entries a head keeps, all at the same budget and all with real
# storage (every head keeps `budget` entries, the rest is freed; LOOK-M also keeps all text, and
# SnapKV, as its reference code, selects per query head and stores a copy per query head):
# StreamingLLM keeps sinks plus the most recent entries, H2O the entries with the most accumulated
# attention, SnapKV those the question's window attends to, LOOK-M text first and the best visual
# entries after (merging the evicted ones). The plots show where each method's kept entries lie in
# the prompt (image spans shaded), and how far its next-token predictions drift from the full
# cache as the budget shrinks. The model is ToyVLM v2 on one held-out sample of its long suite (16
# images first, the question last, a multi-token reply), as the KV benchmark runs it; a
# random-init tiny Qwen2.5-VL stands in only when the checkpoint is missing.

# %%
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.decoding.h2o import H2O
from reference_impls.decoding.kv_demo import demo_model_and_prompt
from reference_impls.decoding.lookm import LookM
from reference_impls.decoding.snapkv import SnapKV
from reference_impls.decoding.streamingllm import StreamingLLM

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
model, inputs, name = demo_model_and_prompt()
visual = inputs["mm_token_type_ids"][0].bool()
n = visual.numel()
print(f"model: {name}; prompt: {n} tokens, {int(visual.sum())} visual")
METHODS = {
    "StreamingLLM": lambda b: StreamingLLM(budget=b),
    "H2O": lambda b: H2O(budget=b),
    "SnapKV": lambda b: SnapKV(budget=b, window=8),
    "LOOK-M": lambda b: LookM(budget=b, window=8),
}

# %% [markdown]
# ## Which entries survive (layer 0, KV head 0, budget 25%)

# %%
fig, axes = plt.subplots(len(METHODS), 1, figsize=(10, 1.1 * len(METHODS)), sharex=True)
for ax, (label, make) in zip(axes, METHODS.items()):
    method = make(0.25)
    with method(model):
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    kept = method.cache.layers[0].head_positions(0)
    row = torch.zeros(n)
    row[kept[kept < n].long()] = 1
    ax.imshow(row[None], aspect="auto", cmap="Greens", vmin=0, vmax=1)
    ax.fill_between(range(n), -0.5, 0.5, where=visual.numpy(), color="tab:orange", alpha=0.2)
    ax.set_yticks([])
    ax.set_ylabel(label, rotation=0, ha="right")
axes[-1].set_xlabel("prompt position (orange: image tokens)")
plt.show()

# %% [markdown]
# ## Drift from the full cache vs budget
# Teacher-forced on the full cache's greedy continuation: mean KL of the next-token
# distribution and agreement of the argmax with the full cache's token, step by step.

# %%
from reference_impls.decoding.cache import greedy_decode

steps = 3 if QUICK else 8
with torch.no_grad():
    ref = model.generate(
        **inputs,
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
ref_tokens = ref.sequences[:, n:]
ref_logp = torch.stack(ref.logits)[:, 0].log_softmax(-1)
budgets = (0.2,) if QUICK else (0.05, 0.1, 0.2, 0.4, 0.7)
for label, make in METHODS.items():
    kls, agree = [], []
    for budget in budgets:
        method = make(budget)
        with method(model):
            tokens, logits = greedy_decode(
                model, inputs, method.make_cache(model, inputs["input_ids"]), steps, forced=ref_tokens
            )
        kl = torch.nn.functional.kl_div(logits.log_softmax(-1), ref_logp, log_target=True, reduction="batchmean")
        kls.append(float(kl))
        # Argmax of the raw logits on both sides (the forced continuation itself had EOS suppressed).
        agree.append(float((logits.argmax(-1) == ref_logp.argmax(-1)).float().mean()))
    plt.plot(budgets, kls, marker="o", label=label)
    print(label, "greedy agreement", [round(a, 2) for a in agree])
plt.xscale("log")
plt.xlabel("budget (fraction of entries per KV head)")
plt.ylabel("KL(full || compressed), next token")
plt.legend()
plt.show()
