"""Problems and schema checking shared by every loader: file, line, field and a message that says the fix."""

from __future__ import annotations

import datetime as dt
import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator, validators

from .yamlio import LoadedYaml

__all__ = ["CONTROL_CHARACTERS", "Problem", "StrictValidator", "schema_problems", "field_name", "control_problems"]


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    field: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.path}:{self.line}: {prefix}{where}{self.message}"


# C0 and C1 control characters but tab, line feed and carriage return: no text field needs them, and
# the programs that read our outputs act on some (a NUL ends a C string in BibTeX tools, an escape
# sequence drives the terminal that prints a message). The bidirectional embeddings, overrides and
# isolates are refused too: they make text display in another order than it reads, so a title or a
# URL on the site, in a diff or in references.bib can show one thing and be another ("Trojan Source").
_BIDI_CONTROLS = "\u202a-\u202e\u2066-\u2069"
CONTROL_CHARACTERS = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_BIDI_CONTROLS}]")
_BIDI_CONTROL = re.compile(f"[{_BIDI_CONTROLS}]")


def control_problems(loaded: LoadedYaml, relpath: str) -> list[Problem]:
    """One problem per string (value or key) of a data file that holds a control character."""
    problems = []

    def walk(value: Any, location: tuple[Any, ...]) -> None:
        if isinstance(value, str):
            found = CONTROL_CHARACTERS.search(value)
            if found:
                kind = "bidirectional control" if _BIDI_CONTROL.match(found.group()) else "control"
                problems.append(
                    Problem(
                        relpath,
                        loaded.line_of(location),
                        field_name(location),
                        f"holds the {kind} character U+{ord(found.group()):04X} (character {found.start() + 1}); "
                        "expected plain text: remove it",
                    )
                )
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(key, location)
                walk(item, location + (key,))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, location + (index,))

    walk(loaded.data, ())
    return problems


def _is_integer(checker, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)  # 2026.0 is not a year


def _is_number(checker, instance: Any) -> bool:
    return isinstance(instance, (int, float)) and not isinstance(instance, bool) and math.isfinite(instance)


# JSON Schema calls 2026.0 an integer and .nan a number; entries must not (papers.json must stay JSON).
StrictValidator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine_many({"integer": _is_integer, "number": _is_number}),
)


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(item) for item in value.values())
    return isinstance(value, list) and any(_has_float(item) for item in value)


def field_name(location: Iterable[Any]) -> str:
    name = ""
    for part in location:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


def _describe_misread(value: Any) -> str | None:
    """Why YAML 1.1 produced a non-string where the schema wants a string, if that is the cause."""
    if isinstance(value, bool):
        return "a boolean (YAML 1.1 reads yes/no/on/off as booleans)"
    if isinstance(value, (dt.date, dt.datetime)):
        return "a date object (YAML reads unquoted YYYY-MM-DD as a date)"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    return None


def schema_problems(
    validator: Draft202012Validator, loaded: LoadedYaml, relpath: str, fast_check=None
) -> list[Problem]:
    """Every schema error of one loaded file as a :class:`Problem` with its line; ``fast_check`` (a
    compiled validator) skips valid files quickly. Control characters are reported too (:func:`control_problems`)."""
    return control_problems(loaded, relpath) + _schema_only(validator, loaded, relpath, fast_check)


def _schema_only(validator: Draft202012Validator, loaded: LoadedYaml, relpath: str, fast_check=None) -> list[Problem]:
    if fast_check is not None and not _has_float(loaded.data):  # the compiled check takes 2026.0 and .nan
        try:
            fast_check(loaded.data)
            return []
        except fastjsonschema.JsonSchemaException:
            pass  # invalid: let jsonschema explain every error with its path
    problems = []
    errors = sorted(validator.iter_errors(loaded.data), key=lambda error: [str(part) for part in error.absolute_path])
    for error in errors:
        location = tuple(error.absolute_path)
        line = loaded.line_of(location)
        if error.validator == "additionalProperties":
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            for name in extra:
                known = difflib.get_close_matches(name, list(error.schema.get("properties", {})), n=1)
                hint = f"; did you mean '{known[0]}'?" if known else ""
                problems.append(
                    Problem(
                        relpath,
                        loaded.line_of(location + (name,)),
                        field_name(location + (name,)),
                        f"unknown field{hint}",
                    )
                )
            continue
        if error.validator == "required":
            missing = re.findall(r"'([^']+)' is a required property", error.message)
            name = field_name(location + tuple(missing))
            problems.append(Problem(relpath, line, name, "required field is missing"))
            continue
        message = error.message
        if error.validator == "type" and isinstance(error.instance, float) and not math.isfinite(error.instance):
            found = _raw_value(loaded, line) or error.instance
            message = f"expected a finite number, found {found!r} (.nan and .inf are not allowed)"
        elif (
            error.validator == "type"
            and isinstance(error.instance, float)
            and "integer" in _as_list(error.validator_value)
        ):
            message = (
                f"expected a whole number, found {error.instance!r}; write {int(error.instance)}"
                if error.instance.is_integer()
                else f"expected a whole number, found {error.instance!r}"
            )
        elif error.validator == "type" and "string" in _as_list(error.validator_value):
            misread = _describe_misread(error.instance)
            if misread:
                raw = _raw_value(loaded, line)
                message = f'expected a string, but YAML read {raw!r} as {misread}; quote it: "{raw}"'
        elif error.validator == "pattern":
            message = f"{error.instance!r} does not match the expected format {error.validator_value}"
        elif error.validator == "enum" and len(error.validator_value) > 8:
            message = f"{error.instance!r} is not an allowed value"
        elif error.validator in ("oneOf", "anyOf", "allOf", "if", "not"):
            message = _composite_message(error)
        problems.append(Problem(relpath, line, field_name(location), message))
    return problems


def _composite_message(error) -> str:
    """The most telling error among the alternatives: the one that got furthest into the value
    (a pattern it failed, not the 'const'/'type' of an alternative it never resembled)."""
    if error.context:
        best = min(
            error.context, key=lambda sub: (sub.validator in ("const", "type", "not"), -len(list(sub.absolute_path)))
        )
        if best.validator == "pattern":
            return f"{best.instance!r} does not match the expected format {best.validator_value}"
        return best.message
    return error.message


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _raw_value(loaded: LoadedYaml, line: int) -> str:
    try:
        text = loaded.text.splitlines()[line - 1]
    except IndexError:
        return ""
    return text.split(":", 1)[1].strip() if ":" in text else text.strip().lstrip("- ").strip()
