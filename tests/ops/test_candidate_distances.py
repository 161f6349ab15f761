"""candidate_distances against the float64 reference (fomo_core.reference), over every kind of input
fomo_core takes (see strategies.py), within the tolerance table (tolerances.py)."""

from __future__ import annotations

from hypothesis import given, settings
from op_checks import F64, assert_inputs_unchanged, assert_vector_type
from strategies import Case, cases
from tolerances import assert_vector_close, distance_rtol

import fomo_core as fc
from fomo_core import reference as ref


@settings(max_examples=300)
@given(case=cases())
def test_candidate_distances_match_reference(case: Case):
    before = case.input_bits()
    got = fc.candidate_distances(case.local, case.candidates, norm=case.norm)
    expected = ref.candidate_distances(case.local, case.candidates, norm=case.norm)
    assert_vector_type(case, got, F64)
    assert_vector_close("distances", got, expected, distance_rtol(case.num_elements, case.dtype))
    assert_inputs_unchanged(case, before)
