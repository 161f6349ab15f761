"""Fuzzing every public op with hostile inputs: whatever the arguments, a call either returns or
raises ValueError/TypeError (never another exception, never a crash), and a call that raises
leaves every array it was given as it was.

The input classes are the ones that once broke something: numbers beyond float64 (10**400),
booleans, complex numbers, text and None where numbers belong; NaN and infinities; torch tensors
with the negative bit set; tensors autograd tracks and inference tensors as outputs; weights beyond
float32's range; sample weights near float64's limits; layer widths whose products overflow 64 bits
over stride-0 inputs; arrays of wrong shapes and dtypes; and corrupted checkpoint files.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fomo_core as fc
from fomo_core.adapters.torch import CandidateBank

ALLOWED = (ValueError, TypeError)
P = 6


def _neg(t: torch.Tensor) -> torch.Tensor:
    return torch._neg_view(-t)  # equal to t, negative bit set (as z.conj().imag has it)


# ---- hostile values, by role ----------------------------------------------------------------

scalars = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([True, False, np.bool_(True), 1 + 1j, np.complex128(2), "0.5", b"1", None, [0.5], (), {}]),
    st.sampled_from([np.float32(0.5), np.float16(-1), np.int64(3), np.uint8(7), np.array(0.25), np.array([0.5])]),
    st.sampled_from(
        [
            torch.tensor(0.5),
            torch.tensor(True),
            torch.tensor(1 + 1j),
            _neg(torch.tensor(0.75, dtype=torch.float64)),
            torch.tensor([0.5, 1.0]),
            torch.tensor(3),
        ]
    ),
)


@st.composite
def vectors(draw, m: int):
    """Per-candidate vectors (losses, weights, scores) of length m, or of the wrong length/kind."""
    length = draw(st.sampled_from([m, m, m, 0, m + 1]))
    kind = draw(st.sampled_from(["list", "numpy", "torch", "neg", "bool", "complex", "object", "2d", "scalar"]))
    values = [
        draw(st.floats(-1e3, 1e3) | st.sampled_from([np.nan, np.inf, -np.inf, 1e300, 1e39])) for _ in range(length)
    ]
    if kind == "list":
        return [draw(st.sampled_from([v, v, v])) if draw(st.booleans()) else draw(scalars) for v in values]
    if kind == "numpy":
        with np.errstate(over="ignore"):  # 1e300 becomes inf in float32: one more hostile value
            return np.array(values, dtype=draw(st.sampled_from([np.float64, np.float32])))
    if kind == "torch":
        return torch.tensor(values, dtype=draw(st.sampled_from([torch.float64, torch.float32])))
    if kind == "neg":
        return _neg(torch.tensor(values, dtype=torch.float64))
    if kind == "bool":
        return np.ones(length, dtype=bool) if draw(st.booleans()) else torch.ones(length, dtype=torch.bool)
    if kind == "complex":
        return np.array(values, dtype=complex) if draw(st.booleans()) else torch.tensor(values, dtype=torch.complex128)
    if kind == "object":
        return np.array([10**400] * length, dtype=object)
    if kind == "2d":
        return np.array(values)[None, :]
    return draw(scalars)


@st.composite
def models(draw, dtype_choice=None):
    """A flat model [P] as NumPy or torch, possibly with the negative bit, a wrong shape or dtype."""
    library = draw(st.sampled_from(["numpy", "torch"]))
    dtype = dtype_choice or draw(st.sampled_from(["float32", "float64", "float16"]))
    values = np.array([draw(st.floats(-10, 10) | st.sampled_from([np.nan, 1e30, -0.0])) for _ in range(P)])
    shape_change = draw(st.sampled_from([None, None, None, "short", "2d"]))
    if shape_change == "short":
        values = values[:-1]
    with np.errstate(over="ignore"):  # 1e30 becomes inf in float16: one more hostile value
        array = np.ascontiguousarray(values.astype(dtype))
    if shape_change == "2d":
        array = array[None, :]
    if library == "numpy":
        return array
    t = torch.from_numpy(array.copy())
    return _neg(t) if draw(st.booleans()) and draw(st.booleans()) else t


def snapshot(*arrays) -> list:
    out = []
    for a in arrays:
        if isinstance(a, torch.Tensor):
            out.append(a.detach().resolve_neg().clone())
        elif isinstance(a, np.ndarray):
            out.append(a.copy())
        else:
            out.append(None)
    return out


def same(before: list, arrays) -> bool:
    for b, a in zip(before, arrays):
        if b is None:
            continue
        now = a.detach().resolve_neg() if isinstance(a, torch.Tensor) else a
        if isinstance(b, torch.Tensor):
            if not torch.equal(torch.nan_to_num(b), torch.nan_to_num(now)) or not torch.equal(b.isnan(), now.isnan()):
                return False
        elif not np.array_equal(b, now, equal_nan=True):
            return False
    return True


def call_safely(fn, *arrays) -> None:
    """Runs fn(); only ValueError/TypeError may escape, and then no array may have changed."""
    before = snapshot(*arrays)
    try:
        fn()
    except ALLOWED:
        assert same(before, arrays), "a call that raised changed an input"


# ---- the ops --------------------------------------------------------------------------------

OPS = ("candidate_distances", "first_order_scores", "compute_weights", "apply_update", "fomo_step", "plan")


@settings(max_examples=300)
@given(op=st.sampled_from(OPS), m=st.integers(0, 3), data=st.data())
def test_ops_survive_hostile_arguments(op, m, data):
    local = data.draw(models())
    dtype = str(local.dtype).replace("torch.", "")
    candidates = [data.draw(models(dtype if data.draw(st.booleans()) else None)) for _ in range(m)]
    if candidates and data.draw(st.booleans()) and all(c.shape == local.shape for c in candidates):
        try:
            candidates = np.stack(
                [np.asarray(c.resolve_neg()) if isinstance(c, torch.Tensor) else c for c in candidates]
            )
        except (TypeError, ValueError):
            pass
    local_loss = data.draw(scalars)
    losses = data.draw(vectors(m))
    options = {}
    if op not in ("candidate_distances", "apply_update"):
        options = data.draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "eps": scalars,
                    "norm": st.sampled_from(["l2", "l1", "l3", None, 2]),
                    "max_distance": scalars,
                },
            )
        )
    if op in ("fomo_step", "plan"):
        options.update(data.draw(st.fixed_dictionaries({}, optional={"all_scores": scalars | st.sampled_from(["no"])})))
    out = None
    if op in ("apply_update", "fomo_step", "plan") and data.draw(st.booleans()):
        out = data.draw(st.sampled_from(["local", "new", "param", "inference"]))
        if out == "local":
            out = local
        elif out == "new":
            out = data.draw(models(dtype))
        elif out == "param" and isinstance(local, torch.Tensor):
            out = nn.Parameter(local.detach().resolve_neg().clone())
        elif out == "inference" and isinstance(local, torch.Tensor):
            with torch.inference_mode():
                out = local.detach().resolve_neg().clone()
        else:
            out = None
    arrays = [local, out] + (list(candidates) if isinstance(candidates, list) else [candidates])

    def run():
        fn = getattr(fc, op)
        if op == "plan":  # a plan's fomo_step: the same checks, kept between calls
            fn(local, candidates, out=out).fomo_step(local_loss, losses, **options)
        elif op == "candidate_distances":
            fn(
                local,
                candidates,
                **data.draw(st.fixed_dictionaries({}, optional={"norm": st.sampled_from(["l2", "x"])})),
            )
        elif op == "apply_update":
            fn(local, candidates, losses, out=out)
        elif op == "fomo_step":
            fn(local, candidates, local_loss, losses, out=out, **options)
        else:
            fn(local, candidates, local_loss, losses, **options)

    call_safely(run, *arrays)


# ---- dense evaluation -----------------------------------------------------------------------

# Small widths, or widths whose products overflow 64-bit counts: a width in between is legal and
# would really be evaluated (gigabytes of scratch), which is not what this test is after.
widths = st.one_of(st.integers(1, 8), st.sampled_from([2**58, 2**59, 2**60, 2**61, 2**62]))


@settings(max_examples=120)
@given(sizes=st.lists(widths, min_size=2, max_size=4), m=st.integers(1, 2), rows=st.integers(1, 3), data=st.data())
def test_evaluate_candidates_survives_hostile_sizes(sizes, m, rows, data):
    output = data.draw(st.sampled_from(["softmax", "squared_error"]))
    spec = fc.DenseSpec(sizes=tuple(sizes), output=output)
    p = spec.num_params % 2**61  # what a wrapped count would have matched (and torch can express)
    if rows * sizes[0] >= 2**63:
        rows = 1  # torch's own element count must fit
    zero = torch.zeros(1)
    X = zero.expand(rows, sizes[0])  # stride 0: any width costs nothing
    candidates = zero.expand(m, max(p, 1)) if m else torch.zeros(0, max(p, 1))
    if data.draw(st.booleans()):
        candidates = torch.zeros(m, 8)  # the small arrays a wrapped parameter count would accept
    y = (
        torch.zeros(rows, dtype=torch.int64)
        if output == "softmax"
        else torch.zeros(rows, sizes[-1] if sizes[-1] < 8 else 1)
    )
    weight = data.draw(st.sampled_from([None, "big", "tiny", "bad"]))
    sample_weight = {
        None: None,
        "big": torch.full((rows,), 1e307, dtype=torch.float64),
        "tiny": torch.full((rows,), 1e-320, dtype=torch.float64),
        "bad": ["x"] * rows,
    }[weight]
    try:
        ev = fc.evaluate_candidates(spec, candidates, X, y, sample_weight=sample_weight)
    except ALLOWED:
        return
    assert ev.loss.shape == (m,)


# ---- Affinity -------------------------------------------------------------------------------


@settings(max_examples=200)
@given(data=st.data())
def test_affinity_survives_hostile_arguments(data):
    n = data.draw(st.integers(1, 5))
    aff = fc.Affinity(n, seed=0)
    action = data.draw(st.sampled_from(["new", "select", "update"]))
    if action == "new":
        options = data.draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "epsilon": scalars,
                    "epsilon_decay": scalars,
                    "self_affinity": scalars,
                    "selection": st.sampled_from(["top_m", "nope", None]),
                    "seed": scalars,
                },
            )
        )
        call_safely(lambda: fc.Affinity(data.draw(scalars | st.integers(-2, 5)), **options))
    elif action == "select":
        call_safely(
            lambda: aff.select(
                data.draw(scalars | st.integers(-1, n)),
                data.draw(scalars | st.integers(0, 6)),
                round=data.draw(scalars | st.integers(0, 9)),
                epsilon=data.draw(st.none() | scalars),
            ),
            aff.matrix,
        )
    else:
        ids = data.draw(st.lists(st.integers(-1, n), max_size=3))
        call_safely(lambda: aff.update(data.draw(st.integers(-1, n)), ids, data.draw(vectors(len(ids)))), aff.matrix)


def _checkpoint_bytes(n: int) -> bytes:
    buffer = io.BytesIO()
    aff = fc.Affinity(n, seed=0)
    meta = {"format": "fomo_core.Affinity/1", "options": aff.options(), "rng": aff.rng.bit_generator.state}
    np.savez(buffer, matrix=aff.matrix, meta=np.array(json.dumps(meta)))
    return buffer.getvalue()


@settings(max_examples=200)
@given(data=st.data())
def test_affinity_load_survives_corrupted_files(tmp_path_factory, data):
    raw = bytearray(_checkpoint_bytes(data.draw(st.integers(1, 4))))
    kind = data.draw(st.sampled_from(["flip", "truncate", "splice", "entry"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    elif kind == "splice":
        at = data.draw(st.integers(0, len(raw)))
        raw = raw[:at] + bytes(data.draw(st.binary(max_size=64))) + raw[at:]
    else:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as z:
            z.writestr("matrix.npy", data.draw(st.binary(max_size=200)))
            z.writestr("meta.npy", data.draw(st.binary(max_size=200)))
        raw = bytearray(buffer.getvalue())
    path = tmp_path_factory.mktemp("load") / "affinity.npz"
    path.write_bytes(bytes(raw))
    try:
        loaded = fc.Affinity.load(path)
    except ALLOWED as e:
        assert str(path) in str(e)
        return
    assert np.isfinite(loaded.matrix).all()


# ---- CandidateBank --------------------------------------------------------------------------


@settings(max_examples=150)
@given(data=st.data())
def test_candidate_bank_survives_hostile_models(data):
    model = nn.Linear(2, 2)
    bank = CandidateBank(model, 3)
    bank.fill([{k: torch.ones_like(v) for k, v in model.state_dict().items()}])
    before = bank.buffer.clone()
    entry = st.one_of(st.sampled_from(["text", "complex", "bool", "meta", "short", "neg", "good", "numpy", "nan"]))

    def make(kind: str):
        if kind == "flat":
            return torch.zeros(bank.layout.size)
        out = {}
        for k, v in model.state_dict().items():
            choice = data.draw(entry)
            out[k] = {
                "text": np.array(["a"] * v.numel()).reshape(v.shape),
                "complex": torch.zeros(v.shape, dtype=torch.complex64),
                "bool": torch.zeros(v.shape, dtype=torch.bool),
                "meta": torch.zeros(v.shape, device="meta"),
                "short": torch.zeros(v.numel() + 1),
                "neg": _neg(torch.ones(v.shape)),
                "good": torch.full(v.shape, 2.0),
                "numpy": np.full(v.shape, 3.0, dtype=np.float32),
                "nan": torch.full(v.shape, float("nan")),
            }[choice]
        return out

    models_ = [make(data.draw(st.sampled_from(["dict", "dict", "flat"]))) for _ in range(data.draw(st.integers(0, 4)))]
    try:
        bank.fill(models_)
    except ALLOWED:
        assert torch.equal(bank.buffer.nan_to_num(), before.nan_to_num()) and bank.count == 1
        return
    assert bank.count == len(models_)
