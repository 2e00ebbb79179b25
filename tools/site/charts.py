"""SVG charts made at build time with matplotlib, byte-for-byte deterministic."""

from __future__ import annotations

import functools
import hashlib
import io
from collections import Counter
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["stage_year_chart", "results_chart", "series_styles", "remembered", "remember"]

# Colour-blind-safe colours (Okabe-Ito, then Tol's muted) times marker shapes: 10 x 6 distinct styles.
_COLOURS = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#000000",
    "#882255",
    "#999933",
    "#6699CC",
)
_MARKERS = ("o", "s", "^", "D", "v", "P")


def series_styles(names: list[str]) -> dict[str, tuple[str, str]]:
    """One (colour, marker) per series name across the whole site: the same method looks the same
    in every chart. Names are taken in sorted order, so adding a method moves no other method's
    colour unless it sorts before it."""
    ordered = sorted(set(names))
    return {
        name: (_COLOURS[index % len(_COLOURS)], _MARKERS[(index // len(_COLOURS)) % len(_MARKERS)])
        for index, name in enumerate(ordered)
    }


# Sized for phones: a 5-inch chart shrinks to ~360 CSS px on a phone (x0.75), so 10 pt text still
# shows at about 10 px; on wide screens the chart keeps its natural 480 px.
_SIZE = (5.0, 3.3)
_FONT = 10
# Labels, titles and series names are data (a results file's column labels and method names): with
# ``text.parse_math`` off, a "$" is a dollar sign, never mathtext (a bad "$\\frac{$" would stop the build).
_STYLE = {"svg.hashsalt": "lvlm-atlas", "svg.fonttype": "none", "font.size": _FONT, "text.parse_math": False}
# SVGs made in this process by their arguments: ``serve`` regenerates the pages on every change,
# and drawing the ~100 charts is most of the time that takes. Charts are deterministic.
_MADE: dict[str, str] = {}


def _remembered(function: Callable[..., str]) -> Callable[..., str]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> str:
        digest = hashlib.sha256(repr((function.__name__, args, sorted(kwargs.items()))).encode()).hexdigest()
        if digest not in _MADE:
            _MADE[digest] = function(*args, **kwargs)
        return _MADE[digest]

    return wrapper


def remembered() -> dict[str, str]:
    """The charts drawn in this process so far (by a digest of their arguments)."""
    return dict(_MADE)


def remember(charts: dict[str, str]) -> None:
    """Keep charts drawn by another process (:func:`remembered` there) as if drawn here."""
    _MADE.update(charts)


def _svg(figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _unique_within(names: list[str], styles: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """The site-wide style of each name; a name whose colour (or, in charts with more series than
    colours, whose colour and marker) another series of this chart already uses gets the first free
    one, so no two series of a chart look alike."""
    every = [(colour, marker) for marker in _MARKERS for colour in _COLOURS]
    # With few enough series, no colour repeats inside the chart (the marker alone is too subtle).
    key = (lambda style: style[0]) if len(names) <= len(_COLOURS) else (lambda style: style)
    chosen: dict[str, tuple[str, str]] = {}
    for name in names:
        style = styles.get(name)
        used = {key(other) for other in chosen.values()}
        if style is None or key(style) in used:
            style = next((candidate for candidate in every if key(candidate) not in used), every[0])
        chosen[name] = style
    return chosen


def _legend(axes, labels: list[str], below: float) -> None:  # noqa: ANN001 (matplotlib Axes)
    """The legend under the axes (it never covers data), in as many columns as fit the chart's
    width at the chart's font size, so it neither overlaps itself nor widens the chart."""
    longest = max((len(label) for label in labels), default=1)
    # ~0.55 em per character plus the marker and spacing: how many columns fit in 5 inches.
    columns = max(1, min(4, len(labels), int(_SIZE[0] * 72 / ((longest * 0.55 + 4) * _FONT))))
    axes.legend(frameon=False, fontsize=_FONT, loc="upper center", bbox_to_anchor=(0.5, below), ncol=columns)


@_remembered
def stage_year_chart(counts: Counter[tuple[str, int]], stages: list[str]) -> str:
    """Stacked bars: papers per year, split by stage (or topic)."""
    years = sorted({year for _, year in counts})
    with matplotlib.rc_context(_STYLE):
        figure, axes = plt.subplots(figsize=_SIZE)
        bottom = [0] * len(years)
        for stage in stages:
            heights = [counts.get((stage, year), 0) for year in years]
            if any(heights):
                colour = _COLOURS[stages.index(stage) % len(_COLOURS)]
                axes.bar([str(year) for year in years], heights, bottom=bottom, label=stage, color=colour)
                bottom = [b + h for b, h in zip(bottom, heights)]
        axes.set_ylabel("papers per year")
        if len(years) > 6:
            # Ten or more four-digit years side by side would run into each other at 10 pt.
            plt.setp(axes.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
        shown = [stage for stage in stages if any(counts.get((stage, year), 0) for year in years)]
        _legend(axes, shown, -0.22 if len(years) > 6 else -0.12)  # below the (rotated) year labels
        axes.spines[["top", "right"]].set_visible(False)
        return _svg(figure)


@_remembered
def results_chart(
    rows: list[dict[str, Any]],
    x: str,
    y: str,
    group: str = "",
    title: str = "",
    logx: bool = False,
    x_label: str = "",
    y_label: str = "",
    error: str = "",
    styles: dict[str, tuple[str, str]] | None = None,
) -> str:
    """``y`` against ``x``, one series per value of ``group``; ``error`` names a column of half-widths
    (for example a 95% confidence interval over seeds) drawn as error bars. ``styles`` gives each
    series its site-wide colour and marker. A series is joined by a line only when each x occurs
    once in it: points that share an x are different configurations, not a curve."""
    with matplotlib.rc_context(_STYLE):
        figure, axes = plt.subplots(figsize=_SIZE)
        groups: dict[str, list[tuple[float, float, float]]] = {}
        for row in rows:
            if isinstance(row.get(x), (int, float)) and isinstance(row.get(y), (int, float)):
                spread = row.get(error) if error else None
                spread = float(spread) if isinstance(spread, (int, float)) else 0.0
                groups.setdefault(str(row.get(group, "")) if group else y, []).append((row[x], row[y], spread))
        chosen = _unique_within(sorted(groups), styles or {})
        for name, points in sorted(groups.items()):
            points.sort()
            xs, ys, spreads = [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]
            colour, marker = chosen[name]
            line = "-" if len(set(xs)) == len(xs) else "none"
            if error:
                axes.errorbar(xs, ys, yerr=spreads, marker=marker, linestyle=line, capsize=3, label=name, color=colour)
            else:
                axes.plot(xs, ys, marker=marker, linestyle=line, label=name, color=colour)
        if logx:
            axes.set_xscale("log")
        axes.set_xlabel(x_label or x)
        axes.set_ylabel(y_label or y)
        if title:
            axes.set_title(title, fontsize=_FONT)
        if len(groups) > 1:
            _legend(axes, sorted(groups), -0.22)
        axes.spines[["top", "right"]].set_visible(False)
        return _svg(figure)
