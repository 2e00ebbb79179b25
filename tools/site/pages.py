"""Markdown for every generated page. Each function returns the page text; nothing here writes files."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from ..bib import entry_bibtex_text
from ..catalog import Entry
from ..taxonomy import Node
from . import markdown as md
from .agreement import PAGE as AGREEMENT
from .data import SiteData, module_page, node_page, notebook_page, paper_page, relative
from .graph import MethodLinks, method_name
from .implementations import design_anchor, package_design_md, package_readme
from .notebooks import render_seconds
from .results import results_tables

__all__ = ["paper_md", "node_md", "home_md", "taxonomy_index_md", "papers_table", "reported_table"]


def _authors(entry: Entry) -> str:
    authors = entry.data.get("authors") or []
    if not authors:
        return "*not listed by any of our sources*"
    names = ", ".join(md.text(name) for name in authors)
    return names + (", et al." if entry.data.get("authors_truncated") else "")


def _links(entry: Entry) -> list[str]:
    data, links = entry.data, []
    if data.get("arxiv"):
        links.append(md.link(f"arXiv {md.text(data['arxiv'])}", f"https://arxiv.org/abs/{data['arxiv']}"))
    if data.get("doi"):
        links.append(md.link("DOI", f"https://doi.org/{data['doi']}"))
    if data.get("url") and "arxiv.org/abs" not in data["url"]:
        links.append(md.link("paper", data["url"]))
    if data.get("code"):
        links.append(md.link("code", data["code"]))
    return links


def reported_table(entries: list[Entry], page: str, with_paper: bool = False) -> str:
    rows = []
    for entry in entries:
        for item in entry.data.get("reported") or []:
            row = [md.link(md.text(entry.data["title"]), relative(page, paper_page(entry.key)))] if with_paper else []
            # Reported values are shown exactly as stored, never rounded.
            row += [
                md.cell(item["metric"]),
                md.cell(repr(item["value"])),
                md.cell(item.get("unit", "")),
                md.cell(item.get("setting", "")),
                md.linked_text(item["source"]),
            ]
            rows.append(row)
    if not rows:
        return ""
    headers = (["Paper"] if with_paper else []) + ["Metric", "Value", "Unit", "Setting", "Source"]
    return md.table(headers, rows)


# Search boosts (Material's per-page ``search.boost``): a family page should outrank the papers and
# notebooks that mention its name, and a paper page the pages that merely cite it.
# A paper known by a method name (aliases, or implemented here) is what people type that name for.
NODE_BOOST = 40
PAPER_BOOST = 2
KNOWN_PAPER_BOOST = 4
# Sections of node pages that repeat other pages (paper tables, results, designs) stay out of the
# index: with the page's boost they would outrank the pages they repeat.
NOT_INDEXED = md.NOT_INDEXED


def _aka(aliases: list[str]) -> str:
    """The method's other names, inside the page title (so search weighs them like the title)."""
    if not aliases:
        return ""
    return ' <span class="atlas-aka">(' + ", ".join(md.text(alias) for alias in aliases) + ")</span>"


def run_it_box(
    links: list[MethodLinks], page: str, *, family_links: bool = True, root: Path | None = None
) -> list[str]:
    """The "Run it" admonition: module, import line, notebook (with its recorded run time when
    ``root`` is given and its render recorded one), benchmark commands, family."""
    if not links:
        return []
    lines = ['!!! example "Run it"', ""]
    for item in links:
        parts = [f"**Implemented here:** {md.link(md.code(item.module), relative(page, module_page(item.module)))}"]
        parts.append(md.code(item.import_line))
        if item.notebooks:
            parts.append(
                "**Notebook:** "
                + ", ".join(
                    md.link(md.code(notebook), relative(page, notebook_page(notebook))) + _run_time(root, notebook)
                    for notebook in item.notebooks
                )
            )
        commands = list(dict.fromkeys(data["command"] for data in item.results))
        if commands:  # one command a line: a phone breaks long ones, never two into each other
            parts.append("**Benchmark:** " + md.code(commands[0]))
            parts += [md.code(command) for command in commands[1:]]
        if family_links and item.families:
            parts.append(
                "**Family:** "
                + ", ".join(md.link(md.text(node.name), relative(page, node_page(node))) for node in item.families)
            )
        lines += ["    " + part + "  " for part in parts] + [""]
    return lines


