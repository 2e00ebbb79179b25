"""Parity with the authors' code: each test re-implements the upstream rule in a few lines of our own
(citing repository, path and commit) and compares our default with it on random inputs.

Methods whose code is not public (or that we do not follow) are tested against their paper's
equation instead; the module cards say which.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from reference_impls.hallucination.attention_intervention import (
    VisualAttentionAmplification,
    amplified_attention,
    guided_logits,
)
from reference_impls.hallucination.contrastive_decoding import (
    VisualContrastiveDecoding,
    contrast_logits,
    distort_pixels,
)
from reference_impls.hallucination.efuf import EFUF
from reference_impls.hallucination.hallucination_metrics import chair, extract_objects, pope
from reference_impls.hallucination.npo import NPO
from reference_impls.hallucination.preference_optimization import dpo_loss
from reference_impls.hallucination.unlearning_losses import efuf_weights, ga_loss, npo_loss, sequence_logprob

# -- CHAIR ------------------------------------------------------------------------------------
# LisaAnne/Hallucination utils/chair.py @ 585f2d9c01ce19bd466de28d9236678df8450813, compute_chair:
# every object word of a caption (repeats included, after singularising) counts once in the
# CHAIR_i denominator and, if not a ground-truth object, once in the numerator; a caption with
# any such word counts for CHAIR_s.


def _upstream_chair(captions: list[list[str]], truths: list[set[str]], vocabulary: set[str]) -> tuple[float, float]:
    words_total = hallucinated_words = bad_captions = 0
    for words, truth in zip(captions, truths):
        found = [w for w in words if w in vocabulary]
        words_total += len(found)
        wrong = [w for w in found if w not in truth]
        hallucinated_words += len(wrong)
        bad_captions += bool(wrong)
    return bad_captions / len(captions), hallucinated_words / words_total


def test_chair_matches_upstream_counting_on_random_captions():
    rng = random.Random(0)
    shapes, colours = ["circle", "square", "triangle", "cross", "diamond"], ["red", "green", "blue", "and"]
    for _ in range(50):
        captions = [[rng.choice(shapes + colours) for _ in range(rng.randint(1, 9))] for _ in range(12)]
        captions[0] += ["square", "square"]  # repeated mentions are where the rules used to differ
        truths = [set(rng.sample(shapes, rng.randint(0, 3))) for _ in captions]
        expected_s, expected_i = _upstream_chair(captions, truths, set(shapes))
        scores = chair([extract_objects(c, shapes) for c in captions], truths)
        assert scores["chair_s"] == pytest.approx(expected_s)
        assert scores["chair_i"] == pytest.approx(expected_i)


def test_chair_audit_example():
    captions = ["red square and blue square and green square".split(), ["red", "circle"]]
    scores = chair([extract_objects(c, ["circle", "square"]) for c in captions], [{"circle"}, {"circle"}])
    assert scores["chair_i"] == pytest.approx(0.75) and scores["chair_s"] == pytest.approx(0.5)


# -- POPE -------------------------------------------------------------------------------------
# RUCAIBox/POPE evaluate.py (not in our code index), read as its copy in DAMO-NLP-SG/VCD
# experiments/eval/eval_pope.py @ 039af55ecd68005ea767b8579a5766f038a780ad: counts of TP/TN/FP/FN
# with "yes" positive; accuracy over all questions, yes-ratio = yes answers / questions.


def test_pope_matches_upstream_on_random_answers():
    rng = random.Random(1)
    for _ in range(100):
        n = rng.randint(4, 40)
        labels, answers = [rng.random() < 0.5 for _ in range(n)], [rng.random() < 0.6 for _ in range(n)]
        tp = sum(a and y for a, y in zip(answers, labels))
        tn = sum(not a and not y for a, y in zip(answers, labels))
        fp = sum(a and not y for a, y in zip(answers, labels))
        fn = sum(not a and y for a, y in zip(answers, labels))
        if tp == 0:
            continue  # upstream divides by zero there; we return 0 (documented)
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        ours = pope(answers, labels)
        assert ours["precision"] == pytest.approx(precision) and ours["recall"] == pytest.approx(recall)
        assert ours["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
        assert ours["accuracy"] == pytest.approx((tp + tn) / n)
        assert ours["yes_ratio"] == pytest.approx((tp + fp) / n)


# -- VCD --------------------------------------------------------------------------------------
# DAMO-NLP-SG/VCD @ 039af55ecd68005ea767b8579a5766f038a780ad
#   vcd_utils/vcd_sample.py: cutoff = log(beta) + max(logits); cd = (1 + a) l - a l_cd, -inf where l < cutoff
#   vcd_utils/vcd_add_noise.py: betas = sigmoid(linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5,
#     x_t = sqrt(cumprod(1 - betas)[t]) x + sqrt(1 - cumprod(1 - betas)[t]) noise
#   experiments/eval/object_hallucination_vqa_llava.py: cd_alpha 1, cd_beta 0.1, noise_step 500


def test_vcd_contrast_and_cutoff_match_upstream():
    generator = torch.Generator().manual_seed(2)
    method = VisualContrastiveDecoding()
    for _ in range(20):
        clean, noised = torch.randn(3, 50, generator=generator) * 3, torch.randn(3, 50, generator=generator) * 3
        cutoff = torch.log(torch.tensor(method.beta)) + clean.max(dim=-1, keepdim=True).values
        expected = ((1 + method.alpha) * clean - method.alpha * noised).masked_fill(clean < cutoff, float("-inf"))
        ours = contrast_logits(clean, noised, method.alpha, method.beta)
        assert torch.equal(torch.isinf(ours), torch.isinf(expected))
        assert torch.allclose(ours[~torch.isinf(ours)], expected[~torch.isinf(expected)], atol=1e-5)


def test_vcd_defaults_and_noise_match_upstream():
    method = VisualContrastiveDecoding()
    assert (method.alpha, method.beta, method.mode, method.noise_step) == (1.0, 0.1, "noise", 500)
    betas = torch.sigmoid(torch.linspace(-6, 6, 1000)) * (0.5e-2 - 1e-5) + 1e-5
    abar = torch.cumprod(1 - betas, dim=0)[method.noise_step]
    pixels = torch.randn(64, 12, generator=torch.Generator().manual_seed(3))
    eps = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(method.seed))  # our seeded draw
    expected = abar.sqrt() * pixels + (1 - abar).sqrt() * eps
    ours = distort_pixels(pixels, method.mode, method.noise_step, method.mask_ratio, method.seed, method.schedule)
    assert torch.allclose(ours, expected, atol=1e-5)


# -- PAI --------------------------------------------------------------------------------------
# LALBJ/PAI attention.py @ 4a085d1e39dae0d95d2fafe6ba24f0f9b8d49023 (llama_new_forward): weights =
# q k^T / sqrt(d) + mask; weights[:, :, -1, img] += alpha * |weights[:, :, -1, img]|; softmax.
# Defaults (chair_eval.py, README): alpha 0.2, layers start_layer=2 .. end_layer=32 (all but the first two).


def test_pai_rule_matches_upstream():
    generator = torch.Generator().manual_seed(4)
    alpha = VisualAttentionAmplification().alpha
    for _ in range(10):
        q, k, v = (torch.randn(2, 4, 6, 8, generator=generator) for _ in range(3))
        allowed = torch.ones(6, 6, dtype=torch.bool).tril()[None, None].expand(2, 1, 6, 6)
        visual = torch.zeros(2, 6, dtype=torch.bool)
        visual[:, 1:4] = True  # img_start_idx = 1, img_end_idx = 4
        mask = torch.zeros(6, 6).masked_fill(~allowed[0, 0], torch.finfo(torch.float32).min)
        weights = q @ k.transpose(2, 3) / 8**0.5 + mask
        weights[:, :, -1, 1:4] = weights[:, :, -1, 1:4].abs() * alpha + weights[:, :, -1, 1:4]
        expected = F.softmax(weights, dim=-1)
        out, probs = amplified_attention(q, k, v, allowed, visual, alpha, 8**-0.5)
        assert torch.allclose(probs, expected, atol=1e-6)
        assert torch.allclose(out, (expected @ v).transpose(1, 2), atol=1e-5)


def test_pai_defaults_match_upstream():
    method = VisualAttentionAmplification()
    assert (method.alpha, method.start_layer, method.end_layer, method.layers) == (0.2, 2, None, None)
    assert method.guidance is None and not method.amplify_first_token  # chair_eval.py: --use-cfg off by default


# LALBJ/PAI CFG.py @ 4a085d1e39dae0d95d2fafe6ba24f0f9b8d49023 (CFGLogits.__call__): s = log_softmax(scores);
# gamma == 1 returns s; u = log_softmax of the text-only stream's last logits; out = gamma (s - u) + u,
# -inf where s < log(0.1) + max s. README.md runs --gamma 1.1; chair_eval.py's default is 2.


def test_pai_guidance_matches_upstream_cfg_logits():
    generator = torch.Generator().manual_seed(5)
    for gamma in (1.1, 2.0, 1.0):
        for _ in range(10):
            scores, uncond = torch.randn(3, 40, generator=generator) * 3, torch.randn(3, 40, generator=generator) * 3
            s, u = F.log_softmax(scores, dim=-1), F.log_softmax(uncond, dim=-1)
            cutoff = torch.log(torch.tensor(0.1)) + s.max(dim=-1, keepdim=True).values
            expected = (gamma * (s - u) + u).masked_fill(s < cutoff, float("-inf"))
            ours = guided_logits(scores, uncond, gamma)
            assert torch.equal(torch.isinf(ours), torch.isinf(expected))
            assert torch.allclose(ours[~torch.isinf(ours)], expected[~torch.isinf(expected)], atol=1e-5)
            if gamma == 1.0:  # upstream returns s itself; inside the plausible set that is ours too
                assert torch.allclose(ours[~torch.isinf(ours)], s[~torch.isinf(ours)], atol=1e-5)


def test_pai_default_layer_range_is_from_the_third_layer():
    from reference_impls.common.tiny import tiny_qwen25vl

    model = tiny_qwen25vl(seed=0)
    layers = model.model.language_model.layers
    with VisualAttentionAmplification()(model):
        changed = [i for i, layer in enumerate(layers) if hasattr(layer.self_attn, "_atlas_pai")]
    assert changed == list(range(2, len(layers)))


# -- DPO --------------------------------------------------------------------------------------
# eric-mitchell/direct-preference-optimization trainers.py @ 8a4023f5a5bde957b5d44f687569e075ff54e4f7
# preference_loss (label_smoothing 0, not IPO, not reference-free):
#   logits = (pi_chosen - pi_rejected) - (ref_chosen - ref_rejected); losses = -logsigmoid(beta * logits)


def test_dpo_loss_matches_upstream():
    generator = torch.Generator().manual_seed(5)
    for beta in (0.1, 0.5, 2.0):
        pc, pr, rc, rr = (torch.randn(16, generator=generator) * 5 for _ in range(4))
        expected = -F.logsigmoid(beta * ((pc - pr) - (rc - rr))).mean()
        assert torch.allclose(dpo_loss(pc, pr, rc, rr, beta), expected, atol=1e-6)


# -- GA and NPO -------------------------------------------------------------------------------
# licong-lin/negative-preference-optimization TOFU/dataloader.py @ 9e5f646b09bb5f1a6eed16085220ed1c3affa42d
# (CustomTrainerForgetting.compute_loss): grad_ascent: loss = -outputs.loss (token-mean CE over the
# labelled tokens of the batch); npo: neg_log_ratios = nll_sum(model) - nll_sum(ref) per sequence,
# loss = -logsigmoid(beta * neg_log_ratios).mean() * 2 / beta; beta 0.1 in its configs.


def _labelled(generator: torch.Generator):
    logits = torch.randn(4, 9, 13, generator=generator) * 2
    labels = torch.randint(0, 13, (4, 9), generator=generator)
    mask = (torch.rand(4, 9, generator=generator) < 0.6).long()
    mask[:, 1] = 1  # at least one labelled token per row
    hf_labels = labels.masked_fill(mask == 0, -100)  # how HF / TOFU mark unlabelled tokens
    return logits, labels, mask, hf_labels


def _batch_nll(logits: torch.Tensor, hf_labels: torch.Tensor) -> torch.Tensor:
    """TOFU's get_batch_loss: summed token cross-entropy per sequence (shifted, -100 ignored)."""
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), hf_labels[:, 1:], ignore_index=-100, reduction="none")
    return ce.sum(-1)


