"""Parity with the reference code: each test re-implements the upstream rule in a few lines of our own
(citing repository, path and commit) and compares our default with it on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from reference_impls.continual_ad.gpm_projection import GPMProjection, gpm_threshold, gpm_update
from reference_impls.continual_ad.metrics import aupro, auroc
from reference_impls.continual_ad.olora import OLoRA, l2_penalty, olora_penalty
from reference_impls.continual_ad.subspace import Moments

# -- AUROC: scikit-learn's roc_auc_score (the reference every AD paper's code calls) ------------


def test_auroc_matches_sklearn_on_random_cases_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(10, 300))
        scores = rng.integers(0, int(rng.integers(2, 20)), n).astype(float)  # ties
        labels = rng.random(n) < rng.uniform(0.1, 0.9)
        if labels.all() or not labels.any():
            continue
        assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


# -- AUPRO ------------------------------------------------------------------------------------
# MVTec (3D-)AD evaluation code as kept in openvinotoolkit/anomalib tests/helpers/aupro_reference.py
# @ 14c7a056c93394cdbdb861dcc8429466471f1b53 (compute_pro, trapezoid; anomalib's own metric is
# src/anomalib/metrics/aupro.py): thresholds at the sorted normal-pixel scores; at each, FPR = share of
# normal pixels above it, PRO = mean over 8-connected ground-truth components of the share of the
# component above it; the point (1, 1) is added, the curve is integrated with the trapezoid rule up to
# FPR 0.3 (value at 0.3 interpolated between neighbours) and divided by 0.3. We use every normal pixel
# as a threshold (upstream's num_thresholds = all of them).
#
# Tolerance: our aupro averages per-region ROC *staircases* resampled on a 1000-point FPR grid; the
# reference evaluates PRO at each normal-pixel threshold (the upper corner of each FPR step) and draws
# straight lines between those points, so it sits above the staircase by up to half an FPR step
# (1 / #normal pixels, here 1 / ~1100) wherever the PRO rises, plus our grid's resolution (0.3 / 1000).
# Measured: at most 5.5e-4 on these 20 x 20 maps (the audit: 2.8e-4 on its maps; 4.2e-4 against
# anomalib's resampled curve), so we allow 1e-3.


def _mvtec_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    components, normal = [], []
    for gt, prediction in zip(masks, maps):
        labelled, n = ndimage.label(gt, np.ones((3, 3), dtype=int))
        normal.append(prediction[labelled == 0])
        components += [np.sort(prediction[labelled == k + 1]) for k in range(n)]
    normal = np.sort(np.concatenate(normal))
    fprs, pros = [1.0], [1.0]
    for position, threshold in enumerate(normal):
        fprs.append(1.0 - (position + 1) / normal.size)
        pros.append(np.mean([1.0 - np.searchsorted(c, threshold, side="right") / c.size for c in components]))
    x, y = np.array(fprs[::-1]), np.array(pros[::-1])
    after = np.searchsorted(x, limit, side="right")  # first point beyond the limit
    y_limit = y[after - 1] + (y[after] - y[after - 1]) * (limit - x[after - 1]) / (x[after] - x[after - 1])
    x, y = np.r_[x[:after], limit], np.r_[y[:after], y_limit]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)) / limit)


def test_aupro_matches_the_mvtec_reference_within_tolerance():
    rng = np.random.default_rng(1)
    for _ in range(4):
        masks = np.zeros((3, 20, 20), dtype=bool)
        for image in range(3):
            for _ in range(int(rng.integers(1, 3))):
                r, c, h, w = rng.integers(0, 14), rng.integers(0, 14), rng.integers(2, 6), rng.integers(2, 6)
                masks[image, r : r + h, c : c + w] = True
        masks[0, 17:19, 17:19] = masks[0, 19, 16] = True  # touches only diagonally: one 8-connected region
        maps = rng.random(masks.shape) + 0.6 * masks * rng.random(masks.shape)
        assert aupro(maps, masks) == pytest.approx(_mvtec_aupro(maps, masks), abs=1e-3)


# -- GPM --------------------------------------------------------------------------------------
# sahagobinda/GPM main_cifar100.py @ dc5ba5cad92de980428045e0b926b9609badc8c4:
#   threshold = 0.97 + task_id * 0.003 (task_id 0-based)
#   update_GPM, first task: U, S = svd(R); r = sum(cumsum(S^2 / sum S^2) < threshold); basis = U[:, :r]
#   later tasks: total = sum S1^2 of R; R_hat = R - B B^T R; U, S = svd(R_hat);
#     acc = (total - sum S^2) / total; add S^2 / total while acc < threshold; basis = [B, U[:, :r]]


def _upstream_gpm(representations: list[np.ndarray]) -> list[np.ndarray]:
    bases, basis = [], None
    for task, R in enumerate(representations):
        threshold = 0.97 + task * 0.003
        if basis is None:
            U, S, _ = np.linalg.svd(R, full_matrices=False)
            r = int(np.sum(np.cumsum(S**2 / (S**2).sum()) < threshold))
            basis = U[:, :r]
        else:
            total = (np.linalg.svd(R, compute_uv=False) ** 2).sum()
            U, S, _ = np.linalg.svd(R - basis @ basis.T @ R, full_matrices=False)
            accumulated, r = (total - (S**2).sum()) / total, 0
            for share in S**2 / total:
                if accumulated >= threshold:
                    break
                accumulated, r = accumulated + share, r + 1
            basis = np.hstack([basis, U[:, :r]])
        bases.append(basis)
    return bases


def _projector(basis) -> np.ndarray:
    basis = np.asarray(basis, dtype=np.float64)
    return basis @ basis.T


@pytest.mark.parametrize("as_rows", [False, True], ids=["covariance", "rows"])
def test_gpm_update_matches_upstream_on_random_representations(as_rows):
    rng = np.random.default_rng(2)
    d = 24
    mixing = rng.standard_normal((d, d)) * np.linspace(3, 0.05, d)  # decaying spectrum
    representations = [mixing @ rng.standard_normal((d, 40)) + 0.3 * rng.standard_normal((d, 1)) for _ in range(4)]
    expected = _upstream_gpm(representations)
    U = torch.zeros(d, 0, dtype=torch.float64)
    for task, R in enumerate(representations):
        R = torch.from_numpy(R)
        C = Moments(rows=R.T.contiguous()) if as_rows else R @ R.T
        U, _ = gpm_update(U, C, gpm_threshold(task), first=task == 0)
        assert U.shape == expected[task].shape
        assert np.allclose(_projector(U), _projector(expected[task]), atol=1e-8)  # same subspace


def test_gpm_defaults_follow_upstream():
    assert [gpm_threshold(t) for t in (0, 1, 5)] == pytest.approx([0.97, 0.973, 0.985])
    assert GPMProjection().threshold == "upstream"


# -- O-LoRA -----------------------------------------------------------------------------------
# cmnfriend/O-LoRA src/uie_trainer_lora.py @ 2a2e620c4ed97aa07c5591b1da4640b2cbc6a846 (training_step):
#   orthogonal_loss = sum over modules of |lora_A @ loranew_A^T|.sum()  (lora_A: earlier tasks' rows stacked)
#   bias_loss = sum over loranew_ parameters of torch.norm(p, p=2);  loss += lamda_1 * orth + lamda_2 * bias
#   scripts: lamda_1 0.5, lamda_2 0


def test_olora_penalties_match_upstream():
    generator = torch.Generator().manual_seed(3)
    for _ in range(10):
        old = [torch.randn(4, 18, generator=generator) for _ in range(3)]
        A_new, B_new = torch.randn(4, 18, generator=generator), torch.randn(7, 4, generator=generator)
        stacked = torch.cat(old)  # upstream keeps earlier tasks in one lora_A
        assert torch.allclose(olora_penalty(A_new, old), torch.abs(torch.mm(stacked, A_new.T)).sum(), rtol=1e-5)
        assert torch.allclose(l2_penalty(A_new, B_new), torch.norm(A_new, p=2) + torch.norm(B_new, p=2))
    method = OLoRA()
    assert (method.lambda_1, method.lambda_2) == (0.5, 0.0)