def _run_time(root: Path | None, notebook: str) -> str:
    seconds = render_seconds(root, notebook) if root is not None else None
    return f" (rendered run: {seconds} s on a CPU, full setting)" if seconds is not None else ""


def reproduced_rows_md(item: MethodLinks, page: str) -> list[str]:
    """The rows of every results file that name this method, with the command that made them."""
    lines = []
    for data in item.results:
        rows = [row for row in data["rows"] if method_name(str(row.get("method", ""))) == item.method]
        families = [node for node in item.families if node.id in data.get("families", [])]
        where = families[0] if families else None
        title = md.text(data["title"])
        if where is not None:
            title = md.link(title, relative(page, node_page(where)) + "#reproduced-results")
        lines += [
            f"**{title}**, reproduced with {md.code(data['command'])}",
            "",
            *results_tables(data, rows, hidden=("method", "family")),
        ]
    return lines


def paper_md(entry: Entry, site: SiteData) -> str:
    data = entry.data
    page = paper_page(entry.key)
    graph = site.graph
    links_here = graph.entry_links(entry) if graph is not None else []
    aliases = graph.aliases(entry) if graph is not None else [str(alias) for alias in data.get("aliases") or []]
    # The paper template drops the navigation, which would be most of each page's bytes at 10k entries.
    lines = [
        md.front_matter(
            title=data["title"],
            template="paper.html",
            tags=data.get("tags"),
            edit_url=site.edit_url(f"papers/{entry.key}.yaml"),
            search={"boost": KNOWN_PAPER_BOOST if aliases or links_here else PAPER_BOOST},
        ),
        f"# {md.text(data['title'])}{_aka(aliases)}",
        "",
    ]
    first = site.taxonomy.by_id[data["placement"][0]]
    trail = [md.link(md.text(n.name), relative(page, node_page(n))) for n in first.ancestors + [first]]
    # Breadcrumbs after the title: before it they would open a search section of their own.
    lines += ['<nav class="atlas-crumbs" aria-label="Breadcrumbs" markdown>', "", " › ".join(trail), "", "</nav>", ""]
    venue = " ".join(part for part in (md.text(data.get("venue", "")), str(data["year"])) if part)
    lines += [f"**Authors:** {_authors(entry)}  ", f"**Venue:** {venue}  "]
    links = _links(entry)
    if links:
        lines.append("**Links:** " + " · ".join(links) + "  ")
    placements = []
    for node_id in data["placement"]:
        node = site.taxonomy.by_id[node_id]
        trail_text = " › ".join(md.text(n.name) for n in node.ancestors + [node])
        placements.append(md.link(trail_text, relative(page, node_page(node))))
    lines.append("**Placement:** " + "; ".join(placements) + "  ")
    if data.get("training"):
        lines.append(f"**Training:** {md.text(data['training'])}  ")
    for field, label in (("models", "Models"), ("benchmarks", "Benchmarks")):
        if data.get(field):
            lines.append(f"**{label}:** " + ", ".join(md.text(value) for value in data[field]) + "  ")
    if data.get("summary"):
        # Quoted from the source named under "Metadata from"; escaped like every other field.
        lines += ["", f"> {md.text(data['summary'])}", ""]
    if data.get("implementation") and not links_here:
        module = data["implementation"]
        lines.append(f"**Reference implementation:** {md.link(f'`{module}`', relative(page, module_page(module)))}  ")
    if links_here:
        lines += ["", "## Implemented here", ""] + run_it_box(links_here, page, root=site.catalog.root)
    reported = reported_table([entry], page)
    reproduced = [line for item in links_here for line in reproduced_rows_md(item, page)]
    if reported:
        lines += [
            "",
            "## Reported numbers",
            "",
            "Numbers as the paper (or the source named in each row) reports them; not reproduced by us.",
            "",
            reported,
        ]
    if reproduced:
        lines += [
            "",
            "## Reproduced by our code",
            "",
            "Numbers our reference implementation produced on our own benchmarks (not the paper's setting).",
            "",
        ]
        lines += reproduced
    # Raw <pre><code> instead of a fenced block: no syntax highlighting per page keeps the build
    # linear and fast at 10k entries; Material still adds its copy button to it. It is kept out of
    # the search index (it repeats the title and authors).
    bibtex = html.escape(entry_bibtex_text(data).strip(), quote=False)
    lines += ["", "## BibTeX", "", f'<pre class="bibtex" data-search-exclude><code>{bibtex}</code></pre>', ""]
    lines += related_md(entry, site, page)
    if data.get("sources"):
        lines.append("<small>Metadata from: " + ", ".join(md.text(source) for source in data["sources"]) + "</small>")
    source = f"papers/{entry.key}.yaml"
    footer = [f"Added {md.text(data['added'])}", f"last updated {site.updated(source)}"]
    if site.repo_url:
        footer += [
            f"{md.link('Correct this entry', site.edit_url(source))} ({md.text(source)})",
            md.link("suggest a paper", site.repo_url + "/issues/new"),
        ]
    lines += ["", "<small>" + " · ".join(footer) + "</small>"]
    return "\n".join(lines) + "\n"


