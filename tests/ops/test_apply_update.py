"""apply_update against the float64 reference (fomo_core.reference), over every kind of input and
output fomo_core takes (see strategies.py), within the tolerance table (tolerances.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from op_checks import OUT_MODES, assert_inputs_unchanged, assert_same_structure, make_out
from strategies import Case, cases, flat_values, untouched_outside
from tolerances import assert_update_close

import fomo_core as fc
from fomo_core import reference as ref


@settings(max_examples=300)
@given(case=cases(), mode=st.sampled_from(OUT_MODES), data=st.data())
def test_apply_update_matches_reference(case: Case, mode: str, data):
    expected = ref.apply_update(case.local, case.candidates, case.weights)
    value = ref.apply_update(case.local, case.candidates, case.weights, rounded=False)
    magnitude = case.magnitude(case.weights)
    before = case.input_bits()
    out, out_placed, out_before = make_out(case, mode, data)

    params = fc.apply_update(case.local, case.candidates, case.weights, out=out)

    if out is not None:
        assert params is out
    assert_same_structure(case, params)
    assert_update_close(
        "params",
        case.dtype,
        case.m,
        flat_values(case.layout, params),
        flat_values(case.layout, expected),
        flat_values(case.layout, value),
        magnitude,
    )
    assert_inputs_unchanged(case, before, in_place=mode == "inplace")
    for p, b in zip(out_placed, out_before):
        assert untouched_outside(p, b), "out was written outside its view"
