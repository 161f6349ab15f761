"""Server side of FedFomo: the affinity matrix and the choice of each client's candidates.

The server keeps ``A[i, n]``, how much client n's models have helped client i so far (the sum of
the first-order scores client i gave them), and each round sends client i the models of the M
clients with the highest affinity, exploring at random with probability epsilon (epsilon-greedy,
epsilon decaying over the rounds as in the authors' code).

>>> aff = Affinity(10, seed=0)
>>> ids = aff.select(3, 4, round=0)       # four other clients for client 3
>>> aff.update(3, ids, scores)             # the scores client 3 returned for them
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
import zlib
from typing import Any, Optional, Sequence, Union

import numpy as np

from ._atomic import atomic_write
from ._validate import choice as _choice
from ._validate import count as _count
from ._validate import real as _real
from ._validate import real_vector
from .presets import Preset, get_preset

__all__ = ["Affinity"]

SELECTIONS = ("epsilon_greedy", "top_m", "top_m_recent")
DECAYS = ("linear", "none")
INITS = ("zeros_self", "identity", "zeros")
UPDATES = ("raw", "normalised")
INCLUDE_SELF = ("never", "if_selected", "always", "zero_weight")
_FORMAT = "fomo_core.Affinity/1"
MAX_LOAD_BYTES = 1 << 30  # Affinity.load's default cap on the matrix (N up to 11,585)
_MAX_META_CHARS = 1 << 20


class Affinity:
    """The affinity matrix ``A`` [N, N] (float64) and epsilon-greedy top-M candidate selection.

    num_clients:    N, the number of clients
    selection:      "epsilon_greedy" (top-M; with probability epsilon M clients uniformly at random
                    instead), "top_m" (always top-M) or "top_m_recent" (top-M among ``among``, the
                    clients of the previous round, which ``select`` then requires)
    epsilon:        exploration probability at round 0 (epsilon_greedy only)
    epsilon_decay:  subtracted from epsilon every round when decay="linear" (floored at 0)
    decay:          "linear" (the authors' schedule) or "none" (epsilon stays constant)
    init:           "zeros_self" (0, self_affinity on the diagonal), "identity" or "zeros"
    self_affinity:  the diagonal value for init="zeros_self"
    update:         "raw" (A[i, n] += s_n) or "normalised" (A[i, n] += s_n / |sum_m s_m|)
    include_self:   "never" (the client is never its own candidate), "if_selected" (it competes
                    for a place like any other client), "always" / "zero_weight" (it comes first,
                    in addition to the M others; the client gives it no weight either way since it
                    is at distance 0 from its own model)
    seed:           seed of the numpy.random.Generator used for exploration and tie-breaking
    """

    def __init__(
        self,
        num_clients: int,
        *,
        selection: str = "epsilon_greedy",
        epsilon: float = 0.3,
        epsilon_decay: float = 0.05,
        decay: str = "linear",
        init: str = "zeros_self",
        self_affinity: float = 0.1,
        update: str = "raw",
        include_self: str = "never",
        seed: Union[int, None, np.random.SeedSequence] = None,
    ):
        self.num_clients = _count(num_clients, "num_clients", low=1)
        self.selection = _choice(selection, "selection", SELECTIONS)
        self.epsilon = _real(epsilon, "epsilon", low=0.0, high=1.0)
        self.epsilon_decay = _real(epsilon_decay, "epsilon_decay", low=0.0)
        self.decay = _choice(decay, "decay", DECAYS)
        self.init = _choice(init, "init", INITS)
        self.self_affinity = _real(self_affinity, "self_affinity")
        self.update_rule = _choice(update, "update", UPDATES)
        self.include_self = _choice(include_self, "include_self", INCLUDE_SELF)
        if seed is not None and not isinstance(seed, (int, np.integer, np.random.SeedSequence)):
            raise TypeError(f"seed must be an integer, a numpy SeedSequence or None, got {type(seed).__name__}")
        self.rng = np.random.default_rng(seed)
        self.matrix = self._initial_matrix()

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, preset: Union[str, Preset], num_clients: int, **overrides: Any) -> "Affinity":
        """An Affinity with the server-side choices of a preset (see fomo_core.PRESETS); keyword
        ``overrides`` replace single options (``seed``, ``epsilon``, ...)."""
        if isinstance(preset, str):
            preset = get_preset(preset)
        elif not isinstance(preset, Preset):
            raise TypeError(f"preset must be a preset name or a fomo_core.Preset, got {type(preset).__name__}")
        options = dict(
            selection=preset.selection,
            epsilon=preset.epsilon,
            epsilon_decay=preset.epsilon_decay,
            decay="linear" if preset.epsilon_decay > 0 else "none",
            init=preset.affinity_init,
            self_affinity=preset.self_affinity,
            update=preset.affinity_update,
            include_self=preset.include_self,
        )
        options.update(overrides)
        return cls(num_clients, **options)

    def _initial_matrix(self) -> np.ndarray:
        n = self.num_clients
        if self.init == "identity":
            return np.eye(n)
        matrix = np.zeros((n, n))
        if self.init == "zeros_self":
            np.fill_diagonal(matrix, self.self_affinity)
        return matrix

    def grow(self, num_clients: int) -> None:
        """Makes room for clients that join later: the matrix becomes [num_clients, num_clients],
        the new rows and columns take the initial values (``init``), and the existing entries and
        the random generator stay as they are."""
        n = _count(num_clients, "num_clients", low=self.num_clients)
        old = self.matrix
        self.num_clients = n
        self.matrix = self._initial_matrix()
        self.matrix[: old.shape[0], : old.shape[1]] = old

    def options(self) -> dict:
        """The constructor's options (without the seed)."""
        return dict(
            selection=self.selection,
            epsilon=self.epsilon,
            epsilon_decay=self.epsilon_decay,
            decay=self.decay,
            init=self.init,
            self_affinity=self.self_affinity,
            update=self.update_rule,
            include_self=self.include_self,
        )

    # --- selection ----------------------------------------------------------------------------

    def epsilon_at(self, round: int) -> float:
        """The exploration probability at round ``round`` (0-based)."""
        round = _count(round, "round")
        if self.selection != "epsilon_greedy":
            return 0.0
        if self.decay == "none":
            return self.epsilon
        return max(0.0, self.epsilon - self.epsilon_decay * round)

    def _client(self, client: Any, name: str = "client") -> int:
        client = _count(client, name)
        if client >= self.num_clients:
            raise ValueError(f"{name} must be a client index in [0, {self.num_clients}), got {client}")
        return client

    def _ids(self, ids: Any, name: str) -> np.ndarray:
        try:
            arr = np.asarray(ids)
        except Exception:
            raise TypeError(f"{name} must be a sequence of client indices, got {type(ids).__name__}") from None
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D (client indices), got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{name} must hold integer client indices, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        bad = (arr < 0) | (arr >= self.num_clients)
        if bad.any():
            raise ValueError(
                f"{name} must hold client indices in [0, {self.num_clients}), got {int(arr[bad][0])}"
            )
        if np.unique(arr).size != arr.size:
            raise ValueError(f"{name} must not repeat a client, got {arr.tolist()}")
        return arr

    def select(
        self,
        client: int,
        m: int,
        *,
        round: int = 0,
        epsilon: Optional[float] = None,
        among: Optional[Sequence[int]] = None,
        rng: Optional[np.random.Generator] = None,
    ) -> np.ndarray:
        """The clients whose models client ``client`` receives this round, int64 [<= M] (+1 with
        include_self "always"/"zero_weight", the client itself first).

        Top-M of row ``client`` of the affinity matrix, highest first, ties broken at random; with
        probability epsilon (``epsilon`` if given, else the schedule at ``round``) M clients chosen
        uniformly at random instead. ``among`` restricts the choice to those clients (those with a
        model on the server, or the previous round's for selection="top_m_recent"); fewer than M
        are returned when fewer are eligible.
        """
        client = self._client(client)
        m = _count(m, "m")
        eps = self.epsilon_at(round) if epsilon is None else _real(epsilon, "epsilon", low=0.0, high=1.0)
        if rng is None:
            rng = self.rng
        elif not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        if among is None:
            if self.selection == "top_m_recent":
                raise ValueError("among (the previous round's clients) is required with selection='top_m_recent'")
            pool = np.arange(self.num_clients, dtype=np.int64)
        else:
            pool = self._ids(among, "among")
        if self.include_self != "if_selected":
            pool = pool[pool != client]
        m = min(m, pool.size)
        # Shuffle first so that the stable sort below breaks ties at random.
        pool = rng.permutation(pool)
        if self.selection == "epsilon_greedy" and eps > 0 and rng.random() < eps:
            chosen = pool[:m]
        else:
            order = np.argsort(-self.matrix[client, pool], kind="stable")
            chosen = pool[order[:m]]
        if self.include_self in ("always", "zero_weight"):
            chosen = np.concatenate([np.array([client], dtype=np.int64), chosen])
        return chosen

    # --- update -------------------------------------------------------------------------------

    def update(self, client: int, ids: Sequence[int], scores: Any) -> None:
        """Adds client ``client``'s first-order scores of the candidates ``ids`` to its row.

        scores: [len(ids)] raw scores s_n (``StepResult.scores``). NaN marks a candidate that was
        not measured (``all_scores=False``) and adds nothing. "normalised" divides by |sum of the
        measured scores|, and adds nothing when that sum is 0.
        """
        client = self._client(client)
        ids = self._ids(ids, "ids")
        s = real_vector(scores, "scores") if np.ndim(ids) == 1 and np.ndim(scores) == 1 else np.asarray(scores)
        if s.shape != ids.shape:
            raise ValueError(f"scores must have one value per id, shape {ids.shape}, got shape {s.shape}")
        if np.isinf(s).any():
            raise ValueError(f"scores must be finite or NaN (not measured), got {s.tolist()}")
        s = np.where(np.isnan(s), 0.0, s)
        if self.update_rule == "normalised":
            total = abs(float(s.sum()))
            if total == 0.0:
                return
            s = s / total
        self.matrix[client, ids] += s

    # --- persistence --------------------------------------------------------------------------

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes the matrix, the options and the random generator's state to a .npz file,
        atomically: a crash mid-save leaves the previous file as it was."""
        meta = {"format": _FORMAT, "options": self.options(), "rng": self.rng.bit_generator.state}
        with atomic_write(path) as f:
            np.savez(f, matrix=self.matrix, meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, max_bytes: int = MAX_LOAD_BYTES) -> "Affinity":
        """An Affinity restored from :meth:`save`'s file: it continues exactly where it stopped.

        The file is checked before anything is built: a readable zip of the two entries, the
        matrix a square float array of at most ``max_bytes`` (1 GiB by default; the size declared in
        its header is checked before it is read, so a small compressed file cannot expand beyond
        it), every entry finite, the options and the generator state valid. A file that fails gets
        a ValueError (TypeError for wrong types) naming the file and what is wrong; a file that
        cannot be opened raises the usual OSError.
        """
        where = f"path {os.fspath(path)!r}"
        max_bytes = _count(max_bytes, "max_bytes", low=1)
        matrix, meta = _read_checkpoint(path, where, max_bytes)
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(f"{where} has format {found!r}, expected {_FORMAT!r}")
        options, rng = meta.get("options"), meta.get("rng")
        if not isinstance(options, dict) or not isinstance(rng, dict):
            raise ValueError(f"{where} has no options/rng entries in its metadata")
        try:
            aff = cls(matrix.shape[0], **options)
            aff.rng.bit_generator.state = rng
        except (TypeError, ValueError, KeyError) as e:
            kind = TypeError if isinstance(e, TypeError) else ValueError
            raise kind(f"{where} holds invalid options or generator state: {e}") from None
        aff.matrix = matrix
        return aff

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"Affinity({self.num_clients}, {opts})"


# --- reading a checkpoint -----------------------------------------------------------------------


def _npy_header(member: Any, where: str, entry: str) -> tuple:
    """(shape, fortran_order, dtype) from a .npy header, without reading the data."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(member)
    raise ValueError(f"{where}: entry {entry!r} has .npy format version {version}, expected 1.0 or 2.0")


def _read_entry(archive: zipfile.ZipFile, where: str, entry: str, kinds: str, max_bytes: int) -> np.ndarray:
    """One .npy entry of the archive, its declared dtype and size checked before its data is read."""
    with archive.open(entry + ".npy") as member:
        shape, fortran, dtype = _npy_header(member, where, entry)
        if dtype.kind not in kinds or dtype.hasobject:
            raise TypeError(f"{where}: entry {entry!r} has dtype {dtype}, expected {'a real float' if kinds == 'f' else 'text'}")
        size = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if size > max_bytes:
            raise ValueError(f"{where}: entry {entry!r} declares shape {shape} ({size} bytes), beyond the cap of {max_bytes} bytes")
        data = member.read(size)
        if len(data) != size:
            raise ValueError(f"{where}: entry {entry!r} is truncated ({len(data)} of {size} bytes)")
    array = np.frombuffer(data, dtype=dtype)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def _read_checkpoint(path: Union[str, os.PathLike], where: str, max_bytes: int) -> tuple:
    """(matrix [N, N] float64, meta) from an Affinity file, or a ValueError/TypeError saying why not."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = [n for n in ("matrix.npy", "meta.npy") if n not in names]
            if missing:
                raise ValueError(f"{where} is not an Affinity file (no {', '.join(missing)} entry)")
            matrix = _read_entry(archive, where, "matrix", "f", max_bytes)
            text = _read_entry(archive, where, "meta", "U", _MAX_META_CHARS * 4)
    except (zipfile.BadZipFile, zlib.error, EOFError, struct.error, NotImplementedError) as e:
        raise ValueError(f"{where} is not a readable Affinity file: {type(e).__name__}: {e}") from None
    except (KeyError, UnicodeDecodeError) as e:
        raise ValueError(f"{where} is not a readable Affinity file: {e}") from None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 1:
        raise ValueError(f"{where} holds a matrix of shape {matrix.shape}, expected (N, N) with N >= 1")
    matrix = np.array(matrix, dtype=np.float64)
    if not np.isfinite(matrix).all():
        raise ValueError(f"{where} holds a matrix with NaN or infinite entries")
    if text.shape != ():
        raise ValueError(f"{where}: entry 'meta' has shape {text.shape}, expected one string")
    try:
        meta = json.loads(str(text[()]))
    except ValueError as e:
        raise ValueError(f"{where}: entry 'meta' is not JSON: {e}") from None
    return matrix, meta
