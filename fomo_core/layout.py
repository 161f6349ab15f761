"""One flat buffer <-> a list of arrays laid end to end in it (row-major each, in order).

Framework-free: the functions take anything that slices and reshapes like a NumPy array (NumPy
arrays, torch tensors, CuPy arrays). The adapters describe their models with it (NumPy layer
lists, torch modules, Flower ArrayRecords); what each framework adds (dtypes, devices, parameter
aliasing) stays in its adapter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["offsets_of", "split", "join"]


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
