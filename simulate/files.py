"""Text, bytes and JSON written atomically (through :func:`fomo_core._atomic.atomic_write`): a
reader, or a run resumed after a crash, sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
from typing import Any, Union

from .._atomic import atomic_write

__all__ = ["write_atomic", "write_json_atomic"]


def write_atomic(path: str, data: Union[str, bytes]) -> None:
    """Writes ``data`` (str as UTF-8, or bytes) to ``path`` atomically, creating its folder."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    elif not isinstance(data, bytes):
        raise TypeError(f"data must be str or bytes, got {type(data).__name__}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: f.write(data))


def write_json_atomic(path: str, obj: Any, *, indent: int = 1) -> None:
    write_atomic(path, json.dumps(obj, indent=indent) + "\n")
