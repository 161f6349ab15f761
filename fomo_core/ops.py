"""The FedFomo ops: first-order scores, weights and the model update.

Shapes: a model is a flat array [P], or a sequence or mapping of layer arrays (a state_dict, a
Flower/Keras weight list). Candidates are a 2-D array [M, P] (flat models) or a sequence of M
models laid out like the local one. Per-candidate results are float64 vectors [M] of the caller's
array type (NumPy for NumPy input, torch for torch input). Entries that are not floating point
take no part. Every argument is checked before anything is written.

CUDA arrays (torch CUDA tensors, CuPy arrays, other ``__cuda_array_interface__`` or DLPack
producers) run on the GPU that holds them, on the caller's current stream, in builds with CUDA
(``fomo_core.build_info()["cuda"]``). Their results stay on that device: torch tensors for torch
input, CuPy arrays for CuPy input, and the calls return without waiting for the GPU.

Types: the signatures are overloaded so that a type checker follows the array type through a call
(NumPy models give :class:`numpy.ndarray` results, torch models ``torch.Tensor`` results, and
``apply_update``/``fomo_step`` return a model of the type given); torch is named for the checker
only and never imported here at run time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, Optional, Protocol, TypeVar, Union, overload

import numpy as np

from . import _C
from ._models import (
    allocate_like,
    can_allocate_like,
    candidate_leaves,
    check_writable,
    floating_leaves,
    is_torch,
    mark_written,
    out_leaves,
    parse_model,
)
from ._validate import flag, real, real_vector
from .choices import Norm

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "ArrayModel",
    "TensorModel",
    "Scores",
    "StepResult",
    "candidate_distances",
    "first_order_scores",
    "compute_weights",
    "apply_update",
    "fomo_step",
]

#: A model of NumPy arrays: flat [P], or a sequence or mapping of layer arrays.
ArrayModel = Union[np.ndarray, Sequence[np.ndarray], Mapping[Any, np.ndarray]]
#: A model of torch tensors: flat [P], a list of layers or a state_dict.
TensorModel = Union["Tensor", Sequence["Tensor"], Mapping[Any, "Tensor"]]


class _CudaArray(Protocol):
    """Any array of another library on a CUDA device (CuPy, Numba, JAX)."""

    @property
    def __cuda_array_interface__(self) -> Any: ...


# Other libraries' CUDA arrays: results of their own type, which the checker is not told. (A
# catch-all ``Any`` overload instead would turn every np.ndarray result into Any.)
_CudaArrayModel = Union[_CudaArray, Sequence[_CudaArray], Mapping[Any, _CudaArray]]

VectorT = TypeVar("VectorT")  # the per-candidate result vectors: np.ndarray or torch.Tensor
ModelT = TypeVar("ModelT")  # the updated model: the local model's (or out's) type
_ArrayModelT = TypeVar("_ArrayModelT", bound=ArrayModel)
_TensorModelT = TypeVar("_TensorModelT", bound=TensorModel)
_OutT = TypeVar("_OutT")


@dataclass(frozen=True)
class Scores(Generic[VectorT]):
    """Raw first-order scores of the candidates.

    scores:    [M] s_n = (L0 - L_n) / (d_n + eps); 0 where rejected, NaN where skipped
    distances: [M] d_n, the l2 or l1 distance to the local model; NaN where not measured
    rejected:  [M] bool, the candidate can never get weight (NaN/inf loss or distance, d + eps == 0)
    skipped:   [M] bool, not measured because L_n >= L0 (only when scores of all candidates were
               not asked for)
    """

    scores: VectorT
    distances: VectorT
    rejected: VectorT
    skipped: VectorT


@dataclass(frozen=True)
class StepResult(Generic[ModelT, VectorT]):
    """Result of one fused FedFomo step.

    params:    the updated model, laid out like local_params (``out`` when given)
    weights:   [M] normalised weights w_n = max(s_n, 0) / sum_m max(s_m, 0), all 0 if none positive
    scores, distances, rejected, skipped: as in :class:`Scores`
    """

    params: ModelT
    weights: VectorT
    scores: VectorT
    distances: VectorT
    rejected: VectorT
    skipped: VectorT


def _norm_code(norm: str) -> int:
    """The kernels' code of a norm name (the table is the extension's: ``_C.NORMS``)."""
    try:
        return _C.NORMS[norm]
    except (KeyError, TypeError):
        raise ValueError(f"norm must be {' or '.join(map(repr, _C.NORMS))}, got {norm!r}") from None


def _check_eps(eps: Any) -> float:
    return real(eps, "eps", low=0.0)


def _check_max_distance(max_distance: Any) -> float:
    """The guard's bound; None (no guard) is infinity."""
    if max_distance is None:
        return math.inf
    value = real(max_distance, "max_distance", low=0.0, finite=False)
    if math.isnan(value):
        raise ValueError("max_distance must be a number >= 0 or None (no guard), got nan")
    return value


