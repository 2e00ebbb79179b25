"""Load and check everything: the taxonomy, every paper entry and the links between them.

:func:`load_catalog` never raises on bad input; it collects every problem with its file, line and
field so ``validate`` can report them all at once.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import os
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastjsonschema

from .checks import Problem, StrictValidator, schema_problems
from .expectations import check_expectations
from .nav import check_nav
from .results import RESULTS_DIR, check_results
from .schema import DATE_PATTERN, paper_schema, schema_text
from .taxonomy import PLANNED, Taxonomy, load_taxonomy
from .yamlio import LoadedYaml, YamlLoadError, load_yaml

__all__ = [
    "Problem",
    "Entry",
    "Catalog",
    "load_catalog",
    "reload_entries",
    "normalise_title",
    "tidy_title",
    "SCHEMA_HINT",
    "ROOT",
]

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_HINT = "# yaml-language-server: $schema=paper.schema.json"
TAXONOMY_SCHEMA_HINT = "# yaml-language-server: $schema=taxonomy.schema.json"


@dataclass
class Entry:
    """One paper entry (only entries that loaded as a mapping)."""

    loaded: LoadedYaml
    relpath: str

    @property
    def data(self) -> dict[str, Any]:
        return self.loaded.data

    @property
    def key(self) -> str:
        return str(self.data.get("key", ""))


@dataclass
class Catalog:
    root: Path
    taxonomy: Taxonomy
    entries: list[Entry]
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [problem for problem in self.problems if problem.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [problem for problem in self.problems if problem.severity == "warning"]

    def by_key(self) -> dict[str, Entry]:
        return {entry.key: entry for entry in self.entries}


def normalise_title(title: str) -> str:
    """Lower-case ASCII letters and digits only: 'SnapKV: LLM Knows...' -> 'snapkvllmknows...'."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]", "", ascii_title.lower())


def _relative(path: Path, root: Path) -> str:
    for candidate in (path, path.resolve()):
        try:
            return str(candidate.relative_to(root))
        except ValueError:
            continue
    return str(path)


def _module_exists(root: Path, module: str) -> bool:
    base = root.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _load_file(path: Path, root: Path, problems: list[Problem], text: str | None = None) -> LoadedYaml | None:
    relpath = _relative(path, root)
    try:
        loaded = load_yaml(path, text)
    except YamlLoadError as error:
        problems.append(Problem(relpath, error.line, "", error.message))
        return None
    except (OSError, UnicodeDecodeError) as error:
        problems.append(Problem(relpath, 1, "", f"cannot read the file: {error}"))
        return None
    if not isinstance(loaded.data, dict):
        problems.append(
            Problem(
                relpath, 1, "", f"expected a mapping of fields at the top level, found {type(loaded.data).__name__}"
            )
        )
        return None
    return loaded