def test_ga_loss_matches_upstream():
    logits, labels, mask, hf_labels = _labelled(torch.Generator().manual_seed(6))
    expected = -F.cross_entropy(logits[:, :-1].reshape(-1, 13), hf_labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(ga_loss(logits, labels, mask), expected, atol=1e-6)


def test_npo_loss_and_default_beta_match_upstream():
    generator = torch.Generator().manual_seed(7)
    beta = NPO().beta
    assert beta == 0.1
    for _ in range(5):
        logits, labels, mask, hf_labels = _labelled(generator)
        ref_logits = logits + torch.randn(logits.shape, generator=generator)
        neg_log_ratios = _batch_nll(logits, hf_labels) - _batch_nll(ref_logits, hf_labels)
        expected = -F.logsigmoid(beta * neg_log_ratios).mean() * 2 / beta
        ours = npo_loss(sequence_logprob(logits, labels, mask), sequence_logprob(ref_logits, labels, mask), beta)
        assert torch.allclose(ours, expected, atol=1e-5)


# -- EFUF -------------------------------------------------------------------------------------
# starreeze/efuf finetune/loss.py @ 06cd1ad31302841a32a9c8624c4f58d15fce2003 (get_loss,
# WeightScheduler) with the defaults of common/args.py @ 00d19fe80a28fd546e08d6235cb4251900913696:
# per-sample losses (reduction "none"); pos weighted by its score, sent by its score, neg by
# (23 + 32 - score); pos_w 1 -> 0.5 linearly over training, neg_w 0.4 until 40% then -> 0, sent_w
# 0.2, gold_w 0; the sum (pos + sent - neg) is divided by (pos_w + gold_w + sent_w - neg_w).


def _upstream_schedule(start: float, end: float, total: int, begin: float, step: int) -> float:
    first, last = total * begin, total * 1.0
    if step < first:
        return start
    if step > last:
        return end
    return start + (end - start) * (step - first) / (last - first)


def _upstream_efuf_loss(nll: dict[str, torch.Tensor], scores: dict[str, torch.Tensor], step: int, total: int):
    pos_w = _upstream_schedule(1.0, 0.5, total, 0.0, step)
    neg_w = _upstream_schedule(0.4, 0.0, total, 0.4, step)
    gold_w, sent_w, max_score = 0.0, 0.2, 23.0 + 32.0
    pos = (nll["grounded"] * scores["grounded"]).mean() * pos_w
    sent = (nll["retain"] * scores["retain"]).mean() * sent_w
    neg = (nll["forget"] * (max_score - scores["forget"])).mean() * neg_w
    return (pos + sent - neg) / (pos_w + gold_w + sent_w - neg_w)


class _LogitsOnly:
    """Stands in for the trainer: a batch carries its own logits."""

    def logits(self, batch: dict) -> torch.Tensor:
        return batch["logits"]


def test_efuf_objective_matches_upstream_get_loss():
    generator = torch.Generator().manual_seed(8)
    batches, nll, scores = {}, {}, {}
    for name, centre in (("forget", 18.0), ("grounded", 36.0), ("retain", 30.0)):
        logits, labels, mask, hf_labels = _labelled(generator)
        scores[name] = centre + 3 * torch.randn(4, generator=generator)
        batches[name] = {"logits": logits, "labels": labels, "mask": mask, "scores": scores[name]}
        ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), hf_labels[:, 1:], ignore_index=-100, reduction="none")
        nll[name] = ce.sum(-1) / (hf_labels[:, 1:] != -100).sum(-1)  # per-sample token mean
    total = 50
    method = EFUF(steps=total)
    assert (method.t_hal, method.t_norm, method.weighting) == (23.0, 32.0, "upstream")
    for step in (0, 10, 20, 30, 45, 50):
        ours = sum(t.weight_at(step) * t.loss(_LogitsOnly(), batches[t.batch])[0] for t in method.terms())
        assert torch.allclose(ours, _upstream_efuf_loss(nll, scores, step, total), atol=1e-5), step


