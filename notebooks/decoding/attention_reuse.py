# %% [markdown]
# # Attention reuse: later layers borrow an earlier layer's attention map
#
# An *anchor* layer computes `softmax(QK^T / sqrt(d))` as usual; a *sharer* skips the scores
# and the softmax and multiplies the anchor's probabilities by its own values. The survey
# (arXiv 2604.05546) names the category; the rule here is our reconstruction. On ToyVLM v2
# (6 language-model layers; the short suite's prompts: 16 images of 64 visual tokens, 1,024 in
# all, then the question; the reply decoded until `<eos>` and scored by exact match) the notebook
# (1) measures how different the layers' attention maps are, (2) runs sharing patterns on
# held-out questions, with reuse in the prefill or in the reply's decode steps only, (3) breaks
# down what one shared layer saves in FLOPs, and (4) shows the committed benchmark tables.
# Everything runs on CPU with one thread.

# %%
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from reference_impls.bench.attention_reuse import chat_patterns, chat_rows
from reference_impls.common.results import RESULTS_DIR
from reference_impls.common.toyvlm_v2 import load_toyvlm_v2
from reference_impls.decoding.attention_reuse import attention_flops

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
toy = load_toyvlm_v2()
model = toy.model.eval()
text_config = model.config.text_config
print(
    f"ToyVLM v2: {text_config.num_hidden_layers} layers, {text_config.num_attention_heads} query / "
    f"{text_config.num_key_value_heads} KV heads, hidden {text_config.hidden_size}"
)

# %% [markdown]
# ## How far apart are the layers' attention maps?
#
# Total-variation distance between the probability rows of two layers (0: identical, 1:
# disjoint), averaged over heads, query rows and samples; eager attention returns the maps.
# The left panel uses every query row, the right one only the last row (the `answer` token,
# whose next-token distribution is the reply's first word).

# %%
samples = toy.samples(1 if QUICK else 4, seed=99, suite="short")
n_layers = text_config.num_hidden_layers
distance = torch.zeros(2, n_layers, n_layers)
previous = text_config._attn_implementation
text_config._attn_implementation = "eager"
try:
    with torch.no_grad():
        for sample in samples:
            maps = model(**toy.collate([sample]), output_attentions=True).attentions  # L x (1, H, N, N)
            for a in range(n_layers):
                for b in range(a + 1, n_layers):
                    tv = 0.5 * (maps[a][0] - maps[b][0]).abs().sum(-1)  # (H, N)
                    for d, value in ((0, tv.mean()), (1, tv[:, -1].mean())):
                        distance[d, a, b] += value / len(samples)
                        distance[d, b, a] += value / len(samples)
finally:
    text_config._attn_implementation = previous
print(
    "TV distance of neighbouring layers (all rows):",
    [round(float(distance[0, l, l + 1]), 2) for l in range(n_layers - 1)],
)
fig, axes = plt.subplots(1, 2, figsize=(9, 4))
for ax, d, title in zip(axes, distance, ("all query rows", "last row ('answer')")):
    im = ax.imshow(d.numpy(), vmin=0, vmax=1, cmap="magma")
    for a in range(n_layers):
        for b in range(n_layers):
            ax.text(b, a, f"{d[a, b]:.2f}", ha="center", va="center", color="w" if d[a, b] < 0.5 else "k", fontsize=7)
    ax.set_title(title)
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
fig.colorbar(im, ax=axes)
plt.show()

# %% [markdown]
# ## Sharing patterns on held-out questions
#
# `a->b` means layer `b` uses layer `a`'s map: every adjacent pair alone, the disjoint pairs
# together, and layer 0 lending to every other layer (`chat_patterns`). "visual" borrows only
# the visual-token columns (the layer keeps its own softmax over the text tokens, scaled to the
# mass the anchor left for them). Each pattern runs twice on the same samples
# (`chat_rows` of the benchmark): reuse in the prefill only, and reuse in the reply's decode
# steps only (the prompt is prefilled unmodified; here that is the `<eos>` step after the one-word
# answer, see the last section). Exact match is split into needle questions
# (colour, shape, presence, size, which image: one object) and aggregation (`count` over 16
# images, which the model gets wrong more often than right even unmodified: `docs/notes/toyvlm.md`
# §5, so that column says little). "Saved" is the analytic share of the prefill's attention FLOPs
# saved at this prompt length. With a few samples the figures move by several points between
# runs; the benchmark's ten seeds with paired tests are read in the section after the FLOPs.

# %%
patterns = chat_patterns(n_layers)
if QUICK:
    patterns = {k: patterns[k] for k in ("none", "0->1", "0->" + ",".join(map(str, range(1, n_layers))))}
n = 2 if QUICK else 16
rows = chat_rows(toy, n, 4321, "short", patterns)
base = rows[0]
print(f"unmodified: {base['accuracy']:.1f}% exact match on {n} samples ({base['prompt_tokens']} prompt tokens)")
print(f"{'variant':<34}{'prefill':>9}{'needle':>8}{'aggr.':>7}{'decode':>8}{'saved':>8}")
for row in rows:
    print(
        f"{row['variant']:<34}{row['accuracy']:>8.1f}%{row['needle_accuracy']:>7.1f}%{row['aggregation_accuracy']:>6.1f}%"
        f"{row['decode_accuracy']:>7.1f}%{row['attn_saved']:>7.1f}%"
    )
