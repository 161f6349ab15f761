"""Atomic file writes: a checkpoint is either the old one or the new one, never half of either.

The data goes to a temporary file in the destination's own folder (so that the final rename stays
on one file system), is flushed and fsync'ed, and then replaces the destination with
``os.replace`` (atomic on POSIX and Windows); the folder is fsync'ed too where the platform allows,
so that the rename itself survives a power cut. A missing folder is created first (and its parent
fsync'ed, so that the new folder survives too). If anything fails, the temporary file is removed
and the destination is untouched. The new file keeps the old one's permissions (or gets what a
plain ``open`` would give).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any, Callable, Union

__all__ = ["atomic_write"]


def atomic_write(path: Union[str, os.PathLike], write: Callable[[Any], None]) -> None:
    """Calls ``write(f)`` on a temporary binary file beside ``path``, then fsyncs it and renames it
    over ``path`` (and fsyncs the folder), so a crash at any point leaves the previous file intact."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    _make_folder(folder)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _make_folder(folder: str) -> None:
    """Creates ``folder`` and its missing parents, each made durable in its own parent."""
    if os.path.isdir(folder):
        return
    parent = os.path.dirname(folder)
    if parent != folder:
        _make_folder(parent)
    try:
        os.mkdir(folder)
    except FileExistsError:  # made meanwhile by another process
        if not os.path.isdir(folder):
            raise
    _fsync_folder(parent)


def _new_file_mode(path: str) -> int:
    """The permissions a plain open() would leave: the old file's, or 0o666 less the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; its rename is durable already
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
