"""BibTeX: export -> import -> export is lossless on the fields we keep; import de-duplicates."""

from __future__ import annotations

import re

import bibtexparser
import pytest

from tools.bib import BibImportError, bibtex_to_entries, entries_to_bibtex
from tools.catalog import load_catalog

from .conftest import ROOT

KEPT = ("key", "title", "authors", "authors_truncated", "year", "venue", "arxiv", "doi", "url")


def kept_fields(data: dict) -> dict:
    return {name: data[name] for name in KEPT if data.get(name) not in (None, "", [], False)}


def test_round_trip_of_every_entry_is_lossless():
    entries = [entry.data for entry in load_catalog(ROOT).entries]
    text = entries_to_bibtex(entries)
    imported = bibtex_to_entries(text)
    assert len(imported) == len(entries)
    by_key = {data["key"]: data for data in imported}
    for data in entries:
        assert kept_fields(by_key[data["key"]]) == kept_fields(data), data["key"]
    assert entries_to_bibtex(imported) == text


def test_hard_titles_and_names_survive():
    tricky = {
        "key": "x2026tricky",
        "title": "R&D of ViT-L/14 at 100% — LLaVA_1.5 #tokens",
        "authors": ["José Ñúñez", "Jean-Luc van der Berg"],
        "authors_truncated": True,
        "year": 2026,
        "venue": "NeurIPS",
        "doi": "10.1000/xyz_1",
        "url": "https://example.org/a_b",
    }
    text = entries_to_bibtex([tricky])
    assert r"R\&D" in text and "{ViT}" in text and "and others" in text and "booktitle = {NeurIPS}" in text
    assert kept_fields(bibtex_to_entries(text)[0]) == kept_fields(tricky)


COMMON_SHAPES = """
% Shapes seen in the "please cite" sections of public lists (synthetic entries).
@misc{alpha2026survey,
  title={A Survey of Something: Bottlenecks and Prospects},
  author={Ann Able and Ben Baker and Cy Cole},
  year={2026}, eprint={2604.00001}, archivePrefix={arXiv}, primaryClass={cs.CL},
  url={https://arxiv.org/abs/2604.00001},
}
@article{beta2025token,
  title={Token Reduction Should Go Somewhere--From Vision to Language},
  author={Kong, Zed and Li, Yan and van der Berg, Jan},
  journal={arXiv preprint arXiv:2505.00002},
  year={2026}
}
@article{gamma2026journal,
  title={A Journal Paper},
  author={Dee Dunn},
  journal={Transactions on Machine Learning Research},
  year={2026},
}
"""


def test_import_reads_common_bibtex_shapes():
    entries = {data["key"]: data for data in bibtex_to_entries(COMMON_SHAPES)}
    survey = entries["alpha2026survey"]
    assert survey["arxiv"] == "2604.00001" and survey["venue"] == "arXiv" and survey["authors"][0] == "Ann Able"
    beta = entries["beta2025token"]
    assert beta["authors"] == ["Zed Kong", "Yan Li", "Jan van der Berg"]  # "Last, First" becomes "First Last"
    assert beta["arxiv"] == "2505.00002" and beta["venue"] == "arXiv"  # from "arXiv preprint arXiv:..."
    assert entries["gamma2026journal"]["venue"] == "Transactions on Machine Learning Research"


def test_import_tidies_the_stray_spacing_of_arxiv_titles():
    text = "@misc{chu2023, title={{MobileVLM} :A Fast,  Strong Assistant}, year={2023}}"
    assert bibtex_to_entries(text)[0]["title"] == "MobileVLM: A Fast, Strong Assistant"


@pytest.mark.parametrize(
    "text, message",
    [
        ("@article{a, title={x}\n@article{b, title={y}, year={2020}}", "<string>:1:"),
        ("@misc{a, title={x}, year={2020}}\n@misc{a, title={y}, year={2021}}", "Duplicate"),
        ("@misc{a, title={x}, title={z}, year={2020}}", "Duplicate field"),
        ("@misc{a, title={No year}}", "<string>:1: a: an entry needs a title and a numeric year"),
        # The LaTeX decoder recurses per brace level: this was a RecursionError traceback.
        (
            "@misc{ok, title={Fine}, year={2020}}\n@misc{deep,\n title={"
            + "{" * 3000
            + "x"
            + "}" * 3000
            + "},\n year={2020}}",
            "<string>:2: deep: title: braces nested 3000 deep; at most 32 are read",
        ),
    ],
)
def test_bad_bibtex_is_refused_with_its_line(text, message):
    with pytest.raises(BibImportError, match=message.replace("(", r"\(")):
        bibtex_to_entries(text)


