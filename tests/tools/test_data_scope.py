"""Scope rules the catalog itself must keep (CONTRIBUTING.md, "Scope")."""

from __future__ import annotations

import re

from tools.catalog import load_catalog
from tools.yamlio import load_yaml

from .conftest import ROOT

CONTINUAL_AD_METHOD_FAMILIES = {"continual-replay", "continual-regularization", "parameter-isolation"}


def continual_ad_entries_off_topic(entries) -> list[str]:
    """Keys placed in a continual-AD method family whose title names neither anomalies nor defects."""
    return sorted(
        entry.data["key"]
        for entry in entries
        if CONTINUAL_AD_METHOD_FAMILIES & set(entry.data["placement"])
        and not re.search(r"anomal|defect", entry.data["title"], re.IGNORECASE)
    )


def test_continual_ad_method_families_hold_anomaly_detection_papers_only():
    # Generic continual-learning methods belong under anomaly-foundations (when a baseline builds
    # on them) or out of the catalog.
    catalog = load_catalog(ROOT)
    assert continual_ad_entries_off_topic(catalog.entries) == []


def placements_differing_from_reviewed(entries, overrides: dict[str, list[str]]) -> list[str]:
    """Keys whose placement in papers/ is not the reviewed one in import_map's overrides."""
    return sorted(
        entry.data["key"]
        for entry in entries
        if entry.data["key"] in overrides and sorted(entry.data["placement"]) != sorted(overrides[entry.data["key"]])
    )


def test_reviewed_placements_in_the_import_map_match_the_catalog():
    # A re-import must not undo a reviewed placement (import_map overrides win over the TSV's labels),
    # so a placement changed in papers/ is changed in the overrides too, and the other way round.
    catalog = load_catalog(ROOT)
    overrides = load_yaml(ROOT / "tools" / "import_map.yaml").data["overrides"]
    assert placements_differing_from_reviewed(catalog.entries, overrides) == []
