"""A model's layout on the wire: the arrays of an ArrayRecord laid end to end as one flat vector.

The server holds every client's model as a flat row [P]; messages carry ArrayRecords (one Array
per layer, Flower's own convention). :class:`ModelLayout` converts between the two and is the one
place that reads bytes a client sent: an Array is a ``.npy`` file, and its metadata (dtype, shape)
says nothing about what its bytes hold. :meth:`ModelLayout.flat_from_record` parses each header,
checks dtype, shape and byte count against the layout, then reads the values without copying the
bytes twice and refuses non-finite numbers.

Candidates may travel in 16 bits (``transport="float16"`` or ``"bfloat16"``): float16 is a NumPy
dtype; bfloat16 is not, so it travels as the upper 16 bits of each float32 (uint16, rounded to
nearest even) and is widened back on arrival.

Importing this module needs NumPy and Flower only (no compiled extension: fomo_core.layout is plain Python).
"""

from __future__ import annotations

import ast
import functools
import io
from dataclasses import dataclass
from typing import Optional

import numpy as np
from flwr.app import Array, ArrayRecord

from ..layout import join, offsets_of, split

__all__ = ["ModelLayout", "TRANSPORTS", "MAX_HEADER_BYTES"]

TRANSPORTS = ("float32", "float16", "bfloat16")
NUMPY_STYPE = "numpy.ndarray"
MAX_HEADER_BYTES = 65536  # numpy writes headers of 64-4096 bytes; anything larger is refused unread


def _to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """uint16 upper halves of float32 values, rounded to nearest even (NaN stays NaN)."""
    bits = np.array(values, dtype=np.float32, order="C").view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        out[nan] = np.uint16(0x7FC0)
    return out


def _from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _npy_header(data: bytes, role: str) -> tuple:
    """(dtype, shape, fortran_order, header_length) of the .npy bytes ``data``; ValueError when
    they are not a .npy file. Parses only the header (a Python literal), never the payload."""
    if len(data) < 10 or data[:6] != b"\x93NUMPY":
        raise ValueError(f"{role} is not a .npy array (bad magic)")
    major = data[6]
    if major == 1:
        hlen, start = int.from_bytes(data[8:10], "little"), 10
    elif major in (2, 3):
        if len(data) < 12:
            raise ValueError(f"{role} is not a .npy array (truncated header)")
        hlen, start = int.from_bytes(data[8:12], "little"), 12
    else:
        raise ValueError(f"{role} has .npy version {major}, expected 1, 2 or 3")
    if hlen > MAX_HEADER_BYTES or start + hlen > len(data):
        raise ValueError(
            f"{role} has a .npy header of {hlen} bytes, more than the {len(data) - start} available "
            f"or the cap {MAX_HEADER_BYTES}"
        )
    try:
        header = ast.literal_eval(data[start : start + hlen].decode("latin1"))
        dtype = np.dtype(header["descr"])
        shape = tuple(int(s) for s in header["shape"])
        fortran = bool(header["fortran_order"])
    except Exception as e:  # any malformed header is the sender's error, never ours
        raise ValueError(f"{role} has an unreadable .npy header ({type(e).__name__}: {e})") from None
    if dtype.hasobject:
        raise ValueError(f"{role} has object dtype {dtype}: refused")
    return dtype, shape, fortran, start + hlen


def _wire_dtype(dtype: np.dtype, transport: str) -> np.dtype:
    """An array's dtype on the wire: floating arrays in ``transport`` (bfloat16: their upper 16
    bits as uint16), the others in their own."""
    if dtype.kind == "f" and transport != "float32":
        return np.dtype(np.float16 if transport == "float16" else np.uint16)
    return dtype


