"""Edge cases named by the design: nothing helps (bit-for-bit copy), a candidate equal to the local
model, duplicates, in-place output, read-only inputs, mixed layer dtypes, losses of any array
type, non-floating entries, and floating-point extremes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from strategies import NUMPY_DTYPES, TORCH_DTYPES, bits, place_leaf, to_f64, untouched_outside
from tolerances import assert_update_close, assert_vector_close, distance_rtol, weight_rtol

import fomo_core as fc
from fomo_core import reference as ref

# Bit patterns every copy must preserve: -0.0, a quiet NaN with a payload, a signalling NaN (any
# arithmetic would quieten it), a negative NaN with a payload, +inf, -inf, the smallest subnormal, 1.
SPECIAL_BITS = {
    "float64": (
        np.uint64,
        [
            0x8000000000000000,
            0x7FF8000000001234,
            0x7FF0000000000001,
            0xFFF8000000000ABC,
            0x7FF0000000000000,
            0xFFF0000000000000,
            0x1,
            0x3FF0000000000000,
        ],
    ),
    "float32": (np.uint32, [0x80000000, 0x7FC01234, 0x7F800001, 0xFFC00ABC, 0x7F800000, 0xFF800000, 0x1, 0x3F800000]),
    "float16": (np.uint16, [0x8000, 0x7E12, 0x7C01, 0xFE0A, 0x7C00, 0xFC00, 0x1, 0x3C00]),
    "bfloat16": (np.uint16, [0x8000, 0x7FC1, 0x7F81, 0xFFC5, 0x7F80, 0xFF80, 0x1, 0x3F80]),
}
ALL = [("numpy", d) for d in NUMPY_DTYPES] + [("torch", d) for d in TORCH_DTYPES]


def special_array(backend: str, dtype: str, n: int, *, start: int = 0):
    """n elements cycling through SPECIAL_BITS and ordinary values, as `dtype`."""
    utype, patterns = SPECIAL_BITS[dtype]
    raw = np.array([patterns[(start + i) % len(patterns)] for i in range(n)], dtype=utype)
    if backend == "numpy":
        return raw.view(NUMPY_DTYPES[dtype])
    signed = {np.uint16: torch.int16, np.uint32: torch.int32, np.uint64: torch.int64}[utype]
    return torch.from_numpy(raw.view(np.dtype(utype.__name__.replace("u", "")))).view(signed).view(TORCH_DTYPES[dtype])


def ordinary(backend: str, dtype: str, values: np.ndarray):
    if backend == "numpy":
        return values.astype(NUMPY_DTYPES[dtype])
    return torch.from_numpy(values).to(TORCH_DTYPES[dtype])


def strided_copy(a):
    """The same values as a view with stride 2 into a bigger buffer."""
    if isinstance(a, torch.Tensor):
        big = torch.zeros(2 * a.shape[0], dtype=a.dtype)
    else:
        big = np.zeros(2 * a.shape[0], dtype=a.dtype)
    big[::2] = a
    return big[::2]


# ---- nothing helps: the output is the input, bit for bit -----------------------------------------


@pytest.mark.parametrize("backend,dtype", ALL)
@pytest.mark.parametrize("n", [37, 40000])  # one ragged chunk; several chunks, over the OpenMP threshold
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_all_candidates_worse_copies_local_bits(backend, dtype, n, layout):
    rng = np.random.default_rng(n)
    local = special_array(backend, dtype, n)
    if layout == "strided":
        local = strided_copy(local)
    candidates = [ordinary(backend, dtype, rng.standard_normal(n)) for _ in range(3)]
    worse = [2.5, 3.0, 2.0]  # L_n >= L0: nobody improves (an equal loss does not improve either)
    want = bits(local)
    for all_scores in (True, False):
        res = fc.fomo_step(local, candidates, 2.0, worse, all_scores=all_scores)
        assert np.array_equal(bits(res.params), want)
        assert not np.any(np.asarray(res.weights))
    out = strided_copy(ordinary(backend, dtype, np.zeros(n))) if layout == "strided" else None
    res = fc.fomo_step(local, candidates, 2.0, worse, out=out)
    assert np.array_equal(bits(res.params), want)
    assert fc.fomo_step(local, candidates, 2.0, worse, out=local).params is local
    assert np.array_equal(bits(local), want)


@pytest.mark.parametrize("backend,dtype", ALL)
def test_zero_weights_and_no_candidates_copy_local_bits(backend, dtype):
    local = special_array(backend, dtype, 29, start=3)
    poisoned = special_array(backend, dtype, 29)  # NaN and inf: must never be read with weight 0
    want = bits(local)
    assert np.array_equal(bits(fc.apply_update(local, [poisoned, poisoned], [0.0, -0.0])), want)
    assert np.array_equal(bits(fc.apply_update(local, [], [])), want)
    res = fc.fomo_step(local, [], 1.0, [])
    assert np.array_equal(bits(res.params), want) and tuple(res.weights.shape) == (0,)


@pytest.mark.parametrize("backend,dtype", ALL)
def test_nan_in_local_model_rejects_every_candidate(backend, dtype):
    """An improving candidate is still rejected when the local model holds NaN (the distance is
    NaN): the model is returned unchanged, bit for bit."""
    rng = np.random.default_rng(1)
    local = special_array(backend, dtype, 50)
    candidates = [ordinary(backend, dtype, rng.standard_normal(50)) for _ in range(2)]
    res = fc.fomo_step(local, candidates, 2.0, [1.0, 0.5])
    assert np.all(np.asarray(res.rejected)) and not np.any(np.asarray(res.weights))
    assert np.array_equal(bits(res.params), bits(local))


@pytest.mark.parametrize("all_scores", [True, False])
def test_nonimproving_poisoned_candidate_never_reaches_the_model(all_scores):
    """A worse candidate full of NaN: with all_scores it is measured and rejected, without it is
    skipped; the improving candidate gets all the weight either way."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal(100).astype(np.float32)
    good = (x + 0.1 * rng.standard_normal(100)).astype(np.float32)
    poisoned = np.full(100, np.nan, dtype=np.float32)
    res = fc.fomo_step(x, [poisoned, good], 1.0, [3.0, 0.5], all_scores=all_scores)
    assert np.array_equal(res.weights, [0.0, 1.0])
    assert (bool(res.rejected[0]), bool(res.skipped[0])) == ((True, False) if all_scores else (False, True))
    assert np.all(np.isfinite(res.params))
    expected = ref.fomo_step(x, [poisoned, good], 1.0, [3.0, 0.5], all_scores=all_scores)
    assert_update_close(
        "params",
        "float32",
        2,
        res.params,
        expected.params,
        ref.fomo_step(x, [poisoned, good], 1.0, [3.0, 0.5], rounded=False).params,
        np.abs(x) + np.abs(good - x),
        weight_error=weight_rtol(100, 2, "float32"),
    )


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_nonfinite_local_loss_rejects_all(loss):
    x = np.linspace(-1, 1, 20)
    res = fc.fomo_step(x, [x + 1, x - 1], loss, [0.0, 0.0])
    assert np.all(np.asarray(res.rejected)) and np.all(np.asarray(res.scores) == 0)
    assert np.array_equal(bits(res.params), bits(x))


