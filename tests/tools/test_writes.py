"""``new`` and ``bib import`` write only fresh, valid ``papers/<key>.yaml`` files, or nothing at all."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tools.entries import write_entry
from tools.paths import UnsafePathError, entry_path


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (symlinked code folders left out) with a hash of its bytes."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(
            part in ("reference_impls", "notebooks") for part in path.relative_to(folder).parts
        ):
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def new_args(key: str, *extra: str) -> list[str]:
    return ["new", key, "--title", "A New Method", "--year", "2026", "--placement", "kv-token-level", *extra]


@pytest.mark.parametrize(
    "key, reason",
    [
        ("../../x", "the key must not contain a path separator"),
        ("sub/dir/x", "the key must not contain a path separator"),
        ("/abs/x", "the key must not contain a path separator"),
        ("..hidden", "the key must not contain '..'"),
        ("a" * 300, "the key is 300 characters long; at most 100 are allowed"),
        (
            "bad key",
            "the key must match ^[A-Za-z0-9][A-Za-z0-9_.:-]*$ "
            "(letters, digits and _ . : - only, starting with a letter or digit)",
        ),
        ("Zeng2026HybridKV", "papers/zeng2026hybridkv.yaml differs only in letter case"),
        ("zeng2026hybridkv", "papers/zeng2026hybridkv.yaml already exists (pass --force to overwrite it)"),
    ],
)
def test_new_refuses_keys_that_are_not_fresh_file_names(key, reason, repo, run_tools):
    before = snapshot(repo.parent)
    status, out, err = run_tools(repo, *new_args(key))
    assert status == 1
    assert f"new: refusing key {key!r}: {reason}\nnew: nothing was written" in err, err
    assert snapshot(repo.parent) == before


def test_new_overwrites_only_with_force_and_dry_run_names_the_file(repo, run_tools):
    before = snapshot(repo)
    status, out, err = run_tools(repo, *new_args("doe2026new", "--dry-run"))
    assert status == 0, err
    assert "would write papers/doe2026new.yaml" in out
    assert snapshot(repo) == before
    assert run_tools(repo, *new_args("doe2026new"))[0] == 0
    status, out, err = run_tools(repo, *new_args("doe2026new", "--author", "Jane Doe", "--force"))
    assert status == 0, err
    assert "Jane Doe" in (repo / "papers" / "doe2026new.yaml").read_text()


def test_new_validates_before_writing(repo, run_tools):
    before = snapshot(repo)
    status, out, err = run_tools(
        repo,
        "new",
        "doe2026new",
        "--title",
        "A New Method",
        "--year",
        "99999",
        "--placement",
        "kv-token-level",
        "--arxiv",
        "2611.0",
    )
    assert status == 1
    assert "papers/doe2026new.yaml:5: year: 99999 is greater than the maximum of 2100" in err
    assert "papers/doe2026new.yaml:7: arxiv: '2611.0' does not match the expected format" in err
    assert "new: 2 error(s); nothing was written" in err
    assert snapshot(repo) == before


def test_entry_path_is_the_only_way_to_a_file(tmp_path):
    papers = tmp_path / "papers"
    papers.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (papers / "linked.yaml").symlink_to(tmp_path / "elsewhere" / "target.yaml")
    with pytest.raises(UnsafePathError, match="papers/linked.yaml is a symbolic link"):
        entry_path(papers, "linked", overwrite=True)
    assert entry_path(papers, "fine2026key") == papers / "fine2026key.yaml"
    with pytest.raises(UnsafePathError, match="path separator"):
        write_entry(
            papers,
            {"key": "../escape", "title": "T", "authors": [], "year": 2026, "placement": ["x"], "added": "2026-01-01"},
        )
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["elsewhere", "linked.yaml", "papers"]


HOSTILE_BIB = """\
@misc{../taxonomy/continual-ad, title={Overwrite The Taxonomy}, author={Eve Evil}, year={2026}}
@misc{good2026paper, title={A Good Paper on Visual Tokens}, author={Ann Able}, year={2026}}
"""

INVALID_BIB = """\
@misc{bad2026url, title={Scripted Link Paper}, author={Eve Evil}, year={2026}, url={javascript:alert(1)}}

