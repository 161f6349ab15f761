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
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np

from ._atomic import atomic_write
from ._validate import count as _count
from ._validate import real as _real
from ._validate import real_vector
from .policy import ServerPolicy
from .presets import Preset, as_preset

__all__ = ["Affinity"]

_FORMAT = "fomo_core.Affinity/1"
MAX_LOAD_BYTES = 1 << 30  # Affinity.load's default cap on the matrix (N up to 11,585)
_MAX_META_CHARS = 1 << 20


def _options(policy: ServerPolicy) -> dict:
    """Affinity's constructor options from a ServerPolicy (the pool is the Server's concern)."""
    return dict(
        selection=policy.selection,
        include_self=policy.include_self,
        tie=policy.tie,
        epsilon=policy.epsilon,
        epsilon_decay=policy.epsilon_decay,
        init=policy.affinity_init,
        self_affinity=policy.self_affinity,
        update=policy.affinity_update,
    )


def _torch_topk(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values in torch.topk's order (ties included), over the float32
    values the peers keep their affinity in."""
    try:
        import torch
    except ImportError:
        raise ImportError("tie='torch_topk' orders ties as torch.topk does: it needs PyTorch installed") from None
    return torch.topk(torch.from_numpy(values.astype(np.float32)), k).indices.numpy()


def _per_slot(ranking: np.ndarray, shuffled: np.ndarray, m: int, eps: float, rng: np.random.Generator) -> np.ndarray:
    """The authors' per-slot epsilon-greedy: for each of the m places a coin decides between the
    best and a random client not yet chosen."""
    best, random_order, chosen = list(ranking), list(shuffled), []
    for _ in range(m):
        source = random_order if rng.random() < eps else best
        while source[0] in chosen:
            source.pop(0)
        chosen.append(source.pop(0))
    return np.asarray(chosen, dtype=np.int64)


class Affinity:
    """The affinity matrix ``A`` [N, N] (float64) and the choice of each client's candidates.

    num_clients:    N, the number of clients
    selection:      "epsilon_greedy" (top-M; with probability epsilon M clients uniformly at random
                    instead), "epsilon_greedy_per_slot" (each of the M places is the best remaining
                    client or, with probability epsilon, a random remaining one) or "top_m"
    include_self:   "never" (a client is not its own candidate), "compete" (it competes for a
                    place like any other) or "always" (it competes, and is added last when not
                    picked)
    tie:            "random", "lowest_index" or "torch_topk" (as ``torch.topk`` orders them; top_m
                    only): how equal affinities are ordered
    epsilon:        exploration probability at round 0 (the epsilon-greedy selections)
    epsilon_decay:  subtracted from epsilon every round (floored at 0); 0 keeps it constant
    init:           "self" (0, ``self_affinity`` on the diagonal) or "identity"
    self_affinity:  the diagonal value for init="self"
    update:         "raw" (A[i, n] += s_n) or "normalised" (A[i, n] += s_n / |sum_m s_m|, the sum
                    floored at 1e-9)
    seed:           seed of the numpy.random.Generator used for exploration and tie-breaking

    :class:`fomo_core.Server` drives one per federation from a preset's :class:`ServerPolicy`.
    """

    def __init__(
        self,
        num_clients: int,
        *,
        selection: str = "epsilon_greedy",
        include_self: str = "never",
        tie: str = "random",
        epsilon: float = 0.3,
        epsilon_decay: float = 0.05,
        init: str = "self",
        self_affinity: float = 0.1,
        update: str = "raw",
        seed: Union[int, None, np.random.SeedSequence] = None,
    ):
        self.num_clients = _count(num_clients, "num_clients", low=1)
        # ServerPolicy checks the options with their own names.
        self.policy = ServerPolicy(
            selection=selection,
            include_self=include_self,
            tie=tie,
            epsilon=epsilon,
            epsilon_decay=epsilon_decay,
            affinity_init=init,
            self_affinity=self_affinity,
            affinity_update=update,
        )
        if seed is not None and not isinstance(seed, (int, np.integer, np.random.SeedSequence)):
            raise TypeError(f"seed must be an integer, a numpy SeedSequence or None, got {type(seed).__name__}")
        self.rng = np.random.default_rng(seed)
        self.matrix = self._initial_matrix()

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_policy(cls, policy: ServerPolicy, num_clients: int, *, seed: Any = None) -> Affinity:
        """The Affinity a :class:`ServerPolicy` describes."""
        if not isinstance(policy, ServerPolicy):
            raise TypeError(f"policy must be a fomo_core.ServerPolicy, got {type(policy).__name__}")
        return cls(num_clients, seed=seed, **_options(policy))

    @classmethod
    def from_preset(cls, preset: Union[str, Preset], num_clients: int, **overrides: Any) -> Affinity:
        """An Affinity with the server policy of a preset (see fomo_core.PRESETS); keyword
        ``overrides`` replace single options (``seed``, ``epsilon``, ...)."""
        options = _options(as_preset(preset).server)
        options.update(overrides)
        return cls(num_clients, **options)

    def _initial_matrix(self) -> np.ndarray:
        n = self.num_clients
        if self.policy.affinity_init == "identity":
            return np.eye(n)
        matrix = np.zeros((n, n))
        np.fill_diagonal(matrix, self.policy.self_affinity)
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
        return _options(self.policy)

    # --- selection ----------------------------------------------------------------------------

    def epsilon_at(self, round: int) -> float:
        """The exploration probability at round ``round`` (0-based)."""
        round = _count(round, "round")
        if self.policy.selection == "top_m":
            return 0.0
        return max(0.0, self.policy.epsilon - self.policy.epsilon_decay * round)

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
            raise ValueError(f"{name} must hold client indices in [0, {self.num_clients}), got {int(arr[bad][0])}")
        if np.unique(arr).size != arr.size:
            raise ValueError(f"{name} must not repeat a client, got {arr.tolist()}")
        return arr

    def select(
        self,
        client: int,
        m: int,
        *,
        round: Optional[int] = None,
        epsilon: Optional[float] = None,
        among: Optional[Sequence[int]] = None,
        rng: Optional[np.random.Generator] = None,
    ) -> np.ndarray:
        """The clients whose models client ``client`` receives, int64 [<= M], best first (with
        include_self="always", the client itself last when it was not picked).

        The M clients of ``among`` (default: all) with the highest affinity in row ``client``,
        explored per the selection rule with probability epsilon: ``epsilon`` if given, else the
        schedule at ``round``, which the epsilon-greedy selections therefore require (an
        epsilon that silently never decays is a trap). Fewer than M come back when fewer are
        eligible.
        """
        client = self._client(client)
        m = _count(m, "m")
        if epsilon is not None:
            eps = _real(epsilon, "epsilon", low=0.0, high=1.0)
        elif self.policy.selection == "top_m":
            eps = 0.0
        elif round is None:
            raise TypeError(
                "select() needs round= (the 0-based round, for the epsilon schedule) or epsilon=; "
                f"selection {self.policy.selection!r} explores with a decaying epsilon"
            )
        else:
            eps = self.epsilon_at(round)
        if rng is None:
            rng = self.rng
        elif not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        pool = np.arange(self.num_clients, dtype=np.int64) if among is None else np.sort(self._ids(among, "among"))
        if self.policy.include_self == "never":
            pool = pool[pool != client]
        m = min(m, pool.size)
        ranking = self._ranking(client, pool, rng)
        if self.policy.selection == "epsilon_greedy_per_slot":
            chosen = _per_slot(ranking, rng.permutation(pool), m, eps, rng)
        elif self.policy.selection == "epsilon_greedy" and eps > 0 and rng.random() < eps:
            chosen = rng.permutation(pool)[:m]
        elif self.policy.tie == "torch_topk":
            chosen = pool[_torch_topk(self.matrix[client, pool], m)]
        else:
            chosen = ranking[:m]
        if self.policy.include_self == "always" and client not in chosen:
            chosen = np.append(chosen, np.int64(client))
        return chosen.astype(np.int64)

    def _ranking(self, client: int, pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``pool`` ordered by affinity, highest first, ties per the tie rule."""
        if self.policy.tie == "random":
            pool = rng.permutation(pool)
        return pool[np.argsort(-self.matrix[client, pool], kind="stable")]

    # --- update -------------------------------------------------------------------------------

    def update(self, client: int, ids: Sequence[int], scores: Any) -> None:
        """Adds client ``client``'s first-order scores of the candidates ``ids`` to its row.

        scores: [len(ids)] raw scores s_n (``StepResult.scores``). NaN marks a candidate that was
        not measured (``all_scores=False``) and adds nothing. "normalised" divides by |sum of the
        measured scores|, and adds nothing when that sum is 0.
        """
        client = self._client(client)
        ids = self._ids(ids, "ids")
        s = real_vector(scores, "scores")
        if s.shape != ids.shape:
            raise ValueError(f"scores must have one value per id, shape {ids.shape}, got shape {s.shape}")
        if np.isinf(s).any():
            raise ValueError(f"scores must be finite or NaN (not measured), got {s.tolist()}")
        s = np.where(np.isnan(s), 0.0, s)
        if self.policy.affinity_update == "normalised":
            # The authors' rule: a sum below 1e-9 is raised by 1e-9 (so all-zero scores add 0).
            total = abs(float(s.sum()))
            s = s / (total + 1e-9 if total < 1e-9 else total)
        self.matrix[client, ids] += s

    # --- persistence --------------------------------------------------------------------------

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes the matrix, the options and the random generator's state to a .npz file,
        atomically: a crash mid-save leaves the previous file as it was."""
        meta = {"format": _FORMAT, "options": self.options(), "rng": self.rng.bit_generator.state}
        atomic_write(path, lambda f: np.savez(f, matrix=self.matrix, meta=np.array(json.dumps(meta))))

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, max_bytes: int = MAX_LOAD_BYTES) -> Affinity:
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
            raise TypeError(
                f"{where}: entry {entry!r} has dtype {dtype}, expected {'a real float' if kinds == 'f' else 'text'}"
            )
        size = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if size > max_bytes:
            raise ValueError(
                f"{where}: entry {entry!r} declares shape {shape} ({size} bytes), beyond the cap of {max_bytes} bytes"
            )
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
    except (TypeError, ValueError) as e:
        if str(e).startswith(where):
            raise  # ours, already saying what is wrong
        raise ValueError(f"{where} is not a readable Affinity file: {e}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, struct.error, NotImplementedError, KeyError, OverflowError) as e:
        raise ValueError(f"{where} is not a readable Affinity file: {type(e).__name__}: {e}") from None
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
