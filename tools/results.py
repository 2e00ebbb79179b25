"""Reproduced-results files (``reference_impls/results/<id>.json``): loaded strictly and checked
against :func:`~tools.schema.results_schema`, with file, line and field for every problem.

Strict JSON: ``NaN`` and ``Infinity`` are refused (they are not JSON, and the site republishes
these numbers). Tools-level: ``validate`` uses this module without importing the site code.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from .checks import Problem, StrictValidator, schema_problems
from .schema import results_schema
from .yamlio import (
    MAX_DATA_BYTES,
    MAX_DEPTH,
    InputTextError,
    LoadedYaml,
    line_map,
    nesting_depth,
    read_text_input,
)

__all__ = ["RESULTS_DIR", "check_results", "load_all_results"]

RESULTS_DIR = "reference_impls/results"


class _NotFinite(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotFinite(name)


def _check_file(path: Path, where: str, validator) -> tuple[dict[str, Any] | None, list[Problem]]:
    try:
        text = read_text_input(path, MAX_DATA_BYTES)
        data = json.loads(text, parse_constant=_refuse_constant)
    except InputTextError as error:
        return None, [Problem(where, error.line, "", error.message)]
    except json.JSONDecodeError as error:
        return None, [Problem(where, error.lineno, "", f"invalid JSON: {error.msg}")]
    except RecursionError:  # the decoder recurses per nesting level
        return None, [Problem(where, 1, "", f"values nested too deeply to read; at most {MAX_DEPTH} levels are read")]
    except _NotFinite as error:
        line = text[: text.find(str(error))].count("\n") + 1
        return None, [
            Problem(
                where, line, "", f"{error} is not a JSON number; write a finite number (or null for a missing value)"
            )
        ]
    except (OSError, UnicodeDecodeError) as error:
        return None, [Problem(where, 1, "", f"cannot read the file: {error}")]
    depth = nesting_depth(data)[0]
    if depth > MAX_DEPTH:  # the line map and the checks recurse too: refuse before them
        return None, [Problem(where, 1, "", f"values nested {depth} levels deep; at most {MAX_DEPTH} are read")]
    problems = schema_problems(validator, LoadedYaml(path=path, data=data, lines=line_map(text), text=text), where)
    if not problems and data["id"] != path.stem:
        problems.append(
            Problem(
                where, line_map(text).get(("id",), 1), "id", f"'{data['id']}' differs from the file name '{path.name}'"
            )
        )
    if not problems and data.get("produced"):
        try:
            dt.date.fromisoformat(data["produced"])
        except ValueError as error:
            problems.append(
                Problem(
                    where,
                    line_map(text).get(("produced",), 1),
                    "produced",
                    f"'{data['produced']}' is not a real date ({error})",
                )
            )
    return (None if problems else data), problems


def check_results(root: Path) -> tuple[list[dict[str, Any]], list[Problem]]:
    """(every valid results file's data, every problem of the invalid ones); symlinks are left to the caller."""
    validator = StrictValidator(results_schema())
    found, problems = [], []
    for path in sorted((Path(root) / RESULTS_DIR).glob("*.json")):
        if path.is_symlink():
            continue  # refused (and reported) by the symlink check; never read
        data, file_problems = _check_file(path, f"{RESULTS_DIR}/{path.name}", validator)
        problems += file_problems
        if data is not None:
            found.append(data)
    return found, problems


def load_all_results(root: Path) -> list[dict[str, Any]]:
    """Every results file, the main results first and ablations (``"ablation": true``) after them, each
    group by id, the order every page lists them in; raises ``ValueError`` naming the first problem
    (validate lists them all)."""
    found, problems = check_results(root)
    if problems:
        raise ValueError(str(problems[0]))
    return sorted(found, key=lambda data: (bool(data.get("ablation", False)), data["id"]))