@misc{bad2026doi, title={Spaced DOI Paper}, author={Eve Evil}, year={2026}, doi={10.1234/a b}}
@misc{bad2026year, title={Far Future Paper}, author={Eve Evil}, year={99999}}
@misc{bad2026title, title={}, author={Eve Evil}, year={2026}}
@misc{good2026paper, title={A Good Paper on Visual Tokens}, author={Ann Able}, year={2026}}
"""


def test_bib_import_refuses_a_key_that_leaves_papers(repo, run_tools, tmp_path):
    bib = tmp_path / "hostile.bib"
    bib.write_text(HOSTILE_BIB)
    before = snapshot(repo)
    status, out, err = run_tools(repo, "bib", "import", str(bib), "--placement", "kv-token-level")
    assert status == 1
    assert (
        "bib import: refusing key '../taxonomy/continual-ad': the key must not contain a path separator\n"
        "bib import: nothing was written"
    ) in err
    assert snapshot(repo) == before


def test_bib_import_validates_every_entry_and_writes_nothing_when_one_is_invalid(repo, run_tools, tmp_path):
    bib = tmp_path / "invalid.bib"
    bib.write_text(INVALID_BIB)
    before = snapshot(repo)
    status, out, err = run_tools(repo, "bib", "import", str(bib), "--placement", "kv-token-level")
    assert status == 1
    assert "papers/bad2026url.yaml:8: url: 'javascript:alert(1)' does not match the expected format" in err
    assert "papers/bad2026doi.yaml:8: doi: '10.1234/a b' does not match the expected format" in err
    assert "papers/bad2026year.yaml:6: year: 99999 is greater than the maximum of 2100" in err
    assert "papers/bad2026title.yaml:2: title: required field is missing" in err
    assert "bib import: 4 error(s); nothing was written" in err
    assert "good2026paper" not in err
    assert snapshot(repo) == before


def test_bib_import_dry_run_names_every_file_and_writes_nothing(repo, run_tools, tmp_path):
    bib = tmp_path / "fine.bib"
    bib.write_text(
        HOSTILE_BIB.split("\n", 1)[1] + "@misc{other2026paper, title={Another Paper on Caches}, year={2026}}\n"
    )
    before = snapshot(repo)
    status, out, err = run_tools(repo, "bib", "import", str(bib), "--placement", "kv-token-level", "--dry-run")
    assert status == 0, err
    assert "would write papers/good2026paper.yaml\nwould write papers/other2026paper.yaml\n" in out
    assert snapshot(repo) == before
    status, out, err = run_tools(repo, "bib", "import", str(bib), "--placement", "kv-token-level")
    assert status == 0 and "wrote papers/good2026paper.yaml\nwrote papers/other2026paper.yaml\n" in out


def test_bib_import_refuses_a_case_variant_of_an_existing_key(repo, run_tools, tmp_path):
    bib = tmp_path / "case.bib"
    bib.write_text("@misc{ZENG2026HYBRIDKV, title={A Different Title Entirely}, author={Ann Able}, year={2026}}\n")
    before = snapshot(repo)
    status, out, err = run_tools(repo, "bib", "import", str(bib), "--placement", "kv-token-level")
    assert status == 1
    assert (
        "bib import: refusing key 'ZENG2026HYBRIDKV': papers/zeng2026hybridkv.yaml differs only in letter case" in err
    )
    assert snapshot(repo) == before


TSV_HEADER = "key\ttitle\tauthors\tyear\tvenue\tarxiv\turl\tcode\tstage\tfamily\tsource\n"


def tsv_row(key: str, title: str = "A Fine Title", year: str = "2026") -> str:
    """One row of the shared table's shape, placed by a label the import map knows."""
    return "\t".join([key, title, "", year, "arXiv", "", "", "", "decoding", "kv-cache-eviction", "a table"])


def write_with(writer: str, repo: Path, tmp_path: Path, run_tools, key: str, title: str, year: str = "2026"):
    """Create one entry through ``writer`` (a command that writes papers/); returns (status, out, err)."""
    if writer == "new":
        return run_tools(repo, "new", key, "--title", title, "--year", year, "--placement", "kv-token-level")
    if writer == "bib import":
        bib = tmp_path / "in.bib"
        bib.write_text(f"@misc{{{key}, title={{{title}}}, year={{{year}}}}}\n", encoding="utf-8")
        return run_tools(repo, "bib", "import", str(bib), "--placement", "kv-token-level")
    tsv = tmp_path / "in.tsv"
    tsv.write_text(TSV_HEADER + tsv_row(key, title, year) + "\n", encoding="utf-8")
    return run_tools(repo, "import-tsv", str(tsv))


WRITERS = ["new", "bib import", "import-tsv"]


