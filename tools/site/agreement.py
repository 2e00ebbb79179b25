"""The "What papers report vs what our bench shows" page: one row per expectation of a paper entry.

The rows are computed by :mod:`tools.expectations` from the current results files at every build, so a
re-run benchmark updates its verdicts without any edit here or in the entries.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..catalog import Entry
from ..expectations import AGREES, DISAGREES, Outcome, applicable_cause, evaluate, relation_text
from ..schema import AREAS
from . import markdown as md
from .data import paper_page, relative

__all__ = ["PAGE", "agreement_md"]

PAGE = "results/agreement.md"
NO_CAUSE = "cause not yet measured"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _verdict(outcome: Outcome) -> str:
    if outcome.verdict not in (AGREES, DISAGREES):
        return f"**{md.text(outcome.verdict)}**"
    if outcome.significant is None:
        strength = outcome.evidence
    else:
        strength = ("significant: " if outcome.significant else "not significant: ") + outcome.evidence
    return f"**{md.text(outcome.verdict)}** ({md.text(strength)})"


def _measured(item: dict[str, Any], outcome: Outcome) -> str:
    compare = item.get("compare")
    if not compare:
        return md.text(outcome.evidence)
    if outcome.left is None:
        return f"{md.code(compare['results'])}: {md.text(outcome.evidence)}"
    return f"{md.text(f'{_number(outcome.left)} vs {_number(outcome.right)}')} in {md.code(compare['results'])}"


def _where(item: dict[str, Any]) -> str:
    """Where the paper says it, with a link (labelled by its host) to the page the claim was read on."""
    where, url = md.text(item["source"]), item.get("url")
    return f"{where} ({md.link(md.text(md.host(url)), url)})" if url else where


def _rows(entries: Iterable[Entry], by_id: dict[str, dict[str, Any]]) -> list[tuple[dict[str, Any], Entry, Outcome]]:
    found = [(item, entry, evaluate(item, by_id)) for entry in entries for item in entry.data.get("expectations") or []]
    return sorted(found, key=lambda row: (AREAS.index(row[0]["area"]), row[1].key))


def agreement_md(entries: Iterable[Entry], all_results: list[dict[str, Any]]) -> str:
    """The page's Markdown; every string from the entries and results is escaped."""
    by_id = {data["id"]: data for data in all_results}
    rows = _rows(entries, by_id)
    counts = {
        verdict: sum(1 for _, _, outcome in rows if outcome.verdict == verdict) for verdict in (AGREES, DISAGREES)
    }
    lines = [
        md.front_matter(title="What papers report vs what our bench shows", hide=["toc"]),
        "# What papers report vs what our bench shows",
        "",
        "Each row is something a paper states (quoted from the place named under *Where*), the comparison on our "
        "reproduced results that would show the same thing, and what our benchmarks measure now. The verdicts are "
        "computed from the results files at every build. Our benchmarks run small models trained on synthetic "
        "scenes (ToyVLM) on a CPU: a disagreement says that the effect does not carry over to this setting, "
        "not that the paper is wrong. A cause is given only where it was measured or is documented; "
        f"otherwise the row says *{NO_CAUSE}*. Where the results keep each seed's value, the two sides are "
        "paired seed by seed (sign test, p < 0.05); otherwise their 95% intervals are compared, and a file "
        "with one run says so.",
        "",
        f"{len(rows)} expectation{'s' if len(rows) != 1 else ''}: {counts[AGREES]} agree, {counts[DISAGREES]} disagree, "
        f"{len(rows) - counts[AGREES] - counts[DISAGREES]} not measured. The benchmarks and their settings are on "
        f"{md.link('Reproduced results', relative(PAGE, 'results/index.md'))}.",
        "",
    ]
    if not rows:
        return "\n".join(lines + ["*No paper entry states an expectation yet.*", ""])
    headers = ["Area", "Paper", "The paper says", "Where", "Our check", "Measured", "Verdict", "Cause"]
    body = []
    for item, entry, outcome in rows:
        label = (entry.data.get("aliases") or [entry.data["title"]])[0]
        cause = ""
        if outcome.verdict == DISAGREES:
            cause = md.text(applicable_cause(item, by_id) or NO_CAUSE)
        check = md.text(relation_text(item["compare"])) if item.get("compare") else ""
        body.append(
            [
                md.text(item["area"]),
                md.link(md.text(label), relative(PAGE, paper_page(entry.key))),
                md.text(item["claim"]),
                _where(item),
                check,
                _measured(item, outcome),
                _verdict(outcome),
                cause,
            ]
        )
    return "\n".join(lines + [md.table(headers, body, sortable=True), ""])
