"""Every field of the reconstructed methods' configurations carries a docstring (the line after it)."""

from __future__ import annotations

import ast
import dataclasses
import inspect

import pytest

from reference_impls.continual_ad.hfolb import HFOLB
from reference_impls.continual_ad.learner import TrainConfig
from reference_impls.hallucination.base import UnlearningMethod
from reference_impls.hallucination.sare import SARE
from reference_impls.hallucination.terms import Term
from reference_impls.hallucination.trainer import SAMConfig, TrainerConfig

CONFIGS = [HFOLB, SARE, SAMConfig, TrainerConfig, UnlearningMethod, Term, TrainConfig]


def _documented_fields(cls: type) -> set[str]:
    body = ast.parse(inspect.getsource(cls)).body[0].body
    return {
        stmt.target.id
        for stmt, after in zip(body, body[1:])
        if isinstance(stmt, ast.AnnAssign)
        and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant)
        and isinstance(after.value.value, str)
    }


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda cls: cls.__name__)
def test_every_field_is_documented(cls):
    own = {f.name for f in dataclasses.fields(cls) if f.name in cls.__dict__.get("__annotations__", {})}
    assert own and own <= _documented_fields(cls), sorted(own - _documented_fields(cls))


def test_sare_holds_one_sam_config_instead_of_its_fields():
    sare_fields = {f.name for f in dataclasses.fields(SARE)}
    assert "sam" in sare_fields and not sare_fields & {f.name for f in dataclasses.fields(SAMConfig)}
