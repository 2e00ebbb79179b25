# %% [markdown]
# # Question-guided visual token selection: TRIM
#
# TRIM ranks the visual tokens by their similarity to the question before the LLM sees them and
# keeps the top share; no attention weights are read. Upstream measures the similarity in CLIP's
# space (one text embedding of the question, CLIP-projected patches) and, in its code, negates
# it before the softmax. ToyVLM v2 has no CLIP text tower, so our implementation scores the
# visual embeddings entering the LLM against the mean input embedding of the question's tokens,
# with upstream's sign by default (`trim`) and the opposite sign as a variant (`trim+similar`).
#
# First the scoring on a few held-out samples of ToyVLM v2's short suite (16 images of 64
# tokens, the question last): how many of the tokens that show the object the question is about
# each rule keeps at 10% of the visual tokens. Then the committed benchmark results are read back.

# %%
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.common.chat_scenes import evidence_tokens
from reference_impls.common.tiny import visual_mask
from reference_impls.common.toyvlm_v2 import load_toyvlm_v2
from reference_impls.common.visual_tokens import keep_count
from reference_impls.prefilling import bench
from reference_impls.prefilling.trim import question_relevance, question_tokens

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
bundle = load_toyvlm_v2()
model, config = bundle.model, bundle.model.config
samples = bundle.samples(4 if QUICK else 32, seed=1, suite="short")  # seed 1: the tuning seed, never reported
print(samples[0].qa.question, "->", samples[0].qa.answer)

# %% [markdown]
# For each sample: the LLM inputs (hidden states entering layer 0), the question tokens (the
# prompt text after the last image) and TRIM's scores. "Evidence kept" is the share of the
# tokens showing the question's objects that a rule keeps at 10% of the visual tokens.

# %%
recall = {"trim": [], "trim+similar": [], "random": []}
generator = torch.Generator().manual_seed(0)
example = None
for sample in samples:
    inputs = bundle.collate([sample])
    with torch.no_grad():
        embeds = model.model(**inputs, output_hidden_states=True).hidden_states[0][0]  # (N, D)
    ids = inputs["input_ids"][0]
    visual = visual_mask(ids, config)
    markers = (ids == config.vision_start_token_id) | (ids == config.vision_end_token_id)
    text = inputs["attention_mask"][0].bool() & ~visual & ~markers
    question = question_tokens(text[None], visual[None])[0]
    relevant = evidence_tokens(sample)  # visual-token indices showing what the question asks about
    if not relevant:
        continue
    k = keep_count(int(visual.sum()), 0.1)
    rankings = {
        "trim": question_relevance(embeds[visual], embeds[question]),
        "trim+similar": question_relevance(embeds[visual], embeds[question], negate=False),
        "random": torch.rand(int(visual.sum()), generator=generator),
    }
    for name, scores in rankings.items():
        kept = set(scores.topk(k).indices.tolist())
        recall[name].append(len(kept & relevant) / len(relevant))
    if example is None:
        example = (sample, rankings["trim+similar"], relevant)
for name, values in recall.items():
    print(f"{name:>13}: evidence kept at 10% {100 * sum(values) / len(values):5.1f}% over {len(values)} samples")

# %% [markdown]
# The scores of one sample, token by token (16 images of 64 tokens in prompt order), with the
# tokens showing the object the question is about marked.

# %%
sample, scores, relevant = example
bench.plot_token_scores(scores, relevant, sample.qa.question, "score (trim+similar)")
plt.show()

# %% [markdown]
# ## Benchmark results (committed)
#
# `python -m reference_impls.prefilling.bench --suite short`: exact match of the replies decoded
# through each rule, 10 reported seeds of 32 held-out samples, against random pruning before the
# LLM at the same budget and TRIM's default against its variant, paired by seed; DivPrune and
# PyramidDrop ran on the same seeds and samples, so they pair too (from the per-seed values the
# file keeps).

# %%
bench.show_committed(
    ("trim", "trim+similar", "divprune", "pyramiddrop", "random@0"),
    "Question-guided pruning on ToyVLM v2 (committed, 10 seeds)",
    pairs=(("trim+similar", "divprune"), ("trim+similar", "pyramiddrop")),
)
plt.show()