def _check_taxonomy(root: Path, loaded_files: list[LoadedYaml], problems: list[Problem]) -> Taxonomy:
    schema = json.loads((root / "taxonomy" / "taxonomy.schema.json").read_text(encoding="utf-8"))
    validator = StrictValidator(schema)
    for loaded in loaded_files:
        relpath = _relative(loaded.path, root)
        problems += schema_problems(validator, loaded, relpath)
        if loaded.first_line.strip() != TAXONOMY_SCHEMA_HINT:
            problems.append(
                Problem(relpath, 1, "", f"first line should be '{TAXONOMY_SCHEMA_HINT}' so editors validate", "warning")
            )
    # Built from schema-invalid files too (best effort), so one bad node does not make every
    # paper's placement "unknown".
    taxonomy = load_taxonomy(root / "taxonomy", loaded_files)
    seen: dict[str, Any] = {}
    for topic in taxonomy.topics:
        axes = {axis["id"] for axis in topic_data(taxonomy, topic).get("axes", [])}
        for node in topic.descendants():
            relpath = _relative(node.file, root) if node.file else "taxonomy"
            if node.id in seen:
                other = seen[node.id]
                problems.append(
                    Problem(
                        relpath,
                        node.line,
                        "id",
                        f"duplicate taxonomy id '{node.id}' (also {_relative(other.file, root)}:{other.line})",
                    )
                )
            seen[node.id] = node
            if node.level == "stage" and node.axis and node.axis not in axes:
                problems.append(
                    Problem(relpath, node.line, "axis", f"unknown axis '{node.axis}'; the topic defines {sorted(axes)}")
                )
            if node.is_leaf_method:
                for field_name in ("implementation", "notebook"):
                    if getattr(node, field_name) == PLANNED:
                        problems.append(
                            Problem(
                                relpath,
                                node.line,
                                field_name,
                                f"method family '{node.id}' has no {field_name} yet (planned); {_NOT_A_METHOD_HINT}",
                            )
                        )
            for module in node.implementations:
                if not _module_exists(root, module):
                    problems.append(
                        Problem(
                            relpath, node.line, "implementation", f"module '{module}' does not exist under {root.name}/"
                        )
                    )
            for notebook in node.notebooks:
                if not (root / notebook).is_file():
                    problems.append(Problem(relpath, node.line, "notebook", f"notebook '{notebook}' does not exist"))
    _check_reproduced(root, taxonomy, problems)
    return taxonomy


_NOT_A_METHOD_HINT = "every method family needs one; a node that is not a method family (benchmarks, surveys) gets `kind: resource` and an `exempt_reason`"


