"""Metrics against sklearn and hand computations."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from reference_impls.continual_ad.metrics import aupro, auroc, continual_summary, pixel_auroc


def test_auroc_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    labels = rng.integers(0, 2, 200)
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    maps, masks = rng.random((3, 8, 8)), rng.random((3, 8, 8)) > 0.8
    assert pixel_auroc(torch.tensor(maps), torch.tensor(masks)) == pytest.approx(
        roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12
    )


def test_aupro_on_a_hand_computed_toy():
    # One 2-pixel region {a: 0.9, b: 0.5} and 8 background pixels with scores 0.8, 0.1 x 7.
    maps = np.array([[0.9, 0.5, 0.8, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]]).reshape(1, 1, 10)
    masks = np.zeros((1, 1, 10), dtype=bool)
    masks[0, 0, :2] = True
    # ROC points: (0, .5) at 0.9, (1/8, .5) at 0.8, (1/8, 1) at 0.5, (1, 1) at 0.1.
    # Overlap curve on [0, 0.3]: 0.5 on [0, 1/8), 1 on (1/8, 0.3]; area = 0.5/8 + (0.3 - 1/8) = 0.2375.
    assert aupro(maps, masks, grid=100_001) == pytest.approx(0.2375 / 0.3, abs=1e-4)
    # Two regions average their overlap curves: a perfectly separated region adds a curve of 1.
    maps2 = np.concatenate([maps, np.array([[[0.95, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]]])])
    masks2 = np.concatenate([masks, np.zeros((1, 1, 10), dtype=bool)])
    masks2[1, 0, 0] = True
    # the second image adds 9 background pixels at 0.1, so region one's first FP costs 1/17 instead of 1/8
    expected = 0.5 * ((0.5 / 17 + (0.3 - 1 / 17)) / 0.3) + 0.5 * 1.0
    assert aupro(maps2, masks2, grid=100_001) == pytest.approx(expected, abs=1e-4)


def test_a_auroc_and_fm_on_a_hand_matrix():
    nan = np.nan
    acc = np.array([[90.0, nan, nan], [85.0, 80.0, nan], [70.0, 78.0, 95.0]])
    s = continual_summary(acc, [0, 1, 2])
    assert s["a_auroc"] == pytest.approx((70 + 78 + 95) / 3)
    # forgetting: cat0 max(90, 85) - 70 = 20; cat1 80 - 78 = 2; cat2 is the last task
    assert s["fm"] == pytest.approx(11.0)
    assert s["curve"] == pytest.approx([90.0, 82.5, (70 + 78 + 95) / 3])


def test_per_category_and_per_task_aggregation_differ_as_expected():
    nan = np.nan
    acc = np.array([[90.0, 60.0, nan], [80.0, 50.0, 100.0]])
    task_of = [0, 0, 1]
    cat, task = continual_summary(acc, task_of), continual_summary(acc, task_of, aggregate="task")
    assert cat["a_auroc"] == pytest.approx((80 + 50 + 100) / 3)
    assert task["a_auroc"] == pytest.approx(((80 + 50) / 2 + 100) / 2)
    assert cat["fm"] == pytest.approx(10.0) and task["fm"] == pytest.approx(10.0)
