"""Where the server keeps every client's latest model: in memory, or on disk when N x P outgrows RAM.

The server holds N models of P values. In memory that is an [N, P] array. :func:`open_model_store`
gives a disk store instead, a ``.npy`` file of rows that the server reads and writes with
positioned I/O (never memory-mapped), so its resident memory holds only the rows of the call at
hand: the M candidates of a client, one upload. Pass it to the Server:

>>> store = open_model_store("models.npy", num_clients=1_000, num_params=11_181_642)
>>> server = Server(1_000, init_params, models=store)       # 45 GB of float32 on disk at most
>>> server.save("ckpt.npz")                                   # the small state; the rows stay put
>>> server = Server.load("ckpt.npz")                          # reopens models.npy, checks its rows

How the rows are used: clients that never uploaded share one row (the initial model); an upload
is written straight to a free row of the store (no copy kept in memory) and becomes the client's
row at ``end_round``, while the row it replaces stays readable by this round's other clients.
A row the last checkpoint refers to is never overwritten, so a checkpoint is only the small state
(which row holds which client's model, with each row's CRC-32) and stays valid after a crash in
the rounds that follow; :meth:`Server.load` reads every row it refers to once and checks its CRC
and that it is finite. The file grows when every row is taken: the disk holds one row per client
that uploaded, plus one per upload of the current round, plus those the last checkpoint keeps.
"""

from __future__ import annotations

import heapq
import io
import os
import warnings
import zlib
from typing import Any, Union

import numpy as np

from ._checkpoint import UNREADABLE
from ._models import is_torch
from ._validate import count

__all__ = ["ModelStore", "open_model_store", "read_npz_rows"]

BLOCK_BYTES = 64 << 20  # rows copied at a time between a store and a checkpoint
HEADER_BYTES = 128  # the .npy header of a store: room for its shape to grow in place
MAX_ROWS = 2**40


def _row_array(params: Any, dtype: np.dtype, where: str) -> np.ndarray:
    """A model [P] as a contiguous NumPy array of the table's dtype, refused unless finite there."""
    if is_torch(params):
        params = params.detach().cpu().numpy()
    with np.errstate(over="ignore", invalid="ignore"):
        row = np.ascontiguousarray(params, dtype=dtype)
    if not np.isfinite(row).all():
        raise ValueError(f"{where} must be finite in the model table's dtype {dtype} (NaN, inf or out of range)")
    return row


class MemoryTable:
    """The models in memory: an [N, P] NumPy array or torch tensor, rows in client order; the
    uploads of a round are held as copies until :meth:`commit`."""

    def __init__(self, models: Any):
        self.models = models
        self.pending: dict = {}

    @property
    def is_torch(self) -> bool:
        return is_torch(self.models)

    def row(self, client: int) -> Any:
        return self.models[client]

    def rows(self, ids: np.ndarray) -> Any:
        return self.models[ids.tolist()] if self.is_torch else self.models[ids]

    def prepare(self, params: Any, where: str = "params") -> Any:
        """The upload as it will be stored (checked finite in the table's dtype)."""
        if self.is_torch:
            row = params.detach().to(device=self.models.device, dtype=self.models.dtype).clone()
            if not bool(row.isfinite().all()):
                raise ValueError(f"{where} must be finite in the model table's dtype {self.models.dtype}")
            return row
        return _row_array(params, self.models.dtype, where).copy()

    def stage(self, client: int, row: Any, immediately: bool) -> None:
        if immediately:
            self.models[client] = row
        else:
            self.pending[client] = row

    def commit(self) -> None:
        for client, row in self.pending.items():
            self.models[client] = row
        self.pending = {}


