"""Reproduced results (``reference_impls/results/*.json``) as tables and SVG plots."""

from __future__ import annotations

from typing import Any

from . import markdown as md
from .charts import results_chart, series_styles
from .data import node_page, relative

__all__ = ["results_md", "results_index_md", "results_links_md", "results_tables", "chart_styles"]


def _rows_for(data: dict[str, Any], family: str | None) -> list[dict[str, Any]]:
    if family is None or not any("family" in row for row in data["rows"]):
        return data["rows"]
    return [row for row in data["rows"] if row.get("family") in (family, "", None)]


def results_md(
    data: dict[str, Any],
    page: str,
    assets: dict[str, str],
    family: str | None = None,
    heading: str = "###",
    indexed: bool = True,
    styles: dict[str, tuple[str, str]] | None = None,
) -> str:
    """One results file as Markdown (table, plots, command); plots are added to ``assets``."""
    rows = _rows_for(data, family)
    title = f"{heading} {md.text(data['title'])}" + ("" if indexed else " " + md.NOT_INDEXED)
    lines = [title, "", *results_tables(data, rows)]
    for index, plot in enumerate(data.get("plots") or []):
        name = f"assets/generated/results/{data['id']}-{family or 'all'}-{index}.svg"
        # Axis labels carry the column's unit.
        labels = {
            column["key"]: column["label"] + (f" ({column['unit']})" if column.get("unit") else "")
            for column in data["columns"]
        }
        assets[name] = results_chart(
            rows,
            plot["x"],
            plot["y"],
            plot.get("group", ""),
            plot.get("title", ""),
            plot.get("logx", False),
            labels.get(plot["x"], ""),
            labels.get(plot["y"], ""),
            plot.get("error", ""),
            styles,
        )
        lines += [f"![{md.text(plot.get('title') or data['title'])}]({relative(page, name)})", ""]
    environment = data.get("environment") or {}
    machine = ", ".join(
        f"{key} {value}"
        for key, value in environment.items()
        if key in ("torch", "transformers", "cpu_count", "device")
    )
    produced = f" on {md.text(data['produced'])}" if data.get("produced") else ""
    lines += [
        f"Reproduced with {md.code(data['command'])}{produced}" + (f" ({md.text(machine)})." if machine else "."),
        "",
    ]
    seeds = data.get("seeds") or {}
    if seeds:
        lines += [
            f"Seeds reported: {md.text(_seed_list(seeds.get('reported', [])))}; seeds used for tuning or "
            f"calibration: {md.text(_seed_list(seeds.get('tuning', [])) or 'none')}.",
            "",
        ]
    if data.get("notes"):
        lines += [md.restricted(data["notes"]), ""]
    return "\n".join(lines)


def results_tables(data: dict[str, Any], rows: list[dict[str, Any]], hidden: tuple[str, ...] = ()) -> list[str]:
    """``rows`` of a results file as Markdown table lines (columns in ``hidden`` left out).

    A metric's "± 95% CI" column is shown inside the metric's own cell ("12.3 ± 1.2"), and a
    "<metric>_low" / "<metric>_high" pair (its range over seeds) as one cell ("80.0 – 99.0"); a table
    still wider than :data:`MAX_COLUMNS` is split into several over the same rows. Both keep tables
    narrow enough for a desktop screen."""
    keys = {column["key"] for column in data["columns"]}
    shown = [
        c
        for c in data["columns"]
        if c["key"] not in hidden
        and not (c["key"].endswith("_ci") and c["key"][:-3] in keys)
        and not (c["key"].endswith("_high") and f"{c['key'][:-5]}_low" in keys)
    ]
    headers = [
        md.text(
            column["label"]
            + (f" ({column['unit']})" if column.get("unit") else "")
            + (" ± 95% CI" if f"{column['key']}_ci" in keys else "")
        )
        for column in shown
    ]
    body = [[_cell(row, column, keys) for column in shown] for row in rows]
    lines: list[str] = []
    for part, columns in enumerate(_column_groups(shown, rows)):
        if part:
            lines += [md.text("Continued (same rows):"), ""]
        lines += [
            md.table([headers[i] for i in columns], [[cells[i] for i in columns] for cells in body], sortable=True),
            "",
        ]
    return lines


