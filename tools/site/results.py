"""Reproduced results (``reference_impls/results/*.json``) as tables and SVG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import markdown as md
from .charts import results_chart
from .data import relative

__all__ = ["load_all_results", "results_md", "results_index_md"]


def load_all_results(root: Path) -> list[dict[str, Any]]:
    """Every results file, checked for the fields the site needs."""
    found = []
    for path in sorted((root / "reference_impls" / "results").glob("*.json")):
        where = path.relative_to(root)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}:{error.lineno}: invalid JSON: {error.msg}") from None
        for field in ("id", "title", "command", "columns", "rows", "families"):
            if field not in data:
                raise ValueError(f"{where}:1: {field}: required field is missing")
        if data["id"] != path.stem:
            raise ValueError(f"{where}:1: id: '{data['id']}' differs from the file name")
        found.append(data)
    return found


def _rows_for(data: dict[str, Any], family: str | None) -> list[dict[str, Any]]:
    if family is None or not any("family" in row for row in data["rows"]):
        return data["rows"]
    return [row for row in data["rows"] if row.get("family") in (family, "", None)]


def results_md(data: dict[str, Any], page: str, assets: dict[str, str], family: str | None = None, heading: str = "###") -> str:
    """One results file as Markdown (table, plots, command); plots are added to ``assets``."""
    rows = _rows_for(data, family)
    headers = [md.text(column["label"] + (f" ({column['unit']})" if column.get("unit") else "")) for column in data["columns"]]
    body = [[md.fmt_number(row.get(column["key"]), column.get("digits")) for column in data["columns"]] for row in rows]
    lines = [f"{heading} {md.text(data['title'])}", "", md.table(headers, body, sortable=True), ""]
    for index, plot in enumerate(data.get("plots") or []):
        name = f"assets/generated/results/{data['id']}-{family or 'all'}-{index}.svg"
        labels = {column["key"]: column["label"] for column in data["columns"]}
        assets[name] = results_chart(rows, plot["x"], plot["y"], plot.get("group", ""), plot.get("title", ""), plot.get("logx", False),
                                     labels.get(plot["x"], ""), labels.get(plot["y"], ""), plot.get("error", ""))
        lines += [f"![{md.text(plot.get('title') or data['title'])}]({relative(page, name)})", ""]
    environment = data.get("environment") or {}
    machine = ", ".join(f"{key} {value}" for key, value in environment.items() if key in ("torch", "transformers", "cpu_count", "device"))
    lines += [f"Reproduced with `{data['command']}`" + (f" on {data['produced']}" if data.get("produced") else "") + (f" ({md.text(machine)})." if machine else "."), ""]
    seeds = data.get("seeds") or {}
    if seeds:
        lines += [f"Seeds reported: {md.text(_seed_list(seeds.get('reported', [])))}; seeds used for tuning or "
                  f"calibration: {md.text(_seed_list(seeds.get('tuning', [])) or 'none')}.", ""]
    if data.get("notes"):
        lines += [md.text(data["notes"]), ""]
    return "\n".join(lines)


def _seed_list(seeds: list[int]) -> str:
    """``[10, 11, 12, 14]`` -> ``"10-12, 14"``."""
    runs: list[list[int]] = []
    for seed in sorted(seeds):
        if runs and seed == runs[-1][-1] + 1:
            runs[-1].append(seed)
        else:
            runs.append([seed])
    return ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def results_index_md(all_results: list[dict[str, Any]], assets: dict[str, str]) -> str:
    page = "results/index.md"
    lines = [md.front_matter(title="Reproduced results"), "# Reproduced results", "",
             "Numbers our code produced, each with the command that produced it. Numbers papers report are on the paper and family pages, labelled as reported.", ""]
    if not all_results:
        lines.append("*No benchmark has written results yet.*")
    for data in all_results:
        lines.append(results_md(data, page, assets, heading="##"))
    return "\n".join(lines)
