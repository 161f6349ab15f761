"""Choosing candidates from sparse affinity rows, for many clients in one call.

A client's row is known only where it differs from the initial value 0: its stored entries (value,
positive or negative), its parked entries (evicted negative entries: below every other) and its
own diagonal. Every other member of the pool is *neutral* (value 0). So the top M of a row over
the pool are: the known positive entries best first, then neutral clients drawn uniformly at
random (the dense ranking's random tie-break among the zeros), then the known negative entries,
best first. That is O(K + M) per client for K known entries, whatever the pool's size: neutral
clients are drawn by rejection from the pool, never by sorting or permuting it. Ties among known
entries of equal value are broken at random too.

Ties ordered "lowest_index" or as ``torch.topk`` depend on every tied position, so those rules
build the row over the pool, O(pool) per client (the peers' presets, which keep a dense matrix
themselves).

Shapes: C clients, K known entries per client (padded with id -1, ok False).
"""

from __future__ import annotations

import numpy as np

from ._pool import ClientPool

__all__ = ["draw", "draw_one", "rank", "repeats", "top", "top_one", "per_slot", "top_over_pool"]


def _in_rows(values: np.ndarray, sets: np.ndarray, num_clients: int) -> np.ndarray:
    """values [R, B] in [0, N): whether each is in its row's set (sets [R, E], -1 = no entry)."""
    if values.size * sets.shape[1] <= 1 << 20:
        return (values[:, :, None] == sets[:, None, :]).any(axis=2)
    offset = (np.arange(values.shape[0], dtype=np.int64) * (num_clients + 1))[:, None]
    return np.isin(values + offset, sets + offset)  # -1 + offset never equals a shifted id