def _step_options(
    local_loss: Any, candidate_losses: Any, norm: Any, eps: Any, all_scores: Any, max_distance: Any
) -> dict:
    """fomo_step's scalar and per-candidate arguments, checked once for the ops and for plans, as the
    bindings' keyword arguments (the bindings check only what needs the run table: one loss per
    candidate)."""
    return dict(
        local_loss=real(local_loss, "local_loss", finite=False),
        candidate_losses=real_vector(candidate_losses, "candidate_losses"),
        norm=_norm_code(norm),
        eps=_check_eps(eps),
        all_scores=flag(all_scores, "all_scores"),
        max_distance=_check_max_distance(max_distance),
    )


def _cuda_index(leaf: Any) -> Optional[int]:
    """The CUDA device index of an array, or None for arrays in host memory."""
    if is_torch(leaf):
        if leaf.device.type != "cuda":
            return None
        return 0 if leaf.device.index is None else int(leaf.device.index)
    if hasattr(leaf, "__cuda_array_interface__"):
        device = getattr(leaf, "device", None)  # CuPy: a Device with .id
        return int(getattr(device, "id", 0) or 0)
    if hasattr(leaf, "__dlpack_device__"):
        kind, index = leaf.__dlpack_device__()
        return int(index) if int(kind) == 2 else None  # 2: kDLCUDA
    return None


def _device_vectors(leaf: Any, index: int, m: int, count: int) -> list:
    """`count` float64 vectors [m] and one uint8 vector [m] on CUDA device `index`, in the array
    library of `leaf` (torch for torch, CuPy for CuPy and other CUDA arrays when it is installed)."""
    if is_torch(leaf):
        import torch

        device = torch.device("cuda", index)
        return [torch.empty(m, dtype=torch.float64, device=device) for _ in range(count)] + [
            torch.empty(m, dtype=torch.uint8, device=device)
        ]
    try:
        import cupy
    except ImportError:
        raise TypeError(
            f"results of a CUDA call on {type(leaf).__name__} arrays are allocated with CuPy, which is not "
            "installed; install cupy or pass torch CUDA tensors"
        ) from None
    with cupy.cuda.Device(index):
        return [cupy.empty(m, dtype=cupy.float64) for _ in range(count)] + [cupy.empty(m, dtype=cupy.uint8)]


