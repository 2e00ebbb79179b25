"""``stats`` prints the data-quality figures the data issue tracks."""

from __future__ import annotations

from .conftest import GOOD_ENTRY


def test_stats_prints_quality_figures(repo, run_tools):
    # A sixth entry: no authors, no venue, placed only on a parent node.
    (repo / "papers" / "good2026entry.yaml").write_text(
        GOOD_ENTRY.replace("authors:\n- Ada Lovelace", "authors: []")
        .replace("venue: arXiv\n", "")
        .replace("- prefilling-attention-guided", "- prefilling-token-compression"),
        encoding="utf-8",
    )
    status, out, err = run_tools(repo, "stats")
    assert status == 0, err
    lines = out.splitlines()
    start = lines.index("data quality:")
    assert lines[start + 1 : start + 8] == [
        "  with authors: 5/6 (83.3%)",
        "  with a summary: 5/6 (83.3%)",  # the five seed entries quote their abstracts; the sixth has none
        "  with aliases: 2/6 (33.3%)",
        "  with reported numbers: 3/6 (50.0%)",
        "  venue 'arXiv': 3/6 (50.0%)",  # zeng2026hybridkv is ACL 2026; the sixth has no venue
        "  placed only on a node that has children (no leaf family): 1/6 (16.7%)",
        "    of which on: prefilling-token-compression 1",
    ]
    assert "(no venue): 1" in out
