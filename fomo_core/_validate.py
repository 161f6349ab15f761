"""Argument validators shared by every public entry point: one rule for all input types.

A bad argument gets a TypeError (wrong kind of value: text, booleans where numbers are meant,
complex numbers, objects that are not numbers) or a ValueError (right kind, wrong value: out of
range, not finite where finiteness is required, beyond float64's range such as ``10**400``), and
the message names the argument. NumPy scalars and arrays, torch tensors (any device, lazily
negated or conjugated views included) and plain Python numbers follow the same rules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from ._models import is_torch

__all__ = ["choice", "count", "flag", "fraction", "real", "real_vector", "to_host"]


def to_host(x: Any) -> Any:
    """A CPU NumPy view or copy of a small per-candidate input (losses, weights, scores) wherever it
    lives; torch tensors keep their dtype (checked by the callers) with negative/conjugate bits
    resolved (NumPy cannot see them, and reading the raw memory would flip signs)."""
    if is_torch(x) and hasattr(x, "detach"):
        x = x.detach()
        if x.is_complex() or x.dtype is _torch_bool():
            return x  # refused by the callers by dtype; never converted
        return x.cpu().resolve_conj().resolve_neg().numpy()
    if hasattr(x, "__cuda_array_interface__"):
        if hasattr(x, "get"):  # CuPy
            return x.get()
        if hasattr(x, "copy_to_host"):  # Numba
            return x.copy_to_host()
    return x


def _torch_bool() -> Any:
    import torch

    return torch.bool


def _kind(x: Any) -> Optional[str]:
    """'b', 'i', 'u', 'f', 'c' or other dtype kinds of an array-like, None for plain Python values."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return None
    if is_torch(x):
        if dtype.is_complex:
            return "c"
        if dtype.is_floating_point:
            return "f"
        return "b" if str(dtype) == "torch.bool" else "i"
    return getattr(dtype, "kind", "O")


def _is_number_kind(x: Any) -> bool:
    """Ints and floats of any library; not text, booleans (a loss of True means nothing) or complex."""
    if isinstance(x, (str, bytes, bool, np.bool_, complex, np.complexfloating)):
        return False
    kind = _kind(x)
    if kind is None:
        return isinstance(x, (int, float)) or hasattr(x, "__float__")  # Fraction, Decimal
    return kind in "iuf"


def _as_float(x: Any, name: str) -> float:
    try:
        return float(x)
    except OverflowError:
        raise ValueError(f"{name} is beyond float64's range, got {_short(x)}") from None


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 40 else f"{text[:20]}...{text[-10:]} ({len(text)} characters)"


def real(
    value: Any,
    name: str,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    finite: bool = True,
    low_open: bool = False,
    high_open: bool = False,
    type_error: type = TypeError,
) -> float:
    """A real number as a Python float; a 0-d array or one-element tensor counts as a number.

    ``type_error`` (TypeError by default) for anything that is not a real number; ValueError
    outside [low, high] (an open end excludes its bound), when not finite (with ``finite=True``)
    or beyond float64's range (``10**400``). Readers of messages from the network pass
    ``type_error=ValueError``: a wrong value there is bad data whatever its kind, and entry points
    that have always raised ValueError for every bad value keep doing so.
    """
    host = to_host(value)
    if getattr(host, "ndim", 0) != 0 and getattr(host, "size", 1) == 1:
        host = host.reshape(())
    if not _is_number_kind(host) or getattr(host, "ndim", 0) != 0:
        raise type_error(f"{name} must be a real number, got {type(value).__name__}")
    try:
        v = _as_float(host, name)
    except TypeError:
        raise type_error(f"{name} must be a real number, got {type(value).__name__}") from None
    if math.isnan(v) and not finite:
        return v
    too_low = v <= low if low_open else v < low
    too_high = v >= high if high_open else v > high
    if too_low or too_high or (finite and not math.isfinite(v)):
        number = "a finite number" if finite else "a number"
        raise ValueError(f"{name} must be {number}{_range(low, high, low_open, high_open)}, got {_short(value)}")
    return v


def fraction(
    value: Any, name: str, *, low_open: bool = False, high_open: bool = False, type_error: type = TypeError
) -> float:
    """A real number in [0, 1] (an open end excludes 0 or 1): a probability, share or rate."""
    return real(value, name, low=0.0, high=1.0, low_open=low_open, high_open=high_open, type_error=type_error)


def _range(low: float, high: float, low_open: bool = False, high_open: bool = False) -> str:
    if low == -math.inf and high == math.inf:
        return ""
    return f" in {'(' if low_open else '['}{float(low)!r}, {float(high)!r}{')' if high_open else ']'}"


def count(value: Any, name: str, *, low: int = 0, high: Optional[int] = None, type_error: type = TypeError) -> int:
    """An integer in [low, high] (Python or NumPy integers; not booleans, not floats).

    ``type_error`` for anything else (see :func:`real`); ValueError out of range.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise type_error(f"{name} must be an integer, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def flag(value: Any, name: str) -> bool:
    """A boolean (Python or NumPy): a string such as "no" is not one."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return bool(value)


def choice(value: Any, name: str, allowed: Sequence[str]) -> str:
    """One of the allowed strings."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}, got {_short(value)}")
    return value


def real_vector(values: Any, name: str) -> np.ndarray:
    """A 1-D float64 NumPy vector of real numbers (NaN and infinities pass: the ops give them
    meaning); a list of 0-d tensors (losses from a training loop) counts as a vector.

    TypeError for booleans, complex numbers, text or objects; ValueError for another number of
    dimensions or values beyond float64's range.
    """
    if isinstance(values, (list, tuple)) and not any(isinstance(v, (list, tuple)) for v in values):
        values = [real(v, f"{name}[{i}]", finite=False) for i, v in enumerate(values)]
    host = to_host(values)
    kind = _kind(host)
    if kind is not None and kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {getattr(values, 'dtype', '?')}")
    try:
        v = np.asarray(host)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of real numbers, got {type(values).__name__}") from None
    if v.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a sequence of real numbers, got {type(values).__name__}")
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per candidate), got shape {v.shape}")
    with np.errstate(over="ignore"):
        out = v.astype(np.float64, copy=False)
    if v.dtype.kind in "iu" and np.isinf(out).any():  # an int beyond float64 (wider integer dtypes)
        raise ValueError(f"{name} holds a value beyond float64's range")
    return out
