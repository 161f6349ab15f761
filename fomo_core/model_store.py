"""A disk-backed model table for :class:`fomo_core.Server` when N x P outgrows memory.

The server keeps every client's latest model: N rows of P values. :func:`open_model_store` gives
that table as a memory-mapped ``.npy`` file; the operating system pages rows in when they are read
(the M candidates of a client, a client's own model) and writes them back when they change, so the
server's resident memory stays near the rows a round touches. Pass it to the Server:

>>> store = open_model_store("models.npy", num_clients=10_000, num_params=11_181_642)
>>> server = Server(10_000, init_params, models=store)           # 447 GB of float32 on disk
>>> server.save("ckpt.npz"); Server.load("ckpt.npz", models=open_model_store("models2.npy", ...))

The checkpoint (:meth:`Server.save`) still holds a full copy of the table, streamed from and to the
store in blocks.
"""

from __future__ import annotations

import os
from typing import Any, Union

import numpy as np

from ._validate import count

__all__ = ["open_model_store", "read_npz_rows"]

BLOCK_BYTES = 64 << 20  # rows copied at a time between a store and a checkpoint


def open_model_store(
    path: Union[str, os.PathLike], num_clients: int, num_params: int, *, dtype: Any = np.float32
) -> np.memmap:
    """The [num_clients, num_params] model table in the ``.npy`` file ``path``, memory-mapped
    read-write: an existing file of that shape and dtype is reopened (its rows kept), a missing
    one is created (its contents undefined until the Server fills it)."""
    for name, value in (("num_clients", num_clients), ("num_params", num_params)):
        count(value, name, low=1, type_error=ValueError)
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    path = os.fspath(path)
    shape = (int(num_clients), int(num_params))
    if os.path.exists(path):
        store = np.lib.format.open_memmap(path, mode="r+")
        if store.shape != shape or store.dtype != dtype:
            raise ValueError(f"path {path!r} holds a {store.shape} {store.dtype} table, expected {shape} {dtype}")
        return store
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def read_npz_rows(npz: Any, key: str, dst: np.ndarray) -> None:
    """Streams the 2-D array ``key`` of an open ``np.load`` npz file into ``dst`` (same shape and
    dtype), a block of rows at a time: the table never has to fit in memory."""
    with npz.zip.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if tuple(shape) != dst.shape or np.dtype(dtype) != dst.dtype or fortran:
            raise ValueError(
                f"the checkpoint's {key} is a {tuple(shape)} {dtype} table, the store a {dst.shape} {dst.dtype} one"
            )
        rows = max(1, BLOCK_BYTES // max(1, dst.shape[1] * dst.dtype.itemsize))
        row_bytes = dst.shape[1] * dst.dtype.itemsize
        for start in range(0, dst.shape[0], rows):
            stop = min(start + rows, dst.shape[0])
            data = f.read((stop - start) * row_bytes)
            if len(data) != (stop - start) * row_bytes:
                raise ValueError(f"the checkpoint's {key} is truncated")
            dst[start:stop] = np.frombuffer(data, dtype=dst.dtype).reshape(stop - start, dst.shape[1])
