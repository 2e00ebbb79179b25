"""The registry, the taxonomy and the method modules agree with each other."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from reference_impls.registry import KINDS, all_methods, register
from tools.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[1]
TAXONOMY = load_catalog(ROOT, check_schema_file=False).taxonomy
METHODS = all_methods()


@pytest.mark.parametrize("spec", METHODS, ids=[spec.name for spec in METHODS])
def test_method_belongs_to_a_method_family_that_points_at_its_module(spec):
    assert spec.kind in KINDS
    node = TAXONOMY.by_id.get(spec.family)
    assert node is not None, f"{spec.name}: unknown family {spec.family!r}"
    assert node.is_leaf_method, f"{spec.name}: {spec.family!r} is not a leaf method family"
    assert spec.module in node.implementations, f"taxonomy family {spec.family!r} does not list {spec.module}"


@pytest.mark.parametrize("spec", METHODS, ids=[spec.name for spec in METHODS])
def test_method_module_opens_with_a_paper_card(spec):
    doc = importlib.import_module(spec.module).__doc__ or ""
    assert len(doc.strip().splitlines()) >= 3, f"{spec.module} has no paper card docstring"
    assert re.search(r"arXiv \d{4}\.\d{4,5}|[Bb]aseline|[Aa]nalysis", doc), f"{spec.module}: paper card lacks 'Paper:'"
    upstream = re.search(r"^Upstream:(.*?)(?:\n\s*\n|\Z)", doc, re.S | re.M)
    assert upstream, f"{spec.module}: paper card lacks an 'Upstream:' paragraph (repository, path, commit, or 'none')"
    cited = re.search(r"\b[0-9a-f]{40}\b", upstream.group(1))
    assert cited or re.match(r"\s*none", upstream.group(1), re.IGNORECASE), (
        f"{spec.module}: 'Upstream:' must name the full 40-hex commit read, or say 'none' and why"
    )
    assert "Deviation" in doc, f"{spec.module}: paper card lacks its Deviations section"


def test_registering_twice_under_one_name_fails():
    from reference_impls import registry

    @register("registry-test-method", family="kv-token-level", kind="kv-cache")
    class First:
        pass

    with pytest.raises(ValueError, match="registered twice"):

        @register("registry-test-method", family="kv-token-level", kind="kv-cache")
        class Second:
            pass

    with pytest.raises(ValueError, match="unknown method kind"):
        register("x", family="kv-token-level", kind="magic")
    registry._REGISTRY.pop("registry-test-method")
