"""The paper entry JSON Schema (Draft 2020-12), generated from the taxonomy so ids have one source.

``papers/paper.schema.json`` is the committed copy that editors use (with the taxonomy ids as an
enum for completion); ``python -m tools schema`` rewrites it and ``validate`` reports it when stale.
"""

from __future__ import annotations

import json
from typing import Any

from .taxonomy import Taxonomy

__all__ = [
    "SCHEMA_ID",
    "paper_schema",
    "schema_text",
    "ARXIV_PATTERN",
    "DOI_PATTERN",
    "DATE_PATTERN",
    "KEY_PATTERN",
    "MAX_KEY_LENGTH",
    "results_schema",
    "expectation_schema",
    "RELATIONS",
]

SCHEMA_ID = "https://lvlm-atlas.github.io/schemas/paper.schema.json"
ARXIV_PATTERN = r"^\d{4}\.\d{4,5}(v\d+)?$"
# No spaces, braces, backslashes or control characters: the value is written as it is into BibTeX,
# links and the feed.
DOI_PATTERN = r"^10\.\d{4,9}/[^\s{}\\\x00-\x1f\x7f-\x9f]+$"
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
MAX_KEY_LENGTH = 100
# The host part holds no brackets (an IPv6 literal is no paper link, and "https://[x" cannot be parsed).
URL_PATTERN = r"^https?://[^\s/?#{}\\\[\]\x00-\x1f\x7f-\x9f]+([/?#][^\s{}\\\x00-\x1f\x7f-\x9f]*)?$"
TAG_PATTERN = r"^[a-z0-9][a-z0-9+.-]*(/[a-z0-9][a-z0-9+.-]*)*$"


def _string(
    description: str, *, pattern: str | None = None, examples: list[str] | None = None, min_length: int = 1
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "minLength": min_length, "description": description}
    if pattern:
        schema["pattern"] = pattern
    if examples:
        schema["examples"] = examples
    schema["markdownDescription"] = description
    return schema


def paper_schema(taxonomy: Taxonomy | None = None) -> dict[str, Any]:
    """The schema; with a taxonomy, ``placement`` items are restricted to its ids (enum)."""
    placement_item: dict[str, Any] = {"type": "string", "pattern": r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"}
    if taxonomy is not None:
        placement_item["enum"] = sorted(taxonomy.by_id)
    reported = {
        "type": "object",
        "additionalProperties": False,
        "required": ["metric", "value", "source"],
        "description": "A number the paper (or the seed survey about it) reports. Never a number our code produced.",
        "properties": {
            "metric": _string("What is measured.", examples=["KV cache memory", "decode latency", "image A-AUROC"]),
            "value": {"type": "number", "description": "The reported value (a plain number; put the unit in `unit`)."},
            "unit": {"type": "string", "description": "Unit of the value.", "examples": ["GB", "ms/token", "x", "%"]},
            "setting": {"type": "string", "description": "Model, benchmark and budget the number belongs to."},
            "source": _string(
                "Where in the paper (or survey) the number is stated.",
                examples=["abstract", "Table 8 of arXiv 2604.05546"],
            ),
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "LVLM Atlas paper entry",
        "description": "One paper: papers/<key>.yaml. Unknown values stay empty; never invent metadata.",
        "type": "object",
        "additionalProperties": False,
        "required": ["key", "title", "authors", "year", "placement", "added"],
        "properties": {
            "key": {
                **_string(
                    "Citation key; equals the file name without .yaml.",
                    pattern=KEY_PATTERN,
                    examples=["zeng2026hybridkv"],
                ),
                "maxLength": MAX_KEY_LENGTH,
            },
            "title": _string("Title as the paper gives it.", min_length=3),
            "aliases": {
                "type": "array",
                "uniqueItems": True,
                "description": "Method nicknames people search for (FastV, ToMe, H2O), from the title or a cited list.",
                "items": _string("One nickname, as the title or list spells it."),
            },
            "summary": _string(
                "One paragraph quoted from the paper's abstract or its code README (never paraphrased); "
                "a trimmed quote ends with an ellipsis. The page it was quoted from goes in `sources`.",
                min_length=20,
            ),
            "authors": {
                "type": "array",
                "description": "Authors as 'First Last', in paper order. Empty when no source lists them.",
                "items": _string("One author, 'First Last'."),
            },
            "authors_truncated": {
                "type": "boolean",
                "description": "True when the source truncated the author list (et al.).",
            },
            "year": {
                "type": "integer",
                "minimum": 1950,
                "maximum": 2100,
                "description": "Publication year (venue year for published papers).",
            },
            "venue": _string("Short venue name; 'arXiv' for preprints.", examples=["CVPR", "NeurIPS", "arXiv"]),
            "arxiv": _string("arXiv id as a quoted string.", pattern=ARXIV_PATTERN, examples=["2604.05887"]),
            "doi": _string(
                "DOI without the https://doi.org/ prefix.", pattern=DOI_PATTERN, examples=["10.1609/aaai.v39i4.32417"]
            ),
            "url": _string("Link to the paper (arXiv abstract, proceedings or OpenReview page).", pattern=URL_PATTERN),
            "code": _string("Code repository given by the authors or a curated list.", pattern=URL_PATTERN),
            "placement": {
                "type": "array",
                "minItems": 1,
                "uniqueItems": True,
                "description": "Taxonomy ids (topic, stage or family) where the paper belongs; one or more.",
                "items": placement_item,
            },
            "tags": {
                "type": "array",
                "uniqueItems": True,
                "items": _string("Lower-case tag; '/' nests.", pattern=TAG_PATTERN),
            },
            "training": {
                "enum": ["training-free", "training-aware", "n/a"],
                "description": "Whether the method needs training.",
            },
            "models": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "description": "Models the paper evaluates.",
            },
            "benchmarks": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "description": "Benchmarks the paper evaluates on.",
            },
            "reported": {"type": "array", "items": reported},
            "expectations": {
                "type": "array",
                "description": "What the paper states that our benchmarks can check, each with a machine-checkable "
                "comparison against a reproduced-results file (see tools/expectations.py).",
                "items": expectation_schema(),
            },
            "implementation": _string(
                "Module path of our reference implementation.",
                pattern=r"^reference_impls(\.[a-z_][a-z0-9_]*)+$",
                examples=["reference_impls.decoding.hybridkv"],
            ),
            "sources": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "description": "Where the metadata came from (curated lists, verified pages).",
            },
            "added": _string(
                "Date the entry was added, as a quoted ISO date string.", pattern=DATE_PATTERN, examples=["2026-11-26"]
            ),
        },
    }


