"""The optional ``aliases`` field: method nicknames people search for."""

from __future__ import annotations

from tools.entries import entry_text

from .conftest import GOOD_ENTRY


def write(repo, text):
    (repo / "papers" / "good2026entry.yaml").write_text(text, encoding="utf-8")


def test_aliases_list_validates(repo, run_tools):
    write(repo, GOOD_ENTRY.replace("authors:\n", "aliases:\n- GoodPrune\nauthors:\n"))
    status, _, err = run_tools(repo, "validate")
    assert status == 0, err


def test_aliases_as_a_string_is_reported(repo, run_tools):
    write(repo, GOOD_ENTRY.replace("authors:\n", "aliases: GoodPrune\nauthors:\n"))
    status, _, err = run_tools(repo, "validate")
    assert status == 1
    assert "papers/good2026entry.yaml:4: aliases: 'GoodPrune' is not of type 'array'" in err, err


def test_aliases_are_written_right_after_the_title():
    text = entry_text(
        {
            "key": "k2026",
            "title": "GoodPrune: A Title",
            "aliases": ["GoodPrune"],
            "authors": [],
            "year": 2026,
            "placement": ["prefilling"],
            "added": "2026-11-26",
        }
    )
    assert text.splitlines()[1:5] == ["key: k2026", "title: 'GoodPrune: A Title'", "aliases:", "- GoodPrune"]
