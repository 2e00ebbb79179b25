"""``validate`` on good data and on bad input: every case names file, line, field and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import GOOD_ENTRY, own_results


def write(repo: Path, name: str, text: str) -> Path:
    path = repo / "papers" / name
    path.write_text(text, encoding="utf-8")
    return path


def test_the_repository_data_validates(run_tools):
    from .conftest import ROOT

    status, out, err = run_tools(ROOT, "validate")
    assert status == 0, err
    assert "0 error(s)" in out


def test_good_entry_passes(repo, run_tools):
    write(repo, "good2026entry.yaml", GOOD_ENTRY)
    status, out, err = run_tools(repo, "validate")
    assert status == 0, err


# Each case: (file name, text, expected "path:line: field: message" fragment).
BAD_ENTRIES = {
    "broken-yaml": (
        "good2026entry.yaml",
        GOOD_ENTRY.replace("placement:\n- prefilling-attention-guided", "placement: [prefilling-attention-guided"),
        "papers/good2026entry.yaml:11: invalid YAML",
    ),
    "float-arxiv-id": (
        "good2026entry.yaml",
        GOOD_ENTRY.replace("arxiv: '2611.00001'", "arxiv: 2401.10"),
        "papers/good2026entry.yaml:8: arxiv: expected a string, but YAML read '2401.10' as a number (2401.1); quote it: \"2401.10\"",
    ),
    "date-object": (
        "good2026entry.yaml",
        GOOD_ENTRY.replace("added: '2026-11-26'", "added: 2026-01-02"),
        "papers/good2026entry.yaml:12: added: expected a string, but YAML read '2026-01-02' as a date object",
    ),
    "unknown-family": (
        "good2026entry.yaml",
        GOOD_ENTRY.replace("- prefilling-attention-guided", "- prefiling-attention-guided"),
        "papers/good2026entry.yaml:11: placement[0]: unknown taxonomy id 'prefiling-attention-guided'; did you mean 'prefilling-attention-guided'?",
    ),
    "missing-title": (
        "good2026entry.yaml",
        GOOD_ENTRY.replace("title: A Perfectly Good Entry About Visual Token Pruning\n", ""),
        "papers/good2026entry.yaml:2: title: required field is missing",
    ),
    "python-object-tag": (
        "good2026entry.yaml",
        GOOD_ENTRY.replace("venue: arXiv", "venue: !!python/object/apply:os.system ['true']"),
        "papers/good2026entry.yaml:7: unsafe or unknown YAML tag refused",
    ),
    "custom-tag": (
        "good2026entry.yaml",
        GOOD_ENTRY.replace("venue: arXiv", "venue: !secret arXiv"),
        "papers/good2026entry.yaml:7: unsafe or unknown YAML tag refused",
    ),
    "wrong-key": (
        "good2026entry.yaml",
        GOOD_ENTRY.replace("key: good2026entry", "key: other2026entry"),
        "papers/good2026entry.yaml:2: key: key 'other2026entry' differs from the file name 'good2026entry.yaml'",
    ),
    "misspelt-field": (
        "good2026entry.yaml",
        GOOD_ENTRY.replace("venue: arXiv", "venu: arXiv"),
        "papers/good2026entry.yaml:7: venu: unknown field; did you mean 'venue'?",
    ),
    "arxiv-with-prefix": (
        "good2026entry.yaml",
        GOOD_ENTRY.replace("arxiv: '2611.00001'", "arxiv: 'arXiv:2611.00001'"),
        "papers/good2026entry.yaml:8: arxiv: 'arXiv:2611.00001' does not match the expected format",
    ),
    "year-as-string": (
        "good2026entry.yaml",
        GOOD_ENTRY.replace("year: 2026", "year: '2026'"),
        "papers/good2026entry.yaml:6: year: '2026' is not of type 'integer'",
    ),
    "empty-placement": (
        "good2026entry.yaml",
        GOOD_ENTRY.replace("placement:\n- prefilling-attention-guided", "placement: []"),
        "papers/good2026entry.yaml:10: placement: [] should be non-empty",
    ),
    "bad-training": (
        "good2026entry.yaml",
        GOOD_ENTRY + "training: sometimes\n",
        "papers/good2026entry.yaml:13: training: 'sometimes' is not one of ['training-free', 'training-aware', 'n/a']",
    ),
    "authors-as-string": (
        "good2026entry.yaml",
        GOOD_ENTRY.replace("authors:\n- Ada Lovelace", "authors: Ada Lovelace and Alan Turing"),
        "papers/good2026entry.yaml:4: authors: 'Ada Lovelace and Alan Turing' is not of type 'array'",
    ),
    "boolean-venue": (
        "good2026entry.yaml",
        GOOD_ENTRY.replace("venue: arXiv", "venue: no"),
        "papers/good2026entry.yaml:7: venue: expected a string, but YAML read 'no' as a boolean",
    ),
    "reported-without-source": (
        "good2026entry.yaml",
        GOOD_ENTRY + "reported:\n- metric: speedup\n  value: 2.0\n  unit: x\n",
        "papers/good2026entry.yaml:14: reported[0].source: required field is missing",
    ),
    "reported-value-text": (
        "good2026entry.yaml",
        GOOD_ENTRY + "reported:\n- metric: speedup\n  value: 2x\n  source: abstract\n",
        "papers/good2026entry.yaml:15: reported[0].value: '2x' is not of type 'number'",
    ),
    "missing-implementation-module": (
        "good2026entry.yaml",
        GOOD_ENTRY + "implementation: reference_impls.decoding.no_such_method\n",
        "papers/good2026entry.yaml:13: implementation: module 'reference_impls.decoding.no_such_method' does not exist",
    ),
    "url-without-scheme": (
        "good2026entry.yaml",
        GOOD_ENTRY.replace("url: https://arxiv.org/abs/2611.00001", "url: arxiv.org/abs/2611.00001"),
        "papers/good2026entry.yaml:9: url: 'arxiv.org/abs/2611.00001' does not match the expected format",
    ),
    "title-with-stray-spacing": (
        "good2026entry.yaml",
        GOOD_ENTRY.replace("title: A Perfectly Good", "title: Good :A Perfectly Good"),
        "papers/good2026entry.yaml:3: title: stray spacing around punctuation; expected 'Good: A Perfectly Good",
    ),
    "empty-file": ("good2026entry.yaml", "", "papers/good2026entry.yaml:1: the file is empty"),
    "list-at-top-level": (
        "good2026entry.yaml",
        "- key: good2026entry\n",
        "papers/good2026entry.yaml:1: expected a mapping of fields at the top level, found list",
    ),
    "repeated-field": (
        "good2026entry.yaml",
        GOOD_ENTRY + "venue: CVPR\n",
        "papers/good2026entry.yaml:13: venue: the key appears twice in one mapping",
    ),
    "bad-date-format": (
        "good2026entry.yaml",
        GOOD_ENTRY.replace("added: '2026-11-26'", "added: '26/11/2026'"),
        "papers/good2026entry.yaml:12: added: '26/11/2026' does not match the expected format",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_bad_entry_is_reported_with_file_line_field(case, repo, run_tools):
    name, text, expected = BAD_ENTRIES[case]
    write(repo, name, text)
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    assert expected in err, err


def test_duplicate_arxiv_id_names_both_files(repo, run_tools):
    write(repo, "good2026entry.yaml", GOOD_ENTRY)
    write(
        repo,
        "copy2026entry.yaml",
        GOOD_ENTRY.replace("good2026entry", "copy2026entry").replace("A Perfectly Good", "Another"),
    )
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    assert "papers/good2026entry.yaml:8: arxiv: duplicate arXiv id: same as papers/copy2026entry.yaml:8" in err


def test_versioned_arxiv_id_is_a_duplicate_of_the_plain_one(repo, run_tools):
    write(repo, "good2026entry.yaml", GOOD_ENTRY)
    write(
        repo,
        "copy2026entry.yaml",
        GOOD_ENTRY.replace("good2026entry", "copy2026entry")
        .replace("A Perfectly Good", "Another")
        .replace("arxiv: '2611.00001'", "arxiv: '2611.00001v2'")
        .replace("abs/2611.00001", "abs/2611.00001v2"),
    )
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    assert "papers/good2026entry.yaml:8: arxiv: duplicate arXiv id: same as papers/copy2026entry.yaml:8" in err
    assert "1 error(s)" in err


def test_duplicate_doi_and_near_duplicate_title(repo, run_tools):
    write(repo, "good2026entry.yaml", GOOD_ENTRY + "doi: 10.1234/abc.5\n")
    other = GOOD_ENTRY.replace("good2026entry", "twin2026entry").replace("2611.00001", "2611.00002")
    other = other.replace(
        "A Perfectly Good Entry About Visual Token Pruning", "A perfectly good entry about visual-token pruning!"
    )
    write(repo, "twin2026entry.yaml", other + "doi: 10.1234/ABC.5\n")
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    assert "twin2026entry.yaml:13: doi: duplicate DOI: same as papers/good2026entry.yaml:13" in err
    assert "twin2026entry.yaml:3: title: duplicate title (near-duplicate): same as papers/good2026entry.yaml:3" in err


def test_every_problem_is_reported_at_once(repo, run_tools):
    write(
        repo,
        "good2026entry.yaml",
        GOOD_ENTRY.replace("arxiv: '2611.00001'", "arxiv: 2401.10").replace("venue: arXiv", "venu: arXiv"),
    )
    write(
        repo,
        "bad2026entry.yaml",
        GOOD_ENTRY.replace("good2026entry", "bad2026entry")
        .replace("2611.00001", "2611.00003")
        .replace("A Perfectly", "Another")
        .replace("year: 2026", "year: soon"),
    )
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    assert err.count("papers/") >= 3
    assert "3 error(s)" in err


def line_of(path: Path, text: str) -> int:
    return path.read_text().splitlines().index(text) + 1


def test_taxonomy_problems(repo, run_tools):
    path = repo / "taxonomy" / "hallucination.yaml"
    original_line = line_of(path, "  - id: hallucination-unlearning")
    clash_line = line_of(path, "  - id: contrastive-decoding")
    text = path.read_text().replace("  - id: contrastive-decoding\n", "  - id: hallucination-unlearning\n", 1)
    text = text.replace(
        "    notebook: notebooks/hallucination/sare.py\n", "    notebook: notebooks/none/missing.py\n", 1
    )
    path.write_text(text)
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    assert (
        f"taxonomy/hallucination.yaml:{clash_line}: id: duplicate taxonomy id 'hallucination-unlearning' "
        f"(also taxonomy/hallucination.yaml:{original_line})"
    ) in err
    assert (
        f"taxonomy/hallucination.yaml:{original_line}: notebook: notebook 'notebooks/none/missing.py' does not exist"
        in err
    )


def test_method_family_without_implementation_field(repo, run_tools):
    path = repo / "taxonomy" / "efficiency.yaml"
    family_line = line_of(path, "          - id: vision-encoders-video")
    lines = path.read_text().splitlines(keepends=True)
    implementation_line = next(
        i for i in range(family_line, len(lines)) if lines[i].strip().startswith("implementation:")
    )
    del lines[implementation_line]
    path.write_text("".join(lines))
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    assert (
        f"taxonomy/efficiency.yaml:{family_line}: stages[0].families[0].children[1].implementation: "
        "required field is missing"
    ) in err
    assert "1 error(s)" in err  # the rest of the taxonomy still loads: no cascade of unknown ids


def test_planned_method_family_is_an_error_but_resource_nodes_are_exempt(repo, run_tools):
    path = repo / "taxonomy" / "efficiency.yaml"
    path.write_text(
        path.read_text().replace("implementation: reference_impls.decoding.kivi\n", "implementation: planned\n", 1)
    )
    family_line = line_of(path, "          - id: kv-bit-level")
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    assert (
        f"taxonomy/efficiency.yaml:{family_line}: implementation: method family 'kv-bit-level' has no implementation "
        "yet (planned); every method family needs one; a node that is not a method family (benchmarks, surveys) "
        "gets `kind: resource` and an `exempt_reason`"
    ) in err
    assert "1 error(s)" in err
    assert "exempt as not methods: efficiency-benchmarks, efficiency-surveys" in err


def test_method_family_without_reproduced_results_is_an_error(repo, run_tools):
    path = repo / "taxonomy" / "hallucination.yaml"
    family = (
        "  - id: post-hoc-probing\n"
        "    name: Post-hoc probing\n"
        "    summary: A second post-hoc family that no benchmark has measured yet.\n"
        "    implementation: reference_impls.hallucination.post_hoc_correction\n"
        "    notebook: notebooks/hallucination/mitigation_families.py\n"
    )
    path.write_text(
        path.read_text().replace("  - id: representation-steering\n", family + "  - id: representation-steering\n", 1)
    )
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    assert (
        f"taxonomy/hallucination.yaml:{line_of(path, '  - id: post-hoc-probing')}: implementation: method family "
        "'post-hoc-probing' has no reproduced results: no reference_impls/results/*.json lists it in its families"
    ) in err


def test_stale_schema_and_nav_are_reported(repo, run_tools):
    schema = repo / "papers" / "paper.schema.json"
    data = json.loads(schema.read_text())
    data["title"] = "edited by hand"
    schema.write_text(json.dumps(data))
    mkdocs = repo / "mkdocs.yml"
    mkdocs.write_text(
        mkdocs.read_text().replace(
            "          - taxonomy/efficiency/decoding/kv-cache-compression/kv-bit-level.md\n", ""
        )
    )
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    assert "papers/paper.schema.json:1: out of date with taxonomy/ (run: python -m tools schema)" in err
    assert (
        "mkdocs.yml:1: nav: nav lacks the taxonomy page "
        "'taxonomy/efficiency/decoding/kv-cache-compression/kv-bit-level.md'; add '- taxonomy/efficiency/decoding/kv-cache-compression/kv-bit-level.md' to mkdocs.yml in the section of "
        "'taxonomy/efficiency/decoding/kv-cache-compression/index.md'"
    ) in err
    assert run_tools(repo, "schema")[0] == 0


def test_validate_paths_reports_only_those_files_but_checks_duplicates_across_all(repo, run_tools):
    write(repo, "good2026entry.yaml", GOOD_ENTRY)
    broken = write(
        repo,
        "broken2026entry.yaml",
        GOOD_ENTRY.replace("good2026entry", "broken2026entry")
        .replace("2611.00001", "2611.00009")
        .replace("A Perfectly", "Broken")
        .replace("year: 2026", "year: x"),
    )
    status, out, err = run_tools(repo, "validate", str(repo / "papers" / "good2026entry.yaml"))
    assert status == 0, err
    dupe = write(
        repo, "dupe2026entry.yaml", GOOD_ENTRY.replace("good2026entry", "dupe2026entry").replace("A Perfectly", "Dupe")
    )
    status, out, err = run_tools(repo, "validate", str(broken))
    assert (
        status == 1
        and "papers/broken2026entry.yaml:6: year: 'x' is not of type 'integer'" in err
        and "good2026entry" not in err
    )
    status, out, err = run_tools(repo, "validate", str(dupe))
    assert (
        status == 1
        and "papers/dupe2026entry.yaml:8: arxiv: duplicate arXiv id: same as papers/good2026entry.yaml:8" in err
    )


def test_missing_schema_hint_is_a_warning(repo, run_tools):
    write(repo, "good2026entry.yaml", GOOD_ENTRY.split("\n", 1)[1])
    status, out, err = run_tools(repo, "validate")
    assert status == 0
    assert (
        "papers/good2026entry.yaml:1: warning: first line should be '# yaml-language-server: $schema=paper.schema.json'"
        in err
    )


def test_new_scaffolds_a_valid_entry_and_refuses_bad_ones(repo, run_tools):
    status, out, err = run_tools(
        repo,
        "new",
        "doe2026new",
        "--title",
        "NewKV :A  New Method",
        "--year",
        "2026",
        "--arxiv",
        "2611.01234",
        "--placement",
        "kv-token-level",
        "--author",
        "Jane Doe",
    )
    assert status == 0, err
    assert (
        (repo / "papers" / "doe2026new.yaml")
        .read_text()
        .startswith("# yaml-language-server: $schema=paper.schema.json\n")
    )
    assert "title: 'NewKV: A New Method'" in (repo / "papers" / "doe2026new.yaml").read_text()
    assert run_tools(repo, "validate")[0] == 0
    status, out, err = run_tools(
        repo, "new", "doe2026bad", "--title", "Bad", "--year", "2026", "--placement", "no-such-family"
    )
    assert status == 1 and "unknown taxonomy id 'no-such-family'" in err
    assert not (repo / "papers" / "doe2026bad.yaml").exists()


def test_bad_results_file_is_reported(repo, run_tools):
    (own_results(repo) / "zz-bad.json").write_text('{"id": "zz-bad",\n "title": "no command"}\n')
    status, out, err = run_tools(repo, "validate")
    assert status == 1
    assert "reference_impls/results/zz-bad.json:1: command: required field is missing" in err
