"""Reading checkpoints (.npz files) that may come from an untrusted disk, for Affinity and Server.

Every entry's .npy header is read and checked before its data: a real dtype of the expected kind,
no negative or absurd dimensions, the declared size within the caller's cap and within the file's
own size (a file never makes us read or allocate more than it holds: a compressed entry that
would expand beyond the file is refused), the expected shape when the caller knows it. The data
is then read exactly, and one byte further, so that the zip member's CRC-32 is checked: a flipped
byte anywhere in an entry is an error, not a wrong value. Every failure is a ValueError (TypeError
for a wrong dtype) whose message names the file and the entry; a file that cannot be opened
raises the usual OSError.

>>> with Checkpoint(path, "Server checkpoint") as ckpt:
...     meta = ckpt.meta()
...     ids = ckpt.array("ids", "i", shape=(n, k))
"""

from __future__ import annotations

import json
import os
import struct
import tokenize
import zipfile
import zlib
from typing import Any, Optional, Union

import numpy as np

__all__ = ["Checkpoint", "MAX_META_CHARS", "UNREADABLE"]

MAX_META_CHARS = 1 << 20
BLOCK_BYTES = 64 << 20  # rows streamed at a time from a table entry
# What zipfile, zlib and numpy's header parser raise on damaged input.
UNREADABLE = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    struct.error,
    NotImplementedError,
    KeyError,
    OverflowError,
    UnicodeDecodeError,
    RuntimeError,
    SyntaxError,
    tokenize.TokenError,
)
_KINDS = {"f": "a real float", "i": "an integer", "b": "a boolean", "u": "an unsigned integer", "U": "text"}


