"""The element maths of csrc/fomo/math.h, which the CUDA kernels run on the device and the CPU
kernels on the host, checked on the CPU through fomo_core._math_checks (a test-only module, built
with FOMO_TEST_HOOKS=ON; CI builds it, a plain install does not): every float16 and
bfloat16 bit pattern in both directions against NumPy and torch, rounding to nearest even, and the
first-order score and weight normalisation rules of docs/design.md.

Every comparison here is exact (bit patterns or exact float64 values): these are conversions and
branch rules, with no accumulated rounding to allow for.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from fomo_core import _C

if os.environ.get("FOMO_TEST_HOOKS", "").upper() == "ON":
    from fomo_core import _math_checks as mc  # asked for: its absence is a failure, not a skip
else:
    mc = pytest.importorskip(
        "fomo_core._math_checks",
        reason="the test-only module fomo_core._math_checks is not built (install with FOMO_TEST_HOOKS=ON)",
    )

ALL_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
ACCEPTED, REJECTED, SKIPPED = (_C.STATUS[name] for name in ("accepted", "rejected", "skipped"))


def _bits32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def _random_floats(n: int, seed: int) -> np.ndarray:
    """n float32 values from uniformly random bit patterns: every exponent, sign, NaN and inf."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32).view(np.float32)


