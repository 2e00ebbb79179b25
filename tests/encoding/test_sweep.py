"""The notebooks' budget sweep on ToyVLM v2: suites, per-kind rows, and the object-recall probe."""

import pytest
import torch

from reference_impls.common.toyvlm_v2 import tiny_toyvlm_v2
from reference_impls.common.visual_tokens import VisualTokenMethod
from reference_impls.encoding.sweep import budget_sweep, object_recall

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bundle():
    return tiny_toyvlm_v2()


def test_budget_sweep_draws_the_suite_and_reports_every_kind(bundle):
    rows = budget_sweep(bundle, {}, [0.5, 1.0], n=3, seed=2, suite="video")
    assert [(row["method"], row["budget"]) for row in rows] == [("full model", 1.0), ("random-pruning", 0.5)]
    expected = [s.qa.kind for s in bundle.samples(3, seed=2, suite="video")]
    assert sum(rows[0]["kinds"].values()) == 3 and set(rows[0]["kinds"]) == set(expected)
    assert set(rows[1]["by_kind"]) == set(expected)
    assert rows[0]["visual_tokens_full"] >= 1024  # 16-32 frames of 8 x 16 tokens per two frames
    assert rows[1]["visual_tokens"] == pytest.approx(rows[0]["visual_tokens"] / 2, abs=1)


class _Keep(VisualTokenMethod):
    """Keeps the visual tokens that show an object (``objects=True``) or exactly the others."""

    def __init__(self, sample, objects: bool):
        super().__init__(budget=0.5)
        self.shown = sorted({t for tokens in sample.scene.object_tokens for t in tokens})
        self.objects = objects

    def select(self, ctx):
        shown = torch.tensor(self.shown)
        every = torch.arange(ctx.visual_counts[0])
        return [shown if self.objects else every[~torch.isin(every, shown)]]


def test_object_recall_reads_the_tokens_that_show_each_object(bundle):
    sample = bundle.samples(1, seed=3, suite="short")[0]
    assert object_recall(bundle, _Keep(sample, objects=True), [sample]) == 1.0
    assert object_recall(bundle, _Keep(sample, objects=False), [sample]) == 0.0