class _Call:
    """The parsed arguments of one op: the kernels' leaves plus what is needed to shape results."""

    def __init__(self, local_params: Any, candidate_params: Any):
        self.structure, self.leaves = parse_model(local_params, "local_params")
        self.local = floating_leaves(self.structure, self.leaves)
        if self.structure.kind == "flat" and not self.local:
            raise TypeError(
                f"local_params has dtype {self.leaves[0].dtype}; expected float32, float64, float16 or bfloat16"
            )
        self.candidates = candidate_leaves(self.structure, self.local, candidate_params)
        first = self.leaves[0] if self.leaves else None
        self.torch = first is not None and is_torch(first)
        self.device = first.device if self.torch else None
        self.first_float = self.local[0] if self.local else None
        self.cuda = None if self.first_float is None else _cuda_index(self.first_float)

    def num_candidates(self) -> int:
        if isinstance(self.candidates, (list, tuple)):
            return len(self.candidates)
        return int(self.candidates.shape[0])

    def device_results(self, count: int) -> Optional[list]:
        """Result vectors on the call's CUDA device (None for host arrays: the kernels return NumPy).

        Without usable CUDA (a build without it, or no device) there is nothing to allocate on: the
        kernels' intake then rejects the CUDA arrays with an error that names the argument."""
        if self.cuda is None or not _C.has_cuda():
            return None
        return _device_vectors(self.first_float, self.cuda, self.num_candidates(), count)

    def vector(self, values: Any) -> Any:
        """A result vector in the caller's array type."""
        if self.cuda is not None:
            return values  # already a device vector of the caller's library
        if self.torch:
            import torch

            return torch.from_numpy(values).to(self.device)
        return values

    def output(self, out: Any, *, writing_now: bool = True) -> tuple[Any, list]:
        """(the result model, its floating leaves): ``out`` or a new model. ``writing_now``: the
        caller writes at once, so torch's in-place rules are checked here (a plan checks them at
        every write instead)."""
        if out is None:
            if self.cuda is not None and not can_allocate_like(self.first_float) and _C.has_cuda():
                raise TypeError(
                    f"local_params holds {type(self.first_float).__name__} CUDA arrays: pass out= "
                    "(fomo_core allocates new CUDA models for torch tensors and CuPy arrays only)"
                )
            return allocate_like(self.structure, self.leaves)
        leaves = out_leaves(self.structure, out)
        if writing_now:
            check_writable(leaves, self.structure.names)
        return out, leaves

    def step(self, out_float, local_loss, candidate_losses, norm, eps, all_scores, max_distance=None):
        options = _step_options(local_loss, candidate_losses, norm, eps, all_scores, max_distance)
        results = self.device_results(3)
        weights, scores, distances, status = _C.fomo_step(
            self.local,
            self.candidates,
            out_float,
            self.structure.names,
            results=None if results is None else tuple(results),
            **options,
        )
        if out_float is not None:
            mark_written(out_float)
        return self.scores(weights, scores, distances, status)

    def scores(self, weights, scores, distances, status) -> tuple[Any, Scores]:
        """The kernels' step results as (weights, Scores), vectors of the caller's type except weights."""
        rejected = status == _C.STATUS["rejected"]
        skipped = status == _C.STATUS["skipped"]
        return weights, Scores(*(self.vector(v) for v in (scores, distances, rejected, skipped)))


# Overloads stay one compact signature each (no formatter): a table for type checkers.
# fmt: off
@overload
def candidate_distances(local_params: ArrayModel, candidate_params: Any, *, norm: Norm = ...) -> np.ndarray: ...
@overload
def candidate_distances(local_params: TensorModel, candidate_params: Any, *, norm: Norm = ...) -> Tensor: ...
@overload
def candidate_distances(local_params: _CudaArrayModel, candidate_params: Any, *, norm: Norm = ...) -> Any: ...
# fmt: on
def candidate_distances(local_params: Any, candidate_params: Any, *, norm: Norm = "l2") -> Any:
    """Distance of every candidate to the local model, [M] float64.

    ``norm="l2"``: sqrt(sum (c - x)^2); ``norm="l1"``: sum |c - x|; summed in float64 over the
    floating-point entries, whatever their storage dtype.
    """
    call = _Call(local_params, candidate_params)
    results = call.device_results(1)
    result = None if results is None else results[0]
    distances = _C.candidate_distances(call.local, call.candidates, call.structure.names, _norm_code(norm), result)
    return call.vector(distances)