def test_bib_import_command_skips_known_papers_and_writes_new_ones(repo, run_tools, tmp_path):
    bib = tmp_path / "mine.bib"
    bib.write_text(
        "@inproceedings{someone2025hybrid, title={{HybridKV}: Hybrid {KV} Cache Compression for Efficient Multimodal Large Language Model Inference},"
        " author={Zeng, Bowen}, booktitle={Somewhere}, year={2026}}\n"
        "@misc{doe2026fresh, title={A Fresh Paper on Visual Tokens}, author={Doe, Jane and others}, year={2026}, eprint={2611.04321}, archivePrefix={arXiv}}\n"
    )
    status, out, err = run_tools(repo, "bib", "import", str(bib), "--placement", "prefilling-token-compression")
    assert status == 0, err
    assert "skipped someone2025hybrid: already in the catalog as zeng2026hybridkv" in out
    new = (repo / "papers" / "doe2026fresh.yaml").read_text()
    assert "authors_truncated: true" in new and "arxiv: '2611.04321'" in new
    assert run_tools(repo, "validate")[0] == 0
    status, out, err = run_tools(repo, "bib", "import", str(bib), "--placement", "no-such-node")
    assert status == 1 and "unknown taxonomy id" in err


def test_bib_export_command_writes_every_entry(repo, run_tools, tmp_path):
    out_file = tmp_path / "all.bib"
    status, out, err = run_tools(repo, "bib", "export", "--out", str(out_file))
    assert status == 0, err
    assert out_file.read_text().count("\n@") + 1 == len(list((repo / "papers").glob("*.yaml")))


HOSTILE_TITLES = [
    "Closes } the field, note = {injected}, url = {https://evil.example}",
    'X} @misc{evil2026, title={Injected}, year={2026}} @preamble{"\\immediate\\write18{touch pwned-marker}"} {',
    "\\input{/etc/passwd} and \\immediate\\write18{rm -rf x}",
    "Unbalanced {{{ and }}} and \\ and ~ ^ $math$ 50% #1 a_b R&D",
    'Quotes " and @string{s = "x"} and @comment{ and -- or --- dashes, ``quoted\'\'',
    "Ünïcödé — ✓ 中文 {ViT} LLaVA-1.5",
]


def test_hostile_titles_export_to_exactly_one_entry_each_and_come_back_unchanged():
    entries = [
        {
            "key": f"hostile2026t{index}",
            "title": title,
            "authors": ["Eve } Evil", "Mal {Lory"],
            "year": 2026,
            "venue": "Conf } @x{",
            "url": "https://example.org/x",
        }
        for index, title in enumerate(HOSTILE_TITLES)
    ]
    text = entries_to_bibtex(entries)
    library = bibtexparser.parse_string(text)
    assert [type(block).__name__ for block in library.blocks] == ["Entry"] * len(entries)
    assert library.failed_blocks == [] and library.preambles == [] and library.strings == [] and library.comments == []
    for data, entry in zip(entries, library.entries):
        assert entry.key == data["key"]
        assert sorted(entry.fields_dict) == ["author", "booktitle", "title", "url", "year"]
        assert entry.fields_dict["url"].value == "https://example.org/x"
    assert "\\immediate" not in text.replace("\\textbackslash{}immediate", "")
    assert [kept_fields(data) for data in bibtex_to_entries(text)] == [kept_fields(data) for data in entries]


def test_export_drops_control_characters_from_every_field():
    controls = "".join(chr(code) for code in [*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F, *range(0x80, 0xA0)])
    data = {
        "key": "ctl2026",
        "title": f"Token{controls} Pruning",
        "authors": [f"Ann{controls} Bee"],
        "year": 2026,
        "venue": f"Conf{controls}",
    }
    text = entries_to_bibtex([data])
    assert not re.search("[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f]", text), repr(text)
    [back] = bibtex_to_entries(text)
    assert (back["title"], back["authors"], back["venue"]) == ("Token Pruning", ["Ann Bee"], "Conf")


def test_export_refuses_a_value_with_unbalanced_braces():
    data = {"key": "x2026", "title": "T", "authors": [], "year": 2026, "venue": "arXiv", "url": "https://e.org/}"}
    with pytest.raises(
        ValueError, match=r"refusing to export x2026: field url has unbalanced braces: 'https://e.org/\}'"
    ):
        entries_to_bibtex([data])


def test_import_decodes_latex_to_unicode():
    text = (
        r"""@misc{m2026, title={{ViT} f{\"u}r {\AA}ngstr{\"o}m: 100\% \& more},"""
        r"""author={M{\"u}ller, J{\"o}rg and S{\o}ren Kierkegaard and Fran{\c{c}}ois Caf\'e}, year={2026}}"""
    )
    data = bibtex_to_entries(text)[0]
    assert data["title"] == "ViT für Ångström: 100% & more"
    assert data["authors"] == ["Jörg Müller", "Søren Kierkegaard", "François Café"]


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "\n@article{broken2026, title={x}\n@article{b, title={y}, year={2020}}",
            "<string>:2: broken2026: cannot parse this entry: Unexpected block start: `@article`. "
            "Was still looking for field-value closing `,` or `}`",
        ),
        (
            "@misc{a, title={x}, year={2020}}\n@misc{a, title={y}, year={2021}}",
            "<string>:2: a: cannot parse this entry: Duplicate entry key 'a'",
        ),
        (
            "@misc{a2026, title={x}, title={z}, year={2020}}",
            "<string>:1: a2026: cannot parse this entry: Duplicate field keys on entry: 'title'.",
        ),
    ],
)
def test_parse_errors_name_line_key_and_reason(text, message):
    with pytest.raises(BibImportError) as error:
        bibtex_to_entries(text)
    assert str(error.value) == message
