"""Method packages: API pages for ``pkg/__init__.py``, and the package README on the family page."""

from __future__ import annotations

from pathlib import Path

from tools.site.build import generate_pages
from tools.site.implementations import discover_modules, package_design_md

from .conftest import make_repo

README = """\
# Fake OLB: design

Intro with a [link to section 2](#2-the-second-part), a [module](banks.py), a
[module in a sub-package](sub/__init__.py#anchor), [a data file](notes.txt) and
[the paper](https://arxiv.org/abs/2611.00001).

## 1. Banks

Text under section 1.

```python
# a comment in a code block is not a heading
x = 1
```

### 1.1 Details

## 2. The second part

Back to [1](#1-banks).
"""


def _fake_package(stage: Path) -> None:
    package = stage / "fakeolb"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text('"""Fake OLB: a method package for the site tests.\n\nMore text.\n"""\n')
    (package / "banks.py").write_text('"""Banks of the fake method."""\n')
    (package / "_private.py").write_text('"""Not public."""\n')
    (package / "sub" / "__init__.py").write_text('"""A sub-package."""\n')
    (package / "README.md").write_text(README)


def test_packages_get_api_pages_and_their_readme_renders_as_a_section(tmp_path):
    root = tmp_path / "repo"
    stage = root / "reference_impls" / "continual_ad"
    stage.mkdir(parents=True)
    (root / "reference_impls" / "__init__.py").write_text('"""Root."""\n')
    (stage / "__init__.py").write_text('"""Stage."""\n')
    _fake_package(stage)
    modules = discover_modules(root)
    assert modules["reference_impls.continual_ad.fakeolb"] == "Fake OLB: a method package for the site tests."
    assert "reference_impls.continual_ad.fakeolb.banks" in modules
    assert "reference_impls.continual_ad.fakeolb.sub" in modules
    assert not any("__init__" in name or "_private" in name for name in modules)

    page = "taxonomy/continual-ad/parameter-isolation.md"
    text = "\n".join(package_design_md(root, "reference_impls.continual_ad.fakeolb", page))
    heading = (
        "## Design of `reference_impls.continual_ad.fakeolb` {#design-reference-impls-continual-ad-fakeolb "
        'data-search-exclude=""}'
    )  # the design is long: kept out of the search index
    assert text.startswith(heading)
    assert "# Fake OLB: design" not in text  # the title gives way to the section heading
    assert "\n### 1. Banks\n" in text and "\n#### 1.1 Details\n" in text and "\n### 2. The second part\n" in text
    assert "# a comment in a code block is not a heading" in text and "## a comment" not in text
    assert "[link to section 2](#2-the-second-part)" in text and "[1](#1-banks)" in text  # same ids on the page
    assert "[module](../../implementations/reference_impls.continual_ad.fakeolb.banks.md)" in text
    assert "[module in a sub-package](../../implementations/reference_impls.continual_ad.fakeolb.sub.md)" in text
    assert "[the paper](https://arxiv.org/abs/2611.00001)" in text
    assert "a data file" in text and "notes.txt" not in text  # no page on the site: the text stays, the link goes
    assert package_design_md(root, "reference_impls.continual_ad.fakeolb.banks", page) == []  # a module has no README


def _mirror_with_fake_package(repo: Path) -> None:
    """Replace the sandbox's ``reference_impls`` link by a mirror that adds ``continual_ad.fakeolb``."""
    link = repo / "reference_impls"
    real = link.resolve()
    link.unlink()
    link.mkdir()
    for child in real.iterdir():
        if child.name not in ("continual_ad", "__pycache__"):
            (link / child.name).symlink_to(child, target_is_directory=child.is_dir())
    stage = link / "continual_ad"
    stage.mkdir()
    for child in (real / "continual_ad").iterdir():
        if child.name != "__pycache__":
            (stage / child.name).symlink_to(child, target_is_directory=child.is_dir())
    _fake_package(stage)


def test_family_page_shows_the_package_readme(tmp_path):
    repo = make_repo(tmp_path / "repo")
    _mirror_with_fake_package(repo)
    taxonomy = repo / "taxonomy" / "continual-ad.yaml"
    text = taxonomy.read_text()
    listed = "      - reference_impls.continual_ad.hfolb\n"
    assert listed in text
    taxonomy.write_text(text.replace(listed, listed + "      - reference_impls.continual_ad.fakeolb\n"))
    assert generate_pages(repo, execute_notebooks=False) == 0
    docs = repo / "docs"
    family = (docs / "taxonomy" / "continual-ad" / "parameter-isolation.md").read_text()
    assert (
        '## Design of `reference_impls.continual_ad.fakeolb` {#design-reference-impls-continual-ad-fakeolb data-search-exclude=""}'
        in family
    )
    assert "Text under section 1." in family and "\n### 2. The second part\n" in family
    assert "[design](#design-reference-impls-continual-ad-fakeolb)" in family  # linked from the module list
    assert family.index("## Design of") < family.index("## Papers (")
    assert (docs / "implementations" / "reference_impls.continual_ad.fakeolb.md").is_file()
    # The real HybridKV package shows its README on the head-level family page.
    head_level = docs / "taxonomy" / "efficiency" / "decoding" / "kv-cache-compression" / "kv-head-level.md"
    head_level = head_level.read_text()
    assert "## Design of `reference_impls.decoding.hybridkv`" in head_level
    assert "\n#### 4.5 Stage 3b: dynamic heads, chunk-wise retrieval\n" in head_level
