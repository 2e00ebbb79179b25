"""Subspace arithmetic shared by HF-OLB and GPM: bases, the GPM energy rule, novelty and rank allocation.

Pure tensor functions, no model code. A layer's history is an orthonormal basis ``U`` (d, k)
of its past input space; ``P = I - U Uᵀ`` projects onto the complement.

- :func:`gpm_extend` is the GPM energy rule (Saha et al., ICLR 2021): add the fewest
  eigenvectors of the projected covariance ``Ĉ = P C P`` so that the captured energy
  ``tr(Uᵀ C U) + Σ λ_i`` reaches ``ε · tr(C)``.
- :func:`novelty` is HNABG's residual normality novelty ``ν = tr(Ĉ) / tr(C)`` with the rank
  ``ρ`` that holds a fraction ``τ_rank`` of the residual energy.
- :func:`allocate_ranks` turns per-layer novelty into ranks with caps per U-Net level and an
  optional parameter budget.

Examples:
    >>> import torch
    >>> from reference_impls.continual_ad.subspace import gpm_extend
    >>> U, _ = gpm_extend(torch.zeros(4, 0), torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0])), eps=0.65)
    >>> U.shape
    torch.Size([4, 2])

Paper: arXiv 2606.02042 (HNABG is named in the abstract; every formula here is our
reconstruction, ``reference_impls/continual_ad/hfolb/README.md`` sections 4.3-4.4).

Deviations / guesses: eigen-decompositions run in float64; eigenvalues below ``1e-10 · λ_max``
count as zero (our value for the tolerance the energy rule needs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "gpm_epsilon",
    "complement",
    "extend_basis",
    "Moments",
    "gpm_extend",
    "residual_share",
    "novelty",
    "Novelty",
    "allocate_ranks",
]

_EIG_TOL = 1e-10


def gpm_epsilon(task: int) -> float:
    """GPM energy threshold after task ``task`` (1-based): ``min(0.97 + 0.003 t, 0.995)``."""
    return min(0.97 + 0.003 * task, 0.995)


def complement(U: torch.Tensor) -> torch.Tensor:
    """``I - U Uᵀ`` for an orthonormal ``U`` (d, k)."""
    return torch.eye(U.shape[0], dtype=U.dtype) - U @ U.T


def extend_basis(U: torch.Tensor, M: torch.Tensor, rel_tol: float = 1e-6) -> torch.Tensor:
    """Orthonormal basis of ``span([U, M])`` that keeps ``U``'s columns (Gram-Schmidt twice, SVD with tolerance)."""
    if M.numel() == 0:
        return U
    U64, R = U.double(), M.double()
    scale = R.norm(dim=0).max().clamp_min(1e-30)
    for _ in range(2):  # re-orthogonalise once for numerical safety
        R = R - U64 @ (U64.T @ R)
    Q, S, _ = torch.linalg.svd(R, full_matrices=False)
    new = Q[:, S > rel_tol * scale]
    return torch.cat([U64, new], dim=1).to(U.dtype)


def _eig_desc(C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = torch.linalg.eigh(C.double())
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)  # descending
    keep = values > _EIG_TOL * values[0].clamp_min(1e-300)
    return values[keep], vectors[:, keep]


