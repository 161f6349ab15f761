"""The clients a client may receive this round (the pool), kept up to date one client at a time.

Selection asks two things of the pool: is client n in it (O(1), a position table), and a client
drawn uniformly from it (O(1), an index into its member list). The members keep the order in
which they joined (arrival order), which the peers' tie-breaking depends on. Keeping it up to
date costs O(1) per joining client and O(size) per replacement, never a sort or np.unique.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ClientPool"]


class ClientPool:
    """A set of client ids in [0, N) in arrival order.

    num_clients:  N
    members:      the initial members, in order (distinct, in range: the caller checks)
    everyone:     the pool of all N clients (members 0..N-1), without a position table
    """

    def __init__(self, num_clients: int, members=(), *, everyone: bool = False):
        self.num_clients = int(num_clients)
        self.everyone = everyone
        if everyone:
            self._members = np.arange(self.num_clients, dtype=np.int64)
            self.size = self.num_clients
            self._position = None
            return
        self._position = np.full(self.num_clients, -1, dtype=np.int64)
        self._members = np.zeros(max(4, len(members)), dtype=np.int64)
        self.size = 0
        self.reset(members)

    @property
    def members(self) -> np.ndarray:
        """The members in arrival order, int64 [size] (a view: do not write)."""
        return self._members[: self.size]

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Whether each id (any shape; negative ids are never members) is in the pool."""
        return self.positions(ids) >= 0

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Each id's index in :attr:`members`, -1 where it is not a member (ids in [-1, N):
        -1 marks no client)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.everyone:
            return ids
        return np.where(ids >= 0, self._position[ids], -1)

    def add(self, client: int) -> None:
        """Adds a client at the end (nothing if it is a member already); amortised O(1)."""
        if self.everyone or self._position[client] >= 0:
            return
        if self.size == self._members.size:
            self._members = np.concatenate([self._members, np.zeros(self._members.size, dtype=np.int64)])
        self._members[self.size] = client
        self._position[client] = self.size
        self.size += 1

    def reset(self, members) -> None:
        """Replaces the members (O(old size + new size))."""
        if self.everyone:
            raise ValueError("the pool of every client cannot be replaced")
        self._position[self.members] = -1
        members = np.asarray(members, dtype=np.int64)
        if members.size > self._members.size:
            self._members = np.zeros(members.size, dtype=np.int64)
        self._members[: members.size] = members
        self._position[members] = np.arange(members.size)
        self.size = int(members.size)
