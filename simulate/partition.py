"""Partitioners: which samples of a labelled dataset each simulated client holds.

Every partitioner returns a :class:`Partition`: one index array per client and, when the
partition has one, the latent group of every client (clients of a group share a data
distribution).

latent_groups     groups own disjoint sets of classes (the paper's latent distributions by label)
pathological      LG-FedAvg-style random class shards (the paper's pathological non-IID split)
dirichlet         label skew by Dirichlet(alpha)
feature_clusters  latent distributions by clustering features, as the paper builds them
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .._validate import count, real

__all__ = ["Partition", "pathological", "latent_groups", "dirichlet", "feature_clusters", "PARTITIONS"]

PARTITIONS = ("groups", "pathological", "dirichlet", "clusters")


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


def _finish(labels: np.ndarray, indices: list, groups: Optional[np.ndarray]) -> Partition:
    indices = [np.sort(np.asarray(ix, dtype=np.int64)) for ix in indices]
    classes = [np.unique(labels[ix]) for ix in indices]
    return Partition(indices, groups, classes)


def _split_evenly(idx: np.ndarray, parts: int, rng: np.random.Generator) -> list:
    return np.array_split(rng.permutation(idx), parts)


def latent_groups(labels: np.ndarray, num_clients: int, num_groups: int, rng: np.random.Generator) -> Partition:
    """Clients in ``num_groups`` latent groups, each group owning a disjoint set of classes.

    The classes are shuffled and dealt to the groups (10 classes, 5 groups: 2 classes each);
    clients are dealt to groups in turn (client k in group k % num_groups), and every class's
    samples are split evenly among its group's clients.
    """
    labels = _check_labels(labels)
    num_clients = count(num_clients, "num_clients", low=1, type_error=ValueError)
    num_groups = count(num_groups, "num_groups", low=1, type_error=ValueError)
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


def pathological(labels: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator) -> Partition:
    """The pathological non-IID split as LG-FedAvg builds it (and FedFomo's authors use): every
    class's samples are shuffled and cut into equal shards, ``num_clients * shards_per_client``
    shards in all, and every client is dealt ``shards_per_client`` shards of random classes
    (a shuffled multiset with each class equally often, so two shards of one client may share a
    class). Every sample is used once. Clients holding the same set of classes form a group.

    num_clients * shards_per_client must be a multiple of the number of classes.
    """
    labels = _check_labels(labels)
    num_clients = count(num_clients, "num_clients", low=1, type_error=ValueError)
    s = count(shards_per_client, "shards_per_client", low=1, type_error=ValueError)
    classes = np.unique(labels)
    if (num_clients * s) % classes.size:
        raise ValueError(
            f"num_clients * shards_per_client must be a multiple of the number of classes ({classes.size}), "
            f"got {num_clients} * {s} = {num_clients * s}"
        )
    per_class = num_clients * s // classes.size
    shards = {}
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if idx.size < per_class:
            raise ValueError(
                f"shards_per_client={s} over {num_clients} clients needs {per_class} shards of class {c}, "
                f"which has {idx.size} samples"
            )
        shards[int(c)] = _split_evenly(idx, per_class, rng)
    dealt = rng.permutation(np.repeat(classes, per_class)).reshape(num_clients, s)
    indices = [np.concatenate([shards[int(c)].pop() for c in row]) for row in dealt]
    keys = [tuple(np.unique(row).tolist()) for row in dealt]
    key_id = {key: g for g, key in enumerate(sorted(set(keys)))}
    groups = np.array([key_id[key] for key in keys], dtype=np.int64)
    return _finish(labels, indices, groups)


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
    num_clients = count(num_clients, "num_clients", low=1, type_error=ValueError)
    real(alpha, "alpha", low=0.0, low_open=True, type_error=ValueError)
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


def feature_clusters(
    features: np.ndarray,
    labels: np.ndarray,
    num_clients: int,
    num_groups: int,
    rng: np.random.Generator,
    *,
    components: int = 20,
) -> Partition:
    """Latent distributions by clustering features, as the FedFomo paper builds them: an embedding
    of every sample (the caller's ``features`` [n, ...], flattened), reduced by PCA to
    ``components`` dimensions and clustered by KMeans into ``num_groups`` clusters; each cluster is
    a latent distribution. Clients are dealt to groups in turn (client k in group k % num_groups)
    and every cluster's samples are split evenly among its group's clients. Needs scikit-learn.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    labels = _check_labels(labels)
    num_clients = count(num_clients, "num_clients", low=1, type_error=ValueError)
    num_groups = count(num_groups, "num_groups", low=1, type_error=ValueError)
    components = count(components, "components", low=1, type_error=ValueError)
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    if x.shape[0] != labels.size:
        raise ValueError(f"features must have one row per label ({labels.size}), got {x.shape[0]}")
    if num_groups > num_clients:
        raise ValueError(f"num_groups must be at most num_clients ({num_clients}), got {num_groups}")
    if num_groups * num_clients > labels.size:
        raise ValueError(f"num_groups * num_clients must be at most the number of samples ({labels.size})")
    seed = int(rng.integers(2**31 - 1))
    reduced = PCA(n_components=min(components, *x.shape), random_state=seed).fit_transform(x)
    cluster = KMeans(n_clusters=num_groups, n_init=4, random_state=seed).fit_predict(reduced)
    groups = np.arange(num_clients, dtype=np.int64) % num_groups
    indices: list = [None] * num_clients
    for g in range(num_groups):
        members = np.flatnonzero(groups == g)
        pool = np.flatnonzero(cluster == g)
        if pool.size < members.size:
            raise ValueError(f"cluster {g} holds {pool.size} samples, fewer than its {members.size} clients")
        for k, part in zip(members, _split_evenly(pool, members.size, rng)):
            indices[k] = part
    return _finish(labels, indices, groups)
