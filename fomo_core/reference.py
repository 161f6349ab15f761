"""The pure-Python twin of every step op: the oracle the tests compare the kernels with (the
dense evaluation's twin is :mod:`fomo_core.reference_dense`).

Written from the kernels' promises (docs/design.md), not from the kernels: plain loops over
Python floats (IEEE float64), correctly rounded sums (:func:`math.fsum`, exact rationals where
float64 would overflow), the weights normalised exactly, and the updated parameters computed in
float64 and rounded *once* to the storage format. Speed is irrelevant here; keep inputs small.

It takes the same kinds of models as :mod:`fomo_core.ops` (a flat array, or a sequence or mapping
of layer arrays; candidates as a 2-D [M, P] array or a sequence of M models; NumPy arrays or torch
tensors of float16/bfloat16/float32/float64; entries that are not floating point take no part) and
returns NumPy results: per-candidate float64 vectors [M] in :class:`fomo_core.Scores` /
:class:`fomo_core.StepResult`, and updated parameters as float64 arrays laid out like the local
model (flat array, list/tuple, or dict), holding values representable in the storage dtype.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from . import _C
from ._models import as_float64, is_array, is_torch
from .ops import Scores, StepResult

__all__ = [
    "candidate_distances",
    "first_order_scores",
    "compute_weights",
    "apply_update",
    "fomo_step",
    "round_to_dtype",
    "storage_dtype",
]

_NORMS = tuple(_C.NORMS)  # the norm names the kernels know
_FLOATING = ("float16", "bfloat16", "float32", "float64")

# (precision in bits including the implicit one, smallest normal exponent, largest exponent)
_FORMATS = {
    "float16": (11, -14, 15),
    "bfloat16": (8, -126, 127),
    "float32": (24, -126, 127),
    "float64": (53, -1022, 1023),
}


# ---- storage formats ------------------------------------------------------------------------


def storage_dtype(array: Any) -> str:
    """The dtype name of a NumPy array or torch tensor ("float32", "bfloat16", "int64", ...)."""
    name = str(array.dtype)
    return name[len("torch.") :] if name.startswith("torch.") else np.dtype(array.dtype).name


def round_to_dtype(value: float, dtype: str) -> float:
    """`value` rounded to nearest (ties to even) in the binary format `dtype`, returned as a float.

    Exact: the scaling by powers of two and Python's round() on a float are exact operations, so
    this is one correct rounding, with gradual underflow and overflow to infinity.
    """
    precision, emin, emax = _FORMATS[dtype]
    if dtype == "float64" or value == 0.0 or not math.isfinite(value):
        return value
    exponent = math.frexp(abs(value))[1] - 1  # abs(value) in [2^exponent, 2^(exponent + 1))
    quantum = math.ldexp(1.0, max(exponent, emin) - precision + 1)
    magnitude = round(abs(value) / quantum) * quantum  # round() on a float: ties to even
    largest = math.ldexp(2.0 - math.ldexp(1.0, 1 - precision), emax)
    if magnitude > largest:
        magnitude = math.inf
    return math.copysign(magnitude, value)


# ---- models ---------------------------------------------------------------------------------


def _values(array: Any) -> list:
    """The stored values of an array as Python floats in C order (every storage format widens to
    float64 exactly)."""
    if is_torch(array):
        return array.detach().cpu().double().reshape(-1).tolist()
    return np.asarray(array).astype(np.float64).reshape(-1).tolist()


def _copy(array: Any) -> np.ndarray:
    if is_torch(array):
        return array.detach().cpu().numpy().copy()
    return np.array(array, copy=True)


class _Leaf:
    """One floating-point array of a model: where it sits, its storage dtype, shape and values."""

    def __init__(self, key: Any, array: Any):
        self.key = key
        self.dtype = storage_dtype(array)
        self.shape = tuple(int(s) for s in array.shape)
        self.values = _values(array)


class _Model:
    """A model split into its floating leaves (in the model's order) and everything else."""

    def __init__(self, model: Any, role: str):
        if is_array(model):
            self.kind, self.container, entries = "flat", None, [(None, model)]
        elif isinstance(model, Mapping):
            self.kind, self.container, entries = "mapping", dict, list(model.items())
        elif isinstance(model, Sequence) and not isinstance(model, (str, bytes)):
            self.kind, self.container, entries = "sequence", type(model), list(enumerate(model))
        else:
            raise TypeError(f"{role} must be an array, a sequence or a mapping of arrays")
        self.entries = entries
        self.floating = [_Leaf(k, a) for k, a in entries if storage_dtype(a) in _FLOATING]
        if self.kind == "flat" and (not self.floating or len(self.floating[0].shape) != 1):
            raise ValueError(f"{role} as one array must be a 1-D floating-point array")

    def candidate(self, candidate: Any, role: str) -> list:
        """The values of `candidate`'s floating leaves, leaf by leaf, checked against this model."""
        out = []
        for leaf in self.floating:
            array = candidate if self.kind == "flat" else candidate[leaf.key]
            if storage_dtype(array) != leaf.dtype or tuple(array.shape) != leaf.shape:
                raise ValueError(f"{role} does not match local_params at {leaf.key!r}")
            out.append(_values(array))
        return out

    def candidates(self, candidate_params: Any) -> list:
        """[M][L] lists of values: a 2-D array gives its rows, a sequence its models."""
        if self.kind == "flat" and is_array(candidate_params):
            if len(candidate_params.shape) != 2:
                raise ValueError("candidate_params as one array must be 2-D [M, P]")
            rows = [candidate_params[m] for m in range(int(candidate_params.shape[0]))]
        else:
            rows = list(candidate_params)
        return [self.candidate(c, f"candidate_params[{m}]") for m, c in enumerate(rows)]


def _losses(values: Any, m: int, name: str) -> list:
    out = [float(v) for v in as_float64(values).reshape(-1)]
    if len(out) != m:
        raise ValueError(f"{name} has {len(out)} values, expected {m}")
    return out


def _norm(norm: str) -> str:
    if norm not in _NORMS:
        raise ValueError(f"norm must be {' or '.join(map(repr, _NORMS))}, got {norm!r}")
    return norm


# ---- arithmetic -----------------------------------------------------------------------------


def _sum(terms: list) -> float:
    """The float64 sum of `terms`, correctly rounded, with IEEE semantics for inf and NaN."""
    try:
        return math.fsum(terms)
    except ValueError:  # inf + -inf
        return math.nan
    except OverflowError:  # an intermediate sum left the float64 range: add exactly instead
        exact = sum(map(Fraction, terms), Fraction(0))
        try:
            return float(exact)
        except OverflowError:
            return math.copysign(math.inf, exact)


def _distance(local: list, candidate: list, norm: str) -> float:
    """||c - x|| over every floating leaf: sqrt(sum (c - x)^2) or sum |c - x|."""
    terms = []
    for xs, cs in zip(local, candidate):
        for x, c in zip(xs, cs):
            diff = c - x
            terms.append(diff * diff if norm == "l2" else abs(diff))
    total = _sum(terms)
    return math.sqrt(total) if norm == "l2" else total


# The status codes of the kernels' results (one source: the extension's table).
_ACCEPTED, _REJECTED, _SKIPPED = (_C.STATUS[name] for name in ("accepted", "rejected", "skipped"))


def _score(
    local_loss: float, loss: float, distance: float, eps: float, measured: bool, max_distance: float = math.inf
) -> tuple:
    """(score, status): s = (L0 - Ln) / (d + eps), or 0 and rejected when a loss or the distance is
    NaN or infinite, when d + eps == 0, when d > max_distance (the guard), or when the quotient
    overflows; NaN and skipped when the distance was not measured."""
    if not (math.isfinite(local_loss) and math.isfinite(loss)):
        return 0.0, _REJECTED
    if not measured:
        return math.nan, _SKIPPED
    denominator = distance + eps
    if not math.isfinite(distance) or denominator == 0.0 or distance > max_distance:
        return 0.0, _REJECTED
    score = (local_loss - loss) / denominator
    if not math.isfinite(score):
        return 0.0, _REJECTED
    return score, _ACCEPTED


def _normalise(scores: list, status: list) -> list:
    """w_n = max(s_n, 0) / sum_m max(s_m, 0) over accepted candidates, exactly (rationals), then
    rounded once; all 0 when no accepted score is positive."""
    positive = [Fraction(s) if st == _ACCEPTED and s > 0 else Fraction(0) for s, st in zip(scores, status)]
    total = sum(positive, Fraction(0))
    if total == 0:
        return [0.0] * len(scores)
    return [float(p / total) for p in positive]


def _scores(
    model: _Model,
    candidates: list,
    local_loss: float,
    losses: list,
    norm: str,
    eps: float,
    all_scores: bool,
    max_distance: float,
) -> tuple:
    local = [leaf.values for leaf in model.floating]
    scores, distances, status = [], [], []
    for candidate, loss in zip(candidates, losses):
        finite = math.isfinite(local_loss) and math.isfinite(loss)
        measured = all_scores or (finite and loss < local_loss)
        distance = _distance(local, candidate, norm) if measured else math.nan
        score, st = _score(local_loss, loss, distance, eps, measured, max_distance)
        scores.append(score)
        distances.append(distance)
        status.append(st)
    return scores, distances, status


def _updated(model: _Model, candidates: list, weights: list, rounded: bool) -> Any:
    """theta_i + sum_n w_n (theta_n - theta_i) per element in float64 (one correctly rounded sum of
    the float64 terms), rounded once to the storage dtype; candidates with w_n == 0 are not read,
    and with no nonzero weight the local values come back unchanged."""
    used = [(w, c) for w, c in zip(weights, candidates) if w != 0.0]
    new_leaves = {}
    for index, leaf in enumerate(model.floating):
        values = []
        for j, x in enumerate(leaf.values):
            if used:
                x = _sum([x] + [w * (c[index][j] - x) for w, c in used])
            values.append(round_to_dtype(x, leaf.dtype) if rounded else x)
        new_leaves[id(leaf)] = np.array(values, dtype=np.float64).reshape(leaf.shape)
    by_key = {leaf.key: new_leaves[id(leaf)] for leaf in model.floating}
    if model.kind == "flat":
        return by_key[None]
    leaves = [by_key[k] if k in by_key else _copy(a) for k, a in model.entries]
    if model.kind == "mapping":
        return dict(zip((k for k, _ in model.entries), leaves))
    return tuple(leaves) if issubclass(model.container, tuple) else leaves


def _vector(values: list, dtype=np.float64) -> np.ndarray:
    return np.array(values, dtype=dtype).reshape(len(values))


# ---- the ops --------------------------------------------------------------------------------


def candidate_distances(local_params: Any, candidate_params: Any, *, norm: str = "l2") -> np.ndarray:
    """[M] float64: the l2 (sqrt of the sum of squares) or l1 distance of every candidate to the
    local model over the floating-point entries."""
    model = _Model(local_params, "local_params")
    local = [leaf.values for leaf in model.floating]
    return _vector([_distance(local, c, _norm(norm)) for c in model.candidates(candidate_params)])


def _scored(local_params, candidate_params, local_loss, candidate_losses, norm, eps, all_scores, max_distance):
    model = _Model(local_params, "local_params")
    candidates = model.candidates(candidate_params)
    losses = _losses(candidate_losses, len(candidates), "candidate_losses")
    bound = math.inf if max_distance is None else float(max_distance)
    scores, distances, status = _scores(
        model, candidates, float(local_loss), losses, _norm(norm), float(eps), all_scores, bound
    )
    result = Scores(
        scores=_vector(scores),
        distances=_vector(distances),
        rejected=_vector([s == _REJECTED for s in status], bool),
        skipped=_vector([s == _SKIPPED for s in status], bool),
    )
    return model, candidates, result, _normalise(scores, status)


def first_order_scores(
    local_params: Any,
    candidate_params: Any,
    local_loss: float,
    candidate_losses: Any,
    *,
    norm: str = "l2",
    eps: float = 0.0,
    max_distance: Any = None,
) -> Scores:
    """Every candidate's s_n = (L0 - L_n) / (d_n + eps), all measured (as for the affinity);
    candidates farther than max_distance (None: no guard) are rejected."""
    return _scored(local_params, candidate_params, local_loss, candidate_losses, norm, eps, True, max_distance)[2]


def compute_weights(
    local_params: Any,
    candidate_params: Any,
    local_loss: float,
    candidate_losses: Any,
    *,
    norm: str = "l2",
    eps: float = 0.0,
    max_distance: Any = None,
) -> np.ndarray:
    """[M] float64 weights w_n = max(s_n, 0) / sum_m max(s_m, 0); all 0 if no score is positive."""
    return _vector(
        _scored(local_params, candidate_params, local_loss, candidate_losses, norm, eps, False, max_distance)[3]
    )


def apply_update(local_params: Any, candidate_params: Any, weights: Any, *, rounded: bool = True) -> Any:
    """theta_i + sum_n w_n (theta_n - theta_i), laid out like local_params as float64 arrays.

    rounded=True (default) rounds each element once to its storage dtype; rounded=False returns the
    float64 values before that rounding (what the tolerances of the tests are measured against).
    """
    model = _Model(local_params, "local_params")
    candidates = model.candidates(candidate_params)
    w = _losses(weights, len(candidates), "weights")
    if not all(math.isfinite(v) for v in w):
        raise ValueError("every weight must be finite")
    return _updated(model, candidates, w, rounded)


def fomo_step(
    local_params: Any,
    candidate_params: Any,
    local_loss: float,
    candidate_losses: Any,
    *,
    norm: str = "l2",
    eps: float = 0.0,
    all_scores: bool = True,
    rounded: bool = True,
    max_distance: Any = None,
) -> StepResult:
    """Scores, weights and the updated model of one FedFomo step (see the functions above).

    all_scores=False leaves the candidates with L_n >= L0 unmeasured (score and distance NaN,
    skipped); the weights and parameters are the same either way.
    """
    model, candidates, scores, weights = _scored(
        local_params, candidate_params, local_loss, candidate_losses, norm, eps, bool(all_scores), max_distance
    )
    params = _updated(model, candidates, weights, rounded)
    return StepResult(params, _vector(weights), scores.scores, scores.distances, scores.rejected, scores.skipped)
