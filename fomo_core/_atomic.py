"""Atomic file writes: a checkpoint is either the old one or the new one, never half of either."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, Union


def atomic_write(path: Union[str, os.PathLike], write: Callable[[Any], None]) -> None:
    """Calls ``write(f)`` on a temporary file beside ``path``, then fsyncs it and renames it over
    ``path`` (and fsyncs the folder), so a crash at any point leaves the previous file intact."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
