# %% [markdown]
# # Attention-guided visual token pruning in the prefill: FastV, PyramidDrop, SparseVLM
#
# FastV drops visual tokens once after layer K by the last prompt token's attention; PyramidDrop
# drops a share at several stage boundaries; SparseVLM lets "text raters" score the visual
# tokens and recycles the best pruned ones into a few merged tokens. All three follow the
# authors' code and run through one mechanism that index-selects the hidden states, rotary
# inputs and mask from layer K on, keeps the original M-RoPE positions and stores a shorter KV
# cache with a logical length for decoding. The authors' LLaVA code renumbers the positions
# after a drop instead; the benchmark shows that variant as "+renumber".
#
# The model is ToyVLM v2 in the chat layout, as real VLM prompts are: 16 labelled images of 64
# tokens first, the question last, the reply decoded until `<eos>` and right only when every word
# matches. Since the question comes last, the last prompt token that FastV reads sits after it.
# First a small live sweep on the tuning seed (never reported), then the committed benchmark.
# Budget = the fraction of visual tokens left after the last pruning stage. Timings come from a
# shared CPU.

# %%
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.prefilling import bench

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
methods = ("fastv", "pyramiddrop", "sparsevlm", "random@0")
budgets = (0.25,) if QUICK else (0.5, 0.25, 0.1)
rows = bench.chat_sweep(methods[:1] + methods[-1:] if QUICK else methods, budgets, n=2 if QUICK else 12)
bench.print_chat(rows)

# %%
bench.plot_chat(rows, methods, "Attention-guided pruning on ToyVLM v2 (short suite, 12 samples of the tuning seed)")
plt.show()

# %% [markdown]
# ## Benchmark results (committed)
#
# `python -m reference_impls.prefilling.bench --suite short`: 10 reported seeds of 32 held-out
# samples each, means with 95% intervals; every method against random pruning before the LLM at
# the same budget, and the defaults against their variants, paired by seed.

# %%
shown = ("fastv", "pyramiddrop", "pyramiddrop+renumber", "sparsevlm", "sparsevlm-norecycle", "sparsevlm+renumber")
bench.show_committed((*shown, "random@0"), "Attention-guided pruning on ToyVLM v2 (committed, 10 seeds)")
plt.show()
