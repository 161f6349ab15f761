"""Bad input: a ValueError or TypeError whose message names the argument (and says what was
expected and what was given), raised before anything is written: every buffer of a rejected call,
`out` above all, keeps its bits."""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np
import pytest
import torch
from strategies import bits

import fomo_core as fc

MODEL_OPS = ("candidate_distances", "first_order_scores", "compute_weights", "fomo_step", "apply_update")
LOSS_OPS = ("first_order_scores", "compute_weights", "fomo_step")
NORM_OPS = ("candidate_distances",) + LOSS_OPS
OUT_OPS = ("fomo_step", "apply_update")


def flat() -> dict:
    x = np.arange(6, dtype=np.float32) * 0.5
    return {"local": x, "cands": np.stack([x + 1, x - 1]), "l0": 2.0, "losses": [1.0, 3.0], "weights": [0.5, 0.5]}


def layered() -> dict:
    def model(shift):
        return {"w": np.full((2, 3), shift, np.float32), "b": np.full(3, shift, np.float32), "n": np.array(4)}

    return {
        "local": model(0.0),
        "cands": [model(1.0), model(-1.0)],
        "l0": 2.0,
        "losses": [1.0, 3.0],
        "weights": [0.5, 0.5],
    }


def with_(base: Callable[[], dict], **changes) -> Callable[[], dict]:
    """A case: the base call with some parts replaced (each change a value or a function of the
    base parts)."""

    def build():
        parts = base()
        for key, value in changes.items():
            parts[key] = value(parts) if callable(value) else value
        return parts

    return build


def invoke(op: str, parts: dict) -> Any:
    opts = {k: parts[k] for k in ("norm", "eps") if k in parts}
    out = {"out": parts["out"]} if "out" in parts else {}
    if op == "candidate_distances":
        return fc.candidate_distances(parts["local"], parts["cands"], **{k: v for k, v in opts.items() if k == "norm"})
    if op == "apply_update":
        return fc.apply_update(parts["local"], parts["cands"], parts["weights"], **out)
    args = (parts["local"], parts["cands"], parts["l0"], parts["losses"])
    if op == "fomo_step":
        return fc.fomo_step(*args, **opts, **out)
    return getattr(fc, op)(*args, **opts)


def dense_arrays(obj: Any):
    """Every CPU dense array inside a call's arguments (to check their bits are unchanged)."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from dense_arrays(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from dense_arrays(v)
    elif isinstance(obj, np.ndarray) and obj.dtype.kind in "fiuc":
        yield obj
    elif isinstance(obj, torch.Tensor) and obj.layout == torch.strided and obj.device.type == "cpu":
        yield obj


def bad_strides(x: np.ndarray) -> np.ndarray:
    """x's first elements at a byte stride that is no multiple of the item size."""
    raw = np.zeros(x.size * 8, dtype=np.uint8)
    return np.lib.stride_tricks.as_strided(raw.view(np.float32), shape=x.shape, strides=(6,))


