# %% [markdown]
# # Confidence-gated answering (CAR-style routing)
#
# Answer cheaply and spend more only when unsure. The cheap pass answers from a quarter of the
# visual tokens; if the first answer token's probability is below a threshold, the question is
# re-asked with all visual tokens (or answered by self-consistency over sampled answers). This
# notebook shows, on ToyVLM (or a random-init Qwen2.5-VL when no checkpoint is available),
# whether the cheap pass's confidence separates its right answers from its wrong ones, and the
# accuracy against compute curve traced by the threshold.

# %%
import os

import matplotlib.pyplot as plt
import torch

from reference_impls.bench.reasoning import FIRST_KEEP, collect, route
from reference_impls.bench.speculative import load_setting

QUICK = os.environ.get("ATLAS_QUICK") == "1"
torch.set_num_threads(1)
setting = load_setting(8 if QUICK else 40, seed=2)
escalations = ("full-visual",) if QUICK else ("full-visual", "self-consistency")
# per question: the cheap pass alone, and each escalation (both passes) -- see bench.reasoning
records = collect(setting, escalations, samples=3 if QUICK else 5)
print(
    setting.name, "|", len(setting.inputs), "questions | cheap pass sees", f"{FIRST_KEEP:.0%}", "of the visual tokens"
)

# %% [markdown]
# ## Is the cheap pass's confidence informative?
# Confidence (top probability of the first answer token) of the cheap pass, split by whether
# its answer was right.

# %%
right = [confidence for correct, confidence, *_ in records["cheap"] if correct]
wrong = [confidence for correct, confidence, *_ in records["cheap"] if not correct]
print(f"cheap pass accuracy {100 * len(right) / len(records['cheap']):.1f}%")
plt.hist([right, wrong], bins=10, range=(0, 1), label=["right", "wrong"], stacked=True)
plt.xlabel("confidence of the cheap answer")
plt.ylabel("questions")
plt.legend()
plt.show()

# %% [markdown]
# ## Accuracy against compute
# Each point is a threshold; compute is the number of tokens the language model processes per
# question (both passes when escalated). The star is the plain answer from all visual tokens.
# Gating pays only where its curve rises above the star's accuracy at fewer tokens: that needs
# a cheap pass that is much cheaper and whose confidence is calibrated. A pruned ToyVLM is
# often confidently wrong (an object it cannot see is "not there"), which the curve exposes.

# %%
rows = route(records, thresholds=(0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.995, 0.998, 1.01))
baseline, rows = rows[0], rows[1:]
plt.scatter(
    [baseline["lm_tokens"]],
    [baseline["accuracy"]],
    marker="*",
    s=150,
    color="black",
    label="all visual tokens, one pass",
)
print(
    f"baseline (all visual tokens, one pass): accuracy {baseline['accuracy']:.1f}%, LM tokens {baseline['lm_tokens']:.1f}"
)
for escalation in escalations:
    mine = [r for r in rows if r["escalation"] == escalation]
    plt.plot([r["lm_tokens"] for r in mine], [r["accuracy"] for r in mine], marker="o", label=escalation)
    for r in mine:
        plt.annotate(f"{r['threshold']:g}", (r["lm_tokens"], r["accuracy"]))
    for r in mine:
        print(
            f"{escalation:16s} threshold {r['threshold']:4.2f}: accuracy {r['accuracy']:5.1f}%, "
            f"escalated {r['escalated']:5.1f}%, LM tokens {r['lm_tokens']:6.1f}, decoded {r['decoded_tokens']:.2f}"
        )
plt.xlabel("LM tokens per question")
plt.ylabel("accuracy (%)")
plt.legend()
plt.show()
