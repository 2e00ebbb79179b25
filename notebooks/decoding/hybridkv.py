# %% [markdown]
# # HybridKV: head typing, top-down budgets, text-prior pruning and chunk retrieval
#
# This notebook runs the HybridKV reference implementation (a reconstruction from the paper's
# abstract, arXiv 2604.05887) on a small Qwen2.5-VL and shows each stage: the text-centric
# attention (TCA) of every KV head and the static/dynamic types it gives, the budgets the model ->
# layers -> heads allocation hands out (they sum exactly to the nominal total), what a static head
# keeps (text first), which chunks a dynamic head retrieves at each decode step, and the exact
# resident / offloaded bytes of the two memory modes against the full cache. The model is ToyVLM
# v2 on one held-out sample of its long suite (16 images first, the question last, a multi-token
# reply), as the KV benchmark runs it; a random-init tiny Qwen2.5-VL stands in only when the
# checkpoint is missing.

# %%
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.decoding.hybridkv import HybridKV
from reference_impls.decoding.kv_demo import demo_model_and_prompt

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
model, inputs, name = demo_model_and_prompt()
visual = inputs["mm_token_type_ids"][0].bool()
print(f"model: {name}; prompt: {visual.numel()} tokens, {int(visual.sum())} visual")

# %% [markdown]
# ## Stages 1 and 2: typing and allocation
# `typing="rank"` makes the quarter of heads with the lowest TCA dynamic, so that both kinds show
# here. The default threshold rule (`TCA >= 0.5`), which the KV benchmark runs, types 10 of ToyVLM
# v2's 12 KV heads dynamic on this prompt (only layer 1's two heads are static); on a random
# model it may type every head dynamic.

# %%
method = HybridKV(budget=0.2, window=8, chunk_size=8, typing="rank")
with method(model):
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
cache = method.cache
plan = cache.plan
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
axes[0].imshow(plan["tca"], cmap="viridis", vmin=0, vmax=1)
axes[0].set(title="TCA per (layer, KV head)", xlabel="KV head", ylabel="layer")
for (l, h), static in zip(
    torch.cartesian_prod(torch.arange(plan["tca"].shape[0]), torch.arange(plan["tca"].shape[1])).tolist(),
    plan["static"].reshape(-1).tolist(),
):
    axes[0].text(h, l, "S" if static else "D", ha="center", va="center", color="w")
axes[1].imshow(plan["budgets"], cmap="magma")
axes[1].set(title="prompt entries B[l, h]", xlabel="KV head")
plt.tight_layout()
plt.show()
print(
    "budget sum",
    int(plan["budgets"].sum()),
    "= b * L * H =",
    plan["b"] * plan["budgets"].numel(),
    "; effective ratio",
    round(plan["effective_ratio"], 3),
)

# %% [markdown]
# ## Stage 3: what static heads keep, what dynamic heads retrieve

# %%
n = visual.numel()
rows, labels = [], []
for l, layer in enumerate(cache.layers):
    for h in range(len(layer.head_keys)):
        row = torch.zeros(n)
        kept = layer.head_positions(h)
        row[kept[kept < n].long()] = 1.0
        if h in layer.last_retrieved:
            row[layer.last_retrieved[h].long()] = 2.0
        rows.append(row)
        labels.append(f"L{l}H{h} {'S' if layer.static[h] else 'D'}")
plt.figure(figsize=(10, 0.35 * len(rows) + 1))
plt.imshow(torch.stack(rows), aspect="auto", cmap="viridis", interpolation="nearest")
plt.yticks(range(len(rows)), labels)
plt.fill_between(range(n), -0.5, len(rows) - 0.5, where=visual.numpy(), color="white", alpha=0.1)
plt.title("kept prompt entries (1) and chunks retrieved at the last step (2)")
plt.xlabel("prompt position")
plt.show()

# %% [markdown]
# ## Bytes: offload vs resident pool vs full cache

# %%
budgets = (0.1,) if QUICK else (0.05, 0.1, 0.2, 0.4)
for mode in ("offload", "resident_pool"):
    ratios = []
    for budget in budgets:
        m = HybridKV(budget=budget, window=8, chunk_size=8, typing="rank", memory_mode=mode)
        with m(model):
            model.generate(**inputs, max_new_tokens=4, do_sample=False)
        report = m.cache.byte_report()
        ratios.append(report["resident_bytes"] / report["full_bytes"])
        print(mode, budget, report)
    plt.plot(budgets, ratios, marker="o", label=mode)
plt.plot(budgets, budgets, "k--", label="nominal budget")
plt.xlabel("budget (fraction of prompt entries per KV head)")
plt.ylabel("resident bytes / full cache")
plt.legend()
plt.show()