def related_md(entry: Entry, site: SiteData, page: str) -> list[str]:
    """Papers of the same family, then papers with the nearest titles elsewhere."""
    related = site.related.related(entry)
    lines = []
    for label, entries in (("Same family", related.family), ("Similar titles elsewhere", related.elsewhere)):
        if entries:
            lines += (
                [f"**{label}:**", ""]
                + [
                    f"- {md.link(md.text(other.data['title']), relative(page, paper_page(other.key)))} ({other.data['year']})"
                    for other in entries
                ]
                + [""]
            )
    return [f"## Related papers {NOT_INDEXED}", "", *lines] if lines else []


def implemented_badge(entry: Entry, site: SiteData, page: str) -> str:
    """A link to the implementation of ``entry`` as a badge, or nothing."""
    graph = site.graph
    modules = graph.modules_of_entry.get(entry.key, []) if graph is not None else []
    return " ".join(
        md.link('<span class="atlas-badge">implemented here</span>', relative(page, module_page(module)))
        for module in modules[:1]
    )


def papers_table(entries: list[Entry], page: str, site: SiteData) -> str:
    rows = []
    for entry in entries:
        data = entry.data
        code = md.link("code", data["code"]) if data.get("code") else ""
        arxiv = md.link(md.text(data["arxiv"]), f"https://arxiv.org/abs/{data['arxiv']}") if data.get("arxiv") else ""
        rows.append(
            [
                str(data["year"]),
                md.link(md.text(data["title"]), relative(page, paper_page(entry.key))),
                md.cell(data.get("venue", "")),
                arxiv,
                code,
                implemented_badge(entry, site, page),
            ]
        )
    return md.table(["Year", "Title", "Venue", "arXiv", "Code", "Here"], rows, sortable=True)


def _implementation_block(
    node: Node, page: str, module_summaries: dict[str, str], designed: tuple[str, ...] = ()
) -> list[str]:
    if node.kind == "resource":
        return ['!!! note "Not a method family"', f"    {md.text(node.exempt_reason)}", ""]
    if node.children:
        return []
    lines = ["## Reference implementation", ""]
    if node.implementations:
        for module in node.implementations:
            summary = module_summaries.get(module, "")
            link = md.link(f"`{module}`", relative(page, module_page(module)))
            design = f" ({md.link('design', '#' + design_anchor(module))})" if module in designed else ""
            lines.append(f"- {link}{design}" + (f": {md.text(summary)}" if summary else ""))
    else:
        lines.append("*Planned: no reference implementation yet.*")
    if node.notebooks:
        lines.append("")
        for notebook in node.notebooks:
            lines.append(f"- Notebook: {md.link(f'`{notebook}`', relative(page, notebook_page(notebook)))}")
    else:
        lines += ["", "*Planned: no notebook yet.*"]
    return lines + [""]


