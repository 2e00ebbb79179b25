"""Reproduced results: the JSON files that benchmarks write and the site renders.

Numbers our code produced are *reproduced*; every file records the exact command that made it,
the software versions and the machine, so a reader can run it again. Numbers a paper reports
live in ``papers/*.yaml`` under ``reported`` and are never written here.

A results file is ``reference_impls/results/<id>.json``::

    {
      "id": "tokens-toyvlm",
      "title": "ToyVLM accuracy vs retained visual tokens",
      "command": "python -m reference_impls.bench.tokens",
      "produced": "2026-11-26",
      "environment": {"python": "3.11.7", "torch": "2.13.0+cpu", ...},
      "families": ["prefilling-attention-guided", ...],
      "columns": [{"key": "method", "label": "Method"}, {"key": "accuracy", "label": "Accuracy", "unit": "%"}],
      "rows": [{"method": "fastv", "family": "prefilling-attention-guided", "accuracy": 93.1}],
      "plots": [{"x": "budget", "y": "accuracy", "group": "method", "title": "..."}],
      "notes": "free text (Markdown)",
      "seeds": {"tuning": [0, 1, 2], "reported": [10, 11, ...]},
      "ablation": true
    }

``seeds`` is required of every benchmark that trains or samples: the seeds used to calibrate or
tune anything are disjoint from the seeds whose numbers are reported, and both lists are recorded.

The site shows a file on every family page listed in ``families``; when rows carry a
``family`` key, a family page shows only its own rows (plus rows whose ``family`` is empty,
such as baselines).

``ablation`` (written only when true) marks results of a setting kept for comparison, not the
main evidence: ToyVLM v1's question-first layout. Pages list those after the main results.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Column",
    "Plot",
    "Results",
    "RESULTS_DIR",
    "command_line",
    "environment",
    "load_results",
    "paired_tests_results",
    "results_id",
    "save_results",
    "without_option",
]

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
RESULTS_ID_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
"""What a results id (and file name) must look like: the site's schema checks the same pattern."""


def results_id(*parts: str) -> str:
    """A results id from its parts, joined by ``-``, with ``_`` read as ``-`` (suite names such as
    ``multi_image`` are Python identifiers, ids are not): ``results_id("tokens-toyvlm-v2",
    "multi_image") == "tokens-toyvlm-v2-multi-image"``."""
    return "-".join(parts).replace("_", "-")


def command_line(module: str, argv: list[str] | None = None) -> str:
    """The exact command that ran ``module`` with ``argv`` (default: this process's arguments)."""
    import shlex

    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", "-m", module, *(shlex.quote(a) for a in args)])


@dataclass
class Column:
    key: str
    label: str
    unit: str = ""
    digits: int | None = None
    """Decimal places when rendering floats (None: three significant digits)."""


@dataclass
class Plot:
    x: str
    y: str
    group: str = ""
    title: str = ""
    logx: bool = False
    error: str = ""
    """Column holding the half-width drawn as an error bar (for example ``hal_rate_ci``)."""


@dataclass
class Results:
    id: str
    title: str
    command: str
    families: list[str]
    columns: list[Column]
    rows: list[dict[str, Any]]
    plots: list[Plot] = field(default_factory=list)
    notes: str = ""
    produced: str = ""
    environment: dict[str, str] = field(default_factory=dict)
    seeds: dict[str, list[int]] = field(default_factory=dict)
    """``{"tuning": [...], "reported": [...]}`` for benchmarks that train or sample (see the module doc)."""
    ablation: bool = False
    """Results of a setting kept only for comparison (ToyVLM v1's question-first layout): listed last."""