# fmt: off
@overload
def first_order_scores(
    local_params: ArrayModel, candidate_params: Any, local_loss: float, candidate_losses: Any, *, norm: Norm = ...,
    eps: float = ..., max_distance: Optional[float] = ...,
) -> Scores[np.ndarray]: ...
@overload
def first_order_scores(
    local_params: TensorModel, candidate_params: Any, local_loss: float, candidate_losses: Any, *, norm: Norm = ...,
    eps: float = ..., max_distance: Optional[float] = ...,
) -> Scores[Tensor]: ...
@overload
def first_order_scores(
    local_params: _CudaArrayModel, candidate_params: Any, local_loss: float, candidate_losses: Any, *, norm: Norm = ...,
    eps: float = ..., max_distance: Optional[float] = ...,
) -> Scores[Any]: ...
# fmt: on
def first_order_scores(
    local_params: Any,
    candidate_params: Any,
    local_loss: float,
    candidate_losses: Any,
    *,
    norm: Norm = "l2",
    eps: float = 0.0,
    max_distance: Optional[float] = None,
) -> Scores[Any]:
    """FedFomo's raw scores s_n = (L0 - L_n) / (||theta_n - theta_i|| + eps) of every candidate.

    Every candidate is measured, improving or not (the affinity matrix adds negative scores too).
    A candidate is rejected, score 0, when its loss, the local loss or its distance is NaN or
    infinite, or when d + eps == 0. ``max_distance`` (optional, off by default) is the guard
    against finite poisoned models: a candidate farther than it from the local model is rejected
    too, however low its loss.

    Measure before you update: after :func:`apply_update` has written into ``local_params``, the
    scores describe the moved model. ``compute_weights(..., return_scores=True)`` and
    :func:`fomo_step` give the scores of the same pass as the weights.

    A front door of :func:`fomo_step` (its scores, without the update): the same kernels, the same
    bits.
    """
    call = _Call(local_params, candidate_params)
    return call.step(None, local_loss, candidate_losses, norm, eps, True, max_distance)[1]


# fmt: off
@overload
def compute_weights(
    local_params: ArrayModel, candidate_params: Any, local_loss: float, candidate_losses: Any, *, norm: Norm = ...,
    eps: float = ..., max_distance: Optional[float] = ..., return_scores: Literal[False] = ...,
) -> np.ndarray: ...
@overload
def compute_weights(
    local_params: TensorModel, candidate_params: Any, local_loss: float, candidate_losses: Any, *, norm: Norm = ...,
    eps: float = ..., max_distance: Optional[float] = ..., return_scores: Literal[False] = ...,
) -> Tensor: ...
@overload
def compute_weights(
    local_params: ArrayModel, candidate_params: Any, local_loss: float, candidate_losses: Any, *, norm: Norm = ...,
    eps: float = ..., max_distance: Optional[float] = ..., return_scores: Literal[True],
) -> tuple[np.ndarray, Scores[np.ndarray]]: ...
@overload
def compute_weights(
    local_params: TensorModel, candidate_params: Any, local_loss: float, candidate_losses: Any, *, norm: Norm = ...,
    eps: float = ..., max_distance: Optional[float] = ..., return_scores: Literal[True],
) -> tuple[Tensor, Scores[Tensor]]: ...
@overload
def compute_weights(
    local_params: _CudaArrayModel, candidate_params: Any, local_loss: float, candidate_losses: Any, *, norm: Norm = ...,
    eps: float = ..., max_distance: Optional[float] = ..., return_scores: bool = ...,
) -> Any: ...
# fmt: on
def compute_weights(
    local_params: Any,
    candidate_params: Any,
    local_loss: float,
    candidate_losses: Any,
    *,
    norm: Norm = "l2",
    eps: float = 0.0,
    max_distance: Optional[float] = None,
    return_scores: bool = False,
) -> Any:
    """FedFomo's normalised weights [M]: w_n = max(s_n, 0) / sum_m max(s_m, 0), all 0 when no
    score is positive. Candidates with L_n >= L0 are never read (their weight is 0 regardless).
    ``max_distance`` as in :func:`first_order_scores`.

    ``return_scores=True`` returns ``(weights, scores)`` instead, ``scores`` the :class:`Scores`
    of every candidate from the same pass (each candidate measured, as :func:`first_order_scores`
    does, since the affinity matrix wants the negative scores too): what ``Server.receive`` takes.
    Score before you update: once :func:`apply_update` has written into ``local_params``, scores
    computed from it describe the moved model, not the one the candidates were weighed against.

    A front door of :func:`fomo_step` (its weights, without the update; ``all_scores`` set to
    ``return_scores``): the same kernels, the same bits."""
    call = _Call(local_params, candidate_params)
    with_scores = flag(return_scores, "return_scores")
    weights, scores = call.step(None, local_loss, candidate_losses, norm, eps, with_scores, max_distance)
    return (call.vector(weights), scores) if with_scores else call.vector(weights)