# ---- a candidate equal to the local model, and duplicates ----------------------------------------


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_candidate_identical_to_local(norm):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(64).astype(np.float32)
    other = (x + 0.01 * rng.standard_normal(64)).astype(np.float32)
    cands, losses = [x.copy(), other], [1.0, 1.5]
    res = fc.fomo_step(x, cands, 2.0, losses, norm=norm)  # d = 0, eps = 0: rejected
    assert res.distances[0] == 0.0 and bool(res.rejected[0]) and res.scores[0] == 0.0
    assert np.array_equal(res.weights, [0.0, 1.0])
    res = fc.fomo_step(x, cands, 2.0, losses, norm=norm, eps=1e-5)  # eps > 0: a huge, finite score
    assert not bool(res.rejected[0]) and res.scores[0] == (2.0 - 1.0) / (0.0 + 1e-5)
    expected = ref.fomo_step(x, cands, 2.0, losses, norm=norm, eps=1e-5)
    assert_vector_close("weights", res.weights, expected.weights, weight_rtol(64, 2, "float32"))
    assert res.weights[0] > 0.99
    assert_update_close(
        "params",
        "float32",
        2,
        res.params,
        expected.params,
        ref.fomo_step(x, cands, 2.0, losses, norm=norm, eps=1e-5, rounded=False).params,
        np.abs(x) + res.weights[1] * np.abs(other.astype(np.float64) - x),
        weight_error=weight_rtol(64, 2, "float32"),
    )


