"""The oracle checked on its own: its rounding against the array libraries' conversions, small cases
worked out from docs/design.md's formulas, and agreement with an independent vectorised NumPy
formulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fomo_core import reference as ref


@pytest.mark.parametrize("dtype,np_dtype", [("float16", np.float16), ("float32", np.float32)])
def test_round_to_dtype_matches_numpy_casts(dtype, np_dtype):
    """NumPy casts float64 to float16/float32 with one correct rounding (ties to even, gradual
    underflow, overflow to inf): the reference's own rounding must give the same bits."""
    rng = np.random.default_rng(0)
    info = np.finfo(np_dtype)
    scales = [float(info.smallest_subnormal), float(info.tiny), 1.0, float(info.max) / 2, float(info.max)]
    values = np.concatenate([rng.standard_normal(4000) * s for s in scales])
    # exact ties: midpoints between neighbours of the format
    grid = rng.standard_normal(2000).astype(np_dtype).astype(np.float64)
    values = np.concatenate(
        [values, (grid + np.nextafter(grid.astype(np_dtype), np_dtype(np.inf)).astype(np.float64)) / 2]
    )
    with np.errstate(over="ignore"):
        expected = values.astype(np_dtype).astype(np.float64)
    got = np.array([ref.round_to_dtype(float(v), dtype) for v in values])
    same = (got == expected) | (np.isnan(got) & np.isnan(expected))
    assert np.all(same), values[~same][:5]
    assert np.all(np.signbit(got) == np.signbit(expected))


def test_round_to_dtype_matches_torch_bfloat16():
    """torch rounds float32 to bfloat16 to nearest even; on float32 inputs (no double rounding)
    the reference must agree bit for bit, subnormals and overflow included."""
    rng = np.random.default_rng(1)
    scales = np.array([1e-40, 1e-38, 1e-3, 1.0, 1e30, 3.3e38])
    with np.errstate(over="ignore"):  # the largest scale overflows float32 now and then: inf stays inf
        values = (rng.standard_normal(30000) * scales[rng.integers(0, len(scales), 30000)]).astype(np.float32)
    values = np.concatenate(
        [values, np.array([3.3895e38, 3.395e38, 3.397e38], np.float32)]
    )  # max, below and above the tie to inf
    expected = torch.from_numpy(values).bfloat16().double().numpy()
    got = np.array([ref.round_to_dtype(float(v), "bfloat16") for v in values])
    assert np.array_equal(got, expected)


def test_small_cases_from_the_formulas():
    x = np.zeros(2)
    c = np.array([[3.0, 4.0], [0.0, 1.0], [0.0, 0.0]])
    assert ref.candidate_distances(x, c).tolist() == [5.0, 1.0, 0.0]
    assert ref.candidate_distances(x, c, norm="l1").tolist() == [7.0, 1.0, 0.0]
    s = ref.first_order_scores(x, c, 2.0, [1.0, 3.0, 0.0])
    assert s.scores.tolist() == [(2.0 - 1.0) / 5.0, (2.0 - 3.0) / 1.0, 0.0]  # d = 0: rejected, score 0
    assert s.rejected.tolist() == [False, False, True] and not s.skipped.any()
    assert ref.compute_weights(x, c, 2.0, [1.0, 3.0, 0.0], eps=1.0).tolist() == pytest.approx(
        [(1 / 6) / (1 / 6 + 2 / 1), 0.0, 2 / (1 / 6 + 2)], rel=1e-15
    )
    lean = ref.fomo_step(x, c, 2.0, [1.0, 3.0, 0.0], all_scores=False)
    assert lean.skipped.tolist() == [False, True, False] and math.isnan(lean.distances[1])
    assert lean.weights.tolist() == [1.0, 0.0, 0.0] and lean.params.tolist() == [3.0, 4.0]
    nothing = ref.fomo_step(x, c, 0.0, [1.0, 3.0, 0.5])
    assert nothing.weights.tolist() == [0.0, 0.0, 0.0] and nothing.params.tolist() == [0.0, 0.0]
    assert ref.fomo_step(x, c, math.nan, [1.0, 3.0, 0.5]).rejected.all()


def test_structures_and_non_floating_entries():
    local = {"w": np.ones((2, 2), np.float32), "n": np.array(3), "b": np.zeros(3, np.float16)}
    cands = [{"w": np.full((2, 2), 2.0, np.float32), "n": np.array(9), "b": np.ones(3, np.float16)}]
    res = ref.fomo_step(local, cands, 1.0, [0.0])
    assert list(res.params) == ["w", "n", "b"] and res.params["n"] == 3
    assert res.distances[0] == math.sqrt(4 + 3)
    assert np.array_equal(res.params["w"], np.full((2, 2), 2.0)) and np.array_equal(res.params["b"], np.ones(3))
    as_tuple = ref.apply_update(tuple(local.values()), [tuple(cands[0].values())], [0.5])
    assert isinstance(as_tuple, tuple) and as_tuple[1] == 3 and np.array_equal(as_tuple[0], np.full((2, 2), 1.5))


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_vectorised_numpy(seed):
    """An independent formulation of the same formulas, vectorised in float64 NumPy."""
    rng = np.random.default_rng(seed)
    m, p = int(rng.integers(1, 9)), int(rng.integers(1, 400))
    x = rng.standard_normal(p)
    c = x + rng.standard_normal((m, p)) * rng.uniform(0.01, 1, (m, 1))
    l0, losses, eps = 2.0, rng.uniform(0.5, 3.5, m), float(rng.choice([0.0, 1e-5, 0.3]))
    for norm, d in (("l2", np.linalg.norm(c - x, axis=1)), ("l1", np.abs(c - x).sum(axis=1))):
        s = (l0 - losses) / (d + eps)
        w = np.maximum(s, 0) / np.maximum(s, 0).sum() if np.any(s > 0) else np.zeros(m)
        res = ref.fomo_step(x, c, l0, losses, norm=norm, eps=eps)
        np.testing.assert_allclose(res.distances, d, rtol=1e-13)
        np.testing.assert_allclose(res.scores, s, rtol=1e-12)
        np.testing.assert_allclose(res.weights, w, rtol=1e-12, atol=0)
        np.testing.assert_allclose(res.params, x + w @ (c - x), rtol=1e-12, atol=1e-14)
