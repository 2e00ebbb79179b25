# %% [markdown]
# # Ada-KV: per-head budgets with real per-head storage
#
# Ada-KV ranks the SnapKV scores of all heads of a layer together, so a head whose attention is
# concentrated needs (and gets) few entries and a diffuse head many; a floor guarantees each head
# a minimum. The notebook shows the per-head lengths the cache really stores (one tensor per KV
# head, no padding, no masking), checks that each layer's total is `H * b` up to the rounding of
# the authors' floor rule (`round(0.8 c_h + int(0.2 (b - w)))`, at most half an entry per head),
# compares the bytes with those a masking implementation would keep (the full cache), and the
# drift from the full cache against uniform SnapKV. The model is ToyVLM v2 on one held-out sample
# of its long suite (16 images first, the question last, a multi-token reply), as the KV benchmark
# runs it; a random-init tiny Qwen2.5-VL stands in only when the checkpoint is missing.

# %%
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.decoding.adakv import AdaKV
from reference_impls.decoding.cache import resolve_budget
from reference_impls.decoding.kv_demo import demo_model_and_prompt, kl_drift
from reference_impls.decoding.snapkv import SnapKV

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
model, inputs, name = demo_model_and_prompt()
n = inputs["input_ids"].shape[1]
print(f"model: {name}; prompt {n} tokens")

# %% [markdown]
# ## Per-head lengths (budget 20%, window 8, floor alpha = 0.2)

# %%
method = AdaKV(budget=0.2, window=8)
with method(model):
    model.generate(**inputs, max_new_tokens=1, do_sample=False)
lengths = torch.tensor([layer.head_lengths() for layer in method.cache.layers])  # (L, H)
b = resolve_budget(0.2, n)
assert bool(((lengths.sum(1) - lengths.shape[1] * b).abs() <= lengths.shape[1] / 2).all())
plt.imshow(lengths, cmap="magma")
plt.colorbar(label="entries stored")
plt.xlabel("KV head")
plt.ylabel("layer")
plt.title(f"Ada-KV entries per head (uniform would be {b})")
plt.show()
report = method.cache.byte_report()
print(
    "resident bytes (real storage):", report["resident_bytes"], "| masking keeps the full cache:", report["full_bytes"]
)

# %% [markdown]
# ## Drift from the full cache vs SnapKV at the same total budget

# %%
steps = 3 if QUICK else 8
budgets = (0.2,) if QUICK else (0.05, 0.1, 0.2, 0.4)
for label, make in {
    "SnapKV": lambda b: SnapKV(budget=b, window=8),
    "Ada-KV": lambda b: AdaKV(budget=b, window=8),
}.items():
    plt.plot(budgets, kl_drift(model, inputs, make, budgets, steps), marker="o", label=label)
plt.xlabel("mean budget")
plt.ylabel("KL(full || compressed)")
plt.legend()
plt.show()
