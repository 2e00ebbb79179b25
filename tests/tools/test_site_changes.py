"""What's new: dates from git (and what the page says without them), the changelog page, the Atom
feed, related papers and the edit links of generated pages."""

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from tools.catalog import Entry
from tools.site.build import generate_pages
from tools.site.history import NO_GIT, SHALLOW, UNCOMMITTED, load_history
from tools.site.related import RelatedIndex

from .conftest import GOOD_ENTRY, make_repo, own_notebooks

ATOM = "{http://www.w3.org/2005/Atom}"


def _git(cwd: Path, *arguments: str, date: str = "2026-01-02T12:00:00+00:00") -> None:
    environment = {
        **os.environ,
        "GIT_AUTHOR_DATE": date,
        "GIT_COMMITTER_DATE": date,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    subprocess.run(["git", *arguments], cwd=cwd, env=environment, check=True, capture_output=True)


def _history_repo(path: Path) -> Path:
    """Three commits: a and b added (Jan 2), b changed (Jan 5), a changed (Feb 3)."""
    (path / "papers").mkdir(parents=True)
    _git(path, "init", "-q", "-b", "main")
    for name, day, files in (("one", "2026-01-02", "ab"), ("two", "2026-01-05", "b"), ("three", "2026-02-03", "a")):
        for file in files:
            (path / "papers" / f"{file}.yaml").write_text(f"{name}\n")
        _git(path, "add", "papers")
        _git(path, "commit", "-q", "-m", name, date=f"{day}T12:00:00+00:00")
    return path


def test_last_updated_comes_from_the_newest_commit_of_each_file(tmp_path):
    repo = _history_repo(tmp_path / "repo")
    (repo / "papers" / "c.yaml").write_text("new\n")
    history = load_history(repo)
    assert history.describe("papers/a.yaml") == "2026-02-03"
    assert history.describe("papers/b.yaml") == "2026-01-05"
    assert history.describe("papers/a.yaml", "papers/b.yaml") == "2026-02-03"
    assert history.describe("papers/c.yaml") == UNCOMMITTED


def test_without_git_or_behind_a_shallow_boundary_the_date_is_unknown_not_invented(tmp_path):
    assert load_history(make_repo(tmp_path / "copy")).describe("papers/zeng2026hybridkv.yaml") == NO_GIT
    origin = _history_repo(tmp_path / "origin")
    shallow = tmp_path / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth", "2", f"file://{origin}", str(shallow)], check=True)
    history = load_history(shallow)
    assert history.describe("papers/a.yaml") == "2026-02-03"  # changed after the boundary: known
    # b's last change is the boundary commit, which a shallow clone shows as adding every file.
    assert history.describe("papers/b.yaml") == SHALLOW
    assert history.describe("papers/a.yaml", "papers/b.yaml") == SHALLOW


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> Path:
    """Generated pages (no mkdocs) of the seed entries plus a newer entry with hostile text, in a
    git checkout whose papers/ was committed on a known day."""
    repo = make_repo(tmp_path_factory.mktemp("changes") / "repo")
    hostile = (
        GOOD_ENTRY.replace("good2026entry", "late2026entry")
        .replace("2611.00001", "2611.00077")
        .replace("added: '2026-11-26'", "added: '2026-12-31'")
        .replace("title: A Perfectly Good Entry About Visual Token Pruning", 'title: "<b>&amp; Token ]]>"')
    )
    (repo / "papers" / "late2026entry.yaml").write_text(hostile)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "papers", "taxonomy")
    _git(repo, "commit", "-q", "-m", "data", date="2026-03-04T12:00:00+00:00")
    assert generate_pages(repo, execute_notebooks=False) == 0
    return repo / "docs"


def test_atom_feed_is_valid_newest_first_and_escaped(pages):
    raw = (pages / "feed.xml").read_text(encoding="utf-8")
    assert "<b>" not in raw and "\x1f" not in raw
    feed = ET.fromstring(raw.encode("utf-8"))
    assert feed.tag == f"{ATOM}feed"
    for tag in ("id", "title", "updated", "author"):
        assert feed.find(f"{ATOM}{tag}") is not None, tag
    entries = feed.findall(f"{ATOM}entry")
    assert len(entries) == 6
    for item in entries:
        for tag in ("id", "title", "updated", "link"):
            assert item.find(f"{ATOM}{tag}") is not None, tag
    first = entries[0]
    # Text, not markup. (Control characters, which the feed drops too, are refused by validate first.)
    assert first.findtext(f"{ATOM}title") == "<b>&amp; Token ]]>"
    assert first.findtext(f"{ATOM}updated") == "2026-12-31T00:00:00Z"
    assert first.findtext(f"{ATOM}id") == "https://lvlm-atlas.github.io/papers/late2026entry/"
    assert feed.findtext(f"{ATOM}updated") == "2026-12-31T00:00:00Z"


