"""What papers report against what our benchmarks show: the ``expectations`` of paper entries.

An expectation is data on the paper entry that states it (``papers/<key>.yaml``)::

    expectations:
    - area: kv-cache
      claim: "PyramidKV surpasses other KV cache compression techniques ... (abstract)"
      source: abstract (arXiv 2406.02069)
      url: https://arxiv.org/abs/2406.02069  # the page it was read on: the entry's url, code or a source
      compare:
        results: kv-quality-toyvlm          # reference_impls/results/<id>.json
        awaits: "..."                       # only while a benchmark has not written <id>.json yet
        column: accuracy
        left: {method: pyramidkv, budget: 0.1}
        relation: ">="                      # left RELATION factor * right + offset
        right: {method: snapkv, budget: 0.1}  # or value: <number>
      cause: "..."                          # only a measured or documented cause

or, without ``compare``, ``not_measured: <why no benchmark of ours checks it>``.

Every selector must match exactly one row of the named results file; :func:`check_expectations`
reports anything else with file, line and field. :func:`evaluate` computes the verdict from the
current results, so re-running a benchmark updates the comparison without any hand edit.

Significance: a comparison names a paired-test row (``compare.test``) or, when the rows differ
only in ``method`` and ``<results>-tests`` has one row for that pair whose ``metric`` is the column
(``accuracy``) or the column with its group (``accuracy, budget 0.1``) and whose group fields
(``budget``, ``layout``, ``cut``, ``setting``) are those of both rows, uses it; the sign test decides
at p < 0.05. Without such a row, rows that keep ``<column>_by_seed`` (their value per seed) over the
same seeds are paired seed by seed and sign-tested here, offset and factor included. Otherwise, rows with ``<column>_ci`` (95% half-widths) are compared by interval
(intervals apart back the verdict, agreement or disagreement); otherwise the outcome is from a
single run.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .checks import Problem

__all__ = [
    "Outcome",
    "applicable_cause",
    "check_expectations",
    "evaluate",
    "relation_text",
    "select",
    "AGREES",
    "DISAGREES",
    "NOT_MEASURED",
]

AGREES, DISAGREES, NOT_MEASURED = "agrees", "disagrees", "not measured"
ALPHA = 0.05
NO_BENCHMARK = "no benchmark of ours measures this"
_HOLDS = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b}


def _matches(row: dict[str, Any], selector: dict[str, Any]) -> bool:
    for key, wanted in selector.items():
        found = row.get(key)
        if isinstance(wanted, bool) or isinstance(found, bool):
            if found is not wanted:
                return False
        elif isinstance(wanted, (int, float)) and isinstance(found, (int, float)):
            # Budgets are written by code (0.1 may come back as 0.1000000001): compare as numbers.
            if not math.isclose(wanted, found, rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif found != wanted:
            return False
    return True


def select(data: dict[str, Any], selector: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of a results file whose fields equal every value of ``selector``."""
    return [row for row in data["rows"] if _matches(row, selector)]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class Outcome:
    """The verdict of one expectation on the current results (no configuration, only what was computed)."""

    verdict: str
    left: float | None = None
    right: float | None = None  # the threshold: factor * right row + offset, or the constant
    evidence: str = ""  # "single run", "95% intervals ...", "sign test p = ..."
    significant: bool | None = None


def relation_text(compare: dict[str, Any]) -> str:
    """``accuracy[method=pyramidkv, budget=0.1] >= accuracy[method=snapkv, budget=0.1]`` for the page."""

    def side(selector: dict[str, Any]) -> str:
        return f"{compare['column']}[" + ", ".join(f"{key}={value}" for key, value in selector.items()) + "]"

    if "right" in compare:
        right = side(compare["right"])
        factor, offset = compare.get("factor", 1), compare.get("offset", 0)
        if factor != 1:
            right = f"{factor:g} × {right}"
        if offset:
            right += f" {'+' if offset > 0 else '−'} {abs(offset):g}"
    else:
        right = f"{compare['value']:g}"
    return f"{side(compare['left'])} {compare['relation']} {right}"


# Fields of a paired-tests row that describe the test itself; any other field (budget, layout, setting)
# names the group of result rows the test was run on.
_TEST_FIELDS = frozenset(
    {"metric", "method", "versus", "family", "mean_difference", "wins", "losses", "ties", "sign_p", "bootstrap_p"}
    | {"verdict"}
)


