"""The preview of ``serve``: which pages an edit touches, and that regenerating only those gives
the same files as regenerating everything."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.site.preview import Preview

from .conftest import GOOD_ENTRY, ROOT, SEED_KEYS, make_repo, own_notebooks

# The seed papers and enough others (one of them shares HybridKV's family) for related-paper lists.
KEYS = tuple(sorted({*SEED_KEYS, *(path.stem for path in sorted((ROOT / "papers").glob("*.yaml"))[:60])}))
HYBRIDKV = "zeng2026hybridkv"


@pytest.fixture
def preview(tmp_path) -> Preview:
    repo = make_repo(tmp_path / "repo", KEYS)
    own_notebooks(repo)
    preview = Preview(repo, execute_notebooks=False)
    assert preview.full() is not None
    return preview


def _edit(preview: Preview, relpath: str, old: str, new: str) -> Path:
    path = preview.root / relpath
    text = path.read_text(encoding="utf-8")
    assert old in text, (relpath, old)
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def _same_as_full(preview: Preview) -> None:
    fresh = Preview(preview.root, execute_notebooks=False).full()
    assert fresh is not None
    differing = sorted(
        name for name in fresh.keys() | preview.files.keys() if fresh.get(name) != preview.files.get(name)
    )
    assert differing == []


def test_a_title_edit_regenerates_its_page_its_families_the_lists_that_show_it_and_nothing_unrelated(preview):
    before = dict(preview.files)
    path = _edit(preview, f"papers/{HYBRIDKV}.yaml", "title: 'HybridKV:", "title: 'HybridKV edited:")
    update = preview.update({path})
    assert update is not None
    files, removed = update
    assert removed == set()
    assert f"papers/{HYBRIDKV}.md" in files and "HybridKV edited" in files[f"papers/{HYBRIDKV}.md"]
    family = "taxonomy/efficiency/decoding/kv-cache-compression/kv-head-level.md"
    assert {family, "taxonomy/efficiency/decoding/index.md", "taxonomy/efficiency/index.md"} <= files.keys()
    assert "HybridKV edited" in files[family]
    # Papers that list it as related and the notebook of its implementation show the new title.
    showing = {name for name, text in files.items() if isinstance(text, str) and "HybridKV edited" in text}
    assert any(name.startswith("papers/") and name != f"papers/{HYBRIDKV}.md" for name in showing)
    assert "notebooks/decoding/hybridkv.md" in showing
    # The API page names the paper by its code's card, so it is not rebuilt (the slowest page to build).
    assert "implementations/reference_impls.decoding.hybridkv.md" not in files
    assert not any(name.startswith("taxonomy/hallucination/") for name in files)
    assert len(files) < len(before) / 4
    _same_as_full(preview)


def test_moving_a_paper_regenerates_the_old_and_the_new_family(preview):
    path = _edit(preview, f"papers/{HYBRIDKV}.yaml", "- kv-head-level", "- kv-bit-level")
    files, _ = preview.update({path})
    assert "taxonomy/efficiency/decoding/kv-cache-compression/kv-head-level.md" in files
    assert "taxonomy/efficiency/decoding/kv-cache-compression/kv-bit-level.md" in files
    _same_as_full(preview)


def test_added_deleted_and_changed_entries_give_the_same_files_as_a_full_regeneration(preview):
    added = preview.root / "papers" / "good2026entry.yaml"
    added.write_text(GOOD_ENTRY, encoding="utf-8")
    files, removed = preview.update({added})
    assert "papers/good2026entry.md" in files and removed == set()
    _same_as_full(preview)
    year = _edit(preview, "papers/good2026entry.yaml", "year: 2026", "year: 2024")
    assert preview.update({year}) is not None
    _same_as_full(preview)
    # The entry names another module: the HybridKV module loses its paper, so its API page, badges
    # and "Run it" boxes change.
    unlinked = _edit(
        preview,
        f"papers/{HYBRIDKV}.yaml",
        "implementation: reference_impls.decoding.hybridkv",
        "implementation: reference_impls.decoding.adakv",
    )
    files, _ = preview.update({unlinked})
    assert "implementations/reference_impls.decoding.hybridkv.md" in files
    _same_as_full(preview)
    deleted = preview.root / "papers" / f"{SEED_KEYS[-1]}.yaml"
    deleted.unlink()
    files, removed = preview.update({deleted})
    assert removed == {f"papers/{SEED_KEYS[-1]}.md"}
    _same_as_full(preview)


def test_an_invalid_edit_changes_nothing_and_says_why(preview, capsys):
    before = dict(preview.files)
    path = _edit(preview, f"papers/{HYBRIDKV}.yaml", "year: 2026", "year: soon")
    assert preview.update({path}) == ({}, set())
    assert f"papers/{HYBRIDKV}.yaml" in capsys.readouterr().err
    assert preview.files == before


def test_findings_and_renders_regenerate_their_own_pages_other_edits_everything(preview):
    taxonomy = preview.root / "taxonomy" / "efficiency.yaml"
    text = taxonomy.read_text(encoding="utf-8")
    at = text.index("findings: >-\n") + len("findings: >-\n")
    indent = text[at:].split("\n", 1)[0]
    indent = indent[: len(indent) - len(indent.lstrip())]
    taxonomy.write_text(text[:at] + f"{indent}Newly found.\n" + text[at:], encoding="utf-8")
    files, _ = preview.update({taxonomy})
    pages = [name for name in files if name.endswith(".md")]  # (and the charts the page shows)
    assert pages == ["taxonomy/efficiency/encoding/efficient-vision-encoders/vision-encoders-image.md"]
    assert "Newly found" in files[pages[0]]
    _same_as_full(preview)

    render = preview.root / "notebooks" / "_rendered" / "decoding" / "hybridkv" / "index.md"
    render.write_text(render.read_text(encoding="utf-8") + "\nA new line.\n", encoding="utf-8")
    files, _ = preview.update({render})
    assert "A new line" in files["notebooks/decoding/hybridkv.md"]
    assert not any(name.startswith(("papers/", "taxonomy/")) for name in files)
    _same_as_full(preview)

    # A renamed node changes every page that names it: not taken in alone.
    renamed = _edit(preview, "taxonomy/efficiency.yaml", "name: KV cache compression", "name: KV caches")
    assert preview.update({renamed}) is None
    assert preview.update({preview.root / "notebooks" / "decoding" / "hybridkv.py"}) is None


def test_api_pages_name_their_paper_from_the_code_not_the_entry(preview):
    page = preview.files["implementations/reference_impls.decoding.hybridkv.md"]
    assert "Paper: [HybridKV, arXiv 2604\\.05887](../papers/zeng2026hybridkv.md)" in page
