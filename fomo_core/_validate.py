"""Argument validators shared by every public entry point: one rule for all input types.

A bad argument gets a TypeError (wrong kind of value: text, booleans where numbers are meant,
complex numbers, objects that are not numbers) or a ValueError (right kind, wrong value: out of
range, not finite where finiteness is required, beyond float64's range such as ``10**400``), and
the message names the argument. NumPy scalars and arrays, torch tensors (any device, lazily
negated or conjugated views included) and plain Python numbers follow the same rules.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["choice", "count", "flag", "real", "real_vector", "to_host"]


def _library(x: Any) -> str:
    return type(x).__module__.split(".")[0]


def to_host(x: Any) -> Any:
    """A CPU NumPy view or copy of a small per-candidate input (losses, weights, scores) wherever it
    lives; torch tensors keep their dtype (checked by the callers) with negative/conjugate bits
    resolved (NumPy cannot see them, and reading the raw memory would flip signs)."""
    if _library(x) == "torch" and hasattr(x, "detach"):
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


def _kind(x: Any) -> str | None:
    """'b', 'i', 'u', 'f', 'c' or other dtype kinds of an array-like, None for plain Python values."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return None
    if _library(x) == "torch":
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


def real(value: Any, name: str, *, low: float = -math.inf, high: float = math.inf, finite: bool = True) -> float:
    """A real number as a Python float; a 0-d array or one-element tensor counts as a number.

    TypeError for anything that is not a real number; ValueError outside [low, high], when not
    finite (with ``finite=True``) or beyond float64's range (``10**400``).
    """
    host = to_host(value)
    if getattr(host, "ndim", 0) != 0 and getattr(host, "size", 1) == 1:
        host = host.reshape(())
    if not _is_number_kind(host) or getattr(host, "ndim", 0) != 0:
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        v = _as_float(host, name)
    except TypeError:
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None
    if math.isnan(v) and not finite:
        return v
    if not (low <= v <= high) or (finite and not math.isfinite(v)):
        raise ValueError(f"{name} must be {'a finite number' if finite else 'a number'}{_range(low, high)}, got {_short(value)}")
    return v


def _range(low: float, high: float) -> str:
    if low == -math.inf and high == math.inf:
        return ""
    return f" in [{float(low)!r}, {float(high)!r}]"


def count(value: Any, name: str, *, low: int = 0) -> int:
    """An integer >= low (Python or NumPy integers; not booleans, not floats)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
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
