"""Atomic file writes: a reader (or a run resumed after a crash) sees the old file or the new one,
never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

__all__ = ["write_atomic", "write_json_atomic"]


def write_atomic(path: str, data: "str | bytes") -> None:
    """Writes ``data`` to a temporary file beside ``path``, flushes it to disk and renames it over
    ``path`` (a rename within one folder is atomic)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    binary = isinstance(data, bytes)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str, obj: Any, *, indent: int = 1) -> None:
    write_atomic(path, json.dumps(obj, indent=indent) + "\n")
