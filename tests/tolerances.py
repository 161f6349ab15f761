"""The tolerance table: how far a kernel result may be from the float64 reference, per storage dtype.

Every bound below is an error bound, not a fudge factor: it says which roundings the kernels
perform that the reference (fomo_core.reference: correctly rounded float64 sums, exact weight
normalisation, one rounding of the update to the storage dtype) does not, and how large they can
get. With u the unit roundoff of a format (half its machine epsilon):

- distances: each difference c - x is formed in the storage type's compute type (float64 for
  float64 storage, the same rounding the reference does; float32 for float32, float16 and bfloat16
  storage: one rounding, relative error <= u32, csrc/cpu/kernels/candidate_distances.cpp scalar_term), then squared
  (l2) and summed in float64: a blocked sum of n non-negative terms, whose float64 roundings the
  correctly rounded reference does not make. For 16-bit storage the terms of each four elements
  are first added in float32, as (t0 + t1) + (t2 + t3) (difference_unit below accounts for it).
  So |d - d_ref| <= (u_diff + (n + 4) * 2u64) * d_ref
  (a relative error e of every difference is a relative error e of l1, and of l2 after sqrt);
- scores s = (L0 - Ln) / (d + eps) inherit the relative error of d plus one division;
- weights w = s / sum(s) inherit twice the scores' error plus the M additions of the sum;
- the update out = x + sum_k w_k (c_k - x) is computed by the kernels in the storage type's
  *compute* type (float64 for float64 storage, float32 registers for float32, float16 and
  bfloat16 storage: csrc/cpu/elements.h compute_t) with M + 4 roundings (w to the compute type,
  c - x, the product, the sum over k, the final addition; FMA contraction only removes some of
  them), then rounded to the storage dtype; the reference rounds the exact value once. Hence, per
  element, with S = |x| + sum_k |w_k| |c_k - x| and v the unrounded reference value:
      |out - ref| <= 2 u_storage |v| + (M + 4) u_compute S + tiny_storage
  (two roundings to the storage format that may fall on either side of the exact value, the
  accumulation error, and the subnormal quantum of the storage format as an absolute floor where
  relative bounds stop holding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

U64 = 2.0**-53  # unit roundoff of float64: distances, scores and weights are float64 everywhere


@dataclass(frozen=True)
class DtypeTolerance:
    difference_unit: float  # relative error of the distance pass's element differences c - x
    storage_unit: float  # unit roundoff of the storage format (one rounding of the result to it)
    compute_unit: float  # unit roundoff of the type the update kernel accumulates in
    tiny: float  # smallest positive subnormal of the storage format: absolute floor
    reason: str


TOLERANCES: dict[str, DtypeTolerance] = {
    "float64": DtypeTolerance(
        difference_unit=0.0,  # the float64 difference the reference forms too
        compute_unit=2.0**-53,
        tiny=2.0**-1074,
        storage_unit=2.0**-53,
        reason="differences, squares and sums in float64; update accumulated in float64 "
        "(M + 4 roundings) and stored as is",
    ),
    "float32": DtypeTolerance(
        difference_unit=2.0**-24,
        storage_unit=2.0**-24,
        compute_unit=2.0**-24,
        tiny=2.0**-149,
        reason="distance differences rounded once to float32; update accumulated in float32 "
        "registers, the storage type itself (M + 4 roundings)",
    ),
    "float16": DtypeTolerance(
        # the difference rounded to float32 (u32), and the terms of each four elements added in
        # float32, (t0 + t1) + (t2 + t3), before the float64 sum (csrc/cpu/kernels/candidate_distances.cpp, 16-bit
        # storage): for l1 the two levels of sums add 2 u32; for l2 the square and the two sums add
        # 3 u32 to the sum of squares, which the square root halves. At most 3 u32 on the distance.
        # (Was 2 u32 with pairs; quads halve the float64 conversions again, which bound the pass.)
        difference_unit=3 * 2.0**-24,
        storage_unit=2.0**-11,
        compute_unit=2.0**-24,
        tiny=2.0**-24,
        reason="distance differences formed in float32 (exact unless the operands are more than 13 "
        "binades apart); update accumulated in float32 (M + 4 roundings), then one rounding to float16, "
        "which may fall on the other side of a float16 tie than the exact value's rounding",
    ),
    "bfloat16": DtypeTolerance(
        difference_unit=3 * 2.0**-24,  # as float16: float32 differences, then float32 quad sums of the terms
        storage_unit=2.0**-8,
        compute_unit=2.0**-24,
        tiny=2.0**-133,
        reason="distance differences formed in float32 (exact unless the operands are more than 16 "
        "binades apart); update accumulated in float32 (M + 4 roundings), then one rounding to bfloat16, "
        "which may fall on the other side of a bfloat16 tie than the exact value's rounding",
    ),
}


def distance_rtol(num_elements: int, dtype: str) -> float:
    """Relative bound on a distance: the element differences' rounding (difference_unit; sqrt
    keeps it for l2), plus a float64 blocked sum of non-negative terms (the order of the sum and
    FMA contraction of l2's diff * diff + acc are its only other differences from the correctly
    rounded reference). For a model mixing dtypes, pass the one with the largest difference_unit."""
    return TOLERANCES[dtype].difference_unit + (num_elements + 4) * 2 * U64


def score_rtol(num_elements: int, dtype: str) -> float:
    """The distance's relative error carried through (d + eps) (eps >= 0 only shrinks it) plus the
    subtraction and the division."""
    return distance_rtol(num_elements, dtype) + 4 * U64


def weight_rtol(num_elements: int, num_candidates: int, dtype: str) -> float:
    """w = s / sum(s): the score's error twice (numerator and the sum) plus the M float64 additions
    of the kernels' sum, which the reference does exactly."""
    return 2 * score_rtol(num_elements, dtype) + (num_candidates + 4) * U64


