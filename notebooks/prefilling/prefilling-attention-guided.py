# %% [markdown]
# # Attention-guided visual token pruning in the prefill: FastV, PyramidDrop, SparseVLM
#
# FastV drops visual tokens once after layer K by the last prompt token's attention; PyramidDrop
# drops a share at several stage boundaries; SparseVLM lets "text raters" score the visual
# tokens and recycles the best pruned ones into a few merged tokens. All three follow the
# authors' code and run through one mechanism that index-selects the hidden states, rotary
# inputs and mask from layer K on, keeps the original M-RoPE positions and stores a shorter KV
# cache with a logical length for decoding. The authors' LLaVA code renumbers the positions
# after a drop instead; the full run shows that variant as "+renumber".
#
# We measure accuracy and prefill time against the visual budget on ToyVLM (question before
# the images, 4 images x 64 tokens), against random pruning at the same layers. Budget = the
# fraction of visual tokens left after the last pruning stage; "layer mean" is the average
# count over all LLM layers, which is what compute follows. Timings come from a shared CPU.

# %%
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.prefilling import bench

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
torch.manual_seed(0)
data = bench.load_data(n=16 if QUICK else 64, batch_size=16)
num_layers = len(data.model.model.language_model.layers)
k = max(1, num_layers // 4)
print(f"data: {data.source}; {num_layers} LLM layers; FastV and random pruning at layer {k}")

# %%
# Budget 1.0 is the unpruned model exactly (tested), shown as the dashed line.
budgets = (0.25,) if QUICK else (0.5, 0.25, 0.1)
names = (
    ("fastv", "pyramiddrop", "sparsevlm", "random@0")
    if QUICK
    else (
        "fastv",
        "pyramiddrop",
        "pyramiddrop+renumber",
        "sparsevlm",
        "sparsevlm-norecycle",
        "sparsevlm+renumber",
        "random@0",
        f"random@{k}",
    )
)
rows = bench.sweep(data, budgets, names)
bench.print_sweep(rows)

# %% [markdown]
# Left: accuracy; right: prefill time per sample. Dotted lines are random pruning.

# %%
bench.plot_sweep(rows, f"Attention-guided pruning on {data.source}")
plt.show()
