"""Markdown helpers that keep entry text inert: HTML-escaped and Markdown-escaped."""

from __future__ import annotations

import html
import re
from typing import Any, Iterable

import yaml

__all__ = ["text", "cell", "link", "table", "front_matter", "fmt_number"]

_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+!|~>])")


def text(value: Any) -> str:
    """Entry text made safe for Markdown: ``<script>`` shows as text and ``*`` stays a star."""
    escaped = html.escape(str(value), quote=False)
    return _MARKDOWN_SPECIALS.sub(r"\\\1", escaped).replace("\n", " ")


def cell(value: Any) -> str:
    """Like :func:`text`, for a table cell (pipes are escaped by :func:`text` too)."""
    return text(value) if value not in (None, "") else ""


def link(label: str, target: str) -> str:
    """A Markdown link with an already-safe label; the target must be our own URL or an entry URL."""
    safe_target = target.replace(" ", "%20").replace(")", "%29").replace("(", "%28").replace("<", "%3C").replace(">", "%3E")
    return f"[{label}]({safe_target})"


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], *, sortable: bool = False) -> str:
    headers = list(headers)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    body = "\n".join(lines)
    if sortable:
        return f'<div class="sortable" markdown>\n\n{body}\n\n</div>'
    return body


def front_matter(**fields: Any) -> str:
    """YAML front matter; ``title`` is HTML-escaped because themes put it into ``<title>`` raw."""
    present = {name: value for name, value in fields.items() if value not in (None, "", [], {})}
    if "title" in present:
        present["title"] = html.escape(str(present["title"]), quote=False)
    if not present:
        return ""
    return "---\n" + yaml.safe_dump(present, sort_keys=False, allow_unicode=True, width=1000) + "---\n\n"


def fmt_number(value: Any, digits: int | None = None) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return cell(value)
    if isinstance(value, int):
        return f"{value:,}".replace(",", "\u2009") if abs(value) >= 10000 else str(value)
    if digits is not None:
        return f"{value:.{digits}f}"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}".replace(",", "\u2009")
