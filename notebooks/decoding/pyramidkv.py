# %% [markdown]
# # PyramidKV: per-layer budgets that shrink with depth
#
# PyramidKV keeps SnapKV's choice of entries inside a layer but gives lower layers more of them:
# the budget falls linearly with depth and the total is about that of a uniform budget. The
# notebook plots the schedule for several steepness values (`beta`), with KVCache-Factory's
# integer rule (the floor division makes the total slightly exceed `L * b`; prompts shorter than
# `2 (b - w)` get the uniform budget), and compares the next-token drift from the full cache of
# PyramidKV and uniform SnapKV at equal total memory. The model is ToyVLM v2 on one held-out
# sample of its long suite (16 images first, the question last, a multi-token reply), as the KV
# benchmark runs it; a random-init tiny Qwen2.5-VL stands in only when the checkpoint is missing.

# %%
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.decoding.kv_demo import demo_model_and_prompt, kl_drift
from reference_impls.decoding.kv_scores import pyramidkv_budgets
from reference_impls.decoding.pyramidkv import PyramidKV
from reference_impls.decoding.snapkv import SnapKV

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
model, inputs, name = demo_model_and_prompt()
n = inputs["input_ids"].shape[1]
n_layers = model.config.text_config.num_hidden_layers
print(f"model: {name}; prompt {n} tokens, {n_layers} layers")

# %% [markdown]
# ## The schedule (mean budget 20% of the prompt, window 8)

# %%
b = round(0.2 * n)
for beta in (2, 5, 20):
    budgets = pyramidkv_budgets(n_layers, b, 8, n, beta)
    assert sum(budgets) >= n_layers * b and budgets == sorted(budgets, reverse=True)
    print(f"beta={beta}: {budgets} (total {sum(budgets)} vs uniform {n_layers * b})")
    plt.plot(range(n_layers), budgets, marker="o", label=f"beta={beta}")
plt.axhline(b, color="k", ls="--", label="uniform (SnapKV)")
plt.xlabel("layer")
plt.ylabel("entries per KV head")
plt.legend()
plt.show()

# %% [markdown]
# ## The cache really holds those lengths

# %%
method = PyramidKV(budget=0.2, window=8)
with method(model):
    model.generate(**inputs, max_new_tokens=2, do_sample=False)
print("entries per layer (prompt + 1 generated):", [layer.head_lengths()[0] for layer in method.cache.layers])
print("resident bytes:", method.cache.resident_bytes(), "of a full", method.cache.byte_report()["full_bytes"])

# %% [markdown]
# ## Drift from the full cache at equal memory (teacher-forced KL of the next token)

# %%
steps = 3 if QUICK else 8
budgets = (0.2,) if QUICK else (0.05, 0.1, 0.2, 0.4)
for label, make in {
    "SnapKV": lambda b: SnapKV(budget=b, window=8),
    "PyramidKV": lambda b: PyramidKV(budget=b, window=8),
}.items():
    plt.plot(budgets, kl_drift(model, inputs, make, budgets, steps), marker="o", label=label)
plt.xlabel("mean budget")
plt.ylabel("KL(full || compressed)")
plt.legend()
plt.show()