def _numpy_half(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is the rule under test
        return x.astype(np.float16).view(np.uint16)


def _torch_bf16(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def _assert_same_nan_aware_16(ours: np.ndarray, ref: np.ndarray, values: np.ndarray, as_float) -> None:
    """Equal bit patterns for every non-NaN input; NaN inputs must give a NaN of the same sign (the
    quiet-NaN payload is implementation-defined and differs between NumPy, torch and us)."""
    nan = np.isnan(values)
    np.testing.assert_array_equal(ours[~nan], ref[~nan])
    assert np.isnan(as_float(ours[nan])).all()
    np.testing.assert_array_equal(ours[nan] >> 15, (_bits32(values[nan]) >> 31).astype(np.uint16))


# ---- float16 ----


def test_half_to_float_all_patterns_match_numpy_bitwise():
    ours = mc.half_to_float(ALL_BITS)
    ref = ALL_BITS.view(np.float16).astype(np.float32)
    # bitwise, NaN payloads and signed zeros included: widening float16 -> float32 is exact
    np.testing.assert_array_equal(_bits32(ours), _bits32(ref))


def test_half_subnormals_and_specials_widen_exactly():
    smallest = mc.half_to_float(np.array([0x0001, 0x8001, 0x03FF, 0x7C00, 0xFC00, 0x0000, 0x8000], dtype=np.uint16))
    assert smallest[0] == 2.0**-24 and smallest[1] == -(2.0**-24)
    assert smallest[2] == 1023 * 2.0**-24
    assert smallest[3] == math.inf and smallest[4] == -math.inf
    assert _bits32(smallest[5:])[0] == 0 and _bits32(smallest[5:])[1] == 0x80000000


def test_float_to_half_round_trips_every_pattern():
    values = ALL_BITS.view(np.float16).astype(np.float32)
    _assert_same_nan_aware_16(mc.float_to_half(values), ALL_BITS, values, lambda b: b.view(np.float16))


def test_float_to_half_rounds_to_nearest_even_at_every_midpoint():
    # Midpoints between consecutive finite halves of the same sign (exact in float32: 12 significant
    # bits), and the float32 neighbours on either side of each.
    finite = ALL_BITS[np.isfinite(ALL_BITS.view(np.float16))]
    ordered = np.sort(finite.view(np.float16).astype(np.float64))
    ordered = np.unique(ordered)
    mid = ((ordered[:-1] + ordered[1:]) / 2).astype(np.float32)
    assert np.array_equal(mid.astype(np.float64), (ordered[:-1] + ordered[1:]) / 2)  # exact midpoints
    probes = np.concatenate([mid, np.nextafter(mid, np.float32(-np.inf)), np.nextafter(mid, np.float32(np.inf))])
    _assert_same_nan_aware_16(mc.float_to_half(probes), _numpy_half(probes), probes, lambda b: b.view(np.float16))


def test_float_to_half_overflow_and_underflow_boundaries():
    probes = np.array(
        [65504.0, 65519.99, 65520.0, 1e6, -65520.0, 2.0**-25, 2.0**-25 * 1.0001, 2.0**-26, 2.0**-14, 2.0**-14 * 0.9999],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(mc.float_to_half(probes), _numpy_half(probes))
    assert mc.float_to_half(np.array([65520.0], dtype=np.float32))[0] == 0x7C00  # rounds up to infinity
    assert mc.float_to_half(np.array([2.0**-25], dtype=np.float32))[0] == 0x0000  # tie to even: zero


def test_float_to_half_matches_numpy_on_random_bit_patterns():
    values = _random_floats(1 << 20, seed=1)
    _assert_same_nan_aware_16(mc.float_to_half(values), _numpy_half(values), values, lambda b: b.view(np.float16))


# ---- bfloat16 ----


def test_bf16_to_float_all_patterns_match_torch_bitwise():
    ref = torch.from_numpy(ALL_BITS.view(np.int16)).view(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(_bits32(mc.bf16_to_float(ALL_BITS)), _bits32(ref))


def _bf16_as_float(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def test_float_to_bf16_round_trips_every_pattern():
    values = mc.bf16_to_float(ALL_BITS)
    _assert_same_nan_aware_16(mc.float_to_bf16(values), ALL_BITS, values, _bf16_as_float)


def test_float_to_bf16_rounds_to_nearest_even_at_every_midpoint():
    # Every bfloat16 pattern with the first dropped bit set is a midpoint (tie); with any lower bit
    # set as well it lies above the midpoint.
    base = ALL_BITS.astype(np.uint32) << 16
    ties = (base | 0x8000).view(np.float32)
    above = (base | 0x8001).view(np.float32)
    below = (base | 0x7FFF).view(np.float32)
    probes = np.concatenate([ties, above, below])
    _assert_same_nan_aware_16(mc.float_to_bf16(probes), _torch_bf16(probes), probes, _bf16_as_float)
    finite = np.isfinite(ties)
    even = (ALL_BITS[finite] & 1) == 0
    tie_result = mc.float_to_bf16(ties[finite])
    # a tie rounds to the even neighbour: down from an even pattern, up from an odd one
    np.testing.assert_array_equal(tie_result[even], ALL_BITS[finite][even])


def test_float_to_bf16_matches_torch_on_random_bit_patterns():
    values = _random_floats(1 << 20, seed=2)
    _assert_same_nan_aware_16(mc.float_to_bf16(values), _torch_bf16(values), values, _bf16_as_float)


def test_float_to_bf16_keeps_nan_from_rounding_into_infinity():
    # 0x7f80ffff is a NaN whose low bits would carry into the exponent under plain rounding
    nan = np.array([0x7F80FFFF, 0xFF80FFFF, 0x7FFFFFFF], dtype=np.uint32).view(np.float32)
    assert np.isnan(_bf16_as_float(mc.float_to_bf16(nan))).all()


# ---- scores and weights ----


def _expected_score(l0, ln, d, eps, measured):
    """docs/design.md's rule, written independently of math.h."""
    if not (math.isfinite(l0) and math.isfinite(ln)):
        return 0.0, REJECTED
    if not measured:
        return math.nan, SKIPPED
    if not math.isfinite(d) or d + eps == 0.0:
        return 0.0, REJECTED
    try:
        s = (l0 - ln) / (d + eps)
    except OverflowError:
        return 0.0, REJECTED
    if not math.isfinite(s):
        return 0.0, REJECTED
    return s, ACCEPTED


LOSSES = [0.0, 0.5, 2.0, -1.0, 1e308, math.nan, math.inf, -math.inf]
DISTANCES = [0.0, 1e-310, 0.25, 3.0, math.nan, math.inf]


@pytest.mark.parametrize("eps", [0.0, 1e-5])
@pytest.mark.parametrize("measured", [True, False])
def test_first_order_score_follows_the_rules(eps, measured):
    for l0 in LOSSES:
        for ln in LOSSES:
            for d in DISTANCES:
                score, status = mc.first_order_score(l0, ln, d, eps, measured)
                want, want_status = _expected_score(l0, ln, d, eps, measured)
                assert status == want_status, (l0, ln, d, eps, measured)
                if math.isnan(want):
                    assert math.isnan(score)
                else:
                    assert score == want, (l0, ln, d, eps, measured)


def test_score_overflow_is_rejected():
    score, status = mc.first_order_score(1e308, -1e308, 1e-300, 0.0, True)
    assert (score, status) == (0.0, REJECTED)


def test_zero_distance_without_eps_is_rejected_and_with_eps_scored():
    assert mc.first_order_score(1.0, 0.5, 0.0, 0.0, True) == (0.0, REJECTED)
    assert mc.first_order_score(1.0, 0.5, 0.0, 0.5, True) == (1.0, ACCEPTED)


def test_normalise_weights_positive_accepted_only():
    scores = np.array([2.0, -1.0, 6.0, 5.0, 0.0, np.nan])
    status = np.array([ACCEPTED, ACCEPTED, ACCEPTED, REJECTED, ACCEPTED, SKIPPED], dtype=np.uint8)
    w = mc.normalise_weights(scores, status)
    np.testing.assert_array_equal(w, [2.0 / 8.0, 0.0, 6.0 / 8.0, 0.0, 0.0, 0.0])


def test_normalise_weights_all_zero_when_nothing_positive():
    scores = np.array([-2.0, 0.0, 0.0, np.nan])
    status = np.array([ACCEPTED, ACCEPTED, REJECTED, SKIPPED], dtype=np.uint8)
    w = mc.normalise_weights(scores, status)
    np.testing.assert_array_equal(w, np.zeros(4))
    assert not np.signbit(w).any()  # +0.0, so "every weight 0" holds bitwise


def test_normalise_weights_sums_in_index_order():
    scores = np.array([1e16, 1.0, 1.0, -3.0])
    status = np.full(4, ACCEPTED, dtype=np.uint8)
    total = (1e16 + 1.0) + 1.0  # left to right, as the kernels must
    np.testing.assert_array_equal(mc.normalise_weights(scores, status), [1e16 / total, 1.0 / total, 1.0 / total, 0.0])


def test_normalise_weights_empty():
    assert mc.normalise_weights(np.zeros(0), np.zeros(0, dtype=np.uint8)).shape == (0,)


@pytest.mark.parametrize(
    ("all_scores", "l0", "ln", "expected"),
    [
        (True, 1.0, 2.0, True),
        (True, math.nan, 0.5, True),
        (False, 1.0, 0.5, True),
        (False, 1.0, 1.0, False),
        (False, 1.0, 2.0, False),
        (False, math.nan, 0.5, False),
        (False, 1.0, -math.inf, False),
        (False, math.inf, 0.5, False),
    ],
)
def test_needs_distance(all_scores, l0, ln, expected):
    assert mc.needs_distance(all_scores, l0, ln) is expected


def test_normalise_weights_survives_a_sum_that_overflows():
    # each score is finite but their float64 sum is not: the weights are still a distribution
    scores = np.array([1e308, 1.5e308, -1.0, 5e307])
    status = np.full(4, ACCEPTED, dtype=np.uint8)
    w = mc.normalise_weights(scores, status)
    assert np.isfinite(w).all()
    np.testing.assert_allclose(w, [1 / 3.0, 0.5, 0.0, 1 / 6.0], rtol=4 * 2.0**-53, atol=0)  # a few float64 roundings


def test_guard_rule_in_the_shared_maths():
    """max_distance in math.h's score rule: off by default, a candidate beyond it rejected, one at it
    scored (the guard's end-to-end tests are in test_hardening.py)."""
    assert mc.first_order_score(1.0, 0.5, 1e30, 0.0, True) == (0.5 / 1e30, ACCEPTED)
    assert mc.first_order_score(1.0, 0.5, 1e30, 0.0, True, max_distance=1e3) == (0.0, REJECTED)
    assert mc.first_order_score(1.0, 0.5, 1e3, 0.0, True, max_distance=1e3) == (0.5 / 1e3, ACCEPTED)
