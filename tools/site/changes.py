"""What's new: the changelog page and the Atom feed of new entries, by their ``added`` date.

``added`` is a required field of every entry, written by the tools that create entries
(``new``, ``bib import``, ``triage``, ``import-tsv``) on the day they create it, so it is known in
any copy of the repository, with or without git history.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from itertools import islice

from ..catalog import Entry
from . import markdown as md
from .data import SiteData, paper_page, relative

__all__ = ["PAGE", "FEED", "newest", "changes_md", "atom_feed"]

PAGE = "changes.md"
FEED = "feed.xml"
ATOM = "http://www.w3.org/2005/Atom"
# Entries listed on the page and in the feed; older ones are counted per day.
PAGE_LIMIT = 200
FEED_LIMIT = 50
# Characters XML 1.0 does not allow (control characters, lone surrogates, U+FFFE/U+FFFF).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def newest(site: SiteData) -> list[Entry]:
    """Every entry, most recently added first (then by key, so the order is stable)."""
    by_key = sorted(site.entries, key=lambda entry: entry.key)
    return sorted(by_key, key=lambda entry: str(entry.data["added"]), reverse=True)


def changes_md(site: SiteData) -> str:
    page = PAGE
    ordered = newest(site)
    lines = [
        md.front_matter(title="What's new"),
        "# What's new",
        "",
        f"Entries by the day they were added (newest first). Also as an {md.link('Atom feed', FEED)} "
        f"of the latest {FEED_LIMIT}.",
        "",
    ]
    days: dict[str, list[Entry]] = defaultdict(list)
    for entry in ordered:
        days[str(entry.data["added"])].append(entry)
    shown, earlier = 0, []
    for day, entries in days.items():
        if shown >= PAGE_LIMIT:
            earlier.append(f"- {day}: {len(entries)} entries")
            continue
        listed = entries[: PAGE_LIMIT - shown]
        shown += len(listed)
        lines += [f"## {day} ({len(entries)} new) {md.NOT_INDEXED}", ""]
        for entry in listed:
            data = entry.data
            venue = " ".join(part for part in (md.text(data.get("venue", "")), str(data["year"])) if part)
            lines.append(f"- {md.link(md.text(data['title']), relative(page, paper_page(entry.key)))} ({venue})")
        if len(listed) < len(entries):
            lines.append(
                f"- … and {len(entries) - len(listed)} more "
                f"(see {md.link('All papers', relative(page, 'all-papers.md'))})"
            )
        lines.append("")
    if earlier:
        lines += [f"## Earlier {md.NOT_INDEXED}", "", *earlier, ""]
    return "\n".join(lines) + "\n"


def _xml(value: object) -> str:
    """Text for an XML element: one line, without the characters XML 1.0 forbids (ElementTree
    escapes ``<``, ``&`` and ``>`` but writes control characters as they are)."""
    return _NOT_XML.sub("", md.one_line(value).strip())


def _sub(parent: ET.Element, tag: str, text: str = "", **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, f"{{{ATOM}}}{tag}", attributes)
    if text:
        element.text = text
    return element


def atom_feed(site: SiteData, site_url: str) -> str:
    """The latest ``FEED_LIMIT`` entries as an Atom 1.0 feed; ``site_url`` ends with ``/``."""
    ET.register_namespace("", ATOM)
    entries = list(islice(newest(site), FEED_LIMIT))
    feed = ET.Element(f"{{{ATOM}}}feed")
    _sub(feed, "title", "LVLM Atlas: new entries")
    _sub(feed, "id", site_url + FEED)
    _sub(feed, "link", rel="self", href=site_url + FEED)
    _sub(feed, "link", rel="alternate", href=site_url + "changes/")
    latest = str(entries[0].data["added"]) if entries else "1970-01-01"
    _sub(feed, "updated", f"{latest}T00:00:00Z")
    _sub(_sub(feed, "author"), "name", "LVLM Atlas")
    for entry in entries:
        data = entry.data
        url = site_url + paper_page(entry.key).removesuffix(".md") + "/"
        item = _sub(feed, "entry")
        _sub(item, "title", _xml(data["title"]))
        _sub(item, "id", url)
        _sub(item, "link", rel="alternate", href=url)
        _sub(item, "updated", f"{data['added']}T00:00:00Z")
        for name in data.get("authors") or []:
            _sub(_sub(item, "author"), "name", _xml(name))
        venue = " ".join(part for part in (_xml(data.get("venue", "")), str(data["year"])) if part)
        summary = _xml(data.get("summary", ""))
        _sub(item, "summary", f"{venue}. {summary}" if summary else venue)
    ET.indent(feed)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(feed, encoding="unicode") + "\n"