@pytest.mark.parametrize("form", ["list", "block", "broadcast"])
def test_duplicate_candidates_get_identical_weights(form):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(300)
    a, b = x + 0.1 * rng.standard_normal(300), x + 0.2 * rng.standard_normal(300)
    if form == "list":
        cands, losses = [a, a.copy(), b], [1.0, 1.0, 1.5]
    elif form == "block":
        cands, losses = np.stack([a, a, b]), [1.0, 1.0, 1.5]
    else:  # three rows at one address: a zero-stride (read-only) block
        cands, losses = np.broadcast_to(a, (3, 300)), [1.0, 1.0, 1.0]
    res = fc.fomo_step(x, cands, 2.0, losses)
    assert res.weights[0] == res.weights[1] and res.scores[0] == res.scores[1]
    expected = ref.fomo_step(x, cands, 2.0, losses)
    assert_vector_close("weights", res.weights, expected.weights, weight_rtol(300, 3, "float64"))
    rounded = ref.fomo_step(x, cands, 2.0, losses, rounded=False).params
    magnitude = np.abs(x) + sum(
        w * np.abs(c - x) for w, c in zip(expected.weights, [a, a, a if form == "broadcast" else b])
    )
    assert_update_close(
        "params",
        "float64",
        3,
        res.params,
        expected.params,
        rounded,
        magnitude,
        weight_error=weight_rtol(300, 3, "float64"),
    )


# ---- out aliasing the input; read-only inputs --------------------------------------------------


@pytest.mark.parametrize("backend,dtype", ALL)
@pytest.mark.parametrize("structure", ["flat", "list", "dict"])
def test_in_place_equals_out_of_place(backend, dtype, structure):
    rng = np.random.default_rng(6)
    shapes = [(30, 7), (5,), ()]
    if structure == "flat":
        shapes = [(1000,)]

    def model(values, views=("transposed", "strided", "offset")):
        leaves = [place_leaf(v, dtype, backend, view).view for v, view in zip(values, views)]
        if structure == "flat":
            return leaves[0]
        return leaves if structure == "list" else {f"k{i}": leaf for i, leaf in enumerate(leaves)}

    xv = [rng.standard_normal(s) for s in shapes]
    cands = [model([v + 0.1 * rng.standard_normal(v.shape) for v in xv], ("contiguous",) * 3) for _ in range(3)]
    local = model(xv)
    expected = fc.fomo_step(local, cands, 2.0, [1.0, 3.0, 1.5])
    leaves = [local] if structure == "flat" else (local if structure == "list" else list(local.values()))
    pointers = [leaf.ctypes.data if backend == "numpy" else leaf.data_ptr() for leaf in leaves]
    got = fc.fomo_step(local, cands, 2.0, [1.0, 3.0, 1.5], out=local)
    assert got.params is local
    new_leaves = [local] if structure == "flat" else (local if structure == "list" else list(local.values()))
    assert [leaf.ctypes.data if backend == "numpy" else leaf.data_ptr() for leaf in new_leaves] == pointers
    for a, e in zip(
        new_leaves,
        [expected.params]
        if structure == "flat"
        else (expected.params if structure == "list" else list(expected.params.values())),
    ):
        assert np.array_equal(bits(a), bits(e))
    assert np.array_equal(bits(got.weights), bits(expected.weights))