def repeats(values: np.ndarray) -> np.ndarray:
    """[R, B] bool: True where a value already appeared earlier in its row."""
    if values.shape[1] <= 64:
        earlier = np.tri(values.shape[1], k=-1, dtype=bool)
        return ((values[:, :, None] == values[:, None, :]) & earlier).any(axis=2)
    order = np.argsort(values, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=1)
    seen = np.zeros(values.shape, dtype=bool)
    seen[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    out = np.empty_like(seen)
    np.put_along_axis(out, order, seen, axis=1)
    return out


def draw(counts: np.ndarray, exclude: np.ndarray, pool: ClientPool, rng: np.random.Generator) -> list:
    """For each row, ``counts[r]`` distinct members of the pool, none in ``exclude[r]`` (-1 = no
    entry), uniformly at random in random order: a list of int64 arrays.

    The caller guarantees that enough members remain. Members are drawn by index into the pool,
    and repeats and excluded ones rejected (a round that comes out short is drawn again, which
    keeps the sample uniform); a pool not much larger than what it must avoid is enumerated.
    """
    counts = np.asarray(counts, dtype=np.int64)
    out = [np.zeros(0, dtype=np.int64)] * counts.size
    rows = np.flatnonzero(counts > 0)
    if rows.size == 0:
        return out
    avoid = (exclude[rows] >= 0).sum(axis=1)
    small = pool.size <= 4 * (avoid + counts[rows]) + 16
    for r in rows[small]:
        members = pool.members
        members = members[~np.isin(members, exclude[r][exclude[r] >= 0])]
        out[r] = members[rng.permutation(members.size)[: counts[r]]]
    rows = rows[~small]
    while rows.size:
        need = counts[rows]
        candidates = pool.members[rng.integers(0, pool.size, size=(rows.size, 2 * int(need.max()) + 8))]
        ok = ~(_in_rows(candidates, exclude[rows], pool.num_clients) | repeats(candidates))
        taken = np.cumsum(ok, axis=1)
        done = taken[:, -1] >= need
        keep = ok & (taken <= need[:, None])
        for j in np.flatnonzero(done):
            out[rows[j]] = candidates[j][keep[j]]
        rows = rows[~done]
    return out


def rank(ids: np.ndarray, values: np.ndarray, ok: np.ndarray, rng: np.random.Generator) -> tuple:
    """The known entries of each row best first, ties in random order: (ids [C, K] sorted, the
    number of known entries [C], the number of positive ones [C]). Parked entries (value -inf)
    come last; entries not ok after them."""
    ties = rng.random(ids.shape)
    order = np.lexsort((ties, np.where(ok, -values, np.inf), ~ok), axis=-1)
    ordered = np.take_along_axis(ids, order, axis=1)
    return ordered, ok.sum(axis=1), (ok & (values > 0)).sum(axis=1)


def top(
    ids: np.ndarray,
    values: np.ndarray,
    ok: np.ndarray,
    avoid: np.ndarray,
    m: np.ndarray,
    available: np.ndarray,
    pool: ClientPool,
    rng: np.random.Generator,
) -> list:
    """Each row's top ``m[r]`` over the pool, best first, ties at random (list of int64 arrays).

    ids, values, ok:  [C, K] the known entries that are in the pool (ok), values != 0
    avoid:            [C, 1] a client never to draw as a neutral one (itself), -1 for none
    m:                [C] how many to choose, at most ``available``
    available:        [C] the eligible members of the pool
    """
    ordered, known, positive = rank(ids, values, ok, rng)
    take_positive = np.minimum(positive, m)
    take_neutral = np.minimum(available - known, m - take_positive)
    exclude = np.concatenate([np.where(ok, ids, -1), avoid], axis=1)
    neutral = draw(take_neutral, exclude, pool, rng)
    out = []
    for r in range(ordered.shape[0]):
        negative = m[r] - take_positive[r] - take_neutral[r]
        best = ordered[r, : take_positive[r]]
        worst = ordered[r, positive[r] : positive[r] + negative]
        out.append(np.concatenate([best, neutral[r], worst]).astype(np.int64, copy=False))
    return out


def draw_one(count: int, exclude: set, pool: ClientPool, rng: np.random.Generator) -> list:
    """:func:`draw` for one client in plain Python: ``count`` distinct members of the pool not in
    ``exclude``, uniformly at random in random order (the first new ones of uniform draws)."""
    if count <= 0:
        return []
    if pool.size <= 4 * (len(exclude) + count) + 16:
        members = [n for n in pool.members.tolist() if n not in exclude]
        return [members[j] for j in rng.permutation(len(members))[:count].tolist()]
    chosen, seen = [], set(exclude)
    while len(chosen) < count:
        for n in pool.members[rng.integers(0, pool.size, 2 * (count - len(chosen)) + 8)].tolist():
            if n not in seen:
                seen.add(n)
                chosen.append(n)
                if len(chosen) == count:
                    break
    return chosen


def top_one(known: list, avoid: set, count: int, available: int, pool: ClientPool, rng: np.random.Generator) -> list:
    """:func:`top` for one client in plain Python. known: its (value, id) entries in the pool
    that differ from 0 (parked ones at -inf); avoid: ids never to draw (itself, when not eligible)."""
    ties = rng.random(len(known)).tolist()
    ranked = [known[j][1] for j in sorted(range(len(known)), key=lambda j: (-known[j][0], ties[j]))]
    positive = sum(1 for value, _ in known if value > 0)
    take_positive = min(positive, count)
    take_neutral = min(available - len(known), count - take_positive)
    neutral = draw_one(take_neutral, avoid | {n for _, n in known}, pool, rng)
    negative = count - take_positive - take_neutral
    return ranked[:take_positive] + neutral + ranked[positive : positive + negative]


def per_slot(best: list, random_order: list, m: np.ndarray, explore: np.ndarray) -> list:
    """The authors' per-slot epsilon-greedy: slot j takes the first client not yet chosen from
    the random order where ``explore[r, j]``, from the best ranking otherwise. Each source must
    hold at least min(2 m, available) clients, so neither runs dry."""
    out = []
    for r, (ranked, shuffled) in enumerate(zip(best, random_order)):
        sources, positions, chosen = (list(ranked), list(shuffled)), [0, 0], []
        for j in range(int(m[r])):
            s = 1 if explore[r, j] else 0
            while sources[s][positions[s]] in chosen:
                positions[s] += 1
            chosen.append(sources[s][positions[s]])
            positions[s] += 1
        out.append(np.asarray(chosen, dtype=np.int64))
    return out


def top_over_pool(
    client: int,
    ids: np.ndarray,
    values: np.ndarray,
    ok: np.ndarray,
    exclude_self: bool,
    m: int,
    pool: ClientPool,
    tie: str,
) -> np.ndarray:
    """One client's top m over the pool with ties ordered by "lowest_index" or as torch.topk
    over the pool in arrival order: the row built over the pool, O(pool). ids, values, ok: its
    known entries [K] (its own among them when it competes)."""
    members = pool.members
    row = np.zeros(members.size)
    row[pool.positions(ids[ok])] = values[ok]
    if exclude_self and pool.contains(np.asarray([client]))[0]:
        keep = members != client
        members, row = members[keep], row[keep]
    if tie == "lowest_index":
        return members[np.lexsort((members, -row))[:m]].astype(np.int64)
    return members[_torch_topk(row, m)].astype(np.int64)


def _torch_topk(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values in torch.topk's order (ties included), over the float32
    values the peers keep their affinity in."""
    try:
        import torch
    except ImportError:
        raise ImportError("tie='torch_topk' orders ties as torch.topk does: it needs PyTorch installed") from None
    with np.errstate(over="ignore"):  # beyond float32's range: +-inf, as in the peers' float32 matrices
        values = values.astype(np.float32)
    return torch.topk(torch.from_numpy(values), k).indices.numpy()
