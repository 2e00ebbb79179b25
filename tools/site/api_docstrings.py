"""reST markup in the reference implementations' docstrings, made Markdown for the API pages.

The docstrings use Sphinx roles (``:func:`name```, ``:class:`~pkg.Name```, ``:meth:``, ``:mod:``,
...) and literal blocks (a paragraph ending in ``::`` followed by an indented block). mkdocstrings
renders docstrings as Markdown, where both would show as raw text. This griffe extension (named in
mkdocs.yml under the python handler's ``extensions``) rewrites each docstring once its package is
loaded:

- a role becomes inline code linked through mkdocs-autorefs when the name resolves to an object of
  the package (an *optional* reference: a target that has no page, such as a private helper, shows
  as plain code instead of failing the strict build); names outside the package (``torch.topk``)
  stay plain code;
- ``text::`` becomes ``text:`` and the indented block a fenced code block; a lone ``Example::``
  becomes a Google ``Examples:`` section holding that block.

The source files keep their reST; only what the site shows changes.
"""

from __future__ import annotations

import html
import re
import textwrap
from collections.abc import Callable

__all__ = ["rst_to_markdown", "ReSTDocstrings"]

_ROLE = re.compile(r":(?:py:)?(?P<role>func|class|meth|mod|attr|data|obj|exc|const|any):`(?P<target>[^`]+)`")
_LITERAL = re.compile(r"^(?P<indent>[ \t]*)(?P<text>.*?)(?P<marker>\s*::)[ \t]*$")
_SECTION = {"example", "examples"}


def _roles(text: str, resolve: Callable[[str, str], str | None]) -> str:
    def replace(match: re.Match[str]) -> str:
        target = match.group("target").strip()
        shown = target.lstrip("~!")
        if target.startswith("~"):
            shown = shown.rsplit(".", 1)[-1]
        shown = shown.lstrip(".")
        code = f"<code>{html.escape(shown)}</code>"
        path = resolve(target.lstrip("~!"), match.group("role"))
        return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>' if path else code

    return _ROLE.sub(replace, text)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _literal_blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        match = _LITERAL.match(line)
        # The next non-blank line must be indented deeper than the "::" line.
        following = next((other for other in lines[index + 1 :] if other.strip()), None)
        if match is None or following is None or _indent(following) <= len(match.group("indent")):
            out.append(line)
            index += 1
            continue
        indent = match.group("indent")
        block_end = index + 1
        while block_end < len(lines) and (not lines[block_end].strip() or _indent(lines[block_end]) > len(indent)):
            block_end += 1
        while block_end > index + 1 and not lines[block_end - 1].strip():
            block_end -= 1
        body = textwrap.dedent("\n".join(lines[index + 1 : block_end])).strip("\n").split("\n")
        text_part = match.group("text")
        if text_part.strip().lower() in _SECTION:
            # "Example::" alone: a Google section whose content is the code block.
            fence_indent = indent + "    "
            out += [f"{indent}Examples:", f"{fence_indent}```python"]
        else:
            fence_indent = indent
            # "text::" -> "text:"; "text ::" -> "text"; a lone "::" disappears (Sphinx's rules).
            if text_part.strip():
                colon = "" if match.group("marker").startswith((" ", "\t")) else ":"
                out += [f"{indent}{text_part}{colon}", ""]
            out.append(f"{fence_indent}```")
        out += [f"{fence_indent}{body_line}" if body_line.strip() else "" for body_line in body]
        out += [f"{fence_indent}```", ""]
        index = block_end
    return "\n".join(out)


def rst_to_markdown(text: str, resolve: Callable[[str, str], str | None] = lambda name, role: None) -> str:
    """``text`` (a docstring) with Sphinx roles and literal blocks in Markdown; ``resolve(name, role)``
    gives the full path of a role's target, or None to show it as plain code."""
    parts = re.split(r"(^[ \t]*```.*?^[ \t]*```[ \t]*$)", text, flags=re.M | re.S)
    # Text already inside a Markdown fence is left alone.
    return "".join(part if index % 2 else _roles(_literal_blocks(part), resolve) for index, part in enumerate(parts))


try:  # griffe is there whenever mkdocstrings is; the conversion above works without it.
    from griffe import Extension, Object
except ImportError:  # pragma: no cover
    Extension, Object = object, None  # type: ignore[assignment,misc]


class ReSTDocstrings(Extension):  # type: ignore[misc,valid-type]
    """Rewrite every docstring of a loaded package with :func:`rst_to_markdown`."""

    def on_package(self, *, pkg, **kwargs) -> None:  # noqa: ANN001 (griffe's hook signature)
        collection = pkg.modules_collection

        def exists(path: str) -> str | None:
            try:
                return collection[path].canonical_path
            except Exception:  # not there, or an alias to something outside the package (griffe errors)
                return None

        def walk(obj) -> None:  # noqa: ANN001
            if obj.docstring is not None and obj.docstring.value:
                obj.docstring.value = rst_to_markdown(
                    obj.docstring.value, lambda name, role: self._resolve(obj, name, exists)
                )
            for member in obj.members.values():
                if not member.is_alias:
                    walk(member)

        walk(pkg)

    @staticmethod
    def _resolve(obj, name: str, exists: Callable[[str], str | None]) -> str | None:  # noqa: ANN001
        module = obj if obj.is_module else obj.module
        scopes = [obj.path] if obj.is_class else []
        if obj.parent is not None and obj.parent.is_class:
            scopes.append(obj.parent.path)
        scopes += [module.path]
        if module.parent is not None:
            scopes.append(module.parent.path)
        candidates = []
        if name.startswith("."):
            candidates += [scope + name for scope in scopes]
        else:
            candidates.append(name)
            candidates += [f"{scope}.{name}" for scope in scopes]
            head, _, rest = name.partition(".")
            try:
                imported = module.resolve(head)
            except Exception:  # not a name of the module
                imported = None
            if imported:
                candidates.append(imported + (f".{rest}" if rest else ""))
        return next((path for path in map(exists, candidates) if path), None)
