"""Anomaly detection and continual learning metrics: AUROC, pixel AUROC, AUPRO, A-AUROC, FM.

Pure functions on tensors/arrays. Image AUROC is the Mann-Whitney statistic (ties count half,
so it equals ``sklearn.metrics.roc_auc_score``); pixel AUROC pools every pixel of a category's
test images, good images included; AUPRO follows anomalib's default (per connected region ROC
resampled to a global FPR grid, averaged, integrated to FPR 0.3 and divided by 0.3).

For continual runs, ``acc[i, c]`` is a metric of category ``c`` after training task ``i``
(NaN before ``c`` is learned), ``task_of[c]`` the task that introduced ``c``:

- A-AUROC = ``mean_c acc[T-1, c]``; the per-step curve is ``mean_{c: t(c) <= i} acc[i, c]``;
- FM = ``mean_{c: t(c) < T-1} max_{i in [t(c), T-2]} (acc[i, c] - acc[T-1, c])``.

Examples:
    >>> import numpy as np
    >>> from reference_impls.continual_ad.metrics import continual_summary
    >>> continual_summary(np.array([[90.0, np.nan], [80.0, 95.0]]), [0, 1])["fm"]
    10.0

Paper: arXiv 2606.02042 (uses A-AUROC and FM; the formulas are the standard Chaudhry-style
ones written out in ``reference_impls/continual_ad/hfolb/README.md`` §2.3, not taken from the paper).
Upstream: AUROC = scikit-learn ``roc_auc_score`` (identical, ties included); AUPRO = the MVTec AD
evaluation code (``compute_pro`` and ``trapezoid``) as kept in openvinotoolkit/anomalib
tests/helpers/aupro_reference.py @ 14c7a056c93394cdbdb861dcc8429466471f1b53 (anomalib's own
src/anomalib/metrics/aupro.py resamples the per-region curves by index).
``tests/continual_ad/test_parity.py`` re-implements both; AUPRO agrees to 1e-3 (measured
5.5e-4 on 20 x 20 maps): the MVTec code evaluates the overlap at each normal-pixel threshold and
draws straight lines between those points, while we average per-region ROC staircases resampled
on a 1000-point FPR grid, so the areas differ by O(1 / #normal pixels) plus the grid's resolution.

Deviations / guesses: AUPRO regions use 8-connectivity; ``aggregate="task"`` (mean within a
task first) is offered because papers do not say which aggregation their tables use.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from scipy.stats import rankdata

__all__ = ["auroc", "pixel_auroc", "aupro", "roc_curve", "continual_summary"]


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def auroc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (ties count half)."""
    scores, labels = _np(scores).ravel().astype(np.float64), _np(labels).ravel().astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pixel_auroc(maps, masks) -> float:
    """AUROC over all pixels of all images: ``maps`` (N, H, W) scores, ``masks`` (N, H, W) bool."""
    return auroc(_np(maps).ravel(), _np(masks).ravel())


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, from (0, 0) to (1, 1)."""
    scores, labels = _np(scores).ravel(), _np(labels).ravel().astype(bool)
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]  # last index of each distinct score
    tps, fps = np.cumsum(labels)[last], np.cumsum(~labels)[last]
    tpr = np.r_[0.0, tps / max(labels.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~labels).sum(), 1)]
    return fpr, tpr


def aupro(maps, masks, fpr_limit: float = 0.3, grid: int = 1000) -> float:
    """Area under the per-region overlap curve up to ``fpr_limit``, divided by ``fpr_limit``.

    Args:
        maps: anomaly maps (N, H, W).
        masks: ground truth (N, H, W) bool.
        fpr_limit: upper FPR integration bound.
        grid: number of points of the global FPR grid in [0, fpr_limit].
    """
    maps, masks = _np(maps).astype(np.float64), _np(masks).astype(bool)
    background = ~masks
    regions = [ndimage.label(m, structure=np.ones((3, 3)))[0] for m in masks]  # per image, 8-connectivity
    fpr_grid = np.linspace(0.0, fpr_limit, grid)
    curves = []
    for image, labelled in enumerate(regions):
        for region in range(1, labelled.max() + 1):
            inside = np.zeros_like(masks)
            inside[image] = labelled == region
            keep = inside | background
            fpr, tpr = roc_curve(maps[keep], inside[keep])
            curves.append(np.interp(fpr_grid, fpr, tpr))  # fpr is non-decreasing
    if not curves:
        return float("nan")
    pro = np.mean(curves, axis=0)
    return float(np.trapezoid(pro, fpr_grid) / fpr_limit)


def continual_summary(acc, task_of, aggregate: str = "category") -> dict:
    """A-AUROC, FM and the per-step curve from an accuracy matrix.

    Args:
        acc: (T, C) metric in points of category ``c`` after task ``i``; NaN where ``c`` is unseen.
        task_of: (C,) task index that introduced each category.
        aggregate: "category" (unweighted mean over categories) or "task" (mean within each task first).

    Returns:
        ``{"a_auroc": float, "fm": float, "curve": list[float]}`` (FM is NaN for a single task).
    """
    acc, task_of = np.asarray(acc, dtype=np.float64), np.asarray(task_of)
    n_tasks = acc.shape[0]

    def mean_over(values: np.ndarray, cats: np.ndarray) -> float:
        if aggregate == "category":
            return float(np.mean(values[cats]))
        per_task = [np.mean(values[cats & (task_of == t)]) for t in np.unique(task_of[cats])]
        return float(np.mean(per_task))

    final = acc[-1]
    curve = [mean_over(acc[i], task_of <= i) for i in range(n_tasks)]
    old = task_of < n_tasks - 1
    forgetting = np.full(acc.shape[1], np.nan)
    for c in np.nonzero(old)[0]:
        forgetting[c] = np.max(acc[task_of[c] : n_tasks - 1, c] - final[c])
    fm = mean_over(forgetting, old) if old.any() else float("nan")
    return {"a_auroc": curve[-1], "fm": fm, "curve": curve}
