"""Safe YAML loading that remembers where every value came from, and canonical YAML writing.

PyYAML implements YAML 1.1, so ``2401.10`` loads as a float and ``2026-01-02`` as a date; the
schema types catch both and the messages say to quote the value. Unknown tags such as
``!!python/object`` are refused by the safe loader and reported with their line. Anchors and
aliases are refused before anything is built (a few hundred bytes of aliases can expand to
gigabytes, or refer to themselves), and so are mapping keys that are not plain scalars.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "InputTextError",
    "LoadedYaml",
    "MAX_DATA_BYTES",
    "MAX_DEPTH",
    "MAX_INPUT_BYTES",
    "YamlLoadError",
    "dump_yaml",
    "line_map",
    "load_yaml",
    "nesting_depth",
    "read_text_input",
    "write_text_atomic",
]

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """Never writes anchors: load_yaml refuses them, so a value used twice is written out twice."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


Path_ = tuple[str | int, ...]


class YamlLoadError(Exception):
    """The file is not valid YAML, or uses a tag the safe loader refuses."""

    def __init__(self, path: Path, line: int, message: str):
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line, self.message = path, line, message


@dataclass
class LoadedYaml:
    path: Path
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    first_line: str = ""
    text: str = field(default="", repr=False)

    def line_of(self, location: Path_) -> int:
        """Line (1-based) of the value at ``location``, or of its nearest ancestor."""
        location = tuple(location)
        while location not in self.lines and location:
            location = location[:-1]
        return self.lines.get(location, 1)


class _KeyError(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line, self.message = line, message


def _refuse_aliases(path: Path, text: str) -> None:
    """Raise on the first anchor or alias: they are not needed for entries, and unbounded when expanded."""
    scanner = _Loader(text)
    try:
        while scanner.check_token():
            token = scanner.get_token()
            if isinstance(token, (yaml.AnchorToken, yaml.AliasToken)):
                message = "aliases are not allowed (&anchor and *alias); write the value out"
                raise YamlLoadError(path, token.start_mark.line + 1, message)
    finally:
        scanner.dispose()


MAX_DEPTH = 32
"""How deeply lists and mappings may nest in a data file: the taxonomy needs 8 levels, entries 6,
results files 3. Loading and checking recurse per level: a paper entry nested 600 deep stopped
validate with a RecursionError instead of a message."""


def nesting_depth(value: Any) -> tuple[int, Any]:
    """(depth, the first most deeply nested list or mapping) of plain data or of a YAML node, without recursion."""

    def children(item: Any) -> list[Any]:
        if isinstance(item, yaml.MappingNode):
            return [part for pair in item.value for part in pair]
        if isinstance(item, yaml.SequenceNode):
            return list(item.value)
        if isinstance(item, dict):
            return list(item.values())
        return list(item) if isinstance(item, list) else []

    deepest, where, stack = 0, value, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list, yaml.MappingNode, yaml.SequenceNode)):
            if depth > deepest:
                deepest, where = depth, item
            stack += [(child, depth + 1) for child in children(item)]
    return deepest, where


def _unreadable_line(node: yaml.Node) -> int:
    """Line of the first timestamp-looking scalar that is not a real date (what makes construction
    fail), or of ``node`` when there is none."""

    def bad_date(node: yaml.Node) -> int:
        if isinstance(node, yaml.ScalarNode):
            if node.tag == "tag:yaml.org,2002:timestamp":
                try:
                    dt.date.fromisoformat(node.value[:10])
                except ValueError:
                    return node.start_mark.line + 1
            return 0
        children = [item for pair in node.value for item in pair] if isinstance(node, yaml.MappingNode) else node.value
        return next((line for child in children if (line := bad_date(child))), 0)

    return bad_date(node) or node.start_mark.line + 1


def _record_lines(node: yaml.Node, location: Path_, lines: dict[Path_, int]) -> tuple[str, int] | None:
    """Fill ``lines`` for every key and item below ``node``; return the first repeated key, if any."""
    lines.setdefault(location, node.start_mark.line + 1)
    repeated = None
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                raise _KeyError(key_node.start_mark.line + 1, f"a mapping key must be a plain value, not a {kind}")
            if key_node.tag != "tag:yaml.org,2002:str":
                # "1:", "true:", "null:" are keys YAML reads as a number, boolean or nothing: no field name.
                kind = key_node.tag.rsplit(":", 1)[-1]
                message = f"a mapping key must be text; YAML reads {key_node.value!r} as {kind}: quote it"
                raise _KeyError(key_node.start_mark.line + 1, message)
            key = key_node.value
            if key in seen and repeated is None:
                repeated = (key, key_node.start_mark.line + 1)
            seen.add(key)
            # A key's own line is more useful than the line where a block value starts.
            lines[location + (key,)] = key_node.start_mark.line + 1
            repeated = _record_lines(value_node, location + (key,), lines) or repeated
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            repeated = _record_lines(item, location + (index,), lines) or repeated
    return repeated


