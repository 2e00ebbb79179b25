"""Hostile or careless data files: each is refused by ``validate`` with file, line, field and the fix,
and one bad file never hides the problems of the others."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import GOOD_ENTRY, ROOT, own_notebooks, own_results


def write(repo, name: str, text: str):
    path = repo / "papers" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def other(key: str, arxiv: str) -> str:
    return (
        GOOD_ENTRY.replace("good2026entry", key).replace("2611.00001", arxiv).replace("A Perfectly Good", f"The {key}")
    )


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]\n" for prev, name in zip("abcdefgh", "bcdefghi")
)


def test_yaml_aliases_bombs_recursion_and_odd_keys_are_reported_with_every_other_problem(repo, run_tools):
    write(repo, "bomb2026.yaml", ALIAS_BOMB)  # 10^9 items if expanded
    write(repo, "loop2026.yaml", GOOD_ENTRY.replace("models", "x") + "models: &m [*m]\n")
    write(repo, "keys2026.yaml", GOOD_ENTRY + "? [a, b]\n: 1\n")
    write(repo, "tagkey2026.yaml", GOOD_ENTRY + "? !!python/object/apply:os.system [true]\n: 1\n")
    write(repo, "merge2026.yaml", "base: &base {year: 2026}\nentry:\n  <<: *base\n")
    write(repo, "scalarkeys2026.yaml", GOOD_ENTRY + "1: one\n")  # was a TypeError traceback (difflib on an int)
    write(repo, "nullkey2026.yaml", GOOD_ENTRY.replace("venue: arXiv", "venue: arXiv\n? null\n: x"))
    write(repo, "good2026entry.yaml", GOOD_ENTRY.replace("year: 2026", "year: 2026.0"))
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    assert "papers/bomb2026.yaml:1: aliases are not allowed (&anchor and *alias); write the value out" in err
    assert "papers/loop2026.yaml:13: aliases are not allowed (&anchor and *alias); write the value out" in err
    assert "papers/keys2026.yaml:13: a mapping key must be a plain value, not a list" in err
    assert "papers/tagkey2026.yaml:13: a mapping key must be a plain value, not a list" in err
    assert "papers/merge2026.yaml:1: aliases are not allowed" in err
    assert "papers/scalarkeys2026.yaml:13: a mapping key must be text; YAML reads '1' as int: quote it" in err
    assert "papers/nullkey2026.yaml:8: a mapping key must be text; YAML reads 'null' as null: quote it" in err
    assert "papers/good2026entry.yaml:6: year: expected a whole number, found 2026.0; write 2026" in err
    assert "8 error(s)" in err


def test_non_finite_numbers_and_impossible_dates_are_refused(repo, run_tools):
    write(
        repo,
        "good2026entry.yaml",
        GOOD_ENTRY.replace("2026-11-26", "2026-13-45")
        + "reported:\n- metric: speed-up\n  value: .nan\n  source: abstract\n"
        + "- metric: speed-up\n  value: -.Inf\n  source: abstract\n",
    )
    write(
        repo,
        "date2026entry.yaml",
        other("date2026entry", "2611.00002").replace("added: '2026-11-26'", "added: 2026-02-30"),
    )
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    assert "papers/good2026entry.yaml:12: added: '2026-13-45' is not a real date (month must be in 1..12)" in err
    assert (
        "papers/good2026entry.yaml:15: reported[0].value: expected a finite number, found '.nan' "
        "(.nan and .inf are not allowed)"
    ) in err
    assert "papers/good2026entry.yaml:18: reported[1].value: expected a finite number, found '-.Inf'" in err
    assert "papers/date2026entry.yaml:12: a value YAML cannot read: day is out of range for month; quote it" in err


def test_control_characters_are_refused_in_every_field_of_every_data_file(repo, run_tools):
    """No text field needs a control character, and programs reading the outputs act on some (NUL in
    BibTeX, escape sequences in a terminal). A URL or DOI is also refused by its format: it is written
    as it is into BibTeX, hrefs and the feed."""
    write(repo, "good2026entry.yaml", GOOD_ENTRY.replace("2611.00001\n", '2611.00001\ndoi: "10.1234/x\\e[31m"\n', 1))
    url = other("ctl2026entry", "2611.00007").replace("https://arxiv.org/abs/2611.00007", '"https://e.org/\\0x\\x7f"')
    write(
        repo, "ctl2026entry.yaml", url.replace("- Ada Lovelace", '- "Ada\\aLovelace"') + 'code: "https://e.org/\\x85"\n'
    )
    title = other("ttl2026entry", "2611.00009").replace(
        "title: The ttl2026entry Entry About Visual Token Pruning", 'title: "The \\x1b]0;pwned\\x07 Entry"'
    )
    write(repo, "ttl2026entry.yaml", title)
    results = own_results(repo)
    good = json.loads((results / "tokens-toyvlm.json").read_text())
    good["columns"][0]["label"] = "Method\x1b[2J"
    (results / "tokens-toyvlm.json").write_text(json.dumps(good, indent=1))
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    control = "holds the control character {} (character {}); expected plain text: remove it"
    for where, code, position in (
        ("papers/good2026entry.yaml:10: doi", "U+001B", 10),
        ("papers/ctl2026entry.yaml:9: url", "U+0000", 15),
        ("papers/ctl2026entry.yaml:13: code", "U+0085", 15),
        ("papers/ctl2026entry.yaml:5: authors[0]", "U+0007", 4),
        ("papers/ttl2026entry.yaml:3: title", "U+001B", 5),
        ("reference_impls/results/tokens-toyvlm.json:20: columns[0].label", "U+001B", 7),
    ):
        assert f"{where}: {control.format(code, position)}" in err, err
    for line, field, value in (
        (10, "doi", "10.1234/x\\x1b[31m"),
        (9, "url", "https://e.org/\\x00x\\x7f"),
        (13, "code", "https://e.org/\\x85"),
    ):
        assert f"{line}: {field}: '{value}' does not match the expected format" in err, err
    assert "9 error(s)" in err


def test_bidirectional_controls_are_refused_and_never_exported(repo, run_tools):
    """U+202E and its kin reorder how text is shown: "Safe \u202eKV" reads as one title and shows as
    another on the site and in references.bib (Trojan Source). validate refuses them; the BibTeX
    export drops any that reach it."""
    from tools.bib import entry_bibtex_text

    title = other("bidi2026entry", "2611.00011").replace(
        "title: The bidi2026entry Entry About Visual Token Pruning",
        'title: "The bidi2026entry \\u202eEntry\\u2069 About Visual Token Pruning"',
    )
    write(repo, "bidi2026entry.yaml", title.replace("- Ada Lovelace", '- "Ada \\u2066Lovelace"'))
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    bidi = "holds the bidirectional control character {} (character {}); expected plain text: remove it"
    assert f"papers/bidi2026entry.yaml:3: title: {bidi.format('U+202E', 19)}" in err, err
    assert f"papers/bidi2026entry.yaml:5: authors[0]: {bidi.format('U+2066', 5)}" in err, err
    exported = entry_bibtex_text({"key": "x2026y", "title": "A \u202eB\u2069 C", "authors": [], "year": 2026})
    assert "\u202e" not in exported and "\u2069" not in exported and "A B C" in exported


def test_yml_files_nested_files_and_symlinks_under_papers_are_errors(repo, run_tools, tmp_path):
    yml = write(repo, "x2026.yml", other("x2026", "2611.00003"))
    nested = write(repo, "sub/nested2026.yaml", other("nested2026", "2611.00004"))
    (tmp_path / "outside.yaml").write_text(other("linked2026", "2611.00005"))
    (repo / "papers" / "linked2026.yaml").symlink_to(tmp_path / "outside.yaml")
    (repo / "papers" / "notes.txt").write_text("scratch\n")
    expected = [
        "papers/x2026.yml:1: entries use the .yaml extension; rename it to papers/x2026.yaml",
        "papers/sub/nested2026.yaml:1: entries belong directly in papers/, not in a sub-folder "
        "(move it to papers/nested2026.yaml)",
        "papers/linked2026.yaml:1: symbolic links are not allowed under papers/; commit the file itself",
        "papers/notes.txt:1: only <key>.yaml entries and paper.schema.json belong in papers/",
    ]
    status, out, err = run_tools(repo, "validate")
    assert status == 1 and all(line in err for line in expected), err
    assert "4 error(s)" in err
    status, out, err = run_tools(repo, "validate", str(yml), str(nested))
    assert status == 1 and expected[0] in err and expected[1] in err and "2 error(s)" in err, err
    status, out, err = run_tools(repo, "validate", str(ROOT / "README.md"))
    assert status == 1 and "README.md:1: not a paper entry: entries are papers/<key>.yaml files" in err, err


def test_keys_that_differ_only_in_case_are_duplicates(repo, run_tools):
    write(repo, "Zeng2026HybridKV.yaml", other("Zeng2026HybridKV", "2611.00006"))
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    assert (
        "papers/zeng2026hybridkv.yaml:2: key: duplicate key (ignoring letter case): same as "
        "papers/Zeng2026HybridKV.yaml:2"
    ) in err, err


def test_symlinks_the_build_would_copy_are_refused(repo, run_tools, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("local secret\n")
    (repo / "docs" / "stylesheets" / "leak.css").symlink_to(secret)
    rendered = own_notebooks(repo) / "_rendered" / "decoding" / "kivi"
    (rendered / "leak.txt").symlink_to(secret)
    (own_results(repo) / "linked.json").symlink_to(secret)
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    for path, folder in (
        ("docs/stylesheets/leak.css", "docs"),
        ("notebooks/_rendered/decoding/kivi/leak.txt", "notebooks"),
        ("reference_impls/results/linked.json", "reference_impls/results"),
    ):
        assert (
            f"{path}:1: symbolic links are not allowed under {folder}/: the build would copy or read the target's "
            "content; commit the file itself"
        ) in err, err
    assert "local secret" not in out + err


@pytest.mark.parametrize(
    "field, value, expected",
    [
        (
            "implementation",
            "tools.site.build",
            "'tools.site.build' does not match the expected format ^reference_impls(\\.[a-z_][a-z0-9_]*)+$",
        ),
        ("implementation", "/etc/passwd", "'/etc/passwd' does not match the expected format ^reference_impls"),
        (
            "notebook",
            "/etc/passwd",
            "'/etc/passwd' does not match the expected format ^notebooks(/[A-Za-z0-9][A-Za-z0-9_-]*)+\\.py$",
        ),
        (
            "notebook",
            "../../../../etc/passwd",
            "'../../../../etc/passwd' does not match the expected format ^notebooks",
        ),
        (
            "notebook",
            "notebooks/../tools/__main__.py",
            "'notebooks/../tools/__main__.py' does not match the expected format ^notebooks",
        ),
    ],
)
def test_taxonomy_paths_stay_inside_their_folders(field, value, expected, repo, run_tools):
    path = repo / "taxonomy" / "efficiency.yaml"
    original = {
        "implementation": "implementation: reference_impls.decoding.kivi\n",
        "notebook": "notebook: notebooks/decoding/kivi.py\n",
    }[field]
    text = path.read_text()
    line = text[: text.index(original)].count("\n") + 1
    path.write_text(text.replace(original, f"{field}: {value}\n", 1))
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    assert f"taxonomy/efficiency.yaml:{line}: stages[2].families[0].children[3].{field}: {expected}" in err, err


def test_results_files_follow_their_schema(repo, run_tools):
    results = own_results(repo)
    good = json.loads((results / "tokens-toyvlm.json").read_text())
    (results / "zz-nan.json").write_text(
        json.dumps({**good, "id": "zz-nan"}, indent=1).replace('"digits": null', '"digits": NaN', 1)
    )
    (results / "zz-command.json").write_text(
        json.dumps({**good, "id": "zz-command", "command": "rm -rf / #"}, indent=1)
    )
    (results / "zz-extra.json").write_text(json.dumps({**good, "id": "zz-extra", "script": "<script>"}, indent=1))
    (results / "zz-name.json").write_text(json.dumps(good, indent=1))
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    nan_line = (results / "zz-nan.json").read_text().split("NaN")[0].count("\n") + 1
    assert (
        f"reference_impls/results/zz-nan.json:{nan_line}: NaN is not a JSON number; write a finite number "
        "(or null for a missing value)"
    ) in err
    assert (
        "reference_impls/results/zz-command.json:4: command: 'rm -rf / #' does not match the expected format "
        "^python -m reference_impls"
    ) in err
    assert "reference_impls/results/zz-extra.json:" in err and "script: unknown field" in err
    assert (
        "reference_impls/results/zz-name.json:2: id: 'tokens-toyvlm' differs from the file name 'zz-name.json'" in err
    )
    assert "4 error(s)" in err


def test_oversized_or_non_utf8_data_files_are_refused_before_they_are_parsed(repo, run_tools):
    """A data file's size bounds the time and memory of validate and the build (a results file of
    100 000 rows took 31 s and 450 MB); bytes that are not UTF-8 are named by line and column."""
    results = own_results(repo)
    good = json.loads((results / "tokens-toyvlm.json").read_text())
    rows = [{"method": f"m{index}", "accuracy": 1.0} for index in range(30000)]
    (results / "zz-huge.json").write_text(json.dumps({**good, "id": "zz-huge", "rows": rows, "plots": []}))
    write(repo, "huge2026entry.yaml", other("huge2026entry", "2611.00008").replace("Pruning", "P" * 1_000_000))
    write(repo, "good2026entry.yaml", GOOD_ENTRY).write_bytes(GOOD_ENTRY.replace("Ada", "Andr\u00e9").encode("latin-1"))
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    too_big = "1: the file holds more than 1,000,000 bytes; split it into smaller files"
    assert f"reference_impls/results/zz-huge.json:{too_big}" in err, err
    assert f"papers/huge2026entry.yaml:{too_big}" in err
    assert "papers/good2026entry.yaml:5: not UTF-8 text (byte 0xe9 at column 7); save the file as UTF-8" in err
    assert "3 error(s)" in err


def test_deeply_nested_files_are_reported_not_a_recursion_error(repo, run_tools):
    """Loading and checking recurse per level of nesting: 600 levels in an entry, or 100 000 in a
    results file, stopped validate with a RecursionError; now each is one problem among the others."""
    write(repo, "deep2026entry.yaml", other("deep2026entry", "2611.00010") + "models: " + "[" * 600 + "]" * 600 + "\n")
    write(repo, "good2026entry.yaml", GOOD_ENTRY.replace("year: 2026", "year: 2026.0"))
    results = own_results(repo)
    good = json.dumps(json.loads((results / "tokens-toyvlm.json").read_text()))
    for name, nested in (
        ("zz-deep", "[" * 100_000 + "]" * 100_000),
        ("zz-row", '{"x": ' + "[" * 900 + "]" * 900 + "}"),
    ):
        text = good.replace('"tokens-toyvlm"', f'"{name}"', 1).replace('"rows": [', f'"rows": [{nested}, ', 1)
        (results / f"{name}.json").write_text(text)
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    assert "papers/deep2026entry.yaml:13: values nested 601 levels deep; at most 32 are read" in err, err
    assert "reference_impls/results/zz-deep.json:1: values nested too deeply to read; at most 32 levels are read" in err
    assert "reference_impls/results/zz-row.json:1: values nested 903 levels deep; at most 32 are read" in err
    assert "papers/good2026entry.yaml:6: year: expected a whole number" in err
    assert "4 error(s)" in err


def test_validate_imports_neither_the_site_code_nor_matplotlib():
    script = (
        "import sys\nfrom tools.__main__ import main\nstatus = main(['validate', '--quiet'])\n"
        "print(status, sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib' or m.startswith('tools.site')))"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().splitlines()[-1] == "0 []", result.stdout + result.stderr