names = [row["pattern"] for row in rows if row["columns"] == "all" and row["reused_layers"]]
by_variant = {(row["pattern"], row["columns"]): row for row in rows}
fig, ax = plt.subplots(figsize=(8, 3))
x = torch.arange(len(names)).numpy()
for offset, columns, label in ((-0.2, "all", "all columns"), (0.2, "visual", "visual columns only")):
    ax.bar(x + offset, [by_variant[name, columns]["accuracy"] for name in names], 0.4, label=label)
ax.axhline(base["accuracy"], color="k", ls="--", label="unmodified")
ax.set_xticks(x, names, rotation=45, ha="right")
ax.set_ylabel("exact match, reuse in prefill (%)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## What one shared layer saves (analytic FLOPs)
#
# Prefill of 4096 tokens in a layer with hidden 512 and 8 query / 2 KV heads (the shape of the
# wall-time benchmark), scores and `PV` over causal blocks of 512 query rows. A sharer drops the
# scores and the softmax; with visual columns only it still scores the text columns (5% here).
# The last bar adds what skipping the sharer's Q and K projections would save, which our
# implementation does **not** do (the module's forward computes them before the attention
# function runs, and the keys go to the cache).

# %%
dims = dict(hidden=512, heads=8, kv_heads=2, head_dim=64, block=512)
N = 4096
bars = {
    "full layer": attention_flops(N, N, **dims),
    "sharer": attention_flops(N, N, reused=True, **dims),
    "sharer, visual\ncolumns only": attention_flops(N, N, reused=True, own_columns=N // 20, **dims),
}
bars["sharer, Q/K proj\nskipped (not done)"] = dict(bars["sharer"], q_proj=0, k_proj=0)
parts = ["q_proj", "k_proj", "v_proj", "qk", "softmax", "pv", "o_proj"]
bottom = torch.zeros(len(bars)).numpy()
fig, ax = plt.subplots(figsize=(7, 3.5))
for part in parts:
    values = torch.tensor([float(b[part]) / 1e9 for b in bars.values()]).numpy()
    ax.bar(list(bars), values, bottom=bottom, label=part)
    bottom += values
ax.set_ylabel("GFLOPs per layer")
ax.legend(fontsize=7, ncol=2)
plt.show()
full = bars["full layer"]["total"]
for label, b in bars.items():
    total = sum(b[p] for p in parts)
    print(f"{label.replace(chr(10), ' '):<36} {total / 1e9:6.2f} GFLOPs  ({100 * (1 - total / full):4.1f}% saved)")

# %% [markdown]
# ## The committed benchmark (ten seeds; wall time at 4096 tokens)
#
# `python -m reference_impls.bench.attention_reuse --suite short` and `--suite long` write the
# ToyVLM v2 tables (`attention-reuse-toyvlm-v2-short` and `-long`, with paired tests against the
# unmodified model in their `-tests` files); `python -m reference_impls.bench.attention_reuse`
# writes the cost table
# (`attention-reuse-cost`, a random-init text model, no ToyVLM). They are read here, not
# recomputed. Wall times were measured on a shared, contended CPU: compare rows within a table.

# %%
for result_id in ("attention-reuse-toyvlm-v2-short", "attention-reuse-toyvlm-v2-long", "attention-reuse-cost"):
    path = Path(RESULTS_DIR) / f"{result_id}.json"
    if not path.exists():
        print(f"{path.name} not found: run the benchmark")
        continue
    results = json.loads(path.read_text())
    keys = [c["key"] for c in results["columns"]]
    print(results["title"])
    print(" | ".join(keys))
    for row in results["rows"]:
        print(" | ".join(str(row[k]) for k in keys))
    print()

# %% [markdown]
# ## What to read, and what did not work
#
# - Accuracy: a pattern is harmless when its exact match stays within the benchmark's interval
#   of the unmodified model's on the needle questions; the distances in the first plot say which
#   neighbours are close enough to try.
# - Reuse in decode steps only leaves the prompt's cache untouched and changes only how each
#   reply token reads it. On the short suite the reply is one word and `<eos>`: the word comes
#   from the unmodified prefill and only the `<eos>` step is decoded with reuse, so that column
#   can only lose a missing `<eos>`. The long suite's replies (about 10 tokens) test it, and
#   there decode-time reuse costs more than reuse in the prefill: in the `-long` table above the
#   early patterns (0->1, 1->2, one anchor) fall to 0-3% exact match against the unmodified
#   model's 29%, and 4->5 loses 4 points (sign test p = 0.016), while 2->3 stays level. The
#   unmodified model is itself right less often on that suite (`docs/notes/toyvlm.md` §5).
# - The FLOP saving is bounded by the sharers' scores and softmax: projections and `PV` stay,
#   so sharing 3 of 4 layers saves 30% of the attention FLOPs at 4096 tokens
#   (`attention-reuse-cost`); the "saved" column above gives ToyVLM v2's share at its prompt
#   length.
# - It is not faster on CPU (`attention-reuse-cost`): anchors must materialise their
#   probabilities (512 MiB at 4096 tokens) instead of running the fused sdpa kernel, and sharers
#   read them back, so the prefill runs at 0.73-0.87x the unmodified model's speed (still
#   2.7-3.2x faster than eager attention); a decode step is 1.0-1.09x.
