"""An implemented paper's ``code`` link is the repository its module's paper card follows (``Upstream:``)."""

from __future__ import annotations

import ast

import pytest

from tools.catalog import load_catalog
from tools.site.graph import Graph, card_upstream, github_repo, module_file
from tools.site.implementations import discover_modules

from .conftest import ROOT

# Entry key -> the card's Upstream, for cards that follow a repository that is not the paper's own
# code; there the entry's code link (if any) names the paper's repository, which rightly differs.
NOT_THE_PAPERS_CODE = {
    # HA-DPO's card follows the DPO reference trainer (its preference loss), not HA-DPO's own code.
    "hallucinations-enhancing-lvlms-through-2023": "eric-mitchell/direct-preference-optimization",
}


def _card(module: str) -> str:
    path = module_file(ROOT, module)
    assert path is not None, module
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""


@pytest.fixture(scope="module")
def linked() -> list[tuple[str, str | None, str, str | None]]:
    """(entry key, entry code, module, the card's Upstream owner/repo) for every implemented paper."""
    catalog = load_catalog(ROOT)
    assert not catalog.errors
    graph = Graph(catalog, discover_modules(ROOT), [], [])
    entries = catalog.by_key()
    return [
        (key, entries[key].data.get("code"), module, card_upstream(_card(module)))
        for key, modules in sorted(graph.modules_of_entry.items())
        for module in modules
    ]


def test_card_upstream_and_github_repo_parse_owner_and_repo():
    card = "Ada-KV: ...\n\nPaper: arXiv 2407.11550\nUpstream: FFY0/AdaKV adaptive_snapkv/monkeypatch/x.py @ 1bac\n"
    assert card_upstream(card) == "FFY0/AdaKV"
    assert card_upstream("Upstream: none public.") is None
    assert card_upstream("Upstream: GA and NPO follow licong-lin/negative-preference-optimization") is None
    assert card_upstream("Related: FFY0/AdaKV\n") is None
    assert github_repo("https://github.com/42Shawn/LLaVA-PruMerge") == "42Shawn/LLaVA-PruMerge"
    assert github_repo("https://github.com/khanrc/honeybee?tab=readme-ov-file") == "khanrc/honeybee"
    assert github_repo("https://github.com/FFY0/AdaKV.git") == "FFY0/AdaKV"
    assert github_repo("https://gitlab.com/a/b") is None


def test_code_link_is_the_repository_the_card_follows(linked):
    """Where a card names its upstream repository, the entry links that repository as its code (a missing
    link counts as a disagreement: the card already knows the authors' code)."""
    assert len(linked) >= 25  # the real repository, not an empty graph
    wrong = []
    for key, code, module, upstream in linked:
        if upstream is None or NOT_THE_PAPERS_CODE.get(key) == upstream:
            continue
        repo = github_repo(code) if code else None
        if repo is None or repo.casefold() != upstream.casefold():
            wrong.append(f"{key}: code {code!r}, but {module}'s card follows {upstream}")
    assert not wrong, "\n".join(wrong)


def test_every_exception_is_still_needed(linked):
    """An exception names the card's current Upstream, so a card that changes cannot hide behind it."""
    upstreams = {key: upstream for key, _, _, upstream in linked}
    for key, upstream in NOT_THE_PAPERS_CODE.items():
        assert upstreams.get(key) == upstream, key
