"""Figures of continual runs, shared by the continual-AD notebooks.

Examples:
    >>> import numpy as np
    >>> from reference_impls.continual_ad.learner import ContinualResult
    >>> from reference_impls.continual_ad.plots import plot_accuracy_matrices
    >>> image = np.array([[90.0, np.nan], [70.0, 95.0]])  # (T, C): category 2 learned at task 2
    >>> run = ContinualResult(["a", "b"], [0, 1], image, image, np.array([80.0, 85.0]), None)
    >>> fig = plot_accuracy_matrices({"naive LoRA": run})
    >>> [ax.get_title() for ax in fig.axes]
    ['naive LoRA (image AUROC)']
"""

from __future__ import annotations

import numpy as np

from reference_impls.continual_ad.learner import ContinualResult

__all__ = ["plot_accuracy_matrices", "print_summaries"]


def plot_accuracy_matrices(results: dict[str, ContinualResult], metric: str = "image"):
    """One heat map per method: row i is every category's AUROC after task i (blank before it is learned).

    Args:
        results: runs by display name.
        metric: ``"image"`` or ``"pixel"`` AUROC.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.4 * len(results), 2.8), squeeze=False)
    for ax, (name, result) in zip(axes[0], results.items()):
        matrix = getattr(result, metric)  # (T, C) points, NaN before a category is learned
        ax.imshow(np.nan_to_num(matrix, nan=0), vmin=40, vmax=100, cmap="viridis")
        for (i, j), value in np.ndenumerate(matrix):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", color="w", fontsize=7)
        ax.set_xticks(range(len(result.categories)), result.categories, fontsize=6, rotation=45)
        ax.set_yticks(range(matrix.shape[0]), [f"after {i + 1}" for i in range(matrix.shape[0])], fontsize=6)
        ax.set_title(f"{name} ({metric} AUROC)", fontsize=8)
    fig.tight_layout()
    return fig


def print_summaries(results: dict[str, ContinualResult]) -> None:
    """A-AUROC and forgetting (FM) of each run, image and pixel level, one line per method."""
    for name, result in results.items():
        s = result.summary()
        print(
            f"{name:16s} image A-AUROC {s['image_a_auroc']:5.1f} FM {s['image_fm']:4.1f} | "
            f"pixel A-AUROC {s['pixel_a_auroc']:5.1f} FM {s['pixel_fm']:4.1f} | params added {sum(s['params_per_task'])}"
        )
