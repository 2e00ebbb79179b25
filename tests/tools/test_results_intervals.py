"""Results pages show the spread over seeds: error bars in plots and the seed lists under tables."""

from __future__ import annotations

import re

from tools.site.charts import results_chart
from tools.site.results import _seed_list, results_md

ROWS = [
    {"budget": 0.1, "acc": 80.0, "acc_ci": 4.0, "acc_low": 71.0, "acc_high": 86.5, "method": "a"},
    {"budget": 0.5, "acc": 90.0, "acc_ci": 1.5, "acc_low": 88.0, "acc_high": 92.0, "method": "a"},
]


def _results(columns: list[dict], **extra) -> dict:
    """A minimal results file over :data:`ROWS`."""
    return {
        "id": "x",
        "title": "T",
        "command": "python -m x",
        "families": [],
        "rows": ROWS,
        "columns": columns,
        **extra,
    }


def _error_bar_heights(svg: str) -> int:
    return len(re.findall(r'id="LineCollection_\d+"', svg))


def test_error_column_is_drawn_as_error_bars():
    with_bars = results_chart(ROWS, "budget", "acc", "method", error="acc_ci")
    without = results_chart(ROWS, "budget", "acc", "method")
    assert _error_bar_heights(with_bars) == 1 and _error_bar_heights(without) == 0


def test_seed_lists_are_compact_and_shown_under_the_table():
    assert _seed_list([12, 10, 11, 14, 20, 21]) == "10-12, 14, 20-21"
    data = _results(
        [{"key": "budget", "label": "Budget"}, {"key": "acc", "label": "Accuracy"}],
        plots=[{"x": "budget", "y": "acc", "group": "method", "error": "acc_ci"}],
        seeds={"tuning": [0, 1, 2], "reported": list(range(10, 20))},
    )
    assets: dict[str, str] = {}
    page = results_md(data, "families/x.md", assets)
    shown = page.replace("\\", "")  # Markdown escapes (10\-19) render as the plain characters
    assert "Seeds reported: 10-19; seeds used for tuning or calibration: 0-2." in shown
    (svg,) = assets.values()
    assert _error_bar_heights(svg) == 1


def _page_and_header(data: dict) -> tuple[str, str]:
    """The rendered page (Markdown escapes removed) and its table's header row."""
    page = results_md(data, "families/x.md", {}).replace("\\", "")
    return page, next(line for line in page.splitlines() if line.startswith("|") and "Budget" in line)


def test_an_interval_column_is_shown_in_its_metrics_cell():
    data = _results(
        [
            {"key": "budget", "label": "Budget"},
            {"key": "acc", "label": "Accuracy", "unit": "%", "digits": 1},
            {"key": "acc_ci", "label": "± 95% CI", "unit": "%", "digits": 1},
        ]
    )
    page, header = _page_and_header(data)
    assert header.count("|") == 3 and "Accuracy (%) ± 95% CI" in header  # two columns, not three
    assert "80.0 ± 4.0" in page and "90.0 ± 1.5" in page


def test_a_range_over_seeds_is_shown_in_one_cell():
    data = _results(
        [
            {"key": "budget", "label": "Budget"},
            {"key": "acc_low", "label": "Accuracy, lowest - highest seed", "unit": "%", "digits": 1},
            {"key": "acc_high", "label": "highest seed", "unit": "%", "digits": 1},
        ]
    )
    page, header = _page_and_header(data)
    assert header.count("|") == 3 and "Accuracy, lowest - highest seed (%)" in header  # two columns, not three
    assert "71.0 – 86.5" in page and "88.0 – 92.0" in page


def test_a_wide_table_is_split_into_tables_that_each_name_their_rows():
    from tools.site.results import MAX_COLUMNS

    metrics = [f"m{k}" for k in range(2 * MAX_COLUMNS)]
    rows = [
        {"method": name, "cut": "after", "budget": 0.1, **{m: float(k) for k, m in enumerate(metrics)}} for name in "ab"
    ]
    columns = [
        {"key": "method", "label": "Method"},
        {"key": "cut", "label": "Cut"},
        {"key": "budget", "label": "Budget"},
    ]
    data = _results(columns + [{"key": m, "label": f"Metric {m}"} for m in metrics], rows=rows)
    page = results_md(data, "families/x.md", {}).replace("\\", "")
    headers = [line for line in page.splitlines() if line.startswith("| Method")]
    assert len(headers) >= 3
    cells = [[cell.strip() for cell in header.strip("|").split("|")] for header in headers]
    assert all(len(row) <= MAX_COLUMNS and row[:3] == ["Method", "Cut", "Budget"] for row in cells)
    assert [c for row in cells for c in row[3:]] == [f"Metric {m}" for m in metrics]  # each once, in order
    assert page.count("| a | after |") == len(headers)
