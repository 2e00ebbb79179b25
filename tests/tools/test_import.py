"""``import-tsv`` turns every row of the shared table into an entry, inventing nothing."""

from __future__ import annotations

import csv

import pytest

from tools.catalog import load_catalog, tidy_title
from tools.importer import ROOT, import_tsv
from tools.yamlio import load_yaml

from .conftest import SHARED_TSV, make_repo

pytestmark = pytest.mark.skipif(not SHARED_TSV.is_file(), reason="../shared/data is not beside this checkout")


def test_import_creates_one_valid_entry_per_row(tmp_path):
    repo = make_repo(tmp_path / "repo", paper_keys=())
    written, messages = import_tsv(SHARED_TSV, root=repo, added="2026-11-26")
    with open(SHARED_TSV, encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert len(rows) == 599
    # Two known duplicates are merged (G-Prune into jiang2025kind, the ICLR-titled row of
    # inference-optimal-vlms-need into its arXiv-titled row); 14 out-of-scope rows and 28 generic
    # continual-learning rows are excluded.
    assert len(written) == 599 - 2 - 14 - 28
    assert sum(message.startswith("excluded ") for message in messages) == 14 + 28
    catalog = load_catalog(repo, check_schema_file=False)
    source_problems = [p for p in catalog.errors if p.field != "source"]
    assert source_problems == []
    by_key = catalog.by_key()
    merged = by_key["jiang2025kind"].data
    assert merged["doi"] == "10.1609/aaai.v39i4.32427" and "SuDIS-ZJU/Efficient-LVLMs-Inference" in merged["sources"]
    mapping = load_yaml(ROOT / "tools" / "import_map.yaml").data
    for row in rows:
        if row["key"] in mapping["merge"] or row["key"] in mapping["exclude"]:
            assert row["key"] not in by_key
            continue
        data = by_key[row["key"]].data
        assert data["title"] == tidy_title(row["title"])
        assert data.get("arxiv", "") == row["arxiv"]
        assert data.get("code", "") == row["code"]
        assert data.get("venue", "") == row["venue"]
        expected_authors = [a for a in row["authors"].split(" and ") if a and a != "others"] if row["authors"] else []
        assert data["authors"] == expected_authors
        assert data.get("authors_truncated", False) == row["authors"].endswith(" and others")


def test_import_keeps_existing_entries_and_rejects_unmapped_labels(tmp_path):
    repo = make_repo(tmp_path / "repo")
    before = (repo / "papers" / "zeng2026hybridkv.yaml").read_text()
    import_tsv(SHARED_TSV, root=repo)
    assert (repo / "papers" / "zeng2026hybridkv.yaml").read_text() == before  # hand-added reported numbers stay
    bad = tmp_path / "bad.tsv"
    header = SHARED_TSV.read_text(encoding="utf-8").split("\n", 1)[0]
    bad.write_text(header + "\nx2026a\tA Title\t\t2026\tarXiv\t\t\t\tnowhere\tnothing\tme\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.tsv:2: x2026a: no placement for label 'nowhere/nothing'"):
        import_tsv(bad, root=repo)


def placements_a_reimport_would_change(imported, catalog) -> list[str]:
    """One line per imported entry whose placement in papers/ differs from the import's (or is missing)."""
    in_papers = catalog.by_key()
    lines = []
    for entry in imported.entries:
        key = entry.data["key"]
        if key not in in_papers:
            lines.append(f"{key}: not in papers/, a re-import would add it back (exclude or merge it)")
            continue
        have, fresh = in_papers[key].data["placement"], entry.data["placement"]
        if sorted(have) != sorted(fresh):
            lines.append(f"{key} ({in_papers[key].relpath}): papers/ has {have}, a re-import gives {fresh}")
    return lines


def test_a_reimport_gives_every_entry_its_placement_in_papers(tmp_path):
    # A placement changed by hand in papers/ without a reviewed override in tools/import_map.yaml
    # would be silently reverted by the next import; the override (with its evidence) must come along.
    repo = make_repo(tmp_path / "repo", paper_keys=())
    import_tsv(SHARED_TSV, root=repo, added="2026-11-26")
    imported = load_catalog(repo, check_schema_file=False)
    changed = placements_a_reimport_would_change(imported, load_catalog(ROOT))
    assert not changed, (
        "record these in tools/import_map.yaml (a reviewed override, an exclusion or a merge):\n" + "\n".join(changed)
    )
