"""Partitioners: which samples of a labelled dataset each simulated client holds.

All three return a :class:`Partition`: one index array per client and, when the partition has
one, the latent group of every client (clients of a group share a data distribution).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["Partition", "pathological", "latent_groups", "dirichlet", "PARTITIONS"]

PARTITIONS = ("groups", "pathological", "dirichlet")


@dataclass(frozen=True)
class Partition:
    """indices: one int64 array of sample indices per client (disjoint).
    groups:  [N] int64 group of every client, or None when the partition has no groups
    classes: per client, the sorted classes it holds
    """

    indices: list
    groups: Optional[np.ndarray]
    classes: list

    @property
    def num_clients(self) -> int:
        return len(self.indices)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    return labels.astype(np.int64)


def _positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _finish(labels: np.ndarray, indices: list, groups: Optional[np.ndarray]) -> Partition:
    indices = [np.sort(np.asarray(ix, dtype=np.int64)) for ix in indices]
    classes = [np.unique(labels[ix]) for ix in indices]
    return Partition(indices, groups, classes)


def _split_evenly(idx: np.ndarray, parts: int, rng: np.random.Generator) -> list:
    return np.array_split(rng.permutation(idx), parts)


def latent_groups(
    labels: np.ndarray, num_clients: int, num_groups: int, rng: np.random.Generator
) -> Partition:
    """Clients in ``num_groups`` latent groups, each group owning a disjoint set of classes.

    The classes are shuffled and dealt to the groups (10 classes, 5 groups: 2 classes each);
    clients are dealt to groups in turn (client k in group k % num_groups), and every class's
    samples are split evenly among its group's clients.
    """
    labels = _check_labels(labels)
    num_clients = _positive(num_clients, "num_clients")
    num_groups = _positive(num_groups, "num_groups")
    classes = np.unique(labels)
    if num_groups > classes.size:
        raise ValueError(f"num_groups must be at most the number of classes ({classes.size}), got {num_groups}")
    if num_groups > num_clients:
        raise ValueError(f"num_groups must be at most num_clients ({num_clients}), got {num_groups}")
    group_classes = np.array_split(rng.permutation(classes), num_groups)
    groups = np.arange(num_clients, dtype=np.int64) % num_groups
    indices: list = [[] for _ in range(num_clients)]
    for g, cls in enumerate(group_classes):
        members = np.flatnonzero(groups == g)
        for c in cls:
            for k, part in zip(members, _split_evenly(np.flatnonzero(labels == c), members.size, rng)):
                indices[k].append(part)
    return _finish(labels, [np.concatenate(ix) for ix in indices], groups)


def pathological(
    labels: np.ndarray, num_clients: int, classes_per_client: int, rng: np.random.Generator
) -> Partition:
    """The pathological non-IID split: every client holds ``classes_per_client`` classes.

    Client k gets the classes k*n, k*n+1, ... (mod C) of a shuffled class order, so every class
    is held by about the same number of clients, and each class's samples are split evenly among
    its holders. Clients holding the same set of classes form a group.
    """
    labels = _check_labels(labels)
    num_clients = _positive(num_clients, "num_clients")
    n = _positive(classes_per_client, "classes_per_client")
    classes = rng.permutation(np.unique(labels))
    if n > classes.size:
        raise ValueError(f"classes_per_client must be at most the number of classes ({classes.size}), got {n}")
    held = [np.sort(classes[(k * n + np.arange(n)) % classes.size]) for k in range(num_clients)]
    indices: list = [[] for _ in range(num_clients)]
    for c in classes:
        holders = [k for k in range(num_clients) if c in held[k]]
        if not holders:
            continue
        for k, part in zip(holders, _split_evenly(np.flatnonzero(labels == c), len(holders), rng)):
            indices[k].append(part)
    keys = {tuple(h.tolist()) for h in held}
    key_id = {key: g for g, key in enumerate(sorted(keys))}
    groups = np.array([key_id[tuple(h.tolist())] for h in held], dtype=np.int64)
    return _finish(labels, [np.concatenate(ix) for ix in indices], groups)


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    min_samples: int = 10,
    max_tries: int = 100,
) -> Partition:
    """Label skew by Dirichlet(alpha): each class's samples are shared among the clients in
    proportions drawn from Dir(alpha) (small alpha: few classes per client). Redrawn until every
    client has at least ``min_samples`` samples. No groups."""
    labels = _check_labels(labels)
    num_clients = _positive(num_clients, "num_clients")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    if num_clients * min_samples > labels.size:
        raise ValueError(
            f"num_clients must be at most {labels.size // max(min_samples, 1)} for {labels.size} samples "
            f"(at least {min_samples} each), got {num_clients}"
        )
    for _ in range(max_tries):
        indices: list = [[] for _ in range(num_clients)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, float(alpha)))) * idx.size).astype(int)[:-1]
            for k, part in enumerate(np.split(idx, cuts)):
                indices[k].append(part)
        merged = [np.concatenate(ix) for ix in indices]
        if min(m.size for m in merged) >= min_samples:
            return _finish(labels, merged, None)
    raise ValueError(
        f"alpha={alpha} leaves some client with fewer than {min_samples} samples after {max_tries} draws; "
        "raise alpha or lower num_clients"
    )
