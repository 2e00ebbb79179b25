"""Pure tensor losses for unlearning and its retain terms: GA, NPO, EFUF weighting, NLL, KL.

All functions take next-token ``logits`` (B, T, V) and ``labels`` (B, T) aligned the way causal
language models are trained: the logits at position ``t`` predict ``labels[:, t + 1]``. A
``mask`` (B, T) marks which label positions count (the hallucinated span for forget losses, the
grounded tokens or the whole caption for retain losses). Label ids where the mask is off are
never read, so padding or ``-100`` there cannot leak into a loss or a gradient.

- ``ga``: gradient ascent, ``L = -mean_nll(mask)``; unbounded, it destroys utility quickly.
- ``npo`` (Zhang et al. 2024, negative preference optimisation): ``L = -(2/beta) mean_i log
  sigmoid(-beta r_i)`` with ``r_i`` the sequence-summed log-ratio against a frozen reference
  model. Its gradient is GA's with a per-sample weight ``2 sigmoid(beta r_i)`` in (0, 2) that
  decays as the sample is forgotten; at the reference point ``L = (2/beta) log 2``.
- ``efuf``: per-sample GA weighted by ``(t_hal + t_norm - score)`` (EFUF, arXiv 2402.09801:
  the lower a span's CLIP-like score, the more it is pushed down); its positive terms weight each
  sample's NLL by the score itself (:func:`weighted_nll`).
- retain terms: :func:`mean_nll` and :func:`kl_to_reference` (padding masked, unlike the
  open-unlearning helper, which averages over padded positions too).

Examples:
    >>> import torch
    >>> logits, labels = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    >>> mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]])
    >>> ref = sequence_logprob(logits, labels, mask)
    >>> round(float(npo_loss(ref, ref, beta=0.5)), 4)  # (2 / 0.5) * log 2
    2.7726

Upstream: GA and NPO follow licong-lin/negative-preference-optimization TOFU/dataloader.py @
9e5f646b09bb5f1a6eed16085220ed1c3affa42d (``grad_ascent``: minus HF's token-mean loss; ``npo``:
sequence-summed NLL ratio); the EFUF weight follows starreeze/efuf finetune/loss.py @
06cd1ad31302841a32a9c8624c4f58d15fce2003. ``tests/hallucination/test_parity.py`` re-implements each.

Deviations / guesses: the EFUF thresholds 23 and 32 are the public code's defaults for CLIP
scores on a x100 scale; our synthetic scenes have no CLIP, so callers pass their own scores.
:func:`efuf_weights` returns upstream's raw ``t_hal + t_norm - score``; ``normalise=True`` is the
pre-parity variant (clipped at 0, divided by the batch mean; see :mod:`.efuf`). :func:`kl_to_reference` averages over
masked positions only; upstream's ``KL`` variant uses ``kl_div(..., reduction="batchmean")`` over
every position of the flattened batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "token_logprobs",
    "sequence_logprob",
    "mean_nll",
    "ga_loss",
    "npo_loss",
    "efuf_weights",
    "per_sample_nll",
    "weighted_nll",
    "weighted_ga_loss",
    "kl_to_reference",
]


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-probability of each masked label under next-token ``logits``; 0 where the mask is off.

    Args:
        logits: (B, T, V) next-token logits.
        labels: (B, T) token ids; position ``t`` is predicted by ``logits[:, t - 1]``.
        mask: (B, T) which label positions count (bool or 0/1).

    Returns:
        (B, T - 1) log-probabilities aligned with ``labels[:, 1:]``.
    """
    keep = mask[:, 1:].bool()  # (B, T-1)
    # Label ids outside the mask are replaced before gathering: they may be -100 or random.
    targets = labels[:, 1:].masked_fill(~keep, 0)  # (B, T-1)
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return picked.masked_fill(~keep, 0.0)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over the masked positions of each sequence's label log-probabilities. Shape (B,)."""
    return token_logprobs(logits, labels, mask).sum(-1)


def mean_nll(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-mean negative log-likelihood over all masked positions of the batch (0 if none)."""
    count = mask[:, 1:].bool().sum().clamp(min=1)
    return -token_logprobs(logits, labels, mask).sum() / count


def ga_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Gradient-ascent forget loss ``-mean_nll``: minimising it lowers the span's probability."""
    return -mean_nll(logits, labels, mask)


def npo_loss(seq_logprob: torch.Tensor, ref_seq_logprob: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO forget loss from sequence log-probabilities under the model and the frozen reference.

    Args:
        seq_logprob: (B,) summed log-probabilities of the forget spans under the model.
        ref_seq_logprob: (B,) the same under the reference model (no gradient needed).
        beta: inverse temperature; as beta -> 0 the gradient tends to GA's (summed over tokens).

    Returns:
        Scalar ``-(2/beta) mean_i log sigmoid(-beta r_i)``, ``r_i = seq_logprob - ref``.
    """
    ratio = seq_logprob - ref_seq_logprob.detach()  # (B,)
    return -(2.0 / beta) * F.logsigmoid(-beta * ratio).mean()


def efuf_weights(
    scores: torch.Tensor, t_hal: float = 23.0, t_norm: float = 32.0, normalise: bool = False
) -> torch.Tensor:
    """EFUF's per-sample forget weight ``t_hal + t_norm - score``. Shape (B,).

    ``normalise=True`` clips the weights at 0 and divides them by their batch mean (mean 1), the
    variant this module used before it followed upstream's raw weight.
    """
    weights = t_hal + t_norm - scores.float()
    if not normalise:
        return weights
    weights = weights.clamp(min=0.0)
    return weights / weights.mean().clamp(min=1e-12)


def per_sample_nll(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-mean NLL of each sample over its masked positions (0 for a sample with none). Shape (B,)."""
    logp = token_logprobs(logits, labels, mask)  # (B, T-1)
    count = mask[:, 1:].bool().sum(-1).clamp(min=1)  # (B,)
    return -logp.sum(-1) / count


def weighted_nll(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``mean_i w_i nll_i`` with ``nll_i`` the token-mean NLL of sample i (EFUF's per-sample weighting)."""
    nll = per_sample_nll(logits, labels, mask)  # (B,)
    return (weights.to(nll) * nll).mean()


def weighted_ga_loss(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """GA with a per-sample weight: ``-mean_i w_i nll_i`` (minus :func:`weighted_nll`)."""
    return -weighted_nll(logits, labels, mask, weights)


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum_t mask KL(p_ref || p_model) / #masked`` over next-token distributions (padding excluded)."""
    keep = mask[:, 1:].bool()  # (B, T-1)
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    ref_logp = F.log_softmax(ref_logits[:, :-1].float().detach(), dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)  # (B, T-1)
    return (kl * keep).sum() / keep.sum().clamp(min=1)