class Checkpoint:
    """An open .npz checkpoint whose entries are read with their sizes checked first.

    path:   the file
    what:   what the file should be ("Server checkpoint"), for messages
    """

    def __init__(self, path: Union[str, os.PathLike], what: str):
        self.where = f"path {os.fspath(path)!r}"
        self.what = what
        self.a_what = f"{'an' if what[0] in 'AEIOU' else 'a'} {what}"
        try:
            self.size = os.path.getsize(path)
            self.archive = zipfile.ZipFile(path)
        except UNREADABLE as e:
            raise ValueError(f"{self.where} is not a readable {what}: {type(e).__name__}: {e}") from None
        self.names = {info.filename: info for info in self.archive.infolist()}

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.archive.close()

    def has(self, entry: str) -> bool:
        return entry + ".npy" in self.names

    def fail(self, message: str) -> ValueError:
        """A ValueError that names the file (raise it)."""
        return ValueError(f"{self.where}: {message}")

    def require(self, *entries: str) -> None:
        missing = [e + ".npy" for e in entries if not self.has(e)]
        if missing:
            raise ValueError(f"{self.where} is not {self.a_what} (no {', '.join(missing)} entry)")

    # --- entries ----------------------------------------------------------------------------------

    def _open(self, entry: str, kinds: str, shape: Optional[tuple], max_bytes: Optional[int]) -> tuple:
        """(open member, shape, dtype, fortran, data bytes) with the header checked."""
        if not self.has(entry):
            raise self.fail(f"has no {entry + '.npy'} entry")
        info = self.names[entry + ".npy"]
        if info.file_size > self.size and info.compress_type != zipfile.ZIP_STORED:
            raise self.fail(f"entry {entry!r} expands to {info.file_size} bytes, more than the file's {self.size}")
        member = self.archive.open(info)
        try:
            version = np.lib.format.read_magic(member)
            if version not in ((1, 0), (2, 0)):
                raise self.fail(f"entry {entry!r} has .npy format version {version}, expected 1.0 or 2.0")
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            found, fortran, dtype = read_header(member)
            if dtype.kind not in kinds or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
                expected = " or ".join(_KINDS[k] for k in kinds)
                raise TypeError(f"{self.where}: entry {entry!r} has dtype {dtype}, expected {expected}")
            if any(d < 0 for d in found):
                raise self.fail(f"entry {entry!r} declares shape {found}")
            if shape is not None and tuple(found) != tuple(shape):
                raise self.fail(f"entry {entry!r} has shape {tuple(found)}, expected {tuple(shape)}")
            nbytes = int(np.prod(found, dtype=object)) * dtype.itemsize
            if max_bytes is not None and nbytes > max_bytes:
                raise self.fail(
                    f"entry {entry!r} declares shape {found} ({nbytes} bytes), beyond the cap of {max_bytes} bytes"
                )
            if nbytes > self.size or nbytes > info.file_size:
                raise self.fail(
                    f"entry {entry!r} is truncated or damaged: it declares shape {found} ({nbytes} bytes), "
                    f"more than the file holds ({min(self.size, info.file_size)} bytes)"
                )
        except BaseException:
            member.close()
            raise
        return member, tuple(found), dtype, fortran, nbytes

    def _finish(self, member: Any, entry: str) -> None:
        """Reads past the end of a member (which checks its CRC-32) and closes it."""
        try:
            if member.read(1):
                raise self.fail(f"entry {entry!r} holds more data than its header declares")
        finally:
            member.close()

    def array(
        self, entry: str, kinds: str, *, shape: Optional[tuple] = None, max_bytes: Optional[int] = None
    ) -> np.ndarray:
        """The whole entry as a (writable) array, of a dtype whose kind is in ``kinds``."""
        try:
            member, found, dtype, fortran, nbytes = self._open(entry, kinds, shape, max_bytes)
            try:
                array = np.empty(found[::-1] if fortran else found, dtype=dtype)
                view, done = memoryview(array.reshape(-1).view(np.uint8)), 0
                while done < nbytes and (got := member.readinto(view[done:])):
                    done += got
                if done != nbytes:
                    raise self.fail(f"entry {entry!r} is truncated ({done} of {nbytes} bytes)")
            except BaseException:
                member.close()
                raise
            self._finish(member, entry)
        except UNREADABLE + (ValueError, TypeError, OSError) as e:
            raise self._explained(e, entry) from None
        return array.T if fortran else array

    def blocks(self, entry: str, shape: tuple, dtype: np.dtype):
        """Yields (first row, rows [B, P]) of the 2-D entry, which must be a ``shape`` table of
        ``dtype``, a block at a time: never more than a block in memory."""
        try:
            member, found, found_dtype, fortran, _ = self._open(entry, "f", tuple(shape), None)
        except UNREADABLE + (ValueError, TypeError, OSError) as e:
            raise self._explained(e, entry) from None
        try:
            if found_dtype != dtype or fortran:
                raise self.fail(f"entry {entry!r} is a {found} {found_dtype} table, expected {tuple(shape)} {dtype}")
            row_bytes = shape[1] * dtype.itemsize
            rows = max(1, BLOCK_BYTES // max(1, row_bytes))
            for start in range(0, shape[0], rows):
                stop = min(start + rows, shape[0])
                data = member.read((stop - start) * row_bytes)
                if len(data) != (stop - start) * row_bytes:
                    raise self.fail(f"entry {entry!r} is truncated")
                yield start, np.frombuffer(data, dtype=dtype).reshape(stop - start, shape[1])
            self._finish(member, entry)
        except UNREADABLE + (ValueError, TypeError, OSError) as e:
            raise self._explained(e, entry) from None
        finally:
            member.close()

    def header(self, entry: str, kinds: str, *, shape: Optional[tuple] = None) -> tuple:
        """(shape, dtype) that an entry's header declares, checked as :meth:`array` checks it
        (its data not read)."""
        try:
            member, found, dtype, _, _ = self._open(entry, kinds, shape, None)
            member.close()
        except UNREADABLE + (ValueError, TypeError, OSError) as e:
            raise self._explained(e, entry) from None
        return found, dtype

    def meta(self, entry: str = "meta") -> Any:
        """The JSON document stored as a 0-d text entry."""
        text = self.array(entry, "U", max_bytes=MAX_META_CHARS * 4)
        if text.shape != ():
            raise self.fail(f"entry {entry!r} has shape {text.shape}, expected one string")
        try:
            return json.loads(str(text[()]))
        except (ValueError, RecursionError) as e:
            raise self.fail(f"entry {entry!r} is not JSON: {e}") from None

    def _explained(self, e: BaseException, entry: str) -> Exception:
        message = str(e)
        if message.startswith(self.where):
            return e  # ours, already saying what is wrong
        kind = TypeError if isinstance(e, TypeError) else ValueError
        return kind(f"{self.where}: entry {entry!r} is not readable: {type(e).__name__}: {message}")
