"""fomo_step and its front doors (first_order_scores, compute_weights) against the float64 reference
(fomo_core.reference), over every kind of input fomo_core takes (see strategies.py), within the
tolerance table (tolerances.py); and the fused step against its parts, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from op_checks import BOOL, F64, OUT_MODES, assert_inputs_unchanged, assert_same_structure, assert_vector_type, make_out
from strategies import DTYPES, Case, ModelLayout, assemble, bits, cases, flat_values, place_leaf, untouched_outside
from tolerances import assert_update_close, assert_vector_close, distance_rtol, score_rtol, weight_rtol

import fomo_core as fc
from fomo_core import reference as ref


@settings(max_examples=300)
@given(case=cases())
def test_first_order_scores_match_reference(case: Case):
    before = case.input_bits()
    got = fc.first_order_scores(case.local, case.candidates, case.local_loss, case.losses, norm=case.norm, eps=case.eps)
    expected = ref.first_order_scores(
        case.local, case.candidates, case.local_loss, case.losses, norm=case.norm, eps=case.eps
    )
    for name in ("scores", "distances"):
        assert_vector_type(case, getattr(got, name), F64)
    for name in ("rejected", "skipped"):
        v = getattr(got, name)
        assert_vector_type(case, v, BOOL)
        assert np.array_equal(np.asarray(v), getattr(expected, name)), (name, v, getattr(expected, name))
    assert not np.any(np.asarray(got.skipped)), "first_order_scores measures every candidate"
    assert_vector_close("distances", got.distances, expected.distances, distance_rtol(case.num_elements, case.dtype))
    assert_vector_close("scores", got.scores, expected.scores, score_rtol(case.num_elements, case.dtype))
    assert_inputs_unchanged(case, before)


@settings(max_examples=300)
@given(case=cases())
def test_compute_weights_match_reference(case: Case):
    before = case.input_bits()
    got = fc.compute_weights(case.local, case.candidates, case.local_loss, case.losses, norm=case.norm, eps=case.eps)
    expected = ref.compute_weights(
        case.local, case.candidates, case.local_loss, case.losses, norm=case.norm, eps=case.eps
    )
    assert_vector_type(case, got, F64)
    assert_vector_close("weights", got, expected, weight_rtol(case.num_elements, case.m, case.dtype))
    w = np.asarray(got)
    assert np.all(w >= 0)
    assert w.sum() == 0 or abs(w.sum() - 1) <= (case.m + 2) * 2**-52
    assert_inputs_unchanged(case, before)


@settings(max_examples=300)
@given(case=cases(), mode=st.sampled_from(OUT_MODES), data=st.data())
def test_fomo_step_matches_reference(case: Case, mode: str, data):
    args = (case.local, case.candidates, case.local_loss, case.losses)
    options = dict(norm=case.norm, eps=case.eps, all_scores=case.all_scores)
    expected = ref.fomo_step(*args, **options)
    value = ref.fomo_step(*args, **options, rounded=False).params
    magnitude = case.magnitude(expected.weights)
    before = case.input_bits()
    out, out_placed, out_before = make_out(case, mode, data)

    got = fc.fomo_step(*args, **options, out=out)

    n = case.num_elements
    for name in ("weights", "scores", "distances"):
        assert_vector_type(case, getattr(got, name), F64)
    for name in ("rejected", "skipped"):
        v = getattr(got, name)
        assert_vector_type(case, v, BOOL)
        assert np.array_equal(np.asarray(v), getattr(expected, name)), (name, v, getattr(expected, name))
    assert_vector_close("distances", got.distances, expected.distances, distance_rtol(n, case.dtype))
    assert_vector_close("scores", got.scores, expected.scores, score_rtol(n, case.dtype))
    assert_vector_close("weights", got.weights, expected.weights, weight_rtol(n, case.m, case.dtype))
    if out is not None:
        assert got.params is out
    assert_same_structure(case, got.params)
    assert_update_close(
        "params",
        case.dtype,
        case.m,
        flat_values(case.layout, got.params),
        flat_values(case.layout, expected.params),
        flat_values(case.layout, value),
        magnitude,
        weight_error=weight_rtol(n, case.m, case.dtype),
    )
    assert_inputs_unchanged(case, before, in_place=mode == "inplace")
    for p, b in zip(out_placed, out_before):
        assert untouched_outside(p, b), "out was written outside its view"


@settings(max_examples=200)
@given(case=cases())
def test_ops_agree_with_each_other_bitwise(case: Case):
    """compute_weights, first_order_scores and apply_update are the fused step's parts; a candidate
    with weight 0 is never read, so leaving it out changes no bit."""
    args = (case.local, case.candidates, case.local_loss, case.losses)
    options = dict(norm=case.norm, eps=case.eps)
    full = fc.fomo_step(*args, **options, all_scores=True)
    lean = fc.fomo_step(*args, **options, all_scores=False)
    assert np.array_equal(bits(fc.compute_weights(*args, **options)), bits(lean.weights))
    scores = fc.first_order_scores(*args, **options)
    assert np.array_equal(bits(scores.scores), bits(full.scores))
    assert np.array_equal(bits(scores.distances), bits(full.distances))
    assert np.array_equal(np.asarray(scores.rejected), np.asarray(full.rejected))
    updated = fc.apply_update(case.local, case.candidates, full.weights)
    assert np.array_equal(bits(flat_values(case.layout, updated)), bits(flat_values(case.layout, full.params)))
    models = case.candidate_models()
    nonzero = [k for k in range(case.m) if case.weights[k] != 0]
    same = fc.apply_update(case.local, [models[k] for k in nonzero], case.weights[nonzero])
    every = fc.apply_update(case.local, case.candidates, case.weights)
    assert np.array_equal(bits(flat_values(case.layout, same)), bits(flat_values(case.layout, every)))


@settings(max_examples=200)
@given(case=cases())
def test_all_scores_changes_no_bit(case: Case):
    """DESIGN: weights and parameters are identical with and without all_scores (so a candidate's
    distance must not depend on which others are measured with it). Not asserted: a candidate's
    distance measured alone equals its distance among others -- the run table splits a leaf where
    any candidate's strides differ, which changes the summation order for all of them.
    (A rare mix of layouts and losses that these examples do not hit is pinned by the next test.)"""
    args = (case.local, case.candidates, case.local_loss, case.losses)
    options = dict(norm=case.norm, eps=case.eps)
    full = fc.fomo_step(*args, **options, all_scores=True)
    lean = fc.fomo_step(*args, **options, all_scores=False)
    assert np.array_equal(bits(full.weights), bits(lean.weights))
    assert np.array_equal(bits(flat_values(case.layout, full.params)), bits(flat_values(case.layout, lean.params)))
    measured = ~np.asarray(lean.skipped) & ~np.isnan(np.asarray(lean.distances))
    assert np.array_equal(bits(np.asarray(lean.distances)[measured]), bits(np.asarray(full.distances)[measured]))


def test_all_scores_changes_no_bit_with_a_strided_worse_candidate():
    """The minimal case: a worse candidate that is a strided view, measured (all_scores=True) in
    the same group as two improving contiguous ones, changes their distances' last bits."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1000)
    a, b = x + rng.standard_normal(1000), x + rng.standard_normal(1000)
    worse = np.repeat(x + 1.0, 2)[::2]  # stride 2
    full = fc.fomo_step(x, [worse, a, b], 2.0, [3.0, 1.0, 1.5], all_scores=True)
    lean = fc.fomo_step(x, [worse, a, b], 2.0, [3.0, 1.0, 1.5], all_scores=False)
    assert np.array_equal(bits(full.weights), bits(lean.weights))
    assert np.array_equal(bits(full.params), bits(lean.params))