def _test_row(
    compare: dict[str, Any], rows: tuple[dict[str, Any], dict[str, Any] | None], by_id: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any], bool] | None:
    """(paired-test row, whether it is oriented left minus right) for this comparison, if there is one."""
    if "test" in compare:
        tests = by_id.get(compare["test"]["results"])
        found = select(tests, compare["test"]["row"]) if tests else []
        if len(found) != 1:
            return None
        return found[0], found[0].get("method") == compare["left"].get("method")
    tests = by_id.get(f"{compare['results']}-tests")
    left, right = compare["left"], compare.get("right")
    if tests is None or right is None or compare.get("factor", 1) != 1 or compare.get("offset", 0) != 0:
        return None
    if {key: value for key, value in left.items() if key != "method"} != {
        key: value for key, value in right.items() if key != "method"
    }:
        return None  # the rows differ in more than the method: no paired test covers them
    column, (left_row, right_row) = compare["column"], rows
    methods = (left_row.get("method"), right_row.get("method") if right_row is not None else None)
    found = []
    for row in tests["rows"]:
        metric = row.get("metric")
        # "accuracy" or "accuracy, budget 0.1": the benchmarks name the group after the column.
        if not isinstance(metric, str) or (metric != column and not metric.startswith(f"{column}, ")):
            continue
        pair = (row.get("method"), row.get("versus"))
        if pair not in (methods, methods[::-1]):
            continue
        group = {key: value for key, value in row.items() if key not in _TEST_FIELDS}
        if all(side is not None and _matches(side, group) for side in rows):
            found.append((row, pair == methods))
    return found[0] if len(found) == 1 else None


def _by_seed_test(
    compare: dict[str, Any], rows: tuple[dict[str, Any], dict[str, Any] | None], holds: bool
) -> tuple[str, bool] | None:
    """A sign test over the seeds both rows were measured on, when the results keep ``<column>_by_seed``.

    Each seed gives one pair: the left row's value against the threshold that seed sets (``factor``
    times the right row's value plus ``offset``, or the constant ``value``), so offsets and factors are
    paired too. ``None`` when either row lacks per-seed values or they cover different seeds."""
    key = f"{compare['column']}_by_seed"
    left_row, right_row = rows
    left = left_row.get(key)
    right = right_row.get(key) if right_row is not None else None
    if not isinstance(left, dict) or len(left) < 2 or (right_row is not None and not isinstance(right, dict)):
        return None
    seeds = sorted(left)
    if right is not None and sorted(right) != seeds:
        return None
    factor, offset = compare.get("factor", 1), compare.get("offset", 0)
    values = [_number(left[seed]) for seed in seeds]
    if right is None:
        thresholds = [float(compare["value"])] * len(seeds)
    else:
        bases = [_number(right[seed]) for seed in seeds]
        thresholds = [None if base is None else factor * base + offset for base in bases]
    if any(value is None for value in values + thresholds):
        return None
    from reference_impls.common.seed_stats import sign_test  # the benchmarks' own test, one implementation

    test = sign_test(values, thresholds)
    significant = test.significant and _HOLDS[compare["relation"]](test.mean_difference, 0.0) == holds
    return f"sign test p = {test.p_value:.2g}, {len(seeds)} paired seeds", significant


def _evidence(
    compare: dict[str, Any],
    rows: tuple[dict[str, Any], dict[str, Any] | None],
    values: tuple[float, float],
    by_id: dict[str, dict[str, Any]],
    holds: bool,
) -> tuple[str, bool | None]:
    """How sure the outcome is: a paired test if there is one, else 95% intervals, else a single run."""
    found = _test_row(compare, rows, by_id)
    if found is not None:
        row, oriented = found
        p, difference = _number(row.get("sign_p")), _number(row.get("mean_difference"))
        if p is not None and difference is not None:
            difference = difference if oriented else -difference
            significant = p < ALPHA and _HOLDS[compare["relation"]](difference, 0.0) == holds
            n = sum(int(row.get(key) or 0) for key in ("wins", "losses", "ties"))
            return f"sign test p = {p:.2g}" + (f", {n} paired seeds" if n else ""), significant
    paired = _by_seed_test(compare, rows, holds)
    if paired is not None:
        return paired
    column = compare["column"]
    left_row, right_row = rows
    left_ci = _number(left_row.get(f"{column}_ci"))
    right_ci = _number(right_row.get(f"{column}_ci")) if right_row is not None else 0.0
    if left_ci is None or right_ci is None:
        return "single run, no interval", None
    right_ci *= abs(compare.get("factor", 1))
    left, right = values
    apart = left - left_ci > right + right_ci or left + left_ci < right - right_ci
    # Apart intervals back the verdict either way (as a significant sign test does): a disagreement is
    # significant when the interval of the left row lies wholly on the wrong side.
    return "95% intervals " + ("do not overlap" if apart else "overlap"), apart