def node_md(node: Node, site: SiteData, module_summaries: dict[str, str], results_md: str = "") -> str:
    page = node_page(node)
    origin = site.source(node.file)
    lines = [
        md.front_matter(title=node.name, search={"boost": NODE_BOOST}, edit_url=site.edit_url(origin)),
        f"# {md.text(node.name)}{_aka(node.aliases)}",
        "",
        md.text(node.summary),
        "",
    ]
    context = []
    if node.stage is not None and node.stage is not node:
        context.append(f"Stage: {md.link(md.text(node.stage.name), relative(page, node_page(node.stage)))}")
    axis = node.axis or (node.stage.axis if node.stage else "")
    if axis:
        axis_name = next((a["name"] for a in _axes(site, node.topic) if a["id"] == axis), axis)
        context.append(f"Axis: *{md.text(axis_name)}*")
    if node.parent is not None:
        context.append(f"Topic: {md.link(md.text(node.topic.name), relative(page, node_page(node.topic)))}")
    if context:
        lines += [" · ".join(context), ""]
    if node.level == "topic":
        source = site.catalog.by_key().get(node.source)
        if source is not None:
            lines += [
                f"The tree follows {md.link(md.text(source.data['title']), relative(page, paper_page(source.key)))}.",
                "",
            ]
        axes = _axes(site, node)
        if axes:
            lines += ["## Axes", ""] + [f"- **{md.text(a['name'])}**: {md.text(a['summary'])}" for a in axes] + [""]
    if node.children:
        heading = {
            "topic": "Stages" if node.children[0].level == "stage" else "Families",
            "stage": "Families",
            "family": "Sub-families",
        }[node.level]
        rows = []
        for child in node.children:
            status = _status(child)
            rows.append(
                [
                    md.link(md.text(child.name), relative(page, node_page(child))),
                    md.text(child.summary),
                    str(len(site.papers_under(child))),
                    status,
                ]
            )
        lines += [f"## {heading}", "", md.table(["Name", "Summary", "Papers", "Implementation"], rows), ""]
    # Method packages with a README.md show it below (their full design).
    designed = (
        ()
        if node.children or node.kind == "resource"
        else tuple(module for module in node.implementations if package_readme(site.catalog.root, module))
    )
    lines += _implementation_block(node, page, module_summaries, designed)
    if site.graph is not None and not node.children and node.kind != "resource":
        lines += run_it_box(
            [site.graph.links(module) for module in node.implementations],
            page,
            family_links=False,
            root=site.catalog.root,
        )
    if results_md:
        lines += [f"## Reproduced results {NOT_INDEXED}", "", results_md, ""]
    under = site.papers_under(node)
    claims = sum(len(entry.data.get("expectations") or []) for entry in under)
    if node.findings or claims:
        lines += ["## What we found", ""]
    if node.findings:
        # Our own words about our own runs: restricted Markdown (inline markup only, see markdown.py).
        lines += [md.restricted(node.findings), ""]
    if claims:
        lines += [
            f"{claims} claim{'s' if claims != 1 else ''} of the papers placed here "
            f"{'are' if claims != 1 else 'is'} set against our benchmarks on "
            + md.link("What papers report vs what our bench shows", relative(page, AGREEMENT))
            + ", with verdicts computed from the current results.",
            "",
        ]
    reported = reported_table([entry for entry in under if entry.data.get("reported")], page, with_paper=True)
    if reported:
        lines += [
            f"## Reported by papers {NOT_INDEXED}",
            "",
            "Numbers the papers report, kept apart from what our code reproduced.",
            "",
            reported,
            "",
        ]
    for module in designed:
        lines += package_design_md(site.catalog.root, module, page)
    lines += [f"## Papers ({len(under)}) {NOT_INDEXED}", ""]
    if not under:
        lines += ["*No papers placed here yet.*", ""]
    elif not node.children:
        lines += [papers_table(under, page, site), ""]
    else:
        # A topic, stage or parent family lists only the papers placed on it (not yet in a
        # sub-family); the rest are on the child pages and in the filterable list.
        here = site.papers_at(node)
        filtered = relative(page, "all-papers.md") + f"?family={node.id}"
        lines += [
            f"{len(under)} papers are placed here or below: browse them all in "
            f"{md.link('All papers, filtered to this node', filtered)}, or open a child above.",
            "",
        ]
        if here:
            lines += [
                f"### Placed here, not in a child ({len(here)}) {NOT_INDEXED}",
                "",
                papers_table(here, page, site),
                "",
            ]
    sources = [origin] if origin else []
    sources += [f"papers/{entry.key}.yaml" for entry in under]
    lines += [f"<small>Last updated {site.updated(*sources)} (taxonomy file and papers placed here)</small>", ""]
    return "\n".join(lines)