# ---- several chunks, against the reference ------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_multi_chunk_layers_match_reference(dtype, norm):
    """Layers whose pieces straddle the kernels' 16384-element chunks (one layer spanning two chunks,
    small layers sharing one), strided and transposed, over the OpenMP threshold: every pass agrees
    with the reference."""
    rng = np.random.default_rng(5)
    shapes = [(120, 150), (7,), (), (3, 5000), (40, 333), (1,), (9000,)]  # 53,000 elements
    views = ["transposed", "strided", "offset", "contiguous", "strided", "reversed", "offset"]
    backend = "torch" if dtype == "bfloat16" else "numpy"
    layout = ModelLayout("dict", [f"l{i}" for i in range(len(shapes))], shapes, [True] * len(shapes))

    def model(values):
        return assemble(layout, [place_leaf(v, dtype, backend, view).view for v, view in zip(values, views)])

    x = [rng.standard_normal(s) for s in shapes]
    local = model(x)
    candidates = [model([v + rng.standard_normal(v.shape) * (0.1 * (n + 1)) for v in x]) for n in range(3)]
    losses = np.array([1.5, 2.5, 1.0])
    expected = ref.fomo_step(local, candidates, 2.0, losses, norm=norm, eps=1e-5)
    value = ref.fomo_step(local, candidates, 2.0, losses, norm=norm, eps=1e-5, rounded=False).params
    got = fc.fomo_step(local, candidates, 2.0, losses, norm=norm, eps=1e-5)
    n = layout.num_elements()
    assert n > 3 * fc._C.CHUNK_ELEMENTS
    assert_vector_close("distances", got.distances, expected.distances, distance_rtol(n, dtype))
    assert_vector_close("weights", got.weights, expected.weights, weight_rtol(n, 3, dtype))
    assert np.count_nonzero(np.asarray(got.weights)) == 2  # two improving candidates move the model
    case_like = Case(
        dtype,
        backend,
        layout,
        local,
        candidates,
        2.0,
        losses,
        np.asarray(expected.weights),
        norm,
        1e-5,
        True,
        3,
        views,
        "list",
        0,
    )
    assert_update_close(
        "params",
        dtype,
        3,
        flat_values(layout, got.params),
        flat_values(layout, expected.params),
        flat_values(layout, value),
        case_like.magnitude(expected.weights),
        weight_error=weight_rtol(n, 3, dtype),
    )