def test_changelog_lists_entries_by_day_added_newest_first(pages):
    text = (pages / "changes.md").read_text(encoding="utf-8")
    assert text.index("## 2026-12-31 (1 new)") < text.index("## 2026-11-26")
    assert "(papers/late2026entry.md)" in text and "<b>" not in text
    assert text.index("late2026entry") < text.index("zeng2026hybridkv")


def test_pages_say_when_their_source_was_last_committed_and_link_it_for_editing(pages):
    paper = (pages / "papers" / "zeng2026hybridkv.md").read_text(encoding="utf-8")
    assert "Added 2026\\-11\\-26 · last updated 2026\\-03\\-04" in paper
    assert "edit_url: https://github.com/lvlm-atlas/lvlm-atlas/edit/main/papers/zeng2026hybridkv.yaml" in paper
    family = (pages / "taxonomy/efficiency/decoding/kv-cache-compression/kv-head-level.md").read_text()
    assert "Last updated 2026\\-03\\-04" in family
    assert "edit_url: https://github.com/lvlm-atlas/lvlm-atlas/edit/main/taxonomy/efficiency.yaml" in family
    for generated in ("index.md", "all-papers.md", "changes.md", "tags.md"):
        assert "edit_url: false" in (pages / generated).read_text(encoding="utf-8"), generated


def _entry(key: str, title: str, placement: str, year: int = 2025) -> Entry:
    return Entry(SimpleNamespace(data={"key": key, "title": title, "placement": [placement], "year": year}), "")


def test_related_papers_same_family_first_then_nearest_titles():
    entries = [
        _entry("self", "Pyramid token merging for video", "merge"),
        _entry("sibling-far", "Something unrelated entirely", "merge"),
        _entry("sibling-near", "Token merging revisited", "merge"),
        _entry("other-near", "Pyramid token merging at scale", "prune"),
        _entry("other-some", "Video benchmarks", "bench"),
        _entry("other-none", "Quantised attention kernels", "prune"),
    ]
    related = RelatedIndex(entries).related(entries[0], family_limit=5, other_limit=3)
    assert [entry.key for entry in related.family] == ["sibling-near", "sibling-far"]
    assert [entry.key for entry in related.elsewhere] == ["other-near", "other-some"]


def test_incremental_generation_rewrites_only_what_changed(tmp_path):
    repo = make_repo(tmp_path / "repo")
    assert generate_pages(repo, execute_notebooks=False, incremental=True) == 0
    docs = repo / "docs"
    before = {path: path.stat().st_mtime_ns for path in docs.rglob("*") if path.is_file()}
    paper = repo / "papers" / "zeng2026hybridkv.yaml"
    paper.write_text(paper.read_text().replace("title: 'HybridKV:", "title: 'HybridKV edited:"))
    (repo / "papers" / "jiang2025kind.yaml").unlink()
    assert generate_pages(repo, execute_notebooks=False, incremental=True) == 0
    after = {path: path.stat().st_mtime_ns for path in docs.rglob("*") if path.is_file()}
    changed = {str(path.relative_to(docs)) for path in after if before.get(path) != after[path]}
    assert (
        "papers/zeng2026hybridkv.md" in changed
        and "HybridKV edited" in (docs / "papers/zeng2026hybridkv.md").read_text()
    )
    assert not (docs / "papers" / "jiang2025kind.md").exists()  # a page no longer generated is removed
    assert "notebooks/index.md" not in changed and "implementations/index.md" not in changed
    assert len(changed) < len(after) / 4, sorted(changed)


def test_recorded_notebook_run_time_shows_on_the_notebook_and_in_run_it_boxes(tmp_path):
    repo = make_repo(tmp_path / "repo")
    rendered = own_notebooks(repo) / "_rendered" / "decoding" / "hybridkv" / "index.md"
    first, rest = rendered.read_text(encoding="utf-8").split("\n", 1)
    first = re.sub(r" ?<!-- atlas-notebook-seconds: [0-9.]+ -->", "", first)  # whatever the committed render took
    rendered.write_text(f"{first} <!-- atlas-notebook-seconds: 57 -->\n{rest}", encoding="utf-8")
    untimed = rendered.parents[1] / "kivi" / "index.md"
    untimed.write_text(re.sub(r" ?<!-- atlas-notebook-seconds: [0-9.]+ -->", "", untimed.read_text(encoding="utf-8")))
    assert generate_pages(repo, execute_notebooks=False) == 0
    docs = repo / "docs"
    assert "took 57 s of wall time on a CPU (full setting)" in (docs / "notebooks/decoding/hybridkv.md").read_text()
    assert "(rendered run: 57 s on a CPU, full setting)" in (docs / "papers/zeng2026hybridkv.md").read_text()
    # A render that recorded no time shows none (nothing is guessed).
    assert "wall time" not in (docs / "notebooks/decoding/kivi.md").read_text()
