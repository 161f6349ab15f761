"""A model's named layers <-> one flat array: the converter between your model and the server's rows.

`fomo_core.Server` keeps every client's model as one flat row [P] and hands out candidates as rows
[K, P]; your model is a mapping of layers (`dict(model.named_parameters())`) or a list of them (a
Flower/Keras weight list). The layers lie in the flat array end to end, in the model's order, each
in row-major order. `flatten(params)` copies a model's layers into one flat array (what the server
stores and what a client uploads); `unflatten(rows, like=params)` gives the server's rows as
models laid out like `params`, whose arrays are views into the rows (no copy): what `fomo_step`
takes as the candidates of a layer model. Only floating-point layers have a place in the flat
array: pass the parameters, not a state_dict with BatchNorm's integer counters.

Framework-free: the functions take anything that slices and reshapes like a NumPy array (NumPy
arrays, torch tensors, CuPy arrays). The adapters describe their models with the lower-level
`offsets_of`, `split` and `join` (NumPy layer lists, torch modules, Flower ArrayRecords); what
each framework adds (dtypes, devices, parameter aliasing) stays in its adapter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional, TypeVar, Union

from ._models import Structure, _key_name, empty_like, is_array, is_floating, library, parse_model, shaped_like

__all__ = ["flatten", "unflatten", "offsets_of", "split", "join"]

ArrayT = TypeVar("ArrayT")


def offsets_of(shapes: Iterable[Sequence[int]]) -> tuple[tuple[int, ...], int]:
    """(offsets, P): where each array of these shapes starts in the flat buffer, and its length."""
    offsets, size = [], 0
    for shape in shapes:
        offsets.append(size)
        size += math.prod(shape)
    return tuple(offsets), size


def split(flat: Any, shapes: Sequence[Sequence[int]], offsets: Sequence[int]) -> list:
    """The arrays of ``shapes`` at ``offsets`` in ``flat`` [..., P] (the last axis; a table of
    models [M, P] gives arrays [M, *shape]), as views whenever the strides allow one (a
    contiguous buffer, one row of it, or a column slice of a table)."""
    lead = tuple(flat.shape[:-1])
    return [flat[..., off : off + math.prod(shape)].reshape(lead + tuple(shape)) for shape, off in zip(shapes, offsets)]


def join(arrays: Iterable[Any], offsets: Sequence[int], out: Any) -> Any:
    """Copies each array, flattened, into ``out`` [P] at its offset; returns ``out``."""
    for array, off in zip(arrays, offsets):
        flat = array.reshape(-1)
        out[off : off + flat.shape[0]] = flat
    return out


def _layers(model: Any, role: str) -> tuple[Structure, list]:
    """The structure and layers of a layer model, every layer floating point and of one dtype and
    library (a flat array has one dtype)."""
    structure, leaves = parse_model(model, role)
    if structure.kind == "flat":
        raise TypeError(f"{role} must be a mapping or sequence of arrays (the model's layers), got one array")
    names = [role + _key_name(k) for k in structure.keys]
    for name, leaf, floating in zip(names, leaves, structure.floating):
        if not floating:
            raise TypeError(
                f"{name} has dtype {leaf.dtype}: a flat model holds floating-point layers only "
                "(pass the parameters, e.g. dict(model.named_parameters()), not a state_dict with integer buffers)"
            )
    if leaves:
        first = leaves[0]
        for name, leaf in zip(names, leaves):
            if leaf.dtype != first.dtype or library(leaf) != library(first):
                raise TypeError(
                    f"{name} is a {library(leaf)} array of dtype {leaf.dtype}, expected {library(first)} "
                    f"{first.dtype} as {names[0]} (a flat model has one dtype)"
                )
    return structure, leaves


def flatten(model: Union[Mapping[Any, ArrayT], Sequence[ArrayT]], *, out: Optional[ArrayT] = None) -> ArrayT:
    """The layers of ``model`` laid end to end in one flat array [P] (each row-major, in the
    model's order): a new array of the layers' library, dtype and device, or ``out`` [P].

    model: a mapping of layer arrays (``dict(model.named_parameters())``) or a sequence of them,
           all floating point of one dtype; their values are copied (torch tensors detached), so
           the result is a snapshot to upload (``Server.receive``) or to seed a server with.
    out:   optional [P] array of that dtype to write into (returned).
    """
    _, leaves = _layers(model, "model")
    if not leaves:
        raise ValueError("model has no layers")
    offsets, size = offsets_of(tuple(leaf.shape) for leaf in leaves)
    first = leaves[0]
    if out is None:
        out = empty_like(first, (size,))
    elif not is_array(out) or tuple(out.shape) != (size,) or out.dtype != first.dtype:
        shape = tuple(out.shape) if is_array(out) else type(out).__name__
        dtype = getattr(out, "dtype", None)
        raise ValueError(f"out must be a flat array of shape ({size},) and dtype {first.dtype}, got {shape} {dtype}")
    if library(first) == "torch":
        leaves = [leaf.detach() for leaf in leaves]
    return join(leaves, offsets, out)


def unflatten(flat: Any, like: Union[Mapping[Any, Any], Sequence[Any]]) -> Any:
    """Views of a flat model as layers: the inverse of `flatten`, without copying.

    flat: one model [P], or a server's rows [K, P] (``ids, rows = server.candidates(i)``)
    like: the model whose layout to take (its keys or positions and shapes, e.g.
          ``dict(model.named_parameters())``); its values are not read

    Returns, for [P], a model laid out like ``like`` (the same container type, keys and shapes)
    whose arrays are views into ``flat``; for [K, P], a list of K such models, each viewing its
    row: what `fomo_core.fomo_step` takes as candidates for a layer model, and what
    ``torch.func.functional_call(module, candidate, x)`` evaluates. Writing to a view writes to
    ``flat``.
    """
    structure, leaves = _layers(like, "like")
    shapes = [tuple(leaf.shape) for leaf in leaves]
    offsets, size = offsets_of(shapes)
    if not is_array(flat) or len(flat.shape) not in (1, 2):
        shape = tuple(flat.shape) if is_array(flat) else type(flat).__name__
        raise ValueError(f"flat must be a flat model [P] or rows of models [K, P], got {shape}")
    if flat.shape[-1] != size:
        raise ValueError(
            f"flat has {flat.shape[-1]} values per model, but like's layers hold {size} (shape {tuple(flat.shape)})"
        )
    if not is_floating(flat):
        raise TypeError(f"flat must hold floating-point values, got dtype {flat.dtype}")
    arrays = split(flat, shapes, offsets)
    if len(flat.shape) == 1:
        return shaped_like(structure, arrays)
    return [shaped_like(structure, [array[k] for array in arrays]) for k in range(flat.shape[0])]
