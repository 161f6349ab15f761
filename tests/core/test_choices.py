"""The allowed values of the policies' choice fields live in one table (fomo_core.choices): the
fields' type hints are those Literal types, the checks accept exactly their values and name them
when refusing, and the guard and the kernels' norm table agree with them."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal, get_args, get_origin, get_type_hints

import numpy as np
import pytest

import fomo_core as fc
from fomo_core import choices
from fomo_core.choices import Norm, allowed

POLICIES = [fc.ClientPolicy, fc.ServerPolicy]


def _choice_fields(cls: type) -> dict:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if get_origin(hints[f.name]) is Literal}


@pytest.mark.parametrize("cls", POLICIES, ids=lambda c: c.__name__)
def test_every_string_field_of_a_policy_is_typed_by_a_literal_of_the_table(cls):
    fields = _choice_fields(cls)
    string_fields = {f.name for f in dataclasses.fields(cls) if isinstance(f.default, str)}
    assert set(fields) == string_fields
    table = {getattr(choices, name) for name in choices.__all__ if name != "allowed"}
    for name, hint in fields.items():
        assert hint in table, f"{cls.__name__}.{name} is typed by a Literal outside fomo_core.choices"
        default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
        assert default in allowed(hint)


@pytest.mark.parametrize("cls", POLICIES, ids=lambda c: c.__name__)
def test_a_value_outside_the_table_is_refused_naming_the_field_and_every_allowed_value(cls):
    for name, hint in _choice_fields(cls).items():
        listed = ", ".join(repr(v) for v in allowed(hint))
        with pytest.raises(ValueError, match=rf"^{name} must be one of {re.escape(listed)}, got 'nope'$"):
            cls(**{name: "nope"})


def test_each_value_of_the_table_is_accepted():
    # Each value alone on the defaults, except where another field must agree (checked elsewhere:
    # measure="state" needs buffers="moved", self_candidate="trained" needs baseline="last_update",
    # tie="torch_topk" needs selection="top_m").
    needs = {
        ("measure", "state"): {"buffers": "moved"},
        ("self_candidate", "trained"): {"baseline": "last_update"},
        ("tie", "torch_topk"): {"selection": "top_m"},
    }
    for cls in POLICIES:
        for name, hint in _choice_fields(cls).items():
            for value in allowed(hint):
                policy = cls(**{name: value, **needs.get((name, value), {})})
                assert getattr(policy, name) == value


def test_the_norms_of_the_table_are_the_kernels_and_the_guards():
    assert allowed(Norm) == get_args(Norm) == ("l2", "l1")
    assert set(fc._C.NORMS) == set(allowed(Norm))
    x = np.array([3.0, -4.0])
    assert fc.model_norm(x, norm="l2") == 5.0
    assert fc.model_norm(x, norm="l1") == 7.0
    with pytest.raises(ValueError, match=r"^norm must be one of 'l2', 'l1', got 'l3'$"):
        fc.model_norm(x, norm="l3")