RESULTS_ID_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
IDENTIFIER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
RELATIONS = (">", ">=", "<", "<=")
AREAS = ("tokens", "kv-cache", "speculative", "reasoning", "hallucination", "continual-ad")


def _selector(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "minProperties": 1,
        "propertyNames": {"pattern": IDENTIFIER_PATTERN},
        "additionalProperties": {"type": ["string", "number", "boolean"]},
        "description": description,
    }


def expectation_schema() -> dict[str, Any]:
    """One expectation a paper states: its words and source, and the comparison that checks it on our results."""
    compare = {
        "type": "object",
        "additionalProperties": False,
        "required": ["results", "column", "left", "relation"],
        "oneOf": [{"required": ["right"]}, {"required": ["value"]}],
        "description": "left.column RELATION factor * right.column + offset (or: RELATION value).",
        "properties": {
            "results": _string(
                "Id of the results file (reference_impls/results/<id>.json).", pattern=RESULTS_ID_PATTERN
            ),
            "column": _string("Column compared (a key of the file's columns).", pattern=IDENTIFIER_PATTERN),
            "left": _selector("Field values that select exactly one row, e.g. {method: snapkv, budget: 0.2}."),
            "relation": {"enum": list(RELATIONS), "description": "How left compares with the right-hand side."},
            "right": _selector("Field values that select the row compared against."),
            "value": {"type": "number", "description": "A constant right-hand side (instead of a row)."},
            "factor": {"type": "number", "description": "Multiplies the right-hand row's value (default 1)."},
            "offset": {"type": "number", "description": "Added to the right-hand side (default 0), e.g. -5 points."},
            "awaits": _string(
                "What will produce the named results file, while it does not exist (e.g. the ToyVLM v2 re-run): "
                "validate accepts the unknown id and the row shows 'not measured' with this; once the file exists "
                "the comparison is checked and evaluated, and validate warns until awaits is removed."
            ),
            "test": {
                "type": "object",
                "additionalProperties": False,
                "required": ["results", "row"],
                "description": "A paired-test row (metric, method, versus, mean_difference, sign_p) for this comparison.",
                "properties": {
                    "results": _string("Id of the paired-tests results file.", pattern=RESULTS_ID_PATTERN),
                    "row": _selector("Field values that select the test row."),
                },
            },
        },
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["area", "claim", "source"],
        "properties": {
            "area": {"enum": list(AREAS), "description": "Which benchmarks the expectation belongs to."},
            "claim": _string("What the paper states, quoted or precisely paraphrased; never more than it says."),
            "source": _string("Where the paper says it.", examples=["abstract (arXiv 2404.14469)", "Table 1"]),
            "url": _string(
                "The page the claim was read on: the entry's url, code or one of its sources; linked beside source.",
                pattern=URL_PATTERN,
            ),
            "compare": compare,
            "not_measured": _string(
                "Without compare: why no benchmark of ours checks this yet (shown instead of a verdict)."
            ),
            "cause": {
                "type": "object",
                "additionalProperties": False,
                "required": ["text"],
                "description": "For a disagreement: its measured or documented cause; left out when not measured.",
                "properties": {
                    "text": _string("The cause and where it is measured or documented (findings, notes, results)."),
                    "when": _selector(
                        "Fields the compared (left) row must have for the cause to apply, e.g. {layout: "
                        "question-first}: after a re-run on another setup the cause is no longer claimed."
                    ),
                },
            },
        },
    }


