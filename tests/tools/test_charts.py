"""Charts stay legible on a phone: their text shows at >= 9 CSS px when the chart shrinks to the
content width of a 390 px screen, however long the legend's labels are."""

from __future__ import annotations

import re
from collections import Counter

from tools.site.charts import results_chart, stage_year_chart

PHONE_CONTENT_PX = 358  # 390 px screen minus Material's margins


def _smallest_text_px_on_a_phone(svg: str) -> float:
    width_pt = float(re.search(r'<svg[^>]*\bwidth="([\d.]+)pt"', svg).group(1))
    view_width = float(re.search(r'viewBox="[\d.]+ [\d.]+ ([\d.]+) ', svg).group(1))
    shown_px = min(width_pt * 96 / 72, PHONE_CONTENT_PX)  # never wider than its natural size
    smallest = min(float(size) for size in re.findall(r"font-size: ([\d.]+)px", svg))
    return smallest * shown_px / view_width


def test_stage_chart_with_long_labels_is_legible_on_a_phone():
    stages = ["Continual industrial anomaly detection", "Object hallucination mitigation", "Decoding", "Prefilling"]
    counts = Counter(
        {(stage, year): index + year % 3 for index, stage in enumerate(stages) for year in range(2017, 2027)}
    )
    assert _smallest_text_px_on_a_phone(stage_year_chart(counts, stages)) >= 9


def test_results_chart_with_many_series_is_legible_on_a_phone():
    rows = [
        {"m": f"method-{index}-long-name", "b": budget, "a": budget * index}
        for index in range(8)
        for budget in (1, 2, 4)
    ]
    assert _smallest_text_px_on_a_phone(results_chart(rows, "b", "a", "m", title="Accuracy vs budget")) >= 9


def test_labels_and_series_names_are_text_not_mathtext():
    """A results file's labels and method names are data: "$" is a dollar sign, and a bad formula
    (which matplotlib's mathtext refuses with a ValueError) cannot stop the build."""
    rows = [{"m": name, "b": budget, "a": budget} for name in ("a$\\foo{$b", "$x$") for budget in (1, 2)]
    svg = results_chart(rows, "b", "a", "m", title="t $\\frac{$", x_label="cost $5", y_label="$^{99}$")
    for text in ("a$\\foo{$b", "$x$", "t $\\frac{$", "cost $5", "$^{99}$"):
        assert f">{text}<" in svg, text