class ModelStore:
    """Client models in a disk file of rows (see the module docstring); made by
    :func:`open_model_store`. ``shape`` is (clients, params); ``np.asarray(store)`` gathers the
    [N, P] table in client order (for small stores). A :class:`fomo_core.Server` drives
    ``start``, ``stage``, ``commit``, ``pin``, ``restore`` and ``fill``: do not call them while a
    server uses the store."""

    def __init__(self, path: str, file: Any, rows: int, num_clients: int, num_params: int, dtype: np.dtype):
        self.path = path
        self._file = file
        self.num_clients = num_clients
        self.num_params = num_params
        self.dtype = dtype
        self._row_bytes = num_params * dtype.itemsize
        self._rows = rows
        self._slot = np.zeros(num_clients, dtype=np.int64)  # each client's row
        self._refs = np.zeros(rows, dtype=np.int64)  # clients (and pending uploads) using a row
        self._pinned = np.zeros(rows, dtype=bool)  # rows the last checkpoint refers to
        self._crc = np.zeros(rows, dtype=np.uint32)
        self._free: list = []
        self.pending: dict = {}

    def close(self) -> None:
        """Closes the file (the server can no longer read or write its models)."""
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> ModelStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None and not file.closed:
            file.close()

    @property
    def shape(self) -> tuple:
        return (self.num_clients, self.num_params)

    @property
    def rows_on_disk(self) -> int:
        """Rows the file has room for."""
        return self._rows

    def __repr__(self) -> str:
        size = f"{self.num_clients} clients x {self.num_params} {self.dtype}"
        return f"ModelStore({self.path!r}, {size}, {self._rows} rows)"

    # --- raw rows -----------------------------------------------------------------------------------

    def _read(self, row: int, out: np.ndarray) -> None:
        self._file.seek(HEADER_BYTES + row * self._row_bytes)
        view = memoryview(out).cast("B")
        done = 0
        while done < self._row_bytes:
            got = self._file.readinto(view[done:])
            if not got:
                raise ValueError(f"model store {self.path!r} ends inside row {row}")
            done += got

    def _write(self, row: int, data: np.ndarray) -> None:
        self._file.seek(HEADER_BYTES + row * self._row_bytes)
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += self._file.write(view[done:])
        self._crc[row] = zlib.crc32(view)

    def _grow(self) -> None:
        rows = min(MAX_ROWS, self._rows + max(16, self._rows // 4))
        _write_header(self._file, self.path, rows, self.num_params, self.dtype)
        self._file.truncate(HEADER_BYTES + rows * self._row_bytes)
        grown = rows - self._rows
        self._refs = np.concatenate([self._refs, np.zeros(grown, dtype=np.int64)])
        self._pinned = np.concatenate([self._pinned, np.zeros(grown, dtype=bool)])
        self._crc = np.concatenate([self._crc, np.zeros(grown, dtype=np.uint32)])
        for r in range(self._rows, rows):
            heapq.heappush(self._free, r)
        self._rows = rows

    def _take(self) -> int:
        if not self._free:
            self._grow()
        row = heapq.heappop(self._free)
        self._refs[row] += 1
        return row

    def _release(self, row: int) -> None:
        self._refs[row] -= 1
        if self._refs[row] == 0 and not self._pinned[row]:
            heapq.heappush(self._free, row)

    # --- what the server does -----------------------------------------------------------------------

    def start(self, init: Any) -> None:
        """Every client's model is ``init`` [P]: one shared row; every other row is free."""
        row = _row_array(init, self.dtype, "init_params")
        self._refs[:] = 0
        self._pinned[:] = False
        self._slot[:] = 0
        self._refs[0] = self.num_clients
        self._write(0, row)
        self._free = list(range(1, self._rows))
        self.pending = {}

    def row(self, client: int) -> np.ndarray:
        """Client ``client``'s model [P], read into a new array."""
        out = np.empty(self.num_params, dtype=self.dtype)
        self._read(int(self._slot[client]), out)
        return out

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The models of clients ``ids`` [K, P], read into a new array (O(K P) memory)."""
        out = np.empty((len(ids), self.num_params), dtype=self.dtype)
        for j, client in enumerate(ids):
            self._read(int(self._slot[client]), out[j])
        return out

    def prepare(self, params: Any, where: str = "params") -> np.ndarray:
        """An upload as the store's dtype, refused (ValueError) unless finite there."""
        return _row_array(params, self.dtype, where)

    def stage(self, client: int, row: np.ndarray, immediately: bool) -> None:
        """Writes an upload to a free row: the client's from now on (``immediately``), or from
        :meth:`commit` (until then its old row is the one sent). A failed write changes nothing."""
        new = self._take()
        try:
            self._write(new, row)
        except BaseException:
            self._release(new)
            raise
        if immediately:
            old, self._slot[client] = int(self._slot[client]), new
        else:
            old, self.pending[client] = self.pending.get(client), new
        if old is not None:
            self._release(old)

    def commit(self) -> None:
        """The round's uploads become the clients' rows; the rows they replace are freed."""
        for client, row in self.pending.items():
            old = int(self._slot[client])
            self._slot[client] = row
            self._release(old)
        self.pending = {}

    def flush(self) -> None:
        """Makes the written rows durable (fsync)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def slots(self) -> tuple:
        """(row of each client [N] int64, CRC-32 of that row [N] uint32): what a checkpoint keeps."""
        return self._slot.copy(), self._crc[self._slot]

    def pin(self) -> None:
        """The rows clients use now are a checkpoint's: they are kept until the next pin; rows
        only the previous checkpoint kept become free."""
        pinned = np.zeros(self._rows, dtype=bool)
        pinned[self._slot] = True
        for r in np.flatnonzero(self._pinned & ~pinned & (self._refs == 0)).tolist():
            heapq.heappush(self._free, r)
        self._pinned = pinned

    def restore(self, slots: np.ndarray, crc: np.ndarray, where: str) -> None:
        """Takes a checkpoint's rows after checking them: every row in the file, its CRC-32 the
        checkpoint's and its values finite (each distinct row read once, O(P) memory)."""
        if slots.size and int(slots.max()) >= self._rows:
            raise ValueError(f"{where} refers to row {int(slots.max())} of {self.path!r}, which has {self._rows} rows")
        buffer = np.empty(self.num_params, dtype=self.dtype)
        for row in np.unique(slots).tolist():
            self._read(row, buffer)
            if not np.isfinite(buffer).all():
                raise ValueError(f"{where}: row {row} of the model store {self.path!r} is not finite")
            self._crc[row] = zlib.crc32(memoryview(buffer).cast("B"))
        changed = np.flatnonzero(self._crc[slots] != crc)
        if changed.size:
            client = int(changed[0])
            raise ValueError(
                f"{where}: row {int(slots[client])} of the model store {self.path!r} (client {client}'s model) "
                "changed since the checkpoint was written: the store holds a later state (load the latest "
                "checkpoint written with it)"
            )
        self._slot[:] = slots
        self._refs[:] = np.bincount(slots, minlength=self._rows)
        self._pinned[:] = self._refs > 0
        self._free = np.flatnonzero(self._refs == 0).tolist()
        self.pending = {}

    def fill(self, start: int, block: np.ndarray) -> None:
        """Gives clients start.. start+len(block) the rows of ``block`` (loading a checkpoint that
        holds the models themselves): client i gets row i."""
        while self._rows < start + len(block):
            self._grow()
        for j, values in enumerate(block):
            self._write(start + j, np.ascontiguousarray(values))
        stop = start + len(block)
        self._slot[start:stop] = np.arange(start, stop)
        if stop == self.num_clients:
            self._refs[:] = np.bincount(self._slot, minlength=self._rows)
            self._pinned[:] = False
            self._free = np.flatnonzero(self._refs == 0).tolist()
            self.pending = {}

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        table = self.rows(np.arange(self.num_clients))
        return table if dtype is None else table.astype(dtype)


def _header(rows: int, num_params: int, dtype: np.dtype) -> bytes:
    descr = np.lib.format.dtype_to_descr(dtype)
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': ({rows}, {num_params}), }}"
    body = text.ljust(HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")


def _write_header(file: Any, path: str, rows: int, num_params: int, dtype: np.dtype) -> None:
    header = _header(rows, num_params, dtype)
    if len(header) != HEADER_BYTES:
        raise ValueError(f"model store {path!r}: a {rows} x {num_params} table does not fit its header")
    file.seek(0)
    file.write(header)


def open_model_store(
    path: Union[str, os.PathLike], num_clients: int, num_params: int, *, dtype: Any = np.float32
) -> ModelStore:
    """The disk store of ``num_clients`` models of ``num_params`` values in the ``.npy`` file
    ``path``: a new file is created (sparse: rows take disk space once written), an existing store
    of that dtype and row size is reopened (to load a checkpoint written with it). The file's size
    is checked against its header before it is opened for writing; a mismatch is a ValueError."""
    num_clients = count(num_clients, "num_clients", low=1, high=2**31 - 1, type_error=ValueError)
    num_params = count(num_params, "num_params", low=1, high=2**40, type_error=ValueError)
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    path = os.fspath(path)
    row_bytes = num_params * dtype.itemsize
    if os.path.exists(path):
        rows = _check_existing(path, num_params, dtype)
        file = open(path, "r+b", buffering=0)  # noqa: SIM115 (the store owns it)
        return ModelStore(path, file, rows, num_clients, num_params, dtype)
    rows = num_clients + 1
    file = open(path, "x+b", buffering=0)  # noqa: SIM115
    try:
        _write_header(file, path, rows, num_params, dtype)
        file.truncate(HEADER_BYTES + rows * row_bytes)
    except BaseException:
        file.close()
        os.unlink(path)
        raise
    return ModelStore(path, file, rows, num_clients, num_params, dtype)


def _check_existing(path: str, num_params: int, dtype: np.dtype) -> int:
    """The rows of an existing store file, after checking its header against its size."""
    where = f"path {path!r}"
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"has .npy format version {version}")
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, found = read(f)
            offset = f.tell()
    except UNREADABLE + (ValueError, TypeError, OSError, io.UnsupportedOperation) as e:
        raise ValueError(f"{where} is not a model store: {type(e).__name__}: {e}") from None
    if len(shape) != 2 or fortran or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"{where} holds a {shape} table{' (Fortran order)' if fortran else ''}, expected (rows, P)")
    if found != dtype or shape[1] != num_params or not 1 <= shape[0] <= MAX_ROWS:
        raise ValueError(f"{where} holds a {tuple(shape)} {found} table, expected rows of {num_params} {dtype} values")
    if offset != HEADER_BYTES:
        raise ValueError(f"{where} is not a model store: its header has {offset} bytes, not {HEADER_BYTES}")
    size, expected = os.path.getsize(path), offset + shape[0] * shape[1] * found.itemsize
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise ValueError(f"{where} is {state}: its header declares {expected} bytes, the file has {size}")
    return int(shape[0])


def read_npz_rows(npz: Any, key: str, dst: np.ndarray) -> None:
    """Streams the 2-D array ``key`` of an open ``np.load`` npz file into ``dst`` (same shape and
    dtype), a block of rows at a time: the table never has to fit in memory.

    Deprecated: :meth:`Server.load` reads checkpoints itself, checking every entry first."""
    warnings.warn(
        "fomo_core.model_store.read_npz_rows is deprecated: Server.load streams checkpoints itself",
        DeprecationWarning,
        stacklevel=2,
    )
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
            dst[start:stop] = np.frombuffer(data, dtype=dtype).reshape(stop - start, dst.shape[1])