def readonly(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.setflags(write=False)
    return a


def out_dict_with_bad_second_leaf(p):
    return {"w": np.full((2, 3), 7.0, np.float32), "b": np.zeros(4, np.float32), "n": np.array(0)}


def out_dict_overlapping_leaves(p):
    buf = np.full(8, 7.0, np.float32)
    return {"w": buf[:6].reshape(2, 3), "b": buf[5:8], "n": np.array(0)}


def overlapping_rows(p):
    raw = np.full(8, 7.0, np.float32)
    return [np.lib.stride_tricks.as_strided(raw, shape=(2, 6), strides=(4, 4), writeable=True)]


# (id, ops, build, exception, message pattern that names the argument)
CASES = [
    # local_params
    ("local-None", MODEL_OPS, with_(flat, local=None), TypeError, r"local_params must be an array.*got NoneType"),
    (
        "local-int",
        MODEL_OPS,
        with_(flat, local=lambda p: p["local"].astype(np.int32)),
        TypeError,
        r"local_params has dtype int32; expected float32",
    ),
    (
        "local-complex",
        MODEL_OPS,
        with_(flat, local=lambda p: p["local"].astype(np.complex64)),
        TypeError,
        r"local_params has dtype complex64",
    ),
    (
        "local-big-endian",
        MODEL_OPS,
        with_(flat, local=lambda p: p["local"].astype(">f4"), cands=lambda p: [c.astype(">f4") for c in p["cands"]]),
        TypeError,
        r"local_params has dtype >f4",
    ),
    (
        "local-leaf-not-array",
        MODEL_OPS,
        with_(flat, local=lambda p: [p["local"], 1.0], cands=lambda p: [[c, 1.0] for c in p["cands"]]),
        TypeError,
        r"local_params\[1\] must be an array, got float",
    ),
    (
        "local-meta-device",
        MODEL_OPS,
        with_(flat, local=torch.zeros(6, device="meta"), cands=[torch.zeros(6, device="meta")] * 2),
        TypeError,
        r"local_params is on device 'meta'",
    ),
    (
        "local-sparse",
        MODEL_OPS,
        with_(flat, local=[torch.zeros(6).to_sparse()], cands=[[torch.zeros(6).to_sparse()]] * 2),
        TypeError,
        r"local_params\[0\] is a torch.sparse_coo tensor",
    ),
    # candidate_params
    (
        "cands-1d",
        MODEL_OPS,
        with_(flat, cands=lambda p: p["cands"][0]),
        ValueError,
        r"candidate_params has shape \(6,\), expected \(M, 6\)",
    ),
    (
        "cands-3d",
        MODEL_OPS,
        with_(flat, cands=lambda p: p["cands"][None]),
        ValueError,
        r"candidate_params has shape \(1, 2, 6\)",
    ),
    (
        "cands-wrong-P",
        MODEL_OPS,
        with_(flat, cands=lambda p: p["cands"][:, :5]),
        ValueError,
        r"candidate_params\[0\] has shape \(5,\), expected \(6,\)",
    ),
    (
        "cands-dtype",
        MODEL_OPS,
        with_(flat, cands=lambda p: p["cands"].astype(np.float64)),
        TypeError,
        r"candidate_params\[0\] has dtype float64, expected float32",
    ),
    (
        "cands-torch-dtype",
        MODEL_OPS,
        with_(
            flat,
            local=lambda p: torch.from_numpy(p["local"]),
            cands=lambda p: [torch.from_numpy(p["cands"][0]), torch.from_numpy(p["cands"][1]).double()],
        ),
        TypeError,
        r"candidate_params\[1\] has dtype torch.float64, expected torch.float32",
    ),
    ("cands-int", MODEL_OPS, with_(flat, cands=5), TypeError, r"candidate_params must be a 2-D array .* got int"),
    (
        "cands-dict",
        MODEL_OPS,
        with_(flat, cands=lambda p: {"a": p["local"]}),
        TypeError,
        r"candidate_params must be .* got dict",
    ),
    (
        "cands-generator",
        MODEL_OPS,
        with_(flat, cands=lambda p: (c for c in p["cands"])),
        TypeError,
        r"candidate_params must be .* got generator",
    ),
    (
        "cand-None",
        MODEL_OPS,
        with_(flat, cands=[None, None]),
        TypeError,
        r"candidate_params\[0\] must be an array like local_params, got NoneType",
    ),
    (
        "cand-meta",
        MODEL_OPS,
        with_(flat, cands=lambda p: [p["cands"][0], torch.zeros(6, device="meta")]),
        TypeError,
        r"candidate_params\[1\] is on device 'meta'",
    ),
    (
        "cand-missing-key",
        MODEL_OPS,
        with_(layered, cands=lambda p: [p["cands"][0], {"w": p["cands"][1]["w"]}]),
        ValueError,
        r"candidate_params\[1\] has no entry 'b'",
    ),
    (
        "cand-extra-key",
        MODEL_OPS,
        with_(layered, cands=lambda p: [dict(p["cands"][0], zzz=p["local"]["b"]), p["cands"][1]]),
        ValueError,
        r"candidate_params\[0\] has entry 'zzz', which local_params does not have",
    ),
    (
        "cand-leaf-shape",
        MODEL_OPS,
        with_(layered, cands=lambda p: [p["cands"][0], dict(p["cands"][1], w=np.zeros((3, 2), np.float32))]),
        ValueError,
        r'candidate_params\[1\]\["w"\] has shape \(3, 2\), expected \(2, 3\)',
    ),
    (
        "cand-leaf-dtype",
        MODEL_OPS,
        with_(layered, cands=lambda p: [p["cands"][0], dict(p["cands"][1], b=np.zeros(3, np.float16))]),
        TypeError,
        r'candidate_params\[1\]\["b"\] has dtype float16, expected float32',
    ),
    (
        "cand-list-for-dict",
        MODEL_OPS,
        with_(layered, cands=lambda p: [list(c.values()) for c in p["cands"]]),
        TypeError,
        r"candidate_params\[0\] must be a mapping like local_params, got list",
    ),
    (
        "cand-short-list",
        MODEL_OPS,
        with_(flat, local=lambda p: [p["local"], p["local"][:2].copy()], cands=lambda p: [[c] for c in p["cands"]]),
        ValueError,
        r"candidate_params\[0\] has 1 entries, expected 2",
    ),
    # losses
    (
        "losses-length",
        LOSS_OPS,
        with_(flat, losses=[1.0]),
        ValueError,
        r"candidate_losses has length 1, expected one value per candidate \(2\)",
    ),
    ("losses-2d", LOSS_OPS, with_(flat, losses=[[1.0, 3.0]]), ValueError, r"candidate_losses must be 1-D"),
    ("losses-words", LOSS_OPS, with_(flat, losses=["low", "high"]), TypeError, r"candidate_losses(\[0\])? must be"),
    ("losses-complex", LOSS_OPS, with_(flat, losses=[1 + 1j, 2.0]), TypeError, r"candidate_losses(\[0\])? must be"),
    ("local-loss-list", LOSS_OPS, with_(flat, l0=[1.0, 2.0]), TypeError, r"local_loss must be a real number, got list"),
    ("local-loss-None", LOSS_OPS, with_(flat, l0=None), TypeError, r"local_loss must be a real number"),
    ("local-loss-word", LOSS_OPS, with_(flat, l0="high"), TypeError, r"local_loss must be a real number"),
    ("local-loss-complex", LOSS_OPS, with_(flat, l0=2 + 1j), TypeError, r"local_loss must be a real number"),
    ("local-loss-1d", LOSS_OPS, with_(flat, l0=np.array([2.0, 1.0])), TypeError, r"local_loss must be a real number"),
    # norm and eps
    ("norm-l3", NORM_OPS, with_(flat, norm="l3"), ValueError, r"norm must be 'l2' or 'l1', got 'l3'"),
    ("norm-upper", NORM_OPS, with_(flat, norm="L2"), ValueError, r"norm must be 'l2' or 'l1', got 'L2'"),
    ("norm-None", NORM_OPS, with_(flat, norm=None), ValueError, r"norm must be 'l2' or 'l1', got None"),
    ("norm-int", NORM_OPS, with_(flat, norm=2), ValueError, r"norm must be 'l2' or 'l1', got 2"),
    ("eps-negative", LOSS_OPS, with_(flat, eps=-1e-3), ValueError, r"eps must be a finite number in \[0.0, inf\]"),
    (
        "eps-nan",
        LOSS_OPS,
        with_(flat, eps=float("nan")),
        ValueError,
        r"eps must be a finite number in \[0.0, inf\], got nan",
    ),
    (
        "eps-inf",
        LOSS_OPS,
        with_(flat, eps=float("inf")),
        ValueError,
        r"eps must be a finite number in \[0.0, inf\], got inf",
    ),
    ("eps-None", LOSS_OPS, with_(flat, eps=None), TypeError, r"eps must be a real number, got NoneType"),
    ("eps-word", LOSS_OPS, with_(flat, eps="tiny"), TypeError, r"eps must be a real number, got str"),
    ("eps-vector", LOSS_OPS, with_(flat, eps=np.array([0.1, 0.2])), TypeError, r"eps must be a real number"),
    # weights
    (
        "weights-length",
        ("apply_update",),
        with_(flat, weights=[1.0]),
        ValueError,
        r"weights has length 1, expected one value per candidate \(2\)",
    ),
    (
        "weights-nan",
        ("apply_update",),
        with_(flat, weights=[0.5, float("nan")]),
        ValueError,
        r"weights\[1\] is nan; every weight must be finite",
    ),
    ("weights-inf", ("apply_update",), with_(flat, weights=[float("-inf"), 0.5]), ValueError, r"weights\[0\] is -inf"),
    ("weights-2d", ("apply_update",), with_(flat, weights=[[0.5, 0.5]]), ValueError, r"weights must be 1-D"),
    ("weights-words", ("apply_update",), with_(flat, weights=["half", "half"]), TypeError, r"weights(\[0\])? must be"),
    # out
    (
        "out-shape",
        OUT_OPS,
        with_(flat, out=np.full(5, 7.0, np.float32)),
        ValueError,
        r"out has shape \(5,\), expected \(6,\)",
    ),
    (
        "out-dtype",
        OUT_OPS,
        with_(flat, out=np.full(6, 7.0, np.float64)),
        TypeError,
        r"out has dtype float64, expected float32",
    ),
    ("out-readonly", OUT_OPS, with_(flat, out=readonly(np.full(6, 7.0, np.float32))), ValueError, r"out is read-only"),
    (
        "out-is-candidate",
        OUT_OPS,
        with_(flat, out=lambda p: p["cands"][1]),
        ValueError,
        r"out overlaps candidate_params\[1\]",
    ),
    (
        "out-overlaps-local",
        OUT_OPS,
        with_(flat, local=lambda p: np.arange(8, dtype=np.float32)[:6], out=lambda p: p["local"].base[2:8]),
        ValueError,
        r"out overlaps local_params without being the same array",
    ),
    (
        "out-list-for-flat",
        OUT_OPS,
        with_(flat, out=[np.full(6, 7.0, np.float32)]),
        TypeError,
        r"out must be an array like local_params, got list",
    ),
    ("out-2d", OUT_OPS, with_(flat, out=np.full((1, 6), 7.0, np.float32)), ValueError, r"out has shape \(1, 6\)"),
    (
        "out-missing-key",
        OUT_OPS,
        with_(layered, out={"w": np.full((2, 3), 7.0, np.float32), "n": np.array(0)}),
        ValueError,
        r"out has no entry 'b'",
    ),
    (
        "out-second-leaf-shape",
        OUT_OPS,
        with_(layered, out=out_dict_with_bad_second_leaf),
        ValueError,
        r'out\["b"\] has shape \(4,\), expected \(3,\)',
    ),
    (
        "out-leaves-overlap",
        OUT_OPS,
        with_(layered, out=out_dict_overlapping_leaves),
        ValueError,
        r'out\["b"\] overlaps out\["w"\]',
    ),
    (
        "out-expanded",
        OUT_OPS,
        with_(
            flat,
            local=lambda p: torch.from_numpy(p["local"]),
            cands=lambda p: torch.from_numpy(p["cands"]),
            out=lambda p: torch.full((1,), 7.0).expand(6),
        ),
        ValueError,
        r"out has elements that share memory",
    ),
    (
        "out-overlapping-rows",
        OUT_OPS,
        with_(
            flat,
            local=lambda p: [p["local"].reshape(2, 3).repeat(2, axis=1)],
            cands=lambda p: [[c.reshape(2, 3).repeat(2, axis=1)] for c in p["cands"]],
            out=overlapping_rows,
        ),
        ValueError,
        r"out\[0\] has elements that share memory",
    ),
    (
        "cand-bad-strides",
        MODEL_OPS,
        with_(flat, cands=lambda p: [p["cands"][0], bad_strides(p["local"])]),
        ValueError,
        r"candidate_params\[1\].*strides",
    ),
    ("local-loss-numeric-text", LOSS_OPS, with_(flat, l0="2.0"), TypeError, r"local_loss"),
    ("local-loss-bool", LOSS_OPS, with_(flat, l0=True), TypeError, r"local_loss"),
    ("losses-numeric-text", LOSS_OPS, with_(flat, losses=["1.0", "3.0"]), TypeError, r"candidate_losses"),
    ("eps-numeric-text", LOSS_OPS, with_(flat, eps="0.5"), TypeError, r"eps"),
]


def params(cases):
    out = []
    for ident, ops, build, exc, pattern in cases:
        out += [pytest.param(op, build, exc, pattern, id=f"{ident}-{op}") for op in ops]
    return out


def check_rejected(op, build, exc, pattern):
    parts = build()
    arrays = list(dense_arrays(parts))
    before = [bits(a) for a in arrays]
    with pytest.raises(exc) as info:
        invoke(op, parts)
    assert re.search(pattern, str(info.value)), f"message {str(info.value)!r} does not match {pattern!r}"
    for a, b in zip(arrays, before):
        assert np.array_equal(bits(a), b), "a rejected call wrote into a buffer"


@pytest.mark.parametrize("op,build,exc,pattern", params(CASES))
def test_bad_input_is_rejected_before_any_write(op, build, exc, pattern):
    check_rejected(op, build, exc, pattern)


def test_every_case_is_valid_without_its_fault():
    """The base calls the cases start from succeed (a case fails for its own fault only)."""
    for base in (flat, layered):
        for op in MODEL_OPS:
            invoke(op, base())
            invoke(op, dict(base(), norm="l1", eps=0.5))


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2", None, 10**30, np.float64(2.0)])
def test_bad_thread_counts(n, restore_threads):
    before = fc.get_num_threads()
    with pytest.raises(ValueError, match=r"n must be an integer"):
        fc.set_num_threads(n)
    assert fc.get_num_threads() == before


def test_thread_count_of_any_integer_type(restore_threads):
    fc.set_num_threads(np.int64(1))
    assert fc.get_num_threads() == 1


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown preset 'nope'; choose one of"):
        fc.get_preset("nope")
