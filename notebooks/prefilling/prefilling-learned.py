# %% [markdown]
# # Learned compressors: VisionSelector
#
# A learned compressor decides which visual tokens the LLM keeps with parameters trained for that
# decision. VisionSelector puts a small scorer after the vision tower's merger (a query and a key
# projection; a token's score is its mean scaled query-key product over all visual tokens) and
# keeps the top-scored fraction before the first LLM layer. Only the scorer is trained, with the
# model frozen: a differentiable top-k turns the scores into a soft mask that scales the visual
# embeddings, and the loss is the answer's cross-entropy plus a binary cross-entropy between the
# soft mask and the hard top-k, whose weight grows during training (the curriculum).
#
# Here: the differentiable top-k on a toy vector, the committed scorer (trained on ToyVLM v2 by
# `python -m reference_impls.prefilling.train_vision_selector --threads 1`), what it keeps on
# held-out samples of the short suite (16 images of 64 tokens), and the committed benchmark.

# %%
import json
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.common.chat_scenes import evidence_tokens
from reference_impls.common.tiny import visual_mask
from reference_impls.common.toyvlm_v2 import load_toyvlm_v2
from reference_impls.common.visual_tokens import keep_count
from reference_impls.prefilling import bench
from reference_impls.prefilling.vision_selector import CHECKPOINT_DIR, SelectorScorer, load_selector, soft_topk_mask

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)

# %% [markdown]
# ## The differentiable top-k
#
# `sigmoid(score + t)`, with `t` found by bisection so that the mask sums to k: a soft version of
# "keep the k largest". The gradient flows to every score; scaling the scores up (what training
# does as the hard-mask penalty grows) turns the soft mask into the hard one.

# %%
scores = torch.randn(1, 40, generator=torch.Generator().manual_seed(0))
for scale in (0.5, 2.0, 8.0):
    mask = soft_topk_mask(scores * scale, 8)
    print(
        f"scale {scale:>4}: mask sum {mask.sum():.2f}, mask of the 8 best {mask[0, scores[0].topk(8).indices].mean():.2f}"
    )

# %% [markdown]
# ## The committed scorer
#
# Its manifest: the command, steps, wall time, the training streams and the held-out check (the
# reply cross-entropy with the hard selection at the training budget, on training-seed samples
# past every training index, for the trained scorer, the untrained one, random scores and all
# tokens).

# %%
manifest = json.loads((CHECKPOINT_DIR / "manifest.json").read_text())
for key in ("command", "steps_done", "batch", "budget", "wall_seconds", "scenes", "parameters"):
    print(f"{key:>14}: {manifest[key]}")
print("held-out CE:", manifest["heldout_hard_selection_ce"])
scorer = load_selector()

# %% [markdown]
# ## What it keeps
#
# On samples of the tuning seed (never reported) of ToyVLM v2's short suite: the share of the
# tokens showing the object the question is about that each rule keeps at 25% and 10% of the
# visual tokens, and the share of all tokens showing any object, for the trained scorer, the
# untrained one (upstream's near-zero init) and random scores. The scorer never sees the question.

# %%
bundle = load_toyvlm_v2()
model, config = bundle.model, bundle.model.config
samples = bundle.samples(4 if QUICK else 32, seed=1, suite="short")
torch.manual_seed(0)
untrained = SelectorScorer(config.text_config.hidden_size)
generator = torch.Generator().manual_seed(0)
recall = {(name, budget): [] for name in ("trained", "untrained", "random") for budget in (0.25, 0.1)}
objects_kept = {key: [] for key in recall}  # share of the tokens showing any object
example = None
for sample in samples:
    relevant = evidence_tokens(sample)  # visual-token indices showing what the question asks about
    showing = {t for tokens in sample.scene.object_tokens for t in tokens}
    if not relevant:
        continue
    inputs = bundle.collate([sample])
    with torch.no_grad():
        embeds = model.model(**inputs, output_hidden_states=True).hidden_states[0][0]  # (N, D) entering layer 0
        visual = visual_mask(inputs["input_ids"][0], config)
        rankings = {
            "trained": scorer(embeds[visual]),
            "untrained": untrained(embeds[visual]),
            "random": torch.rand(int(visual.sum()), generator=generator),
        }
    for (name, budget), values in recall.items():
        kept = set(rankings[name].topk(keep_count(int(visual.sum()), budget)).indices.tolist())
        values.append(len(kept & relevant) / len(relevant))
        objects_kept[(name, budget)].append(len(kept & showing) / len(showing))
    if example is None:
        example = (sample, rankings["trained"], relevant)
for (name, budget), values in recall.items():
    objects = objects_kept[(name, budget)]
    print(
        f"{name:>9} at {budget:.0%}: evidence kept {100 * sum(values) / len(values):5.1f}%, "
        f"object tokens kept {100 * sum(objects) / len(objects):5.1f}% ({len(values)} samples)"
    )

# %%
sample, token_scores, relevant = example
bench.plot_token_scores(token_scores, relevant, sample.qa.question, "trained scorer")
plt.show()

# %% [markdown]
# ## Benchmark results (committed)
#
# `python -m reference_impls.prefilling.bench --suite short`: exact match of the replies decoded
# through each rule, 10 reported seeds of 32 held-out samples, against random pruning before the
# LLM at the same budget, paired by seed; the training-free methods ran on the same seeds and
# samples, so they pair too (from the per-seed values the file keeps).

# %%
others = ("random@0", "divprune", "pyramiddrop", "fastv", "trim+similar")
bench.show_committed(
    ("vision-selector", "divprune", "pyramiddrop", "trim+similar", "random@0"),
    "Learned selection on ToyVLM v2 (committed, 10 seeds)",
    pairs=tuple(("vision-selector", other) for other in others),
)
plt.show()