@dataclass
class Moments:
    """Second moments of a layer's inputs: the covariance ``cov`` (d, d), or scaled rows ``rows``
    (n, d) with ``C = rowsᵀ rows`` when there are fewer samples than dimensions (then every
    spectrum is an SVD of n rows instead of an eigen-decomposition of a d x d matrix)."""

    cov: torch.Tensor | None = None
    rows: torch.Tensor | None = None

    def trace(self) -> float:
        return float(torch.trace(self.cov.double())) if self.cov is not None else float(self.rows.double().pow(2).sum())

    def captured(self, U: torch.Tensor) -> float:
        """tr(Uᵀ C U)."""
        U64 = U.double()
        if self.cov is not None:
            return float(torch.trace(U64.T @ self.cov.double() @ U64))
        return float((self.rows.double() @ U64).pow(2).sum())

    def residual_spectrum(self, U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues (descending, above tolerance) and eigenvectors (d, k) of ``P C P``, P = I − U Uᵀ."""
        P = complement(U.double())
        if self.cov is not None:
            return _eig_desc(P @ self.cov.double() @ P)
        R = self.rows.double() @ P  # (n, d)
        _, S, Vh = torch.linalg.svd(R, full_matrices=False)
        values = S**2
        keep = values > _EIG_TOL * values[:1].clamp_min(1e-300).max()
        return values[keep], Vh[keep].T


def _moments(C) -> Moments:
    return C if isinstance(C, Moments) else Moments(cov=C)


def gpm_extend(U: torch.Tensor, C, eps: float) -> tuple[torch.Tensor, int]:
    """Grow ``U`` (d, k) with the fewest eigenvectors of ``P C P`` reaching energy ``eps · tr(C)``.

    Args:
        U: current orthonormal basis.
        C: covariance (d, d) or :class:`Moments`.
        eps: energy threshold.

    Returns:
        (new basis (d, k + m), m).
    """
    C = _moments(C)
    total, captured = C.trace(), C.captured(U)
    if captured >= eps * total:
        return U, 0
    values, vectors = C.residual_spectrum(U)
    if values.numel() == 0:
        return U, 0
    reached = captured + torch.cumsum(values, 0) >= eps * total
    m = int(torch.nonzero(reached)[0]) + 1 if reached.any() else values.numel()
    return extend_basis(U, vectors[:, :m].to(U.dtype)), m


def residual_share(C, U: torch.Tensor) -> float:
    """ν = tr(P C P) / tr(C) = 1 − tr(Uᵀ C U) / tr(C), without an eigen-decomposition."""
    C = _moments(C)
    total = C.trace()
    return 1.0 - C.captured(U) / total if total > 0 else 0.0


@dataclass
class Novelty:
    """Per-layer HNABG statistics: ``nu`` = residual energy share, ``rho`` = needed rank,
    ``rank`` = numerical rank of Ĉ, ``directions`` = eigenvectors of Ĉ (d, rank), descending."""

    nu: float
    rho: int
    rank: int
    directions: torch.Tensor


def novelty(C, U: torch.Tensor, tau_rank: float = 0.9) -> Novelty:
    """ν = tr(Ĉ)/tr(C) with Ĉ = P C P, and ρ = min{k : Σ_{i≤k} λ_i ≥ τ_rank Σ λ} (C: tensor or :class:`Moments`)."""
    C = _moments(C)
    values, vectors = C.residual_spectrum(U)
    nu = residual_share(C, U)
    if values.numel() == 0:
        return Novelty(nu, 0, 0, vectors)
    cumulative = torch.cumsum(values, 0)
    rho = int(torch.nonzero(cumulative >= tau_rank * cumulative[-1])[0]) + 1
    return Novelty(nu, rho, int(values.numel()), vectors)


def allocate_ranks(
    stats: dict[str, Novelty],
    growing: list[str],
    caps: dict[str, int],
    sizes: dict[str, tuple[int, int]],
    *,
    beta_r: float = 1.0,
    r_min: int = 1,
    budget: int | None = None,
) -> dict[str, int]:
    """Ranks ``r_l = clip(ceil(β_r ρ_l), r_min, min(cap_l, rank(Ĉ_l)))`` for the growing layers, within ``budget``.

    Args:
        stats: novelty per layer.
        growing: layers that passed the growth test.
        caps: rank cap per layer (from its U-Net level).
        sizes: ``(d_in, d_out)`` per layer; a rank-r bank costs ``r (d_in + d_out)`` parameters.
        beta_r: rank multiplier.
        r_min: minimum rank of a growing layer.
        budget: optional parameter budget Π; while over it, the growing layer with the smallest
            ``ν · d_in`` loses one rank, and a layer at ``r_min`` leaves the growth set.
    """
    ranks = {}
    for name in growing:
        s = stats[name]
        upper = min(caps[name], s.rank)
        if upper < r_min:
            continue
        ranks[name] = int(min(max(math.ceil(beta_r * s.rho), r_min), upper))
    cost = lambda: sum(r * sum(sizes[n]) for n, r in ranks.items())  # noqa: E731
    while budget is not None and ranks and cost() > budget:
        victim = min(ranks, key=lambda n: (stats[n].nu * sizes[n][0], n))
        if ranks[victim] > r_min:
            ranks[victim] -= 1
        else:
            del ranks[victim]
    return ranks