def _status(node: Node) -> str:
    leaves = [n for n in node.descendants() if n.is_leaf_method]
    if node.kind == "resource" or not leaves:
        return "—"
    done = sum(1 for leaf in leaves if leaf.implementations)
    return f"{done}/{len(leaves)}" if len(leaves) > 1 else ("yes" if done else "planned")


def _axes(site: SiteData, topic: Node) -> list[dict[str, Any]]:
    for loaded in site.taxonomy.files:
        if loaded.data.get("id") == topic.id:
            return loaded.data.get("axes", [])
    return []


def taxonomy_index_md(site: SiteData) -> str:
    page = "taxonomy/index.md"
    lines = [
        md.front_matter(title="Taxonomy"),
        "# Taxonomy",
        "",
        "Three topic trees. The first follows the seed survey stage by stage; every method family "
        "names its reference implementation and notebook.",
        "",
    ]
    for topic in site.taxonomy.topics:
        lines += [
            f"## {md.link(md.text(topic.name), relative(page, node_page(topic)))}",
            "",
            md.text(topic.summary),
            "",
        ]
        for node in topic.descendants()[1:]:
            indent = "    " * (len(node.ancestors) - 1)
            count = len(site.papers_under(node))
            lines.append(f"{indent}- {md.link(md.text(node.name), relative(page, node_page(node)))} ({count})")
        lines.append("")
    return "\n".join(lines)


def home_md(site: SiteData, counts: dict[str, int], chart_path: str) -> str:
    lines = [
        # No title in the front matter: Material would show "LVLM Atlas - LVLM Atlas".
        md.front_matter(search={"boost": NODE_BOOST}),
        "# LVLM Atlas",
        "",
        "A living literature repository on efficient and reliable inference of large vision-language models. "
        "Papers are organised by the taxonomy of the seed survey; method families are backed by tested "
        "reference implementations and notebooks that run on a CPU.",
        "",
        '<div class="atlas-counts" markdown>',
        "",
    ]
    for label, value in counts.items():
        lines.append(f"<div><strong>{value}</strong>{label}</div>")
    lines += [
        "",
        "</div>",
        "",
        f"Browse {md.link('all papers', 'all-papers.md')} with filters, or search (press `/`).",
        "",
        "## Papers by year and stage",
        "",
        f"![Papers per year, by stage]({chart_path})",
        "",
        "## Topics",
        "",
    ]
    for topic in site.taxonomy.topics:
        lines.append(f"- {md.link(md.text(topic.name), node_page(topic))}: {len(site.papers_under(topic))} papers")
    lines += [
        "",
        "## Downloads",
        "",
        "- [`references.bib`](references.bib): every entry as BibTeX",
        "- [`papers.json`](papers.json): every entry as JSON, for your own filtering",
        "- [`paper.schema.json`](schemas/paper.schema.json): the JSON Schema entries follow",
        "",
        f"Reported numbers come from the papers; reproduced numbers come from our code, with the command that made them. "
        f"See {md.link('About', 'about.md')} for the conventions and {md.link('Contributing', 'contributing.md')} to add a paper.",
        "",
        "*Papers per stage* (as on the taxonomy pages: a paper placed in two stages counts in each): "
        + ", ".join(
            f"{md.link(md.text(stage.name), node_page(stage))} {len(site.papers_under(stage))}"
            for topic in site.taxonomy.topics
            for stage in topic.children
            if stage.level == "stage"
        ),
        "",
    ]
    return "\n".join(lines)
