"""Markdown helpers that keep text from the data inert.

Two rules, one function each:

- :func:`text` for every field of an entry, a taxonomy node or a results file: one line (CR, LF,
  CRLF and the other line separators become spaces), HTML-escaped, and every character that can
  start Markdown syntax escaped, so nothing in it can open a block (``:::``, ``???``, ``===``,
  ``!!!``, lists, headings, code fences, tables, ``--8<--`` snippets) or raw HTML, wherever it lands.
- :func:`restricted` for prose we show as Markdown (taxonomy ``findings``, results ``notes``):
  paragraphs separated by blank lines; inside them only ``*emphasis*``, ``**strong**``,
  ```code``` and ``[label](https://...)`` links (http and https only); everything else as :func:`text`.

:func:`code` shows a value verbatim as inline code (the command of a results file).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import yaml

__all__ = [
    "text",
    "linked_text",
    "host",
    "restricted",
    "code",
    "one_line",
    "cell",
    "link",
    "table",
    "front_matter",
    "fmt_number",
    "NOT_INDEXED",
]

# Every line separator Python (and so Markdown or a YAML reader) may split on, and other control characters.
_LINE_BREAKS = re.compile(r"\r\n|[\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f]")  # C0 and C1, less the breaks above
# Python-Markdown's backslash escapes (plus "|" of the tables extension) ...
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|>])")
# ... and characters it has no escape for, which start blocks of our extensions (":::" mkdocstrings,
# "???" details, "===" tabs and setext headings), written as character references.
_ENTITIES = {":": "&#58;", "=": "&#61;", "?": "&#63;", "~": "&#126;"}
_NO_ESCAPE = re.compile("[" + re.escape("".join(_ENTITIES)) + "]")


def one_line(value: Any) -> str:
    """``value`` as one line: line breaks become spaces, other control characters are dropped."""
    return _CONTROL.sub("", _LINE_BREAKS.sub(" ", str(value)))


def _escape(value: str) -> str:
    escaped = _MARKDOWN_SPECIALS.sub(r"\\\1", html.escape(value, quote=False))
    return _NO_ESCAPE.sub(lambda match: _ENTITIES[match.group()], escaped)


def text(value: Any) -> str:
    """Text shown exactly as written, on one line: ``<script>`` shows as text and ``*`` stays a star."""
    return _escape(one_line(value).strip())


_BARE_URL = re.compile(r"https?://[^\s()<>{}\\\"'`|]+")


def host(url: str) -> str:
    """The host a link points to, as its label; never raises (``urlsplit`` refuses ``https://[x``, which
    free text may hold, and an exception here would stop the build)."""
    try:
        return urlsplit(url).netloc
    except ValueError:
        return url.split("//", 1)[-1].split("/", 1)[0]


def linked_text(value: Any) -> str:
    """Like :func:`text`, with every bare http(s) URL shown as a link labelled by its host: a long
    URL cannot wrap, so written out it would widen a table beyond the page."""
    source = one_line(value).strip()
    parts, position = [], 0
    for match in _BARE_URL.finditer(source):
        url = match.group().rstrip(".,;:!?")  # a sentence's punctuation after a URL is not part of it
        parts += [_escape(source[position : match.start()]), link(_escape(host(url)), url)]
        position = match.start() + len(url)
    parts.append(_escape(source[position:]))
    return "".join(parts)


def code(value: Any) -> str:
    """``value`` verbatim as inline code, on one line (a fence longer than any backtick run inside)."""
    content = one_line(value).strip()
    fence = "`" * (max((len(run) for run in re.findall(r"`+", content)), default=0) + 1)
    pad = " " if content.startswith("`") or content.endswith("`") else ""
    return f"{fence}{pad}{content}{pad}{fence}" if content else ""


_INLINE = re.compile(
    r"(?P<fence>`+)(?P<code>.+?)(?<!`)(?P=fence)(?!`)"
    r"|\[(?P<label>[^\[\]]+)\]\((?P<url>https?://[^\s()<>{}\\\"'`]+)\)"
    # Strong text never holds "**": each unclosed "**" then looks only as far as the next one (with
    # ".*?" each looked to the end of the paragraph: 64 kB of "**a " took 14 s, quadratic in the length).
    r"|\*\*(?P<strong>[^\s*](?:(?:(?!\*\*).)*?[^\s*])?)\*\*"
    r"|\*(?P<em>[^\s*](?:[^*]*?[^\s*])?)\*"
)


def _inline(source: str) -> str:
    parts, position = [], 0
    for match in _INLINE.finditer(source):
        parts.append(_escape(source[position : match.start()]))
        if match.group("fence"):
            parts.append(code(match.group("code")))
        elif match.group("url"):
            parts.append(link(_inline(match.group("label")), match.group("url")))
        elif match.group("strong"):
            parts.append(f"**{_inline(match.group('strong'))}**")
        else:
            parts.append(f"*{_inline(match.group('em'))}*")
        position = match.end()
    parts.append(_escape(source[position:]))
    return "".join(parts)


def restricted(value: Any) -> str:
    """Prose as restricted Markdown (see the module docstring): paragraphs of inline markup only."""
    paragraphs = re.split(r"(?:\r\n|\r|\n)[ \t]*(?:\r\n|\r|\n)", str(value))
    return "\n\n".join(_inline(one_line(paragraph).strip()) for paragraph in paragraphs if paragraph.strip())


def cell(value: Any) -> str:
    """Like :func:`text`, for a table cell (pipes are escaped by :func:`text` too)."""
    return text(value) if value not in (None, "") else ""


def link(label: str, target: str) -> str:
    """A Markdown link with an already-safe label; the target must be our own URL or an entry URL."""
    safe_target = (
        target.replace(" ", "%20").replace(")", "%29").replace("(", "%28").replace("<", "%3C").replace(">", "%3E")
    )
    return f"[{label}]({safe_target})"


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], *, sortable: bool = False) -> str:
    headers = list(headers)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    body = "\n".join(lines)
    if sortable:
        return f'<div class="sortable" markdown>\n\n{body}\n\n</div>'
    return body


# libyaml's emitter when PyYAML has it: front matter is written for every page, ~10x faster.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def front_matter(**fields: Any) -> str:
    """YAML front matter of a generated page; ``title`` is HTML-escaped because themes put it into
    ``<title>`` raw. ``edit_url`` (the theme's edit button, see docs/overrides/partials/actions.html)
    names the repository file a page is built from; without one it is ``false``: the page's docs/
    file is generated, so there is nothing under docs/ to edit."""
    fields["edit_url"] = fields.get("edit_url") or False
    present = {name: value for name, value in fields.items() if value not in (None, "", [], {})}
    if "title" in present:
        present["title"] = html.escape(str(present["title"]), quote=False)
    dumped = yaml.dump(present, Dumper=_DUMPER, sort_keys=False, allow_unicode=True, width=1000)
    return "---\n" + dumped + "---\n\n"


# attr_list on a heading: Material's search leaves that section out of its index.
NOT_INDEXED = '{ data-search-exclude="" }'


def fmt_number(value: Any, digits: int | None = None) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return cell(value)
    if isinstance(value, int):
        return f"{value:,}".replace(",", "\u202f") if abs(value) >= 10000 else str(value)
    if digits is not None:
        return f"{value:.{digits}f}"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}".replace(",", "\u202f")
