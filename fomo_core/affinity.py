"""Server side of FedFomo: the affinity and the choice of each client's candidates.

The server keeps ``A[i, n]``, how much client n's models have helped client i so far (the sum of
the first-order scores client i gave them), and each round sends client i the models of the M
clients with the highest affinity, exploring at random with probability epsilon (epsilon-greedy,
epsilon decaying over the rounds as in the authors' code).

Each row keeps at most ``k`` entries besides the diagonal (the top k by value; every other entry
is the initial value 0), so a federation of N clients needs O(N k) memory, not O(N²), and a
selection costs O(k + M) per client whatever N. With ``k=None`` (or k >= N - 1) every entry is
kept and the affinity is exactly the dense matrix. Below that, what is approximated:

- an entry that falls out of its row's top k (a new entry of higher value arrived with the row
  full) reads as 0 again; if it was negative it is *parked*: the row remembers up to k such ids,
  oldest forgotten first, and a parked client ranks below every other (a model that hurt does not
  turn neutral and come back);
- a client scored again after it fell out restarts from its new score (its older sum is lost).

>>> aff = Affinity(10, seed=0)
>>> ids = aff.select(3, 4, round=0)       # four other clients for client 3
>>> aff.update(3, ids, scores)             # the scores client 3 returned for them
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, Optional, Union

import numpy as np

from . import _selection
from ._atomic import atomic_write
from ._checkpoint import Checkpoint
from ._pool import ClientPool
from ._validate import count as _count
from ._validate import real as _real
from ._validate import real_vector
from .choices import AffinityInit, AffinityUpdate
from .policy import ServerPolicy
from .presets import Preset, as_preset

__all__ = ["Affinity", "SCORE_LIMIT", "VALUE_LIMIT"]

_FORMAT = "fomo_core.Affinity/2"
_FORMAT_DENSE = "fomo_core.Affinity/1"  # the dense matrix of earlier versions, still read
MAX_LOAD_BYTES = 1 << 30  # Affinity.load's default cap on each array of the file
MAX_CLIENTS = 2**31 - 1  # client ids are stored as int32
_CHECK_ROWS = 4096  # rows of a file checked at a time
# A score beyond +-SCORE_LIMIT is clipped to it (no honest client reaches it: scores are loss
# differences over distances), and every entry to +-VALUE_LIMIT: one client sending 1e308 twice
# cannot turn its row infinite, so the server can always reload its own checkpoint.
SCORE_LIMIT = 1e100
VALUE_LIMIT = 1e300


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
        k=policy.affinity_k,
    )


def _rows(rows: np.ndarray, *arrays: np.ndarray) -> list:
    """The given rows of each array."""
    return [a[rows] for a in arrays]


def _clip(values: Any, limit: float = VALUE_LIMIT) -> Any:
    return np.minimum(np.maximum(values, -limit), limit)  # np.clip costs more per call


class Affinity:
    """The affinity ``A`` [N, N] (float64, top-k entries per row) and the choice of each client's
    candidates.

    num_clients:    N, the number of clients
    selection:      "epsilon_greedy" (top-M; with probability epsilon M clients uniformly at random
                    instead), "epsilon_greedy_per_slot" (each of the M places is the best remaining
                    client or, with probability epsilon, a random remaining one) or "top_m"
    include_self:   "never" (a client is not its own candidate), "compete" (it competes for a
                    place like any other) or "always" (it competes, and is added last when not
                    picked)
    tie:            "random", "lowest_index" or "torch_topk" (as ``torch.topk`` orders them; top_m
                    only): how equal affinities are ordered. "random" selects in O(k + M) per
                    client; the other two build the row over the pool, O(pool)
    epsilon:        exploration probability at round 0 (the epsilon-greedy selections)
    epsilon_decay:  subtracted from epsilon every round (floored at 0); 0 keeps it constant
    init:           "self" (0, ``self_affinity`` on the diagonal) or "identity"
    self_affinity:  the diagonal value for init="self"
    update:         "raw" (A[i, n] += s_n) or "normalised" (A[i, n] += s_n / |sum_m s_m|, the sum
                    floored at 1e-9)
    k:              entries kept per row besides the diagonal (the top k by value, see the module
                    docstring for what is approximated); None keeps every entry (dense)
    seed:           seed of the numpy.random.Generator used for exploration and tie-breaking

    :class:`fomo_core.Server` drives one per federation from a preset's :class:`ServerPolicy`.
    ``evicted`` counts the entries that fell out of a row's top k, ``forgotten`` the parked ones
    dropped from a full park list.
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
        init: AffinityInit = "self",
        self_affinity: float = 0.1,
        update: AffinityUpdate = "raw",
        k: Optional[int] = ServerPolicy.affinity_k,
        seed: Union[int, None, np.random.SeedSequence] = None,
    ):
        self.num_clients = _count(num_clients, "num_clients", low=1, high=MAX_CLIENTS)
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
            affinity_k=k,
        )
        if isinstance(seed, (int, np.integer)):
            seed = _count(seed, "seed")
        elif seed is not None and not isinstance(seed, np.random.SeedSequence):
            raise TypeError(f"seed must be an integer, a numpy SeedSequence or None, got {type(seed).__name__}")
        self.rng = np.random.default_rng(seed)
        self.k = self.policy.affinity_k
        self.evicted = 0
        self.forgotten = 0
        self._allocate(self.num_clients)

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

    def _capacity(self, n: int) -> tuple:
        """(entries per row, parked ids per row) for n clients."""
        row = n - 1 if self.k is None else min(self.k, n - 1)
        return row, min(row, n - 1 - row)

    def _allocate(self, n: int) -> None:
        cap, park = self._capacity(n)
        self._entry_ids = np.full((n, cap), -1, dtype=np.int32)  # stored ids first, then -1
        self._entry_values = np.zeros((n, cap))
        self._entry_count = np.zeros(n, dtype=np.int64)
        self._parked = np.full((n, park), -1, dtype=np.int32)  # oldest first, then -1
        self._parked_count = np.zeros(n, dtype=np.int64)
        own = 1.0 if self.policy.affinity_init == "identity" else self.policy.self_affinity
        self._diag = np.full(n, float(own))
        self._everyone = ClientPool(n, everyone=True)

    def grow(self, num_clients: int) -> None:
        """Makes room for clients that join later: the new rows and columns take the initial
        values (``init``), and the existing entries and the random generator stay as they are."""
        n = _count(num_clients, "num_clients", low=self.num_clients, high=MAX_CLIENTS)
        old = (self._entry_ids, self._entry_values, self._entry_count, self._parked, self._parked_count, self._diag)
        rows = self.num_clients
        self.num_clients = n
        self._allocate(n)
        self._entry_ids[:rows, : old[0].shape[1]] = old[0]
        self._entry_values[:rows, : old[1].shape[1]] = old[1]
        self._entry_count[:rows] = old[2]
        self._parked[:rows, : old[3].shape[1]] = old[3]
        self._parked_count[:rows] = old[4]
        self._diag[:rows] = old[5]

    def options(self) -> dict:
        """The constructor's options (without the seed)."""
        return _options(self.policy)

    # --- reading the affinity -----------------------------------------------------------------

    def row(self, client: int) -> np.ndarray:
        """Row ``client`` as a dense float64 vector [N] (a copy; parked entries read 0)."""
        return self._dense(np.asarray([self._client(client)]))[0]

    @property
    def matrix(self) -> np.ndarray:
        """The affinity as a dense, read-only [N, N] float64 array, built on each access (O(N²):
        for small federations, plots and tests; parked entries read 0). Assigning an [N, N]
        array replaces the affinity (each row keeps its top k)."""
        if self.num_clients**2 * 8 > 1 << 31:
            raise ValueError(
                f"Affinity.matrix would be a dense {self.num_clients} x {self.num_clients} array "
                f"({self.num_clients**2 * 8 / 2**30:.0f} GiB): read rows with Affinity.row(client)"
            )
        dense = self._dense(np.arange(self.num_clients))
        dense.flags.writeable = False
        return dense

    @matrix.setter
    def matrix(self, value: Any) -> None:
        dense = np.array(value, dtype=np.float64)
        n = self.num_clients
        if dense.shape != (n, n):
            raise ValueError(f"matrix must have shape ({n}, {n}), got {dense.shape}")
        if not np.isfinite(dense).all() or np.abs(dense).max(initial=0.0) > VALUE_LIMIT:
            raise ValueError(f"matrix must hold finite values within +-{VALUE_LIMIT:g}")
        self._allocate(n)
        self._diag[:] = np.diagonal(dense)
        np.fill_diagonal(dense, 0.0)
        cap, park = self._capacity(n)
        order = np.argsort(-dense, axis=1, kind="stable")
        for i in range(n):
            present = order[i][dense[i, order[i]] != 0]
            kept, evicted = present[:cap], present[cap:]
            self._entry_ids[i, : kept.size] = kept
            self._entry_values[i, : kept.size] = dense[i, kept]
            self._entry_count[i] = kept.size
            parked = evicted[dense[i, evicted] < 0][::-1][:park]  # the most negative ones
            self._parked[i, : parked.size] = parked
            self._parked_count[i] = parked.size

    def _dense(self, rows: np.ndarray) -> np.ndarray:
        out = np.zeros((rows.size, self.num_clients))
        ids, values = self._entry_ids[rows], self._entry_values[rows]
        r, c = np.nonzero(ids >= 0)
        out[r, ids[r, c]] = values[r, c]
        out[np.arange(rows.size), rows] = self._diag[rows]
        return out

    # --- selection ----------------------------------------------------------------------------

    def epsilon_at(self, round: int) -> float:
        """The exploration probability at round ``round`` (0-based, any size)."""
        r = _count(round, "round")
        if self.policy.selection == "top_m":
            return 0.0
        eps, decay = self.policy.epsilon, self.policy.epsilon_decay
        if r <= 2**53:  # exactly as the peers compute it
            return max(0.0, eps - decay * r)
        left = Fraction(eps) - Fraction(decay) * r  # beyond float range: exactly
        return float(left) if left > 0 else 0.0

    def _client(self, client: Any, name: str = "client") -> int:
        client = _count(client, name)
        if client >= self.num_clients:
            raise ValueError(f"{name} must be a client index in [0, {self.num_clients}), got {client}")
        return client

    def _ids(self, ids: Any, name: str, *, unique: bool = True) -> np.ndarray:
        try:
            arr = np.asarray(ids)
        except Exception:
            raise TypeError(f"{name} must be a sequence of client indices, got {type(ids).__name__}") from None
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D (client indices), got shape {arr.shape}")
        if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise TypeError(f"{name} must hold integer client indices, got dtype {arr.dtype}")
        if arr.size and arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{name} must hold client indices in [0, {self.num_clients}), got {int(arr.max())}")
        arr = arr.astype(np.int64)
        bad = (arr < 0) | (arr >= self.num_clients)
        if bad.any():
            raise ValueError(f"{name} must hold client indices in [0, {self.num_clients}), got {int(arr[bad][0])}")
        if unique and np.unique(arr).size != arr.size:
            raise ValueError(f"{name} must not repeat a client, got {arr.tolist()}")
        return arr

    def _pool(self, among: Any) -> ClientPool:
        if among is None:
            return self._everyone
        if isinstance(among, ClientPool):
            if among.num_clients != self.num_clients:
                raise ValueError(f"among is a pool of {among.num_clients} clients, expected {self.num_clients}")
            return among
        return ClientPool(self.num_clients, self._ids(among, "among"))

    def _epsilon(self, round: Any, epsilon: Any) -> float:
        if epsilon is not None:
            return _real(epsilon, "epsilon", low=0.0, high=1.0)
        if self.policy.selection == "top_m":
            return 0.0
        if round is None:
            raise TypeError(
                "select() needs round= (the 0-based round, for the epsilon schedule) or epsilon=; "
                f"selection {self.policy.selection!r} explores with a decaying epsilon"
            )
        return self.epsilon_at(round)

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

        The M clients of ``among`` (default: all; in the given order, which ties ordered as
        torch.topk depend on) with the highest affinity in row ``client``, explored per the
        selection rule with probability epsilon: ``epsilon`` if given, else the schedule at
        ``round``, which the epsilon-greedy selections therefore require (an epsilon that
        silently never decays is a trap). Fewer than M come back when fewer are eligible.
        """
        client = self._client(client)
        m = _count(m, "m")
        eps = self._epsilon(round, epsilon)
        rng = self._generator(rng)
        pool = self._pool(among)
        if self.policy.tie != "random":  # the row over the pool, O(pool), either way
            return self._choose(np.asarray([client]), m, eps, pool, rng)[0]
        return self._choose_one(client, m, eps, pool, rng)

    def select_many(
        self,
        clients: Sequence[int],
        m: int,
        *,
        round: Optional[int] = None,
        epsilon: Optional[float] = None,
        among: Optional[Sequence[int]] = None,
        rng: Optional[np.random.Generator] = None,
    ) -> list:
        """:meth:`select` for several clients in one vectorised call (a round's participants):
        a list of int64 arrays, one per client. Each client's choice has the distribution
        :meth:`select` gives it; the random draws are made in another order, so the same seed
        gives other (equally likely) choices than one call per client."""
        clients = self._ids(clients, "clients", unique=False)
        m = _count(m, "m")
        eps = self._epsilon(round, epsilon)
        return self._choose(clients, m, eps, self._pool(among), self._generator(rng))

    def _generator(self, rng: Any) -> np.random.Generator:
        if rng is None:
            return self.rng
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        return rng

    def _choose_one(self, client: int, m: int, eps: float, pool: ClientPool, rng: np.random.Generator) -> np.ndarray:
        """:meth:`_choose` for one client, ties at random, in plain Python: for one client
        NumPy's cost per call would dominate. The same rule; its draws come in another order."""
        never = self.policy.include_self == "never"
        used, parked = int(self._entry_count[client]), int(self._parked_count[client])
        ids, parked_ids = self._entry_ids[client, :used], self._parked[client, :parked]
        inside = pool.contains(np.concatenate([ids, parked_ids, [client]])).tolist()
        values = self._entry_values[client, :used].tolist()
        known = [(v, n) for n, v, ok in zip(ids.tolist(), values, inside) if ok and v != 0]
        known += [(-np.inf, n) for n, ok in zip(parked_ids.tolist(), inside[used:-1]) if ok]
        own = float(self._diag[client])
        if not never and inside[-1] and own != 0:
            known.append((own, client))
        available = pool.size - (inside[-1] and never)
        count = min(m, available)
        avoid = {client} if never else set()
        if self.policy.selection == "epsilon_greedy_per_slot":
            depth = min(2 * m, available)
            best = _selection.top_one(known, avoid, depth, available, pool, rng)
            shuffled = _selection.draw_one(depth, avoid, pool, rng)
            explore = rng.random((1, m)) < eps if eps > 0 else np.zeros((1, m), dtype=bool)
            chosen = _selection.per_slot([best], [shuffled], [count], explore)[0].tolist()
        elif self.policy.selection == "epsilon_greedy" and eps > 0 and rng.random() < eps:
            chosen = _selection.draw_one(count, avoid, pool, rng)
        else:
            chosen = _selection.top_one(known, avoid, count, available, pool, rng)
        if self.policy.include_self == "always" and client not in chosen:
            chosen.append(client)
        return np.asarray(chosen, dtype=np.int64)

    def _known(self, clients: np.ndarray, pool: ClientPool) -> tuple:
        """The entries of the clients' rows that differ from 0, [C, K + 1]: ids, values, and ok
        where the entry is in the pool (and eligible): the stored entries, the parked ones (at
        -inf), then the client's own entry. Also whether each client is in the pool [C]."""
        cap, park = self._entry_ids.shape[1], self._parked.shape[1]
        ids = np.empty((clients.size, cap + park + 1), dtype=np.int64)
        values = np.empty(ids.shape)
        ids[:, :cap], values[:, :cap] = self._entry_ids[clients], self._entry_values[clients]
        ids[:, cap:-1], values[:, cap:-1] = self._parked[clients], -np.inf
        ids[:, -1], values[:, -1] = clients, self._diag[clients]
        in_pool = pool.contains(ids)
        ok = in_pool & (values != 0)
        if self.policy.include_self == "never":
            ok[:, -1] = False
        return ids, values, ok, in_pool[:, -1]

    def _choose(self, clients: np.ndarray, m: int, eps: float, pool: ClientPool, rng: np.random.Generator) -> list:
        never = self.policy.include_self == "never"
        ids, values, ok, own_in_pool = self._known(clients, pool)
        available = pool.size - (own_in_pool & never)
        count = np.minimum(m, available)
        avoid = np.where(never, clients, -1)[:, None]
        selection = self.policy.selection
        if selection == "epsilon_greedy_per_slot":
            depth = np.minimum(2 * m, available)
            best = self._ranked(clients, ids, values, ok, avoid, depth, available, pool, rng)
            shuffled = _selection.draw(depth, avoid, pool, rng)
            explore = rng.random((clients.size, m)) < eps if eps > 0 else np.zeros((clients.size, m), dtype=bool)
            chosen = _selection.per_slot(best, shuffled, count, explore)
        elif selection == "epsilon_greedy" and eps > 0:
            explore = rng.random(clients.size) < eps
            greedy, random = np.flatnonzero(~explore), np.flatnonzero(explore)
            picked = self._ranked(*_rows(greedy, clients, ids, values, ok, avoid, count, available), pool, rng)
            drawn = _selection.draw(count[random], avoid[random], pool, rng)
            chosen = [None] * clients.size
            for rows, found in ((greedy, picked), (random, drawn)):
                for r, c in zip(rows.tolist(), found):
                    chosen[r] = c
        else:
            chosen = self._ranked(clients, ids, values, ok, avoid, count, available, pool, rng)
        if self.policy.include_self == "always":
            chosen = [c if client in c else np.append(c, client) for c, client in zip(chosen, clients.tolist())]
        return chosen

    def _ranked(self, clients, ids, values, ok, avoid, count, available, pool, rng) -> list:
        """Each client's top ``count`` over the pool, ties per the tie rule."""
        if self.policy.tie == "random":
            return _selection.top(ids, values, ok, avoid, count, available, pool, rng)
        exclude_self = self.policy.include_self == "never"
        return [
            _selection.top_over_pool(c, ids[r], values[r], ok[r], exclude_self, int(count[r]), pool, self.policy.tie)
            for r, c in enumerate(clients.tolist())
        ]

    # --- update -------------------------------------------------------------------------------

    def update(self, client: int, ids: Sequence[int], scores: Any) -> None:
        """Adds client ``client``'s first-order scores of the candidates ``ids`` to its row.

        scores: [len(ids)] raw scores s_n (``StepResult.scores``). NaN marks a candidate that was
        not measured (``all_scores=False``) and adds nothing; a score beyond +-SCORE_LIMIT (1e100)
        counts as that limit, and every entry stays within +-VALUE_LIMIT (1e300). "normalised"
        divides by |sum of the measured scores|, and adds nothing when that sum is 0.
        """
        client = self._client(client)
        ids, s = self._prepare_update(client, ids, scores)
        self._apply_update(client, ids, s)

    def _prepare_update(self, client: int, ids: Any, scores: Any) -> tuple:
        """The checked (ids, increments) that :meth:`update` adds: nothing changes yet, so a
        caller can check the rest of an upload before applying it with :meth:`_apply_update`."""
        ids = self._ids(ids, "ids")
        s = real_vector(scores, "scores")
        if s.shape != ids.shape:
            raise ValueError(f"scores must have one value per id, shape {ids.shape}, got shape {s.shape}")
        if np.isinf(s).any():
            raise ValueError(f"scores must be finite or NaN (not measured), got {s.tolist()}")
        s = _clip(np.where(np.isnan(s), 0.0, s), SCORE_LIMIT)
        if self.policy.affinity_update == "normalised":
            # The authors' rule: a sum below 1e-9 is raised by 1e-9 (so all-zero scores add 0).
            total = abs(float(s.sum()))
            s = s / (total + 1e-9 if total < 1e-9 else total)
        return ids, s

    def _apply_update(self, client: int, ids: np.ndarray, s: np.ndarray) -> None:
        """Adds the increments of :meth:`_prepare_update` to row ``client``."""
        own = ids == client
        if own.any():
            self._diag[client] = _clip(self._diag[client] + s[own].sum())
        others, s = ids[~own], s[~own]
        if not others.size:
            return
        used = int(self._entry_count[client])
        match = self._entry_ids[client, :used, None] == others[None, :]
        found = match.any(axis=0)
        if found.any():
            slots = match.argmax(axis=0)[found]
            self._entry_values[client, slots] = _clip(self._entry_values[client, slots] + s[found])
        for n, v in zip(others[~found].tolist(), s[~found].tolist()):
            if v != 0:
                self._insert(client, n, v)
        self._drop_zeros(client)

    def _insert(self, client: int, n: int, value: float) -> None:
        self._unpark(client, n)  # scored again: its new score replaces what parking said
        used = int(self._entry_count[client])
        if used < self._entry_ids.shape[1]:
            self._entry_ids[client, used], self._entry_values[client, used] = n, value
            self._entry_count[client] = used + 1
            return
        lowest = int(np.argmin(self._entry_values[client, :used]))
        if value <= self._entry_values[client, lowest]:
            self._evict(client, n, value)
            return
        self._evict(client, int(self._entry_ids[client, lowest]), float(self._entry_values[client, lowest]))
        self._entry_ids[client, lowest], self._entry_values[client, lowest] = n, value

    def _evict(self, client: int, n: int, value: float) -> None:
        self.evicted += 1
        park = self._parked.shape[1]
        if value >= 0 or not park:
            return
        used = int(self._parked_count[client])
        if used == park:  # full: the oldest is forgotten
            self._parked[client, :-1] = self._parked[client, 1:].copy()
            self._parked[client, -1] = n
            self.forgotten += 1
            return
        self._parked[client, used] = n
        self._parked_count[client] = used + 1

    def _unpark(self, client: int, n: int) -> None:
        used = int(self._parked_count[client])
        if not used:
            return
        where = np.flatnonzero(self._parked[client, :used] == n)
        if where.size:
            j = int(where[0])
            self._parked[client, j : used - 1] = self._parked[client, j + 1 : used].copy()
            self._parked[client, used - 1] = -1
            self._parked_count[client] = used - 1

    def _drop_zeros(self, client: int) -> None:
        """An entry back at exactly 0 is the initial value again: its slot is freed."""
        used = int(self._entry_count[client])
        zero = self._entry_values[client, :used] == 0
        if zero.any():
            keep = np.flatnonzero(~zero)
            self._entry_ids[client, : keep.size] = self._entry_ids[client, keep]
            self._entry_values[client, : keep.size] = self._entry_values[client, keep]
            self._entry_ids[client, keep.size : used] = -1
            self._entry_values[client, keep.size : used] = 0.0
            self._entry_count[client] = keep.size

    # --- persistence --------------------------------------------------------------------------

    def _arrays(self) -> dict:
        """The state as named arrays (what :meth:`save` writes beside its metadata)."""
        return {"ids": self._entry_ids, "values": self._entry_values, "diag": self._diag, "parked": self._parked}

    def _meta(self) -> dict:
        """The metadata :meth:`save` writes: format, options, generator state, counters."""
        return {
            "format": _FORMAT,
            "num_clients": self.num_clients,
            "options": self.options(),
            "rng": self.rng.bit_generator.state,
            "evicted": self.evicted,
            "forgotten": self.forgotten,
        }

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes the rows, the options and the random generator's state to a .npz file,
        atomically (a crash mid-save leaves the previous file as it was; the folder is created
        when missing)."""
        meta = np.array(json.dumps(self._meta()))
        atomic_write(path, lambda f: np.savez(f, meta=meta, **self._arrays()))

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, max_bytes: int = MAX_LOAD_BYTES) -> Affinity:
        """An Affinity restored from :meth:`save`'s file (or an earlier version's dense matrix):
        it continues exactly where it stopped.

        The file is checked before anything is built: a readable zip of the expected entries,
        each array's declared size checked before it is read (at most ``max_bytes``, 1 GiB by
        default, and never more than the file holds), ids in range and not repeated, every value
        finite and within +-VALUE_LIMIT, the options and the generator state valid. A file that
        fails gets a ValueError (TypeError for wrong types) naming the file and what is wrong; a
        file that cannot be opened raises the usual OSError.
        """
        max_bytes = _count(max_bytes, "max_bytes", low=1)
        with Checkpoint(path, "Affinity file") as ckpt:
            ckpt.require("meta")
            return cls._read(ckpt, ckpt.meta(), max_bytes=max_bytes)

    @classmethod
    def _read(cls, ckpt: Checkpoint, meta: Any, *, prefix: str = "", max_bytes: Optional[int] = None) -> Affinity:
        """The Affinity whose metadata is ``meta`` and arrays the entries ``prefix + name`` of an
        open checkpoint, every part checked (see :meth:`load`)."""
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        if found not in (_FORMAT, _FORMAT_DENSE):
            raise ckpt.fail(f"has format {found!r}, expected {_FORMAT!r}")
        options, rng = meta.get("options"), meta.get("rng")
        if not isinstance(options, dict) or not isinstance(rng, dict):
            raise ckpt.fail("has no options/rng entries in its metadata")
        if found == _FORMAT_DENSE:
            ckpt.require(prefix + "matrix")
            matrix = ckpt.array(prefix + "matrix", "f", max_bytes=max_bytes)
            if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 1:
                raise ckpt.fail(f"holds a matrix of shape {matrix.shape}, expected (N, N) with N >= 1")
            if not np.isfinite(matrix).all():
                raise ckpt.fail("holds a matrix with NaN or infinite entries")
            n = matrix.shape[0]
        else:
            n = meta.get("num_clients")
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CLIENTS:
                raise ckpt.fail(f"has num_clients {n!r}, expected an integer in [1, {MAX_CLIENTS}]")
        try:
            aff = cls(n, **{"k": None, **options})
            aff.rng.bit_generator.state = rng
        except (TypeError, ValueError, KeyError) as e:
            kind = TypeError if isinstance(e, TypeError) else ValueError
            raise kind(f"{ckpt.where} holds invalid options or generator state: {e}") from None
        if found == _FORMAT_DENSE:
            if np.abs(matrix).max() > VALUE_LIMIT:
                raise ckpt.fail(f"holds a matrix with entries beyond +-{VALUE_LIMIT:g}")
            aff.matrix = matrix
            return aff
        for name in ("evicted", "forgotten"):
            value = meta.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ckpt.fail(f"has {name} {value!r}, expected an integer >= 0")
            setattr(aff, name, value)
        cap, park = aff._capacity(n)
        arrays = {
            "ids": ckpt.array(prefix + "ids", "iu", shape=(n, cap), max_bytes=max_bytes),
            "values": ckpt.array(prefix + "values", "f", shape=(n, cap), max_bytes=max_bytes),
            "diag": ckpt.array(prefix + "diag", "f", shape=(n,), max_bytes=max_bytes),
            "parked": ckpt.array(prefix + "parked", "iu", shape=(n, park), max_bytes=max_bytes),
        }
        aff._restore(arrays, ckpt)
        return aff

    def _restore(self, arrays: dict, ckpt: Checkpoint) -> None:
        """Takes the arrays of a file after checking them (a ValueError naming the entry), a
        block of rows at a time (the checks' temporaries stay small)."""
        n = self.num_clients
        for start in range(0, n, _CHECK_ROWS):
            rows = slice(start, min(n, start + _CHECK_ROWS))
            own = np.arange(rows.start, rows.stop)[:, None]
            ids = _checked_ids(arrays["ids"][rows], own, n, ckpt, "ids")
            parked = _checked_ids(arrays["parked"][rows], own, n, ckpt, "parked")
            values, diag = arrays["values"][rows], arrays["diag"][rows]
            for name, v in (("values", values), ("diag", diag)):
                if not np.isfinite(v).all() or np.abs(v).max(initial=0.0) > VALUE_LIMIT:
                    raise ckpt.fail(f"entry {name!r} holds NaN, infinite or values beyond +-{VALUE_LIMIT:g}")
            if (values[ids < 0] != 0).any():
                raise ckpt.fail("entry 'values' holds values in empty slots")
            both = np.concatenate([ids, parked], axis=1).astype(np.int64)
            both = np.where(both >= 0, both, -1 - np.arange(both.shape[1]))  # empty slots never repeat
            if both.shape[1] > 1 and _selection.repeats(both).any():
                raise ckpt.fail("entries 'ids'/'parked' repeat a client within a row")
            self._entry_ids[rows], self._entry_values[rows], self._diag[rows] = ids, values, diag
            self._entry_count[rows] = (ids >= 0).sum(axis=1)
            self._parked[rows] = parked
            self._parked_count[rows] = (parked >= 0).sum(axis=1)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"Affinity({self.num_clients}, {opts})"


def _checked_ids(ids: np.ndarray, own: np.ndarray, n: int, ckpt: Checkpoint, name: str) -> np.ndarray:
    """Rows of client ids: each row's ids first, then -1; in [0, n), not the row's own (own [R, 1])."""
    if ids.size and (ids.min() < -1 or ids.max() >= n):
        raise ckpt.fail(f"entry {name!r} holds client ids outside [0, {n}) (-1 marks an empty slot)")
    ids = ids.astype(np.int32)
    empty = ids < 0
    if (empty[:, :-1] & ~empty[:, 1:]).any():
        raise ckpt.fail(f"entry {name!r} has an id after an empty slot")
    if (ids == own).any():
        raise ckpt.fail(f"entry {name!r} holds a client's own id (the diagonal is kept apart)")
    return ids
