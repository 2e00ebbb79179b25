"""SVG charts made at build time with matplotlib, byte-for-byte deterministic."""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["stage_year_chart", "results_chart"]

_STYLE = {"svg.hashsalt": "lvlm-atlas", "svg.fonttype": "none", "font.size": 9}


def _svg(figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def stage_year_chart(counts: Counter[tuple[str, int]], stages: list[str]) -> str:
    """Stacked bars: papers per year, split by stage (or topic)."""
    years = sorted({year for _, year in counts})
    with matplotlib.rc_context(_STYLE):
        figure, axes = plt.subplots(figsize=(7, 3.2))
        bottom = [0] * len(years)
        for stage in stages:
            heights = [counts.get((stage, year), 0) for year in years]
            if any(heights):
                axes.bar([str(year) for year in years], heights, bottom=bottom, label=stage)
                bottom = [b + h for b, h in zip(bottom, heights)]
        axes.set_ylabel("papers")
        axes.legend(frameon=False, fontsize=8, ncol=2)
        axes.spines[["top", "right"]].set_visible(False)
        return _svg(figure)


def results_chart(rows: list[dict[str, Any]], x: str, y: str, group: str = "", title: str = "", logx: bool = False,
                  x_label: str = "", y_label: str = "", error: str = "") -> str:
    """Lines of ``y`` against ``x``, one per value of ``group``; ``error`` names a column of half-widths
    (for example a 95% confidence interval over seeds) drawn as error bars."""
    with matplotlib.rc_context(_STYLE):
        figure, axes = plt.subplots(figsize=(6, 3.4))
        groups: dict[str, list[tuple[float, float, float]]] = {}
        for row in rows:
            if isinstance(row.get(x), (int, float)) and isinstance(row.get(y), (int, float)):
                spread = row.get(error) if error else None
                spread = float(spread) if isinstance(spread, (int, float)) else 0.0
                groups.setdefault(str(row.get(group, "")) if group else y, []).append((row[x], row[y], spread))
        for name, points in sorted(groups.items()):
            points.sort()
            xs, ys, spreads = [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]
            if error:
                axes.errorbar(xs, ys, yerr=spreads, marker="o", capsize=3, label=name)
            else:
                axes.plot(xs, ys, marker="o", label=name)
        if logx:
            axes.set_xscale("log")
        axes.set_xlabel(x_label or x)
        axes.set_ylabel(y_label or y)
        if title:
            axes.set_title(title, fontsize=9)
        if len(groups) > 1:
            axes.legend(frameon=False, fontsize=7, ncol=2)
        axes.spines[["top", "right"]].set_visible(False)
        return _svg(figure)