# fmt: off
@overload
def apply_update(local_params: ModelT, candidate_params: Any, weights: Any, *, out: None = ...) -> ModelT: ...
@overload
def apply_update(local_params: Any, candidate_params: Any, weights: Any, *, out: _OutT) -> _OutT: ...
# fmt: on
def apply_update(local_params: Any, candidate_params: Any, weights: Any, *, out: Any = None) -> Any:
    """theta_i + sum_n w_n (theta_n - theta_i), reading only candidates with a nonzero weight.

    ``out`` (optional) receives the result and may be local_params itself (in place); otherwise a
    new model of local_params' layout and array types is returned. With every weight 0 the result
    equals local_params bit for bit. As torch's own in-place ops do, torch tensors in ``out`` that
    autograd tracks (``requires_grad`` while grad mode is on) or inference tensors outside
    ``torch.inference_mode()`` are refused, and every written tensor's version counter is bumped
    (a backward pass that saved the old values then fails instead of using the new ones).
    Weights beyond float32's range are refused for float32, float16 and bfloat16 models (their
    update is accumulated in float32).
    """
    call = _Call(local_params, candidate_params)
    w = real_vector(weights, "weights")
    params, out_float = call.output(out)
    _C.apply_update(call.local, call.candidates, out_float, call.structure.names, w)
    mark_written(out_float)
    return params


# fmt: off
@overload
def fomo_step(
    local_params: _ArrayModelT, candidate_params: Any, local_loss: float, candidate_losses: Any, *, norm: Norm = ...,
    eps: float = ..., all_scores: bool = ..., out: None = ..., max_distance: Optional[float] = ...,
) -> StepResult[_ArrayModelT, np.ndarray]: ...
@overload
def fomo_step(
    local_params: _TensorModelT, candidate_params: Any, local_loss: float, candidate_losses: Any, *, norm: Norm = ...,
    eps: float = ..., all_scores: bool = ..., out: None = ..., max_distance: Optional[float] = ...,
) -> StepResult[_TensorModelT, Tensor]: ...
@overload
def fomo_step(
    local_params: ArrayModel, candidate_params: Any, local_loss: float, candidate_losses: Any, *, norm: Norm = ...,
    eps: float = ..., all_scores: bool = ..., out: _OutT, max_distance: Optional[float] = ...,
) -> StepResult[_OutT, np.ndarray]: ...
@overload
def fomo_step(
    local_params: TensorModel, candidate_params: Any, local_loss: float, candidate_losses: Any, *, norm: Norm = ...,
    eps: float = ..., all_scores: bool = ..., out: _OutT, max_distance: Optional[float] = ...,
) -> StepResult[_OutT, Tensor]: ...
@overload
def fomo_step(
    local_params: _CudaArrayModel, candidate_params: Any, local_loss: float, candidate_losses: Any, *, norm: Norm = ...,
    eps: float = ..., all_scores: bool = ..., out: Any = ..., max_distance: Optional[float] = ...,
) -> StepResult[Any, Any]: ...
# fmt: on
def fomo_step(
    local_params: Any,
    candidate_params: Any,
    local_loss: float,
    candidate_losses: Any,
    *,
    norm: Norm = "l2",
    eps: float = 0.0,
    all_scores: bool = True,
    out: Any = None,
    max_distance: Optional[float] = None,
) -> StepResult[Any, Any]:
    """One fused FedFomo step: distances, scores, weights and the update in two passes over memory.

    ``all_scores=True`` (default) measures every candidate so that the non-improving ones get
    their (negative) scores for the affinity update; ``all_scores=False`` skips them (scores NaN,
    ``skipped`` set). Weights and parameters are the same either way. ``out`` as in
    :func:`apply_update`; ``max_distance`` as in :func:`first_order_scores`.
    """
    call = _Call(local_params, candidate_params)
    params, out_float = call.output(out)
    weights, scores = call.step(out_float, local_loss, candidate_losses, norm, eps, all_scores, max_distance)
    return StepResult(params, call.vector(weights), scores.scores, scores.distances, scores.rejected, scores.skipped)
