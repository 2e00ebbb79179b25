# %% [markdown]
# # Diversity-guided visual token pruning: DivPrune
#
# DivPrune keeps the visual tokens that are most different from each other: a greedy
# max-min (farthest-point) selection in cosine distance over the visual embeddings entering the
# LLM. It needs no attention, so it also works with fused attention kernels. We first show the
# selection on a small 2-D example, then exact match and prefill time against the visual budget
# on ToyVLM v2, compared with random pruning at the same place (before the LLM) and with FastV.

# %%
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.prefilling import bench
from reference_impls.prefilling.divprune import max_min_select

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)

# %% [markdown]
# Max-min selection on points at random angles: cosine distance only sees directions, so the
# chosen points spread around the circle instead of piling up where the points are dense.

# %%
generator = torch.Generator().manual_seed(0)
angles = torch.cat([torch.randn(40, generator=generator) * 0.3, torch.rand(20, generator=generator) * 6.28])
points = torch.stack([angles.cos(), angles.sin()], -1) * (1 + 0.1 * torch.rand(60, 1, generator=generator))
chosen = max_min_select(points, 8)
plt.figure(figsize=(4, 4))
plt.scatter(points[:, 0], points[:, 1], s=10, c="lightgray", label="tokens")
plt.scatter(points[chosen, 0], points[chosen, 1], s=40, c="C3", label="DivPrune keeps 8")
plt.legend(fontsize=8)
plt.axis("equal")
plt.show()

# %% [markdown]
# DivPrune on ToyVLM v2 in the chat layout (16 labelled images of 64 tokens first, the question
# last, the reply decoded until `<eos>`), against random pruning before the LLM and FastV: a
# small live sweep on the tuning seed (never reported), then the committed benchmark.

# %%
methods = ("divprune", "fastv", "random@0")
budgets = (0.1,) if QUICK else (0.5, 0.25, 0.1)
rows = bench.chat_sweep(("divprune", "random@0") if QUICK else methods, budgets, n=2 if QUICK else 12)
bench.print_chat(rows)

# %%
bench.plot_chat(rows, methods, "DivPrune before the LLM on ToyVLM v2 (short suite, 12 samples of the tuning seed)")
plt.show()

# %% [markdown]
# ## Benchmark results (committed)
#
# `python -m reference_impls.prefilling.bench --suite short`: 10 reported seeds of 32 held-out
# samples each, means with 95% intervals, every method against random pruning paired by seed.

# %%
bench.show_committed(methods, "DivPrune on ToyVLM v2 (committed, 10 seeds)", pairs=(("divprune", "fastv"),))
plt.show()
