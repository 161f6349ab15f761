"""Atomic file writes: a checkpoint is either the old file or the complete new one, never half.

The data goes to a temporary file in the destination's own folder (so that the final rename stays
on one file system), is flushed and fsync'ed, and then replaces the destination with
``os.replace`` (atomic on POSIX and Windows); the folder is fsync'ed too where the platform allows,
so that the rename itself survives a power cut. If anything fails, the temporary file is removed
and the destination is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator, Union

__all__ = ["atomic_write"]


def _new_file_mode(path: str) -> int:
    """The permissions the file would get from a plain open(): the old file's, or 0o666 less the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: Union[str, os.PathLike], mode: str = "wb") -> Iterator[IO]:
    """``with atomic_write(path) as f: f.write(...)``: ``path`` gets the whole content or nothing."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, _new_file_mode(path))
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; the rename is durable there already
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
