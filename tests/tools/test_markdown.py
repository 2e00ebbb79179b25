"""Text from the data stays text: rendered with the site's own Markdown extensions, nothing becomes
a block, raw HTML, a snippet include or a non-http link."""

from __future__ import annotations

import html
import re

import markdown
import pytest
import yaml

from tools.site import markdown as md

from .conftest import ROOT

HOSTILE = [
    "X\r\r::: tools.sandbox\r\r",
    'X\r\n\r\n??? note "open"\r\n    hidden\r\n',
    'X\n\n=== "Tab"\n\n    tabbed\n',
    "X\u2028!!! warning\u2029    admonition",
    "- a list\n* star list\n+ plus list\n1. ordered",
    "# heading\nsetext\n===\nother\n---",
    "```python\nimport os\n```",
    "    indented code",
    '--8<-- "SECRET.txt"',
    ";--8<-- 'SECRET.txt'",
    "<script>alert(1)</script><div markdown>*x*</div>",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "[x](javascript:alert(1)) ![img](http://evil.example/x.png) <http://auto.link>",
    "{: .evil onclick=x } [^1] [ref]: http://x",
    "a~b=c?d:e `code` *em* **strong** \\ escaped",
    "\t\v\f\x00\x1b text with controls",
    "::: os",
    "[x](javascript:alert%281%29) [y](JavaScript:x) [d](data:text/html;base64,PHNjcmlwdD4=) [f](file:///etc/passwd)",
]


@pytest.fixture(scope="module")
def render(tmp_path_factory):
    """Python-Markdown with the extensions and settings of mkdocs.yml; snippets may read only SECRET.txt."""
    base = tmp_path_factory.mktemp("snippets")
    (base / "SECRET.txt").write_text("the secret content\n")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    extensions, settings = [], {}
    for item in config["markdown_extensions"]:
        name, options = next(iter(item.items())) if isinstance(item, dict) else (item, {})
        extensions.append(name)
        settings[name] = dict(options or {})
    if "pymdownx.snippets" in settings:
        settings["pymdownx.snippets"]["base_path"] = [str(base)]  # a folder, so an include would work if reached
    converter = markdown.Markdown(extensions=extensions, extension_configs=settings)

    def run(source: str) -> str:
        converter.reset()
        return converter.convert(source)

    return run


