"""The mitigation families are registered under their taxonomy ids."""

from __future__ import annotations

import pytest

from reference_impls.registry import get_method

EXPECTED = {
    "vcd": "contrastive-decoding",
    "pai": "attention-intervention",
    "dpo": "preference-optimization",
    "self-check-correction": "post-hoc-correction",
    "steering": "representation-steering",
    "grounded-tuning": "grounded-instruction-tuning",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registered_with_family_and_kind(name):
    spec = get_method(name)
    assert spec.family == EXPECTED[name] and spec.kind == "hallucination"
    assert spec.target.__doc__ and spec.target.__module__.startswith("reference_impls.hallucination.")
