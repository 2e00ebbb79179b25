# %% [markdown]
# # Diversity-guided visual token pruning: DivPrune
#
# DivPrune keeps the visual tokens that are most different from each other: a greedy
# max-min (farthest-point) selection in cosine distance over the visual embeddings entering the
# LLM. It needs no attention, so it also works with fused attention kernels. We first show the
# selection on a small 2-D example, then accuracy and prefill time against the visual budget
# on ToyVLM, compared with random pruning at the same place (before the LLM) and with FastV.

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

# %%
data = bench.load_data(n=16 if QUICK else 64, batch_size=16)
budgets = (0.1,) if QUICK else (0.5, 0.25, 0.1, 0.05)
rows = bench.sweep(data, budgets, ("divprune", "random@0") if QUICK else ("divprune", "fastv", "random@0"))
bench.print_sweep(rows)

# %%
bench.plot_sweep(rows, f"DivPrune before the LLM on {data.source}")
plt.show()