def environment() -> dict[str, str]:
    """Versions and machine facts recorded with every reproduced number."""
    facts = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": str(os.cpu_count()),
    }
    for module_name in ("torch", "transformers", "diffusers", "peft"):
        module = sys.modules.get(module_name)
        if module is not None:
            facts[module_name] = getattr(module, "__version__", "")
    torch = sys.modules.get("torch")
    if torch is not None:
        facts["torch_threads"] = str(torch.get_num_threads())
        facts["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return facts


def without_option(args: list[str], option: str) -> list[str]:
    """``args`` less every ``option VALUE`` and ``option=VALUE``: for options that change where a run
    reads or writes its files, never what it computes, so the command a results file or manifest
    records stays free of one machine's paths."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


def _without_output_directory(command: str) -> str:
    """``command`` less its ``--out DIR``: that option only says where the file goes, and the command
    recorded in a committed file must write it in place, whatever scratch folder the run used."""
    import shlex

    return " ".join(shlex.quote(word) for word in without_option(shlex.split(command), "--out"))


def save_results(results: Results, directory: Path | None = None) -> Path:
    """Write ``results`` as ``<directory>/<id>.json`` (atomically), filling date and environment; the
    recorded command loses its ``--out`` (the file is the same wherever it was first written)."""
    directory = Path(directory) if directory is not None else RESULTS_DIR
    if not re.match(RESULTS_ID_PATTERN, results.id):
        raise ValueError(f"results id {results.id!r} must match {RESULTS_ID_PATTERN} (build it with results_id)")
    results.command = _without_output_directory(results.command)
    directory.mkdir(parents=True, exist_ok=True)
    if not results.produced:
        results.produced = _dt.date.today().isoformat()
    if not results.environment:
        results.environment = environment()
    if results.seeds:
        from reference_impls.common.seed_stats import disjoint_seeds

        disjoint_seeds(results.seeds.get("tuning", []), results.seeds.get("reported", []))
    keys = {column.key for column in results.columns}
    for index, row in enumerate(results.rows):
        missing = keys - row.keys()
        if missing:
            raise ValueError(f"results {results.id!r} row {index} lacks columns {sorted(missing)}")
    path = directory / f"{results.id}.json"
    temporary = path.with_suffix(".json.tmp")
    data = _finite(asdict(results))  # strict JSON: an undefined number (NaN, inf) is written as null
    if not data["seeds"]:
        del data["seeds"]  # benchmarks without randomness
    if not data["ablation"]:
        del data["ablation"]
    temporary.write_text(json.dumps(data, indent=1, sort_keys=False, allow_nan=False) + "\n", encoding="utf-8")
    temporary.replace(path)
    return path


def paired_tests_results(
    id: str,
    title: str,
    command: str,
    families: list[str],
    rows: list[dict],
    seeds: dict[str, list[int]],
    reference: str,
    notes: str = "",
    ablation: bool = False,
) -> Results:
    """A results file of paired comparisons (rows from :func:`~reference_impls.common.seed_stats.paired_rows`)."""
    columns = [
        Column("metric", "Metric"),
        Column("method", "Method"),
        Column("versus", "Versus"),
        Column("mean_difference", "Mean difference", "pt", 2),
        Column("wins", "Wins"),
        Column("losses", "Losses"),
        Column("ties", "Ties"),
        Column("sign_p", "Sign-test p", "", 3),
        Column("bootstrap_p", "Bootstrap p", "", 3),
        Column("verdict", "Verdict"),
    ]
    protocol = (
        f"Differences are {reference} minus the other method, one pair per reported seed. The sign test decides "
        "significance at p < 0.05 (ties dropped); the paired bootstrap (10,000 resamples of the mean difference) "
        "is shown beside it. "
    )
    return Results(
        id=id,
        title=title,
        command=command,
        families=families,
        columns=columns,
        rows=rows,
        seeds=seeds,
        notes=protocol + notes,
        ablation=ablation,
    )


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def load_results(path: Path) -> Results:
    """Read a results file written by :func:`save_results`."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    data["columns"] = [Column(**column) for column in data.get("columns", [])]
    data["plots"] = [Plot(**plot) for plot in data.get("plots", [])]
    return Results(**data)