@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_tidies_a_titles_stray_spacing(writer, repo, run_tools, tmp_path):
    # Reference lists print "MobileVLM : A Fast" or "Fact :Teaching"; validate refuses that spacing,
    # so a writer that copied it would leave the repository failing its own check (CI did, once).
    status, out, err = write_with(writer, repo, tmp_path, run_tools, "doe2026tidy", "Tidy :Spacing , Please")
    assert status == 0, err
    assert "title: 'Tidy: Spacing, Please'" in (repo / "papers" / "doe2026tidy.yaml").read_text()
    assert run_tools(repo, "validate")[0] == 0


@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_refuses_what_validate_refuses_and_writes_nothing(writer, repo, run_tools, tmp_path):
    before = snapshot(repo)
    status, out, err = write_with(writer, repo, tmp_path, run_tools, "doe2026bad", "A Fine Title", year="99999")
    assert status == 1
    assert "year: 99999 is greater than the maximum of 2100" in err, err
    assert "nothing was written" in err
    if writer == "import-tsv":
        assert f"{tmp_path / 'in.tsv'}:2: doe2026bad: year:" in err  # the table's line, the file is not written
    assert snapshot(repo) == before


def test_import_tsv_names_the_line_of_bytes_that_are_not_utf8_and_refuses_endless_input(repo, run_tools, tmp_path):
    tsv = tmp_path / "latin1.tsv"
    tsv.write_bytes((TSV_HEADER + tsv_row("doe2026latin", "Caf\u00e9 Tokens") + "\n").encode("latin-1"))
    before = snapshot(repo)
    status, out, err = run_tools(repo, "import-tsv", str(tsv))
    assert status == 1
    assert f"import-tsv: {tsv}:2: not UTF-8 text (byte 0xe9 at column 17)" in err, err
    status, out, err = run_tools(repo, "import-tsv", "/dev/zero")
    assert status == 1 and "the file holds more than 20,000,000 bytes" in err, err
    assert snapshot(repo) == before


def test_import_tsv_names_every_bad_row_by_its_line_and_writes_nothing(repo, run_tools, tmp_path):
    tsv = tmp_path / "bad.tsv"
    rows = [tsv_row("../../evil"), tsv_row("doe2026year", year="abc"), tsv_row("doe2026twice"), tsv_row("doe2026twice")]
    lines = rows + ["short\t"]
    tsv.write_text(TSV_HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    readable = tmp_path / "readable.tsv"
    readable.write_text(TSV_HEADER + tsv_row("doe2026year", year="abc") + "\n", encoding="utf-8")
    before = snapshot(repo.parent)
    status, out, err = run_tools(repo, "import-tsv", str(tsv))
    assert status == 1
    for expected in (
        f"import-tsv: {tsv}:2: refusing key '../../evil': the key must not contain a path separator",
        f"import-tsv: {tsv}:5: duplicate key 'doe2026twice' (first on line 4)",
        f"import-tsv: {tsv}:6: malformed row (missing key/title or wrong number of columns)",
    ):
        assert expected in err, err
    assert snapshot(repo.parent) == before
    # Once every row can be read, an entry that validate refuses is named by its line too.
    status, out, err = run_tools(repo, "import-tsv", str(readable))
    assert status == 1
    assert f"import-tsv: {readable}:2: doe2026year: year: 'abc' is not of type 'integer'" in err, err
    assert snapshot(repo.parent) == before


@pytest.mark.parametrize(
    "edit, expected",
    [
        (
            lambda text: text.replace("\nexclude:\n", "\nexclude: [a list]\nexclude_was:\n"),
            "{map}:{line}: exclude: expected a mapping of labels or keys",
        ),
        (
            lambda text: text.replace("  encoding/token-transformation: [modality-adapters]", "  x/y: modality"),
            "{map}:8: defaults.x/y: expected a list of taxonomy ids",
        ),
        (
            lambda text: text.replace("defaults:", "defaults: [", 1),
            "{map}:8: invalid YAML: did not find expected ',' or ']'",
        ),
    ],
)
def test_a_broken_import_map_is_named_by_file_and_line(edit, expected, repo, run_tools, tmp_path):
    import_map = repo / "tools" / "import_map.yaml"
    text = import_map.read_text(encoding="utf-8")
    import_map.write_text(edit(text), encoding="utf-8")
    tsv = tmp_path / "in.tsv"
    tsv.write_text(TSV_HEADER, encoding="utf-8")
    before = snapshot(repo)
    status, out, err = run_tools(repo, "import-tsv", str(tsv))
    assert status == 1
    exclude_line = text[: text.index("\nexclude:")].count("\n") + 2
    assert expected.format(map=import_map, line=exclude_line) in err, err
    assert snapshot(repo) == before