def evaluate(expectation: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> Outcome:
    """The verdict of a checked expectation (see :func:`check_expectations`) on the results ``by_id``."""
    compare = expectation.get("compare")
    if not compare:
        return Outcome(NOT_MEASURED, evidence=expectation.get("not_measured") or NO_BENCHMARK)
    if compare["results"] not in by_id:
        awaits = compare.get("awaits")
        return Outcome(
            NOT_MEASURED,
            evidence=f"not written yet, awaits {awaits}" if awaits else f"no results file '{compare['results']}'",
        )
    data = by_id[compare["results"]]
    column = compare["column"]
    left_rows = select(data, compare["left"])
    right_rows = select(data, compare["right"]) if "right" in compare else [None]
    if len(left_rows) != 1 or len(right_rows) != 1:
        return Outcome(NOT_MEASURED, evidence="the selected rows are not in the results")
    left_row, right_row = left_rows[0], right_rows[0]
    left = _number(left_row.get(column))
    base = _number(right_row.get(column)) if right_row is not None else float(compare["value"])
    if left is None or base is None:
        return Outcome(NOT_MEASURED, left, base, "the results have no number here")
    right = compare.get("factor", 1) * base + compare.get("offset", 0) if right_row is not None else base
    holds = _HOLDS[compare["relation"]](left, right)
    evidence, significant = _evidence(compare, (left_row, right_row), (left, right), by_id, holds)
    return Outcome(AGREES if holds else DISAGREES, left, right, evidence, significant)


def _unknown_fields(data: dict[str, Any], selector: dict[str, Any], where: tuple[str, int, str]) -> list[Problem]:
    """A problem for each key of ``selector`` that no row of the results file has (a typo matches nothing)."""
    relpath, line, field = where
    known = sorted({name for row in data["rows"] for name in row})
    problems = []
    for key in selector:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; rows have {', '.join(known[:8])}"
            problems.append(
                Problem(relpath, line, f"{field}.{key}", f"no row of '{data['id']}' has the field '{key}'{hint}")
            )
    return problems


def _selector_problems(data: dict[str, Any], selector: Any, where: tuple[str, int, str]) -> list[Problem]:
    relpath, line, field = where
    if not isinstance(selector, dict) or not selector:
        return []  # the schema reports it
    rows = select(data, selector)
    if len(rows) == 1:
        return []
    if rows:
        keys = sorted({key for row in rows for key in row} - set(selector))
        differing = [key for key in keys if len({repr(row.get(key)) for row in rows}) > 1]
        return [
            Problem(
                relpath,
                line,
                field,
                f"{len(rows)} rows of '{data['id']}' match {selector}; expected "
                f"exactly one (add a field that tells them apart: {', '.join(differing[:4]) or 'none'})",
            )
        ]
    for key, wanted in selector.items():
        values = {row.get(key) for row in data["rows"] if key in row}
        if not values:
            return _unknown_fields(data, {key: wanted}, where)
        if not any(_matches({key: value}, {key: wanted}) for value in values):
            shown = ", ".join(sorted(repr(value) for value in values)[:12])
            return [
                Problem(
                    relpath,
                    line,
                    f"{field}.{key}",
                    f"{wanted!r} is not a value of '{key}' in '{data['id']}'; expected one of {shown}",
                )
            ]
    return [
        Problem(
            relpath, line, field, f"no row of '{data['id']}' matches {selector} (each value exists, but not together)"
        )
    ]


def _item_problems(entry: Any, index: int, item: Any) -> list[Problem]:
    """``not_measured`` only without ``compare`` (a verdict and a reason would contradict each other); ``url``
    must be a page the entry already cites (url, code or sources), so that the claim is traceable."""
    if not isinstance(item, dict):
        return []  # the schema reports it
    problems = []
    if "compare" in item and "not_measured" in item:
        problems.append(
            Problem(
                entry.relpath,
                entry.loaded.line_of(("expectations", index, "not_measured")),
                f"expectations[{index}].not_measured",
                "given together with compare; expected one of them: compare when a results file checks the "
                "claim, not_measured (the reason) when none does",
            )
        )
    url = item.get("url")
    if not isinstance(url, str):
        return problems  # absent, or a wrong type the schema reports
    pages = [entry.data.get("url"), entry.data.get("code"), *(entry.data.get("sources") or [])]
    cited = [value for value in pages if isinstance(value, str)]
    if url in cited:
        return problems
    listed = ", ".join(value for value in cited if value.startswith(("http://", "https://"))) or "none"
    return problems + [
        Problem(
            entry.relpath,
            entry.loaded.line_of(("expectations", index, "url")),
            f"expectations[{index}].url",
            f"'{url}' is not among the entry's url, code and sources; expected one of them ({listed}), "
            "or add the page to sources first",
        )
    ]


def check_expectations(entries: Iterable[Any], results: list[dict[str, Any]]) -> list[Problem]:
    """Problems of every entry's expectations against the results (unknown id, column, row, or an ambiguous row)."""
    by_id = {data["id"]: data for data in results}
    problems: list[Problem] = []
    for entry in entries:
        items = entry.data.get("expectations")
        if not isinstance(items, list):
            continue
        for index, item in enumerate(items):
            problems += _item_problems(entry, index, item)
            compare = item.get("compare") if isinstance(item, dict) else None
            if not isinstance(compare, dict):
                continue
            base = ("expectations", index, "compare")

            def at(*path: Any) -> tuple[str, int, str]:
                location = base + path
                name = f"expectations[{index}].compare" + "".join(f".{part}" for part in path)
                return entry.relpath, entry.loaded.line_of(location), name

            awaits = compare.get("awaits")
            if awaits and compare.get("results") in by_id:
                problems.append(
                    Problem(
                        *at("awaits"),
                        f"'{compare['results']}' exists now and is compared; expected no awaits (remove it)",
                        "warning",
                    )
                )
            for key in ("results",) + (("test",) if isinstance(compare.get("test"), dict) else ()):
                target = compare[key] if key == "results" else compare["test"].get("results")
                if isinstance(target, str) and target not in by_id and not awaits:
                    close = difflib.get_close_matches(target, list(by_id), n=1)
                    hint = f"; did you mean '{close[0]}'?" if close else ""
                    path = ("results",) if key == "results" else ("test", "results")
                    problems.append(
                        Problem(
                            *at(*path),
                            f"unknown results id '{target}': no valid reference_impls/results/{target}.json{hint}",
                        )
                    )
            data = by_id.get(compare.get("results"))
            if data is None:
                continue
            column = compare.get("column")
            columns = [spec["key"] for spec in data["columns"]]
            if isinstance(column, str) and column not in columns:
                close = difflib.get_close_matches(column, columns, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"expected one of {', '.join(columns)}"
                problems.append(Problem(*at("column"), f"'{column}' is not a column of '{data['id']}'; {hint}"))
            for side in ("left", "right"):
                if side in compare:
                    problems += _selector_problems(data, compare[side], at(side))
            cause = item.get("cause")
            when = cause.get("when") if isinstance(cause, dict) else None
            if isinstance(when, dict):
                # A value may stop matching when a benchmark is re-run (the cause then no longer applies),
                # but a field no row has never matches: the recorded cause would silently never show.
                for key in when:
                    line = entry.loaded.line_of(("expectations", index, "cause", "when", key))
                    name = f"expectations[{index}].cause.when"
                    problems += _unknown_fields(data, {key: when[key]}, (entry.relpath, line, name))
            test = compare.get("test")
            if isinstance(test, dict) and test.get("results") in by_id:
                problems += _selector_problems(by_id[test["results"]], test.get("row"), at("test", "row"))
    return problems


def applicable_cause(expectation: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> str:
    """The recorded cause of a disagreement, if it still applies to the compared row (its ``when`` fields)."""
    cause, compare = expectation.get("cause"), expectation.get("compare")
    if not cause or not compare or compare["results"] not in by_id:
        return ""
    rows = select(by_id[compare["results"]], compare["left"])
    if len(rows) != 1 or not _matches(rows[0], cause.get("when") or {}):
        return ""
    return cause["text"]