def line_map(text: str) -> dict[Path_, int]:
    """Line of every key and item of a YAML (or JSON) text, best effort: {} when it does not parse."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        lines: dict[Path_, int] = {}
        if node is not None:
            _record_lines(node, (), lines)
        return lines
    except (yaml.YAMLError, _KeyError):
        return {}
    finally:
        loader.dispose()


def load_yaml(path: Path, text: str | None = None) -> LoadedYaml:
    """Load one YAML document safely, recording the line of every mapping key and list item."""
    path = Path(path)
    if text is None:
        try:
            text = read_text_input(path, MAX_DATA_BYTES)
        except InputTextError as error:
            raise YamlLoadError(path, error.line, error.message) from None
    loader = _Loader(text)
    try:
        _refuse_aliases(path, text)
        node = loader.get_single_node()
        if node is None:
            raise YamlLoadError(path, 1, "the file is empty; expected a mapping of fields")
        depth, deepest = nesting_depth(node)
        if depth > MAX_DEPTH:
            message = f"values nested {depth} levels deep; at most {MAX_DEPTH} are read"
            raise YamlLoadError(path, deepest.start_mark.line + 1, message)
        lines: dict[Path_, int] = {}
        try:
            duplicate = _record_lines(node, (), lines)
        except _KeyError as error:
            raise YamlLoadError(path, error.line, error.message) from None
        if duplicate:
            raise YamlLoadError(path, duplicate[1], f"{duplicate[0]}: the key appears twice in one mapping")
        try:
            data = loader.construct_document(node)
        except (ValueError, OverflowError) as error:  # e.g. an unquoted date that does not exist: 2026-13-45
            raise YamlLoadError(path, _unreadable_line(node), f"a value YAML cannot read: {error}; quote it") from None
    except yaml.constructor.ConstructorError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else 1
        problem = error.problem or str(error)
        raise YamlLoadError(path, line, f"unsafe or unknown YAML tag refused ({problem}); plain values only") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlLoadError(path, line, f"invalid YAML: {error.problem or error}") from None
    finally:
        loader.dispose()
    first_line = text.split("\n", 1)[0]
    return LoadedYaml(path=path, data=data, lines=lines, first_line=first_line, text=text)


MAX_INPUT_BYTES = 20_000_000
"""The most a feed or BibTeX file given on the command line may hold: an arXiv API answer of 2 000
items is about 5 MB, and a larger file only costs memory and time (or never ends: /dev/zero)."""

MAX_DATA_BYTES = 1_000_000
"""The most one committed data file (a paper entry, a taxonomy file, a results file) may hold: the
largest are a 63 kB taxonomy and a 72 kB results file. Validation and pages cost time in proportion
(a results file of 100 000 rows took 31 s and 450 MB to validate), and a field's text is repeated on
several pages."""


class InputTextError(ValueError):
    """A file that is not UTF-8 text, or larger than the tools read; ``line`` is 1 for the size."""

    def __init__(self, path: Path, line: int, message: str):
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line, self.message = path, line, message


def read_text_input(path: Path, max_bytes: int = MAX_INPUT_BYTES) -> str:
    """The text of a file; raises :class:`InputTextError` naming the file, and the line and column of
    the first byte that is not UTF-8, or the size limit. Reads at most ``max_bytes + 1`` bytes, so a
    device or pipe without end is refused too."""
    with open(path, "rb") as stream:
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputTextError(path, 1, f"the file holds more than {max_bytes:,} bytes; split it into smaller files")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        message = f"not UTF-8 text (byte 0x{data[error.start]:02x} at column {column}); save the file as UTF-8"
        raise InputTextError(path, line, message) from None


def dump_yaml(data: Any, header: str = "") -> str:
    """YAML text with keys in the given (insertion) order; strings that YAML 1.1 would misread are quoted."""
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100, default_flow_style=False)
    return (header + "\n" if header else "") + body


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temporary, _file_mode())  # mkstemp creates 0600; give the file the usual mode
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
