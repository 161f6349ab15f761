"""Model structures: a flat array, or a sequence or mapping of layer arrays.

This module turns the caller's models into the flat lists of floating-point leaves that the
compiled kernels take, with a path name for every leaf so that errors can say exactly which array
is wrong (``candidate_params[3]["fc.weight"]``), and builds outputs of the caller's own types.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Structure",
    "parse_model",
    "candidate_leaves",
    "allocate_like",
    "is_array",
    "is_floating",
    "check_writable",
    "mark_written",
]

_FLOATING_NAMES = frozenset({"float16", "float32", "float64", "bfloat16", "float128", "longdouble"})
_floating_cache: dict[Any, bool] = {}


def is_array(x: Any) -> bool:
    """Whether x looks like an array (NumPy, torch, or anything with shape and dtype)."""
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, type)


def is_floating(x: Any) -> bool:
    """Whether an array holds real floating-point values (the entries FedFomo averages).

    Integer and boolean entries (BatchNorm's ``num_batches_tracked``) take no part in distances or
    updates. Complex values are not floating point here.
    """
    dtype = x.dtype
    try:
        return _floating_cache[dtype]
    except (KeyError, TypeError):
        pass
    floating = getattr(dtype, "is_floating_point", None)  # torch.dtype
    if floating is None:
        kind = getattr(dtype, "kind", None)
        floating = kind == "f" or str(getattr(dtype, "name", dtype)) in _FLOATING_NAMES
    try:
        _floating_cache[dtype] = bool(floating)
    except TypeError:
        pass
    return bool(floating)


def _key_name(key: Hashable) -> str:
    return f'["{key}"]' if isinstance(key, str) else f"[{key!r}]"


@dataclass(frozen=True)
class Structure:
    """How a model is laid out: its kind, its keys in order and which leaves are floating."""

    kind: str  # "flat" | "sequence" | "mapping"
    keys: tuple  # () for flat; indices for a sequence; keys for a mapping
    floating: tuple  # one bool per leaf
    names: list  # path suffix of each floating leaf
    container: type  # the caller's container type (list, tuple, dict, OrderedDict, ...)


def parse_model(model: Any, role: str) -> tuple[Structure, list]:
    """Splits a model into its structure and its leaves (all of them, floating or not)."""
    if is_array(model):
        return Structure("flat", (), (is_floating(model),), [""], type(model)), [model]
    if isinstance(model, Mapping):
        keys = tuple(model.keys())
        leaves = [model[k] for k in keys]
        names = [_key_name(k) for k in keys]
        kind = "mapping"
    elif isinstance(model, Sequence) and not isinstance(model, (str, bytes)):
        keys = tuple(range(len(model)))
        leaves = list(model)
        names = [f"[{i}]" for i in keys]
        kind = "sequence"
    else:
        raise TypeError(
            f"{role} must be an array, a sequence of arrays or a mapping of arrays, got {type(model).__name__}"
        )
    floating = []
    for name, leaf in zip(names, leaves):
        if not is_array(leaf):
            raise TypeError(f"{role}{name} must be an array, got {type(leaf).__name__}")
        floating.append(is_floating(leaf))
    float_names = [n for n, f in zip(names, floating) if f]
    return Structure(kind, keys, tuple(floating), float_names, type(model)), leaves


def floating_leaves(structure: Structure, leaves: list) -> list:
    return [leaf for leaf, f in zip(leaves, structure.floating) if f]


def _leaves_like(structure: Structure, model: Any, role: str) -> list:
    """The floating leaves of `model`, which must have `structure`'s layout, in its order."""
    if structure.kind == "flat":
        if not is_array(model):
            raise TypeError(f"{role} must be an array like local_params, got {type(model).__name__}")
        return [model]
    if structure.kind == "mapping":
        if not isinstance(model, Mapping):
            raise TypeError(f"{role} must be a mapping like local_params, got {type(model).__name__}")
        if len(model) != len(structure.keys):
            extra = [k for k in model.keys() if k not in set(structure.keys)]
            if extra:
                raise ValueError(f"{role} has entry {extra[0]!r}, which local_params does not have")
        out = []
        for key, f in zip(structure.keys, structure.floating):
            if not f:
                continue
            try:
                out.append(model[key])
            except KeyError:
                raise ValueError(f"{role} has no entry {key!r} (local_params has one)") from None
        return out
    if not isinstance(model, Sequence) or isinstance(model, (str, bytes)) or is_array(model):
        raise TypeError(f"{role} must be a sequence of arrays like local_params, got {type(model).__name__}")
    if len(model) != len(structure.keys):
        raise ValueError(f"{role} has {len(model)} entries, expected {len(structure.keys)} (as local_params)")
    return [leaf for leaf, f in zip(model, structure.floating) if f]


def candidate_leaves(structure: Structure, local_float: list, candidates: Any) -> Any:
    """What the kernels take as candidates: the [M, P] array itself (flat models), or one list of
    floating leaves per candidate."""
    if structure.kind == "flat" and is_array(candidates) and len(candidates.shape) != 1:
        return candidates
    if is_array(candidates):
        if structure.kind == "flat":
            raise ValueError(
                f"candidate_params has shape {tuple(candidates.shape)}, expected (M, "
                f"{tuple(local_float[0].shape)[0] if local_float[0].shape else 1}) (one row per candidate)"
            )
        raise TypeError("candidate_params must be a sequence of models (one per candidate), got an array")
    if not isinstance(candidates, Sequence) or isinstance(candidates, (str, bytes)):
        raise TypeError(
            f"candidate_params must be a 2-D array [M, P] or a sequence of M models, got {type(candidates).__name__}"
        )
    return [_leaves_like(structure, c, f"candidate_params[{m}]") for m, c in enumerate(candidates)]


def out_leaves(structure: Structure, out: Any) -> list:
    return _leaves_like(structure, out, "out")


def check_writable(leaves: list, names: list) -> None:
    """Refuses the output tensors that torch's own in-place ops refuse: tensors autograd tracks
    (``requires_grad`` while grad mode is on: a leaf Parameter of a live graph) and inference
    tensors outside ``torch.inference_mode()``. ``names`` are the leaves' path suffixes."""
    if not any(is_torch(leaf) for leaf in leaves):
        return
    import torch

    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    for leaf, name in zip(leaves, names):
        if not is_torch(leaf):
            continue
        if not inference and leaf.is_inference():
            raise ValueError(
                f"out{name} is an inference tensor, which torch does not let anyone update in place outside "
                "torch.inference_mode(); run the call inside it, or pass a normal tensor"
            )
        if grad and leaf.requires_grad:
            raise ValueError(
                f"out{name} requires grad: writing it in place would corrupt the autograd graph (torch refuses "
                "in-place ops on it too); wrap the call in torch.no_grad(), as optimizers do"
            )


def mark_written(leaves: list) -> None:
    """Bumps the version counter of the torch tensors the kernels wrote (as torch's in-place ops
    do), so that autograd refuses a backward pass through values that have changed."""
    written = [leaf for leaf in leaves if is_torch(leaf) and not leaf.is_inference()]
    if written:
        import torch.autograd.graph

        torch.autograd.graph.increment_version(written)


def library(leaf: Any) -> str:
    """The array library a leaf comes from ("numpy", "torch", "cupy", ...)."""
    return type(leaf).__module__.split(".")[0]


def is_torch(x: Any) -> bool:
    """Whether x is a torch object (a tensor, a parameter), told from its type without importing
    torch."""
    return library(x) == "torch"


def as_float64(x: Any, *, copy: bool = False) -> np.ndarray:
    """A float64 NumPy array of x (a NumPy array, a torch tensor on any device, a number or a
    sequence of numbers): x itself when it is one already, unless ``copy``."""
    if is_torch(x):
        x = x.detach().cpu().double().numpy()
    return np.array(x, dtype=np.float64) if copy else np.asarray(x, dtype=np.float64)


def can_allocate_like(leaf: Any) -> bool:
    """Whether new arrays of this leaf's library can be made here (NumPy, torch, CuPy, or anything
    in host memory, which gets NumPy)."""
    return library(leaf) in ("numpy", "torch", "cupy") or not hasattr(leaf, "__cuda_array_interface__")


def empty_like(leaf: Any, shape: Any = None) -> Any:
    """A new array of ``leaf``'s library, dtype and device, of ``leaf``'s shape or ``shape``."""
    shape = tuple(leaf.shape) if shape is None else tuple(shape)
    if isinstance(leaf, np.ndarray):
        return np.empty(shape, dtype=leaf.dtype)
    if is_torch(leaf):
        import torch

        return torch.empty(shape, dtype=leaf.dtype, device=leaf.device)
    if library(leaf) == "cupy":
        import cupy

        with leaf.device:
            return cupy.empty(shape, dtype=leaf.dtype)
    return np.empty(shape, dtype=np.dtype(leaf.dtype))


def copy_leaf(leaf: Any) -> Any:
    """A copy of an array in its own library (a torch copy is detached)."""
    if isinstance(leaf, np.ndarray) or library(leaf) == "cupy":
        return leaf.copy()
    if is_torch(leaf):
        return leaf.detach().clone()
    return np.array(leaf)


def allocate_like(structure: Structure, leaves: list) -> tuple[Any, list]:
    """A new model of the local model's layout and array types: fresh buffers for the floating
    leaves (returned second, for the kernels to fill) and copies of the others."""
    new = [empty_like(leaf) if f else copy_leaf(leaf) for leaf, f in zip(leaves, structure.floating)]
    float_new = [leaf for leaf, f in zip(new, structure.floating) if f]
    return shaped_like(structure, new), float_new


def shaped_like(structure: Structure, leaves: list) -> Any:
    """A model of ``structure``'s kind, container type and keys holding ``leaves`` (one per key)."""
    if structure.kind == "flat":
        return leaves[0]
    if structure.kind == "mapping":
        try:
            model = structure.container()
        except TypeError:
            model = {}
        for key, leaf in zip(structure.keys, leaves):
            model[key] = leaf
        return model
    return tuple(leaves) if issubclass(structure.container, tuple) else list(leaves)