def update_bound(
    dtype: str, num_candidates: int, value: np.ndarray, magnitude: np.ndarray, weight_error: float = 0.0
) -> np.ndarray:
    """Per-element bound on |kernel - reference| for the update (see the module docstring).

    value:        the reference's float64 value before rounding to the storage dtype
    magnitude:    S = |x| + sum_k |w_k| |c_k - x|
    weight_error: relative error of the weights used (0 when both sides use the same weights;
                  weight_rtol(...) when the kernel computed its own): adds weight_error * S
    """
    t = TOLERANCES[dtype]
    return (
        2 * t.storage_unit * np.abs(value) + ((num_candidates + 4) * t.compute_unit + weight_error) * magnitude + t.tiny
    )


def update_value_and_magnitude(x: np.ndarray, candidates: list, weights) -> tuple:
    """v = x + sum_k w_k (c_k - x) in float64 and S = |x| + sum_k |w_k| |c_k - x|, the two inputs of
    update_bound, for one leaf (x and every c_k float64 arrays of one shape)."""
    v, s = x.copy(), np.abs(x)
    for c, w in zip(candidates, weights):
        if w != 0.0:
            v = v + w * (c - x)
            s = s + abs(w) * np.abs(c - x)
    return v, s


def _f64(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def assert_vector_close(name: str, actual, expected, rtol: float) -> None:
    """NaN exactly where expected is NaN, otherwise |a - e| <= rtol * |e| (infinities equal)."""
    a, e = _f64(actual), _f64(expected)
    assert a.shape == e.shape, f"{name}: shape {a.shape}, expected {e.shape}"
    nan = np.isnan(e)
    assert np.array_equal(np.isnan(a), nan), f"{name}: NaN at {np.isnan(a)}, expected at {nan}\n{a}\n{e}"
    finite = np.isfinite(e)
    assert np.array_equal(a[~finite & ~nan], e[~finite & ~nan]), f"{name}: infinities differ\n{a}\n{e}"
    err = np.abs(a[finite] - e[finite])
    bound = rtol * np.abs(e[finite])
    assert np.all(err <= bound), (
        f"{name}: |actual - reference| exceeds {rtol:.3g} relative\nactual    {a}\nreference {e}\nerrors {err}"
    )


def assert_update_close(
    name: str, dtype: str, num_candidates: int, actual, expected, value, magnitude, weight_error: float = 0.0
) -> None:
    """Element-wise: where the reference is NaN or infinite, the kernel gives the same; elsewhere
    it is within update_bound."""
    a, e = _f64(actual).reshape(-1), _f64(expected).reshape(-1)
    v, s = np.asarray(value, np.float64).reshape(-1), np.asarray(magnitude, np.float64).reshape(-1)
    assert a.shape == e.shape, f"{name}: {a.shape} elements, expected {e.shape}"
    special = ~np.isfinite(e)
    same_special = (np.isnan(a) & np.isnan(e)) | (a == e)
    assert np.all(same_special[special]), f"{name}: NaN/inf differ\nactual    {a[special]}\nreference {e[special]}"
    a, e, v, s = a[~special], e[~special], v[~special], s[~special]
    bound = update_bound(dtype, num_candidates, v, s, weight_error)
    err = np.abs(a - e)
    bad = ~(err <= bound)  # NaN errors (a NaN where the reference is finite) count as bad
    assert not np.any(bad), (
        f"{name} ({dtype}, M={num_candidates}): elements {np.flatnonzero(bad)[:10]} out of tolerance\n"
        f"actual    {a[bad][:10]}\nreference {e[bad][:10]}\nbound     {bound[bad][:10]}"
    )