@functools.lru_cache(maxsize=256)
def _npy_header_of(wire: np.dtype, shape: tuple) -> bytes:
    """The .npy header np.save writes for a C-ordered ``shape`` array of ``wire``."""
    buffer = io.BytesIO()
    empty = np.zeros(shape, dtype=wire)
    np.save(buffer, empty)
    return buffer.getvalue()[: buffer.tell() - empty.nbytes]


@functools.lru_cache(maxsize=64)
def _wire_format(dtypes: tuple, shapes: tuple, transport: str) -> tuple:
    """Per array of a layout: (its dtype on the wire, its shape, its .npy header)."""
    wires = [_wire_dtype(np.dtype(d), transport) for d in dtypes]
    return tuple((wire, tuple(shape), _npy_header_of(wire, tuple(shape))) for wire, shape in zip(wires, shapes))


@dataclass(frozen=True)
class ModelLayout:
    """keys, dtypes, shapes of a model's arrays, in order; ``size`` P values in all.

    Every array, whatever its dtype (integer buffers such as BatchNorm's ``num_batches_tracked``
    included), occupies ``prod(shape)`` slots of the flat float32 row and is cast back to its own
    dtype in :meth:`record` (float32 holds integers up to 2**24 exactly)."""

    keys: tuple
    dtypes: tuple
    shapes: tuple

    @classmethod
    def of(cls, record: ArrayRecord) -> ModelLayout:
        """The layout of ``record`` (the strategy's ``initial_arrays``)."""
        if not isinstance(record, ArrayRecord):
            raise TypeError(f"record must be a flwr.app.ArrayRecord, got {type(record).__name__}")
        if len(record) == 0:
            raise ValueError("record must hold at least one array, got an empty ArrayRecord")
        keys, dtypes, shapes = [], [], []
        for key, array in record.items():
            if array.stype != NUMPY_STYPE:
                raise ValueError(f"record[{key!r}] has stype {array.stype!r}, expected {NUMPY_STYPE!r}")
            keys.append(key)
            dtypes.append(np.dtype(array.dtype).str)
            shapes.append(tuple(int(s) for s in array.shape))
        return cls(tuple(keys), tuple(dtypes), tuple(shapes))

    @property
    def sizes(self) -> tuple:
        return tuple(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

    @property
    def offsets(self) -> tuple:
        """Where each array starts in the flat row."""
        return offsets_of(self.shapes)[0]

    @property
    def size(self) -> int:
        """P, the number of values of the flat row."""
        return offsets_of(self.shapes)[1]

    def nbytes(self, transport: str = "float32") -> int:
        """Payload bytes of one model sent in ``transport`` (float32: the arrays' own dtypes)."""
        if transport == "float32":
            return int(sum(n * np.dtype(d).itemsize for n, d in zip(self.sizes, self.dtypes)))
        return 2 * self.size

    def to_json(self) -> dict:
        return {"keys": list(self.keys), "dtypes": list(self.dtypes), "shapes": [list(s) for s in self.shapes]}

    @classmethod
    def from_json(cls, data: dict) -> ModelLayout:
        return cls(tuple(data["keys"]), tuple(data["dtypes"]), tuple(tuple(s) for s in data["shapes"]))

    # --- flat row -> record ------------------------------------------------------------------

    def record(self, flat: np.ndarray, transport: str = "float32") -> ArrayRecord:
        """The ArrayRecord of the flat row ``flat`` [P]: each array in its own dtype, or every
        floating array in 16 bits (``transport``; integer arrays keep their dtype)."""
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        flat = np.asarray(flat)
        if flat.shape != (self.size,):
            raise ValueError(f"flat has shape {flat.shape}, expected ({self.size},)")
        arrays = {}
        wires = _wire_format(self.dtypes, self.shapes, transport)
        views = split(flat, self.shapes, self.offsets)
        for key, dtype, (wire, shape, header), values in zip(self.keys, self.dtypes, wires, views):
            if transport == "bfloat16" and np.dtype(dtype).kind == "f":
                data = _to_bfloat16_bits(values).tobytes()
            else:
                data = np.asarray(values, dtype=wire).tobytes()  # C order
            # the .npy bytes np.save writes, with the header made once per layout and transport
            arrays[key] = Array(dtype=str(wire), shape=shape, stype=NUMPY_STYPE, data=header + data)
        return ArrayRecord(arrays)

    def arrays(self, flat: np.ndarray) -> list:
        """The flat row [P] as the layout's arrays, each reshaped and in its own dtype."""
        views = split(flat, self.shapes, self.offsets)
        return [np.asarray(values, dtype=np.dtype(d)) for values, d in zip(views, self.dtypes)]

    # --- record -> flat row (validated) ------------------------------------------------------

    def flat_from_record(
        self, record: ArrayRecord, role: str, *, transport: str = "float32", out: Optional[np.ndarray] = None
    ) -> np.ndarray:
        """The values of ``record`` as one float32 row [P] (into ``out`` when given), after
        checking that it has exactly this layout's keys, that each Array's bytes are a .npy file
        of the expected dtype (``transport``'s for floating arrays) and shape with exactly the
        bytes that implies, and that every value is finite. ValueError naming ``role`` otherwise;
        ``out`` may be partly written then (pass a scratch row)."""
        if not isinstance(record, ArrayRecord):
            raise ValueError(f"{role} must be an ArrayRecord, got {type(record).__name__}")
        got = list(record.keys())
        if got != list(self.keys):
            missing = [k for k in self.keys if k not in record]
            extra = [k for k in got if k not in self.keys][:5]
            raise ValueError(
                f"{role} has {len(got)} arrays, expected {len(self.keys)} (missing {missing[:5]}, unexpected {extra})"
            )
        if out is None:
            out = np.empty(self.size, dtype=np.float32)
        for key, dtype, shape, offset in zip(self.keys, self.dtypes, self.shapes, self.offsets):
            values = self._read(record[key], f"{role}[{key!r}]", np.dtype(dtype), shape, transport)
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                raise ValueError(f"{role}[{key!r}] holds NaN or infinite values")
            join([values], [offset], out)
        return out

    @staticmethod
    def _read(array: Array, role: str, dtype: np.dtype, shape: tuple, transport: str) -> np.ndarray:
        if not isinstance(array, Array):
            raise ValueError(f"{role} must be a flwr Array, got {type(array).__name__}")
        if array.stype != NUMPY_STYPE:
            raise ValueError(f"{role} has stype {array.stype!r}, expected {NUMPY_STYPE!r}")
        wire = _wire_dtype(dtype, transport)
        n = int(np.prod(shape, dtype=np.int64))
        data = array.data
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"{role} carries {type(data).__name__}, expected bytes")
        if len(data) > n * wire.itemsize + MAX_HEADER_BYTES + 12:
            raise ValueError(f"{role} carries {len(data)} bytes, more than a {shape} {wire} array needs")
        expected = _npy_header_of(wire, tuple(shape))
        if data[: len(expected)] == expected:  # the header np.save writes: nothing to parse
            got_dtype, got_shape, fortran, start = wire, tuple(shape), False, len(expected)
        else:
            got_dtype, got_shape, fortran, start = _npy_header(bytes(data[: MAX_HEADER_BYTES + 12]), role)
        if got_dtype != wire or got_shape != tuple(shape):
            raise ValueError(f"{role} holds a {got_shape} {got_dtype} array, expected {tuple(shape)} {wire}")
        if len(data) - start != n * wire.itemsize:
            raise ValueError(
                f"{role} carries {len(data) - start} payload bytes, "
                f"expected {n * wire.itemsize} ({tuple(shape)} {wire})"
            )
        values = np.frombuffer(data, dtype=wire, count=n, offset=start)
        if fortran:
            values = values.reshape(shape[::-1]).T
        if wire == np.uint16 and dtype.kind == "f":
            values = _from_bfloat16_bits(values)
        return values
