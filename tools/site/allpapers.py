"""The "All papers" page: one table filtered in the browser over a compact JSON of every entry.

The page holds only the filter form; ``docs/javascripts/papers-filter.js`` reads the JSON, applies
the filters and writes the rows with DOM text nodes (never HTML from the data). The filters live in
the query string, so a filtered view is a link: ``all-papers/?q=kv&family=kv-cache-compression&impl=1``.
"""

from __future__ import annotations

import html
import json
from typing import Any

from . import markdown as md
from .data import SiteData

__all__ = ["PAGE", "INDEX", "papers_index_json", "all_papers_md"]

PAGE = "all-papers.md"
INDEX = "assets/generated/papers-index.json"


def papers_index_json(site: SiteData) -> str:
    """Every entry as one short record; ``f`` holds its placements and all their ancestors."""
    graph, by_id = site.graph, site.taxonomy.by_id
    papers: list[dict[str, Any]] = []
    for entry in site.entries:
        data = entry.data
        placed = [by_id[node_id] for node_id in data["placement"]]
        within = list(dict.fromkeys(node.id for leaf in placed for node in leaf.ancestors + [leaf]))
        authors = data.get("authors") or []
        record: dict[str, Any] = {
            "k": entry.key,
            "t": data["title"],
            "a": ", ".join(authors[:3]) + (", et al." if len(authors) > 3 or data.get("authors_truncated") else ""),
            "y": data["year"],
            "v": data.get("venue", ""),
            "p": placed[0].name,
            "f": within,
        }
        aliases = graph.aliases(entry) if graph is not None else list(data.get("aliases") or [])
        if aliases:
            record["n"] = aliases
        if data.get("code"):
            record["c"] = data["code"]
        if graph is not None and graph.implemented(entry):
            record["i"] = graph.modules_of_entry[entry.key][0]
        if data.get("training") == "training-free":
            record["tf"] = 1
        papers.append(record)
    families = [[node.id, node.name, len(node.ancestors)] for node in site.taxonomy.nodes()]
    return json.dumps({"families": families, "papers": papers}, ensure_ascii=False, separators=(",", ":")) + "\n"


def all_papers_md(site: SiteData) -> str:
    """The page: a form the script wires up, and a fallback link to the full JSON export."""
    venues = sorted({str(entry.data.get("venue", "")) for entry in site.entries} - {""}, key=str.lower)
    years = [entry.data["year"] for entry in site.entries] or [2000]
    family_options = "".join(
        f'<option value="{html.escape(node.id)}">'
        f"{'&nbsp;&nbsp;' * len(node.ancestors)}{html.escape(node.name)}</option>"
        for node in site.taxonomy.nodes()
    )
    venue_options = "".join(f'<option value="{html.escape(venue)}">{html.escape(venue)}</option>' for venue in venues)
    form = f"""<form id="atlas-filter" class="atlas-filter" data-index="../{INDEX}" role="search"
 aria-label="Filter papers">
<label>Text <input type="search" name="q" placeholder="title, author, method name" autocomplete="off"></label>
<label>From <input type="number" name="y0" min="{min(years)}" max="{max(years)}" placeholder="{min(years)}"></label>
<label>To <input type="number" name="y1" min="{min(years)}" max="{max(years)}" placeholder="{max(years)}"></label>
<label>Venue <select name="venue"><option value="">any</option>{venue_options}</select></label>
<label>Family <select name="family"><option value="">any</option>{family_options}</select></label>
<label><input type="checkbox" name="code" value="1"> code available</label>
<label><input type="checkbox" name="impl" value="1"> implemented here</label>
<label><input type="checkbox" name="tf" value="1"> training-free</label>
<button type="reset">Clear</button>
</form>
<p id="atlas-filter-count" class="atlas-filter-count" aria-live="polite"></p>
<div id="atlas-filter-results"></div>
<noscript>This filter needs JavaScript; <a href="../papers.json">papers.json</a> holds every entry.</noscript>
"""
    return "\n".join(
        [
            md.front_matter(title="All papers", search={"exclude": True}, hide=["toc"]),
            "# All papers",
            "",
            f"Every one of the {len(site.entries)} entries, filtered as you type. The filters are kept in the "
            "address, so a filtered view can be shared as a link.",
            "",
            form,
        ]
    )