def readonly(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.setflags(write=False)
    return a


def test_readonly_inputs_work():
    rng = np.random.default_rng(7)
    x = rng.standard_normal(500).astype(np.float32)
    block = (x + 0.1 * rng.standard_normal((4, 500))).astype(np.float32)
    losses = [1.0, 2.5, 1.5, 0.5]
    writable = fc.fomo_step(x, block, 2.0, losses)
    for cands in (readonly(block), [readonly(c) for c in block]):
        got = fc.fomo_step(readonly(x), cands, 2.0, losses)
        assert np.array_equal(bits(got.params), bits(writable.params))
        assert np.array_equal(bits(got.weights), bits(writable.weights))
        assert got.params.flags.writeable  # a fresh output, not a view of the read-only input
    layers = [x[:200].reshape(20, 10), x[200:]]
    cand_layers = [[c[:200].reshape(20, 10), c[200:]] for c in block]
    writable = fc.fomo_step(layers, cand_layers, 2.0, losses)
    got = fc.fomo_step([readonly(a) for a in layers], [[readonly(a) for a in c] for c in cand_layers], 2.0, losses)
    for a, b in zip(got.params, writable.params):
        assert np.array_equal(bits(a), bits(b))
    # a read-only broadcast local model (stride 0) is a valid input too
    flat = np.broadcast_to(np.float32(0.5), (500,))
    assert np.array_equal(fc.apply_update(flat, block, [0.0, 0.0, 0.0, 0.0]), np.full(500, 0.5, np.float32))


def test_readonly_out_is_refused_and_nothing_is_written():
    x = np.arange(10, dtype=np.float32)
    cands = [x + 1, x + 2]
    out = readonly(np.full(10, 7.0, dtype=np.float32))
    with pytest.raises(ValueError, match=r"out .*read-only"):
        fc.fomo_step(x, cands, 2.0, [1.0, 1.0], out=out)
    with pytest.raises(ValueError, match=r"out .*read-only"):
        fc.apply_update(x, cands, [0.5, 0.5], out=out)
    assert np.array_equal(out, np.full(10, 7.0, dtype=np.float32))
    ro = readonly(x)
    with pytest.raises(ValueError, match=r"out .*read-only"):
        fc.fomo_step(ro, cands, 2.0, [1.0, 1.0], out=ro)
    assert np.array_equal(ro, x)
    # a dict whose second layer only is read-only: the first layer is not written either
    first, second = np.zeros(3, np.float32), readonly(np.zeros(2, np.float32))
    local = {"a": np.ones(3, np.float32), "b": np.ones(2, np.float32)}
    with pytest.raises(ValueError, match=r'out\["b"\] is read-only'):
        fc.fomo_step(local, [{"a": local["a"] + 1, "b": local["b"] + 1}], 2.0, [1.0], out={"a": first, "b": second})
    assert not np.any(first)


# ---- mixed dtypes, non-floating entries, loss types ----------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_mixed_layer_dtypes_match_reference(backend):
    rng = np.random.default_rng(8)
    dtypes = ["float16", "float32", "float64"] + (["bfloat16"] if backend == "torch" else [])
    shapes = [(13, 3), (70,), (4, 4), (33,)][: len(dtypes)]
    xv = [rng.standard_normal(s) for s in shapes]
    cv = [[v + 0.2 * rng.standard_normal(v.shape) for v in xv] for _ in range(3)]
    local = {d: ordinary(backend, d, v) for d, v in zip(dtypes, xv)}
    cands = [{d: ordinary(backend, d, v) for d, v in zip(dtypes, c)} for c in cv]
    losses = [1.0, 1.7, 2.4]
    got = fc.fomo_step(local, cands, 2.0, losses)
    expected = ref.fomo_step(local, cands, 2.0, losses)
    value = ref.fomo_step(local, cands, 2.0, losses, rounded=False).params
    n = sum(int(np.prod(s)) for s in shapes)
    assert_vector_close("weights", got.weights, expected.weights, weight_rtol(n, 3, "float32"))
    for d in dtypes:
        assert got.params[d].dtype == local[d].dtype
        x = to_f64(local[d])
        magnitude = np.abs(x) + sum(w * np.abs(to_f64(c[d]) - x) for w, c in zip(expected.weights, cands))
        assert_update_close(
            f"params[{d}]",
            d,
            3,
            got.params[d],
            expected.params[d],
            value[d],
            magnitude,
            weight_error=weight_rtol(n, 3, "float32"),
        )


def test_non_floating_entries_are_left_alone():
    """BatchNorm's num_batches_tracked: copied into a new output, untouched in a given one, and
    ignored in candidates (whatever their shape)."""
    local = {"w": torch.arange(6, dtype=torch.float32), "n": torch.tensor(5), "m": torch.ones(3)}
    cands = [{"w": local["w"] + 1, "n": torch.tensor([1, 2, 3]), "m": torch.zeros(3)}]
    res = fc.fomo_step(local, cands, 2.0, [1.0])
    assert res.params["n"] is not local["n"] and res.params["n"].dtype == torch.int64 and int(res.params["n"]) == 5
    assert torch.equal(res.params["w"], local["w"] + 1) and torch.equal(res.params["m"], torch.zeros(3))
    out = {"w": torch.empty(6), "n": torch.tensor(99), "m": torch.empty(3)}
    fc.fomo_step(local, cands, 2.0, [1.0], out=out)
    assert int(out["n"]) == 99 and torch.equal(out["w"], res.params["w"])
    d = fc.candidate_distances(local, cands)
    assert d[0].item() == pytest.approx(math.sqrt(6 + 3), rel=1e-15)  # w moves by 1 in 6 places, m in 3


def test_losses_of_any_array_type_give_the_same_result():
    rng = np.random.default_rng(9)
    x = rng.standard_normal(50)
    cands = x + 0.1 * rng.standard_normal((3, 50))
    plain = fc.fomo_step(x, cands, 2.0, [1.0, 3.0, 1.5])
    for l0, ln in [
        (2, [1, 3, 1.5]),
        (np.float32(2.0), np.array([1.0, 3.0, 1.5], dtype=np.float32)),
        (np.array(2.0), (1.0, 3.0, 1.5)),
        (torch.tensor(2.0, requires_grad=True), torch.tensor([1.0, 3.0, 1.5], requires_grad=True)),
        (torch.tensor(2.0, dtype=torch.float64), torch.tensor([1.0, 3.0, 1.5], dtype=torch.float64)),
    ]:
        got = fc.fomo_step(x, cands, l0, ln)
        assert np.array_equal(bits(got.weights), bits(plain.weights))
        assert np.array_equal(bits(got.params), bits(plain.params))


# ---- floating-point extremes ----------------------------------------------------------------------


def test_overflowing_score_is_rejected():
    """(L0 - L_n) / d overflows for a candidate a subnormal away: rejected, never reaching the model
    (an infinite score would make every weight NaN)."""
    x = np.zeros(4)
    near = np.array([1e-320, 0.0, 0.0, 0.0])
    far = np.array([1.0, 1.0, 0.0, 0.0])
    res = fc.fomo_step(x, [near, far], 2.0, [1.0, 1.5], norm="l1")
    expected = ref.fomo_step(x, [near, far], 2.0, [1.0, 1.5], norm="l1")
    assert np.array_equal(res.rejected, [True, False]) and np.array_equal(expected.rejected, [True, False])
    assert np.array_equal(res.weights, [0.0, 1.0])
    assert np.array_equal(res.params, far)


def test_weights_of_huge_finite_scores():
    """Two finite scores near 1e308 each: their sum overflows float64, yet both are accepted and
    must share the weight (the kernels rescale by the largest score)."""
    x = np.zeros(1)
    cands = np.array([[1e-308], [1e-308]])  # d = 1e-308, L0 - L_n = 1: s = 1e308 each, both finite
    res = fc.fomo_step(x, cands, 1.0, [0.0, 0.0], norm="l1")
    assert np.all(np.isfinite(res.scores)) and not np.any(res.rejected)
    assert np.array_equal(res.weights, ref.compute_weights(x, cands, 1.0, [0.0, 0.0], norm="l1"))  # [0.5, 0.5]


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_bfloat16_differences_beyond_float32_squares(norm):
    """16-bit distances add the terms of four elements in float32; a bfloat16 difference of 1e20
    squares past float32's range, and the kernels then sum that candidate again in float64: the
    distance stays finite and the candidate keeps its weight."""
    x = torch.zeros(40, dtype=torch.bfloat16)
    cands = torch.zeros(2, 40, dtype=torch.bfloat16)
    cands[0, 3], cands[0, 20], cands[1, 5] = 1e20, -3e19, 1.0
    res = fc.fomo_step(x, cands, 2.0, [1.0, 1.5], norm=norm)
    expected = ref.fomo_step(x, cands, 2.0, [1.0, 1.5], norm=norm)
    assert not res.rejected.any() and torch.isfinite(res.distances).all()
    assert_vector_close("distances", res.distances, expected.distances, distance_rtol(40, "bfloat16"))
    assert_vector_close("weights", res.weights, expected.weights, weight_rtol(40, 2, "bfloat16"))


SIXTEEN_BIT = [("numpy", "float16"), ("torch", "float16"), ("torch", "bfloat16")]


@pytest.mark.parametrize("backend,dtype", SIXTEEN_BIT)
def test_sixteen_bit_storage_rounds_once_to_nearest_even(backend, dtype):
    """Weight 1/2: the kernels' float32 value x + (c - x) / 2 = (x + c) / 2 is exact when x and c
    lie within a few binades, so the stored result must be the correctly rounded midpoint, bit for
    bit, ties to even included (about half the elements are ties), in the vector body and the
    scalar tail, for normal numbers and subnormals alike."""
    mantissa, bias = {"float16": (10, 15), "bfloat16": (7, 127)}[dtype]
    rng = np.random.default_rng(10)
    n = 203
    subnormal = np.arange(n) % 5 == 0
    exps = np.where(subnormal, rng.integers(0, 3, n), rng.integers(bias - 3, bias + 3, n)).astype(np.uint32)

    def draw_bits():
        sign = rng.integers(0, 2, n).astype(np.uint32) << np.uint32(15)
        mant = rng.integers(0, 2**mantissa, n).astype(np.uint32)
        return (sign | (exps << np.uint32(mantissa)) | mant).astype(np.uint16)

    def from_bits(raw):
        if backend == "numpy":
            return raw.view(np.float16)
        return torch.from_numpy(raw.view(np.int16)).view(TORCH_DTYPES[dtype])

    x, c = from_bits(draw_bits()), from_bits(draw_bits())
    midpoint = (to_f64(x) + to_f64(c)) / 2
    ties = np.array([ref.round_to_dtype(v, "float32") == v and ref.round_to_dtype(v, dtype) != v for v in midpoint])
    assert ties.sum() > n // 4  # the test exercises rounding, not just copying
    got = fc.apply_update(x, [c], [0.5])
    expected = ref.apply_update(x, [c], [0.5])
    assert np.array_equal(to_f64(got), expected), np.flatnonzero(to_f64(got) != expected)


EMPTY_SHAPES = [(0,), (2, 0), (0, 3), (4, 0, 2), (1, 0)]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_empty_layers_are_updated(backend):
    """Layers with no elements in every position of the shape: nothing to measure or move, and
    nothing to refuse."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal(5)

    def model(values):
        leaves = [ordinary(backend, "float32", np.zeros(shape)) for shape in EMPTY_SHAPES]
        return leaves + [ordinary(backend, "float32", values)]

    local, cands = model(x), [model(x + 1.0), model(x - 1.0)]
    res = fc.fomo_step(local, cands, 2.0, [1.0, 3.0])
    assert [tuple(p.shape) for p in res.params[:-1]] == EMPTY_SHAPES
    assert np.array_equal(to_f64(res.params[-1]), to_f64(cands[0][-1]))
    out = model(np.zeros(5))
    assert fc.apply_update(local, cands, [1.0, 0.0], out=out) is out


def test_out_written_only_inside_its_view():
    x = np.arange(12, dtype=np.float32)
    placed = place_leaf(np.zeros(12), "float32", "numpy", "strided")
    before = bits(placed.base)
    fc.fomo_step(x, [x + 1], 2.0, [1.0], out=placed.view)
    assert untouched_outside(placed, before)
    assert np.array_equal(placed.view, x + 1)