COMMAND_PATTERN = r"^python -m reference_impls(\.[a-z_][a-z0-9_]*)+( [^\r\n]*)?$"


def results_schema() -> dict[str, Any]:
    """A reproduced-results file ``reference_impls/results/<id>.json``, as
    ``reference_impls.common.results`` writes it."""
    identifier = {"type": "string", "pattern": IDENTIFIER_PATTERN}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://lvlm-atlas.github.io/schemas/results.schema.json",
        "title": "LVLM Atlas reproduced results",
        "description": "Numbers our code produced, with the command that produced them. "
        "Never a number a paper reports.",
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "title", "command", "families", "columns", "rows"],
        "properties": {
            "id": {
                "type": "string",
                "pattern": RESULTS_ID_PATTERN,
                "maxLength": 100,
                "description": "Equals the file name without .json.",
            },
            "title": _string("What the table shows (plain text).", min_length=3),
            "command": _string(
                "The command that wrote this file: python -m reference_impls.<module> [arguments].",
                pattern=COMMAND_PATTERN,
            ),
            "produced": _string("Date of the run, ISO format.", pattern=DATE_PATTERN),
            "environment": {
                "type": "object",
                "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
            },
            "families": {
                "type": "array",
                "minItems": 1,
                "uniqueItems": True,
                "items": {"type": "string", "pattern": r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"},
                "description": "Taxonomy ids of the families whose pages show this file.",
            },
            "columns": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["key", "label"],
                    "properties": {
                        "key": identifier,
                        "label": {"type": "string"},
                        "unit": {"type": "string"},
                        "digits": {"type": ["integer", "null"], "minimum": 0, "maximum": 12},
                    },
                },
            },
            "rows": {"type": "array", "items": {"type": "object", "propertyNames": identifier}},
            "plots": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["x", "y"],
                    "properties": {
                        "x": identifier,
                        "y": identifier,
                        "group": {"type": "string"},
                        "title": {"type": "string"},
                        "logx": {"type": "boolean"},
                        "error": {
                            "type": "string",
                            "description": "Column of half-widths drawn as error bars "
                            "(for example a 95% confidence interval over seeds); empty for none.",
                        },
                    },
                },
            },
            "seeds": {
                "type": "object",
                "additionalProperties": False,
                "required": ["tuning", "reported"],
                "description": "Benchmarks that train or sample: the seeds used to tune or calibrate anything "
                "and the seeds whose numbers are reported (disjoint).",
                "properties": {
                    "tuning": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
                    "reported": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "uniqueItems": True},
                },
            },
            "notes": {
                "type": "string",
                "description": "Restricted Markdown: paragraphs with *emphasis*, **strong**, `code` and https links.",
            },
            "ablation": {
                "type": "boolean",
                "description": "True for results of a setting kept only for comparison (ToyVLM v1's question-first "
                "layout); pages list them after the main results.",
            },
        },
    }


def schema_text(taxonomy: Taxonomy) -> str:
    return json.dumps(paper_schema(taxonomy), indent=2, ensure_ascii=False) + "\n"
