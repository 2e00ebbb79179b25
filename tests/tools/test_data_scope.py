"""Scope rules the catalog itself must keep (CONTRIBUTING.md, "Scope")."""

from __future__ import annotations

import re

from tools.catalog import load_catalog

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