MAX_COLUMNS = 12
"""Columns of one rendered table: a wider results table is shown as several tables over the same
rows, each repeating the columns that name a row, so that none is clipped on a desktop screen."""
_ROW_KEYS = {"budget", "cut", "setting", "threshold", "layout", "suite", "escalation"}


def _column_groups(shown: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[list[int]]:
    """Indices of ``shown`` per table: the columns that name a row (the first one, then any that
    hold text or a setting such as the budget) lead every table, the others are split in order."""
    names = 1
    while names < len(shown) and (
        shown[names]["key"] in _ROW_KEYS or all(isinstance(row.get(shown[names]["key"]), str) for row in rows)
    ):
        names += 1
    if len(shown) <= MAX_COLUMNS or names >= MAX_COLUMNS - 1:
        return [list(range(len(shown)))]
    width = MAX_COLUMNS - names
    rest = list(range(names, len(shown)))
    return [list(range(names)) + rest[start : start + width] for start in range(0, len(rest), width)]


def _cell(row: dict[str, Any], column: dict[str, Any], keys: set[str]) -> str:
    value = md.fmt_number(row.get(column["key"]), column.get("digits"))
    high_key = column["key"][:-4] + "_high" if column["key"].endswith("_low") else None
    if high_key in keys:
        high = md.fmt_number(row.get(high_key), column.get("digits"))
        return f"{value} – {high}" if value and high else value
    interval = row.get(f"{column['key']}_ci") if f"{column['key']}_ci" in keys else None
    if value and interval is not None:
        return f"{value} ± {md.fmt_number(interval, column.get('digits'))}"
    return value


def _seed_list(seeds: list[int]) -> str:
    """``[10, 11, 12, 14]`` -> ``"10-12, 14"``."""
    runs: list[list[int]] = []
    for seed in sorted(seeds):
        if runs and seed == runs[-1][-1] + 1:
            runs[-1].append(seed)
        else:
            runs.append([seed])
    return ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def chart_styles(all_results: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Every series name any plot uses, each with its site-wide colour and marker."""
    names = [
        str(row.get(plot["group"], ""))
        for data in all_results
        for plot in data.get("plots") or []
        if plot.get("group")
        for row in data["rows"]
    ]
    return series_styles(names)


def results_index_md(all_results: list[dict[str, Any]], assets: dict[str, str]) -> str:
    page = "results/index.md"
    # No table of contents column: the widest results tables need the room (the left navigation stays).
    lines = [
        md.front_matter(title="Reproduced results", hide=["toc"]),
        "# Reproduced results",
        "",
        "Numbers our code produced, each with the command that produced it. Numbers papers report are on the paper and family pages, labelled as reported.",
        "",
        "How they compare with what the papers state: "
        + md.link("What papers report vs what our bench shows", "agreement.md")
        + ".",
        "",
    ]
    if not all_results:
        lines.append("*No benchmark has written results yet.*")
    for data in all_results:
        lines.append(results_md(data, page, assets, heading="##", styles=chart_styles(all_results)))
    return "\n".join(lines)


def results_links_md(node: Any, shown: list[dict[str, Any]], page: str) -> str:
    """For a topic or stage: one line per results file, linking to the family pages that show it."""
    below = {descendant.id: descendant for descendant in node.descendants() if not descendant.children}
    lines = []
    for data in shown:
        families = [below[family] for family in data["families"] if family in below]
        targets = ", ".join(
            md.link(md.text(family.name), relative(page, node_page(family)) + "#reproduced-results")
            for family in families
        )
        lines.append(f"- {md.text(data['title'])}: on {targets}" if targets else f"- {md.text(data['title'])}")
    if not lines:
        return ""
    return "\n".join(
        [
            "Each family page shows its own tables and plots; the full set is on "
            f"{md.link('Reproduced results', relative(page, 'results/index.md'))}.",
            "",
            *lines,
            "",
        ]
    )