def test_efuf_forget_weights_are_upstream_raw_weights():
    scores = torch.rand(10, generator=torch.Generator().manual_seed(8)) * 60
    assert torch.allclose(efuf_weights(scores), 23.0 + 32.0 - scores)
    mean_one = efuf_weights(scores, normalise=True)  # the documented opt-in variant
    assert torch.allclose(mean_one.mean(), torch.tensor(1.0)) and (mean_one >= 0).all()


def test_efuf_refuses_a_batch_without_scores():
    logits, labels, mask, _ = _labelled(torch.Generator().manual_seed(3))
    for term in EFUF().terms():
        with pytest.raises(ValueError, match="scores"):
            term.loss(_LogitsOnly(), {"logits": logits, "labels": labels, "mask": mask})


# -- Methods without reference code: their equations ------------------------------------------


def test_steering_vector_is_the_mean_difference_equation():
    from reference_impls.hallucination.representation_steering import mean_difference

    generator = torch.Generator().manual_seed(9)
    pos, neg = torch.randn(5, 7, 6, generator=generator), torch.randn(5, 4, 6, generator=generator)
    pos_mask, neg_mask = torch.rand(5, 7, generator=generator) < 0.5, torch.rand(5, 4, generator=generator) < 0.7
    pos_mask[:, 0] = neg_mask[:, 0] = True
    expected = torch.stack([pos[i][pos_mask[i]].mean(0) - neg[i][neg_mask[i]].mean(0) for i in range(5)]).mean(0)
    assert torch.allclose(mean_difference(pos, pos_mask, neg, neg_mask), expected, atol=1e-6)


def test_gaussian_noise_is_the_equation():
    from reference_impls.hallucination.robustness import gaussian_noise

    model = torch.nn.Linear(6, 4)
    noisy = gaussian_noise(model, alpha=0.3, seed=2)
    generator = torch.Generator().manual_seed(2)
    for p, q in zip(model.parameters(), noisy.parameters()):
        expected = p + 0.3 * p.std() * torch.randn(p.shape, generator=generator)
        assert torch.allclose(q, expected, atol=1e-6)