def visible(page: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", page))).strip()


def tags(page: str) -> list[str]:
    return sorted(set(re.findall(r"<([a-zA-Z0-9]+)", page)))


@pytest.mark.parametrize("value", HOSTILE)
def test_text_is_one_inert_paragraph_at_the_start_of_a_line(value, render):
    source = md.text(value)
    assert "\n" not in source and "\r" not in source and ":::" not in source  # mkdocstrings blocks start with ":::"
    page = render(source + "\n")
    assert tags(page) == ["p"], page
    assert visible(page) == re.sub(r"\s+", " ", md.one_line(value)).strip()
    assert "secret content" not in page


@pytest.mark.parametrize("value", HOSTILE)
def test_text_in_a_table_cell_and_a_heading_stays_text(value, render):
    page = render(f"# {md.text(value)}\n\n" + md.table(["A", "B"], [[md.text(value), "x"]]) + "\n")
    assert tags(page) == ["a", "h1", "table", "tbody", "td", "th", "thead", "tr"], page  # "a": the heading permalink


@pytest.mark.parametrize("value", HOSTILE)
def test_restricted_markdown_keeps_only_inline_markup(value, render):
    page = render(md.restricted(value) + "\n")
    assert set(tags(page)) <= {"p", "em", "strong", "code", "a"}, page
    assert "secret content" not in page and "<script" not in page
    assert all(link.startswith(("http://", "https://")) for link in re.findall(r'href="([^"]*)"', page))


def test_restricted_markdown_renders_its_inline_syntax(render):
    page = render(
        md.restricted(
            'A *b* **c** `d <e>` [f](https://example.org/g_h?x=1) [i](http://j.example)\n\nNext `--8<-- "SECRET.txt"`.'
        )
    )
    assert page == (
        '<p>A <em>b</em> <strong>c</strong> <code>d &lt;e&gt;</code> <a href="https://example.org/g_h?x=1">f</a> '
        '<a href="http://j.example">i</a></p>\n<p>Next <code>--8&lt;-- "SECRET.txt"</code>.</p>'
    ), page


def test_code_shows_any_command_verbatim(render):
    command = "python -m x --arg '`<script>`' ``double`` $(id)\n--8<-- \"SECRET.txt\""
    page = render(f"Reproduced with {md.code(command)}.\n")
    assert tags(page) == ["code", "p"]
    assert visible(page) == "Reproduced with " + md.one_line(command) + "."


def test_snippets_can_include_only_contributing(tmp_path):
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    options = next(
        item["pymdownx.snippets"]
        for item in config["markdown_extensions"]
        if isinstance(item, dict) and "pymdownx.snippets" in item
    )
    assert options["base_path"] == ["CONTRIBUTING.md"] and options["restrict_base_path"] and options["check_paths"]
    (tmp_path / "CONTRIBUTING.md").write_text("how to contribute\n")
    (tmp_path / "other.txt").write_text("other file\n")
    (tmp_path / "link.md").symlink_to(tmp_path / "other.txt")
    converter = markdown.Markdown(
        extensions=["pymdownx.snippets"],
        extension_configs={
            "pymdownx.snippets": {**options, "base_path": [str(tmp_path / "CONTRIBUTING.md")], "check_paths": False}
        },
    )
    assert "how to contribute" in converter.convert('--8<-- "CONTRIBUTING.md"')
    for name in ("other.txt", "link.md", "../other.txt", str(tmp_path / "other.txt")):
        converter.reset()
        assert "other file" not in converter.convert(f'--8<-- "{name}"'), name


@pytest.mark.parametrize("value", HOSTILE)
def test_linked_text_links_only_http_urls_and_stays_in_its_table_cell(value, render):
    page = render(md.table(["Source"], [[md.linked_text(value)]]) + "\n")
    assert tags(page) == [t for t in ["a", "table", "tbody", "td", "th", "thead", "tr"] if t != "a" or "http" in value]
    assert all(href.startswith("http") for href in re.findall(r'href="([^"]*)"', page))
    assert "secret content" not in page


def test_linked_text_shows_a_long_url_as_its_host():
    value = "abstract (https://arxiv.org/html/2510.19496v1), README https://github.com/a/b|c, see https://x.org/p."
    page = md.linked_text(value)
    assert "[arxiv\\.org](https://arxiv.org/html/2510.19496v1)" in page
    assert "[github\\.com](https://github.com/a/b)\\|c" in page  # a pipe is not part of a URL
    assert page.endswith("[x\\.org](https://x.org/p)\\.")  # nor is a sentence's full stop
    assert md.linked_text("Table 3 of the paper") == md.text("Table 3 of the paper")


# Every C0 and C1 control character (tab aside): HTML has no use for them, and some terminals and
# parsers act on them (an escape sequence, a NUL).
CONTROLS = "".join(chr(code) for code in [*range(0x09), *range(0x0A, 0x20), 0x7F, *range(0x80, 0xA0)])


@pytest.mark.parametrize("helper", [md.text, md.one_line, md.restricted, md.code, md.linked_text, md.cell])
def test_no_control_character_reaches_a_page(helper):
    shown = helper(f"a{CONTROLS}b https://example.org/x{CONTROLS}")
    assert not re.search("[\x00-\x08\x0a-\x1f\x7f-\x9f]", shown), repr(shown)


def test_strong_text_closes_at_the_nearest_pair_of_stars():
    """Strong text never spans a "**" (as in CommonMark, the closer pairs with the nearest opener). This
    is also what keeps restricted() linear: an unclosed "**" looks only as far as the next one, where it
    used to look to the end of the paragraph for each "**" (quadratic: minutes for a long notes field)."""
    assert md.restricted("**a **b c**") == "\\*\\*a **b c**"
    assert md.restricted("x **bold *em* text** y") == "x **bold *em* text** y"
    assert md.restricted("**a " * 3) == "\\*\\*a \\*\\*a \\*\\*a"
