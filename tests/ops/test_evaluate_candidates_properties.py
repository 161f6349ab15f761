"""Hypothesis: fomo_core.evaluate_candidates against the plain-NumPy reference
(fomo_core/reference_dense.py) on random specs, shapes and candidate forms, including B = 1, a
single class present, M = 0, sample weights, several sample tiles and every output.

Tolerances (see tests/ops/test_evaluate_candidates.py for the full table):
- float64: rtol 1e-9, atol 1e-11 - only the summation order differs from NumPy's (each unit's
  inputs in order from the bias with FMA); random weights of scale up to 2 through up to three
  layers amplify the few-eps differences by at most the product of the weight norms.
- float32 kernel against the float64 reference on the same rounded values: rtol 1e-4, atol 1e-4 -
  float32 rounding in every sum, amplified in the same way.
- accuracy: the same correct samples in float64 (rtol 1e-12: weighted sums added in another
  order); in float32 a sample may flip only where its top two logits (or its
  logistic logit and 0) are closer than the float32 error, so the accuracies may differ by at most
  the (weighted) share of such near-tie samples.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fomo_core import reference_dense as reference
from fomo_core.dense import ACTIVATIONS, DenseSpec, evaluate_candidates, layers_from_flat

TOL = {np.float64: dict(rtol=1e-9, atol=1e-11), np.float32: dict(rtol=1e-4, atol=1e-4)}


@st.composite
def problems(draw):
    output = draw(st.sampled_from(["softmax", "logistic", "squared_error"]))
    depth = draw(st.integers(1, 3))
    widths = [draw(st.integers(1, 19)) for _ in range(depth)]
    classes = 1 if output == "logistic" else draw(st.integers(1, 7))
    sizes = tuple(widths) + (classes,)
    acts = tuple(draw(st.sampled_from(ACTIVATIONS)) for _ in range(depth - 1))
    spec = DenseSpec(sizes, acts, draw(st.sampled_from(["out_in", "in_out"])), output)
    m = draw(st.integers(0, 4))
    rows = draw(st.sampled_from([1, 2, 7, 16, 17, 63, 64, 65, 130]))  # across the 16-wide panels and 64-row tiles
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    form = draw(st.sampled_from(["2d", "strided", "flat_list", "layer_list", "torch"]))
    weighted = draw(st.booleans())
    one_class = draw(st.booleans())
    scale = draw(st.sampled_from([0.1, 1.0, 2.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    return spec, m, rows, dtype, form, weighted, one_class, scale, seed


def _candidates(spec, base, form):
    if form == "2d":
        return base
    if form == "strided":
        wide = np.zeros((base.shape[0], 2 * base.shape[1]), base.dtype)
        wide[:, ::2] = base
        return wide[:, ::2]
    if form == "flat_list":
        return [row for row in base]
    if form == "torch":
        return torch.from_numpy(base)
    out = []
    for row in base:
        w, b = layers_from_flat(spec, row)
        out.append([a for pair in zip(w, b) for a in pair])
    return out


def _near_ties(spec, candidates, X, y, weights, margin):
    """Weighted share of samples whose prediction could flip under a float32 error of `margin`."""
    shares = []
    for c in candidates:
        z = reference.forward(spec, c, X)
        if spec.output == "logistic":
            close = np.abs(z[:, 0]) <= margin
        elif z.shape[1] > 1:
            top2 = np.sort(z, axis=1)[:, -2:]
            close = (top2[:, 1] - top2[:, 0]) <= margin * (1 + np.abs(top2[:, 1]))
        else:
            close = np.zeros(len(z), bool)
        shares.append(np.sum(weights * close) / np.sum(weights))
    return np.array(shares)


@settings(max_examples=120, deadline=None)
@given(problems())
def test_kernel_matches_reference(problem):
    spec, m, rows, dtype, form, weighted, one_class, scale, seed = problem
    rng = np.random.default_rng(seed)
    base = (rng.standard_normal((m, spec.num_params)) * scale).astype(dtype)
    X = rng.standard_normal((rows, spec.num_inputs)).astype(dtype)
    if spec.output == "squared_error":
        y = rng.standard_normal((rows, spec.num_outputs))
    else:
        classes = 2 if spec.output == "logistic" else spec.num_outputs
        y = np.full(rows, classes - 1) if one_class else rng.integers(0, classes, rows)
    weights = rng.uniform(0.0, 2.0, rows) + (np.arange(rows) == 0) if weighted else None

    ev = evaluate_candidates(spec, _candidates(spec, base, form), X, y, sample_weight=weights)
    loss, accuracy = (np.asarray(v) for v in (ev.loss, ev.accuracy))
    want_loss, want_acc = reference.evaluate_candidates(spec, base, X, y, sample_weight=weights)

    assert loss.shape == (m,) and accuracy.shape == (m,)
    np.testing.assert_allclose(loss, want_loss, **TOL[dtype])
    if spec.output == "squared_error":
        assert np.isnan(accuracy).all()
    elif dtype == np.float64:
        # the same samples are correct; only the order of adding their weights differs
        np.testing.assert_allclose(accuracy, want_acc, rtol=1e-12, atol=0)
    else:
        allowed = _near_ties(spec, base, X, y, np.ones(rows) if weights is None else weights, 1e-3)
        assert np.all(np.abs(accuracy - want_acc) <= allowed + 1e-12)


@pytest.mark.parametrize("rows", [1, 3])
def test_single_sample_and_single_class_edge(rows):
    spec = DenseSpec((2, 3))  # one layer, three classes; only class 1 present
    cands = np.array([[1.0, 0, 0, 1, 0, 0, 0.5, -0.5, 0.0]])
    X = np.ones((rows, 2))
    y = np.ones(rows, np.int64)
    ev = evaluate_candidates(spec, cands, X, y)
    want = reference.evaluate_candidates(spec, cands, X, y)
    np.testing.assert_allclose(ev.loss, want[0], rtol=1e-12)
    np.testing.assert_array_equal(ev.accuracy, want[1])