def _check_reproduced(root: Path, taxonomy: Taxonomy, problems: list[Problem]) -> None:
    """Every method family is named in the ``families`` of at least one reproduced-results file."""
    results, results_problems = check_results(root)
    problems += results_problems
    covered: set[str] = set()
    for data in results:
        covered |= set(data["families"])
        for family in data["families"]:
            if family not in taxonomy.by_id:
                close = difflib.get_close_matches(family, list(taxonomy.by_id), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                problems.append(
                    Problem(f"{RESULTS_DIR}/{data['id']}.json", 1, "families", f"unknown taxonomy id '{family}'{hint}")
                )
    for topic in taxonomy.topics:
        for node in topic.descendants():
            if node.is_leaf_method and node.implementations and node.id not in covered:
                problems.append(
                    Problem(
                        _relative(node.file, root) if node.file else "taxonomy",
                        node.line,
                        "implementation",
                        f"method family '{node.id}' has no reproduced results: no reference_impls/results/*.json "
                        "lists it in its families (run the family's benchmark and commit its JSON)",
                    )
                )


def topic_data(taxonomy: Taxonomy, topic) -> dict[str, Any]:
    for loaded in taxonomy.files:
        if loaded.data.get("id") == topic.id:
            return loaded.data
    return {}


# Everything the build reads or copies into the site; papers/ is checked file by file in _paper_files.
SYMLINK_FREE = ("taxonomy", "docs", "notebooks", "reference_impls/results", "CONTRIBUTING.md", "mkdocs.yml")


def _symlink_problems(root: Path) -> list[Problem]:
    """A symlink below a folder the site is built from would put its target's content into the site."""
    problems = []
    for name in SYMLINK_FREE:
        top = root / name
        if top.is_symlink() and top.is_file():
            problems.append(Problem(name, 1, "", "symbolic links are not allowed here; commit the file itself"))
            continue
        for folder, directories, files in os.walk(top):  # does not follow links below the top
            for child in sorted(directories + files):
                path = Path(folder) / child
                if path.is_symlink():
                    relpath = f"{name}/{path.relative_to(top)}"
                    message = (
                        f"symbolic links are not allowed under {name}/: the build would copy or read the "
                        "target's content; commit the file itself"
                    )
                    problems.append(Problem(relpath, 1, "", message))
    return problems


def _canonical(path: Path) -> Path:
    """Absolute path with its folders resolved but not the file itself (a symlinked file stays visible)."""
    path = Path(path).absolute()
    return path.parent.resolve() / path.name


def _paper_files(
    root: Path, selected: set[Path] | None, new_files: dict[Path, str], problems: list[Problem]
) -> list[Path]:
    """Every ``papers/<key>.yaml``; anything else under ``papers/`` (except the schema) is reported."""
    papers = root / "papers"
    found = set(new_files)
    for path in sorted(papers.rglob("*")) if papers.is_dir() else ():
        if path.is_dir() and not path.is_symlink():
            continue
        if path.is_symlink():
            message = "symbolic links are not allowed under papers/; commit the file itself"
        elif path.parent != papers:
            message = f"entries belong directly in papers/, not in a sub-folder (move it to papers/{path.name})"
        elif path.name == "paper.schema.json" or (path.name.startswith(".") and path.name.endswith(".tmp")):
            continue  # the schema, or a file being written atomically right now
        elif path.suffix == ".yml":
            message = f"entries use the .yaml extension; rename it to papers/{path.stem}.yaml"
        elif path.suffix != ".yaml":
            message = "only <key>.yaml entries and paper.schema.json belong in papers/"
        else:
            found.add(path)
            continue
        if selected is None or path in selected:
            problems.append(Problem(_relative(path, root), 1, "", message))
    for path in sorted(selected or ()):
        if not path.exists() and path not in new_files:
            problems.append(Problem(_relative(path, root), 1, "", "no such file"))
        elif path.is_file() and papers not in path.parents:
            message = "not a paper entry: entries are papers/<key>.yaml files"
            problems.append(Problem(_relative(path, root), 1, "", message))
    return sorted(found)


def load_catalog(
    root: Path = ROOT,
    paper_paths: Iterable[Path] | None = None,
    *,
    check_schema_file: bool = True,
    new_files: dict[Path, str] | None = None,
) -> Catalog:
    """Load the taxonomy and the paper entries under ``root`` and check them; never raises on bad data.

    ``paper_paths`` restricts which entries are reported on, but cross-file checks (duplicates)
    always consider every entry in ``papers/``. ``new_files`` (path -> text) are entries not
    written yet, checked as if they were on disk: how ``new`` and ``bib import`` validate before writing.
    """
    root = Path(root).resolve()
    problems: list[Problem] = _symlink_problems(root)
    linked = {root / problem.path for problem in problems}
    taxonomy_files = [
        loaded
        for path in sorted((root / "taxonomy").glob("*.yaml"))
        if path not in linked and (loaded := _load_file(path, root, problems))
    ]
    taxonomy = _check_taxonomy(root, taxonomy_files, problems)

    new_files = {_canonical(path): text for path, text in (new_files or {}).items()}
    selected = {_canonical(path) for path in paper_paths} if paper_paths is not None else None
    all_paths = _paper_files(root, selected, new_files, problems)
    entries: list[Entry] = []
    for path in all_paths:
        reported = selected is None or path in selected
        entry = _read_entry(path, root, taxonomy, problems if reported else None, new_files.get(path))
        if entry is not None:
            entries.append(entry)
    problems += _cross_entry_problems(entries, selected)
    # Expectations name rows of the results files; their own problems are reported by _check_reproduced.
    checked = [entry for entry in entries if selected is None or entry.loaded.path in selected]
    problems += check_expectations(checked, check_results(root)[0])
    problems += _topic_source_problems(root, taxonomy, entries)
    if (root / "mkdocs.yml").is_file():
        problems += [Problem("mkdocs.yml", 1, "nav", message) for message in check_nav(root, taxonomy)]
    if check_schema_file:
        schema_path = root / "papers" / "paper.schema.json"
        if not schema_path.is_file() or schema_path.read_text(encoding="utf-8") != schema_text(taxonomy):
            problems.append(
                Problem("papers/paper.schema.json", 1, "", "out of date with taxonomy/ (run: python -m tools schema)")
            )
    return Catalog(root=root, taxonomy=taxonomy, entries=entries, problems=problems)


_VALIDATORS: list[tuple[StrictValidator, Any]] = []


def _paper_validators() -> tuple[StrictValidator, Any]:
    """The paper schema's validators, made once per process (``serve`` checks one entry per edit)."""
    if not _VALIDATORS:
        schema = paper_schema(None)
        # The paper schema uses only draft-07 keywords, so a compiled draft-07 validator can clear
        # valid files ~20x faster; jsonschema still produces every message for the invalid ones.
        fast_check = fastjsonschema.compile({**schema, "$schema": "http://json-schema.org/draft-07/schema#"})
        _VALIDATORS.append((StrictValidator(schema), fast_check))
    return _VALIDATORS[0]


def _read_entry(
    path: Path, root: Path, taxonomy: Taxonomy, problems: list[Problem] | None, text: str | None = None
) -> Entry | None:
    """Load one entry; with a ``problems`` list, check it on its own (schema, key, placement...) too."""
    loaded = _load_file(path, root, problems if problems is not None else [], text)
    if loaded is None:
        return None
    entry = Entry(loaded=loaded, relpath=_relative(path, root))
    if problems is not None:
        validator, fast_check = _paper_validators()
        problems += schema_problems(validator, loaded, entry.relpath, fast_check)
        problems += _entry_problems(entry, root, taxonomy)
    return entry


def _topic_source_problems(root: Path, taxonomy: Taxonomy, entries: list[Entry]) -> list[Problem]:
    known_keys = {entry.key for entry in entries}
    return [
        Problem(_relative(topic.file, root), topic.line, "source", f"no paper entry with key '{topic.source}'")
        for topic in taxonomy.topics
        if topic.source and topic.source not in known_keys
    ]


def reload_entries(catalog: Catalog, paths: Iterable[Path], results: list[dict[str, Any]]) -> Catalog | None:
    """``catalog`` with the entries at ``paths`` read again (changed, added or deleted), checked the
    way :func:`load_catalog` checks them (cross-entry checks against every entry); the problems are
    those of ``paths`` only. The taxonomy and the other entries are reused as they are: this is how
    ``serve`` takes in one edited entry without reading the whole repository again. ``results`` are
    the reproduced results the expectations are checked against. None when a path is not a plain
    ``papers/<key>.yaml`` file (the caller reloads everything, which reports it)."""
    root = catalog.root
    papers = root / "papers"
    selected = {_canonical(path) for path in paths}
    if any(path.parent != papers or path.suffix != ".yaml" or path.is_symlink() for path in selected):
        return None
    problems: list[Problem] = []
    kept = [entry for entry in catalog.entries if entry.loaded.path not in selected]
    fresh = [
        entry
        for path in sorted(selected)
        if path.exists() and (entry := _read_entry(path, root, catalog.taxonomy, problems)) is not None
    ]
    entries = sorted(kept + fresh, key=lambda entry: entry.loaded.path)
    problems += _cross_entry_problems(entries, selected)
    problems += check_expectations(fresh, results)
    problems += _topic_source_problems(root, catalog.taxonomy, entries)
    return Catalog(root=root, taxonomy=catalog.taxonomy, entries=entries, problems=problems)


def tidy_title(title: str) -> str:
    """``title`` without the stray spacing some arXiv listings carry ("MobileVLM : A Fast",
    "Fact :Teaching", "DocPrune:Efficient"): no space before ``: ; , ? !``, one space after a colon
    that runs into a capitalised word, single spaces. The words stay the paper's own.

    Examples:
        >>> tidy_title("Fact :Teaching MLLMs")
        'Fact: Teaching MLLMs'
        >>> tidy_title("What if...?: Counterfactual  Inception")
        'What if...?: Counterfactual Inception'
    """
    title = re.sub(r"\s+([:;,?!])", r"\1", " ".join(title.split()))
    return re.sub(r":(?=[A-Z])", ": ", title)


def _entry_problems(entry: Entry, root: Path, taxonomy: Taxonomy) -> list[Problem]:
    problems = []
    data, loaded, relpath = entry.data, entry.loaded, entry.relpath
    stem = Path(relpath).stem
    if isinstance(data.get("key"), str) and data["key"] != stem:
        problems.append(
            Problem(
                relpath,
                loaded.line_of(("key",)),
                "key",
                f"key '{data['key']}' differs from the file name '{stem}.yaml'",
            )
        )
    if loaded.first_line.strip() != SCHEMA_HINT:
        problems.append(Problem(relpath, 1, "", f"first line should be '{SCHEMA_HINT}' so editors validate", "warning"))
    for index, node_id in enumerate(data.get("placement") or []):
        if isinstance(node_id, str) and node_id not in taxonomy.by_id:
            close = difflib.get_close_matches(node_id, list(taxonomy.by_id), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            problems.append(
                Problem(
                    relpath,
                    loaded.line_of(("placement", index)),
                    f"placement[{index}]",
                    f"unknown taxonomy id '{node_id}'{hint}",
                )
            )
    title = data.get("title")
    if isinstance(title, str) and tidy_title(title) != title:
        problems.append(
            Problem(
                relpath,
                loaded.line_of(("title",)),
                "title",
                f"stray spacing around punctuation; expected '{tidy_title(title)}' (the paper's words, "
                "with the spacing a reference list prints)",
            )
        )
    added = data.get("added")
    if isinstance(added, str) and re.fullmatch(DATE_PATTERN, added):
        try:
            dt.date.fromisoformat(added)
        except ValueError as error:
            message = f"'{added}' is not a real date ({error})"
            problems.append(Problem(relpath, loaded.line_of(("added",)), "added", message))
    module = data.get("implementation")
    if isinstance(module, str) and module.startswith("reference_impls") and not _module_exists(root, module):
        problems.append(
            Problem(relpath, loaded.line_of(("implementation",)), "implementation", f"module '{module}' does not exist")
        )
    return problems


def _cross_entry_problems(entries: list[Entry], selected: set[Path] | None) -> list[Problem]:
    problems = []

    def report(entry: Entry) -> bool:
        return selected is None or entry.loaded.path in selected

    checks = (
        # Keys equal but for letter case name files that collide on case-insensitive file systems.
        (
            "key",
            "key (ignoring letter case)",
            lambda data: data["key"].casefold() if isinstance(data.get("key"), str) else None,
        ),
        (
            "arxiv",
            "arXiv id",
            lambda data: str(data.get("arxiv")).split("v")[0] if isinstance(data.get("arxiv"), str) else None,
        ),
        ("doi", "DOI", lambda data: data.get("doi").lower() if isinstance(data.get("doi"), str) else None),
        (
            "title",
            "title (near-duplicate)",
            lambda data: normalise_title(data["title"]) if isinstance(data.get("title"), str) else None,
        ),
        (
            "title",
            "title words (near-duplicate)",
            lambda data: (
                " ".join(sorted(set(re.findall(r"[a-z0-9]+", data["title"].lower()))))
                if isinstance(data.get("title"), str)
                else None
            ),
        ),
    )
    reported_pairs: set[tuple[str, tuple[str, str]]] = set()
    for field_name, label, value_of in checks:
        first: dict[str, Entry] = {}
        for entry in entries:
            value = value_of(entry.data)
            if not value:
                continue
            if value in first:
                other = first[value]
                pair = (other.relpath, entry.relpath)
                if (field_name, pair) in reported_pairs:
                    continue  # both title checks matched the same pair
                reported_pairs.add((field_name, pair))
                # Report on the entry being validated; with a full run that is the later file.
                this, that = (entry, other) if report(entry) or not report(other) else (other, entry)
                if report(this):
                    line = this.loaded.line_of((field_name,))
                    problems.append(
                        Problem(
                            this.relpath,
                            line,
                            field_name,
                            f"duplicate {label}: same as {that.relpath}:{that.loaded.line_of((field_name,))}",
                        )
                    )
            else:
                first[value] = entry
    return problems
