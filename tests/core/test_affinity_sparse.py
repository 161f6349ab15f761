"""Sparse affinity rows (top k entries per row) and selection over them: exactly the dense matrix
when k >= N - 1, the documented approximation below, O(k + M) selection for many clients."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fomo_core as fc
from fomo_core import Affinity


def _dense_reference(n: int, updates: list, init: str = "self", self_affinity: float = 0.1, rule: str = "raw"):
    """The affinity as a plain dense matrix, from the documented update rules."""
    a = np.eye(n) if init == "identity" else np.diag(np.full(n, self_affinity))
    for client, ids, scores in updates:
        s = np.where(np.isnan(scores), 0.0, scores)
        if rule == "normalised":
            total = abs(float(s.sum()))
            s = s / (total + 1e-9 if total < 1e-9 else total)
        a[client, ids] += s
    return a


def _random_updates(rng: np.random.Generator, n: int, count: int) -> list:
    out = []
    for _ in range(count):
        client = int(rng.integers(n))
        ids = rng.choice(n, int(rng.integers(1, min(n, 6) + 1)), replace=False)
        scores = rng.standard_normal(ids.size)
        scores[rng.random(ids.size) < 0.1] = 0.0  # rejected candidates score exactly 0
        out.append((client, ids, scores))
    return out


@pytest.mark.parametrize("rule", ["raw", "normalised"])
@pytest.mark.parametrize("init", ["self", "identity"])
def test_rows_of_n_minus_one_entries_are_the_dense_matrix_bit_for_bit(init, rule):
    n = 9
    updates = _random_updates(np.random.default_rng(1), n, 200)
    for k in (None, n - 1, 100):
        aff = Affinity(n, init=init, update=rule, k=k, seed=0)
        for client, ids, scores in updates:
            aff.update(client, ids, scores)
        assert aff.evicted == 0
        np.testing.assert_array_equal(aff.matrix, _dense_reference(n, updates, init, rule=rule))


def _ranking_values(aff: Affinity, client: int) -> np.ndarray:
    """Row ``client`` as selection ranks it: parked entries below every other."""
    row = aff.row(client)
    row[aff._parked[client][aff._parked[client] >= 0]] = -np.inf
    return row


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 40),
    k=st.one_of(st.none(), st.integers(1, 6)),
    m=st.integers(0, 8),
    include_self=st.sampled_from(["never", "compete", "always"]),
    pool_share=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**16),
)
def test_greedy_selection_takes_the_top_m_values_of_the_row(n, k, m, include_self, pool_share, seed):
    # Prepare: a history of updates; a pool in random order
    rng = np.random.default_rng(seed)
    aff = Affinity(n, k=k, selection="top_m", include_self=include_self, seed=seed)
    for client, ids, scores in _random_updates(rng, n, 6 * n):
        aff.update(client, ids, scores)
    pool = rng.permutation(n)[: max(1, int(pool_share * n))]
    clients = rng.choice(n, min(n, 7), replace=False)

    # Execute: one call per client and one for all
    singles = [aff.select(int(c), m, among=pool) for c in clients]
    batched = aff.select_many(clients, m, among=pool)

    # Assert: distinct pool members, the top-m values (ties broken any way), self added per the rule
    for c, chosen in [*zip(clients, singles), *zip(clients, batched)]:
        c = int(c)
        eligible = pool if include_self != "never" else pool[pool != c]
        picked = chosen if len(chosen) == min(m, eligible.size) else chosen[:-1]
        if include_self == "always":
            assert c in chosen
        assert len(set(picked.tolist())) == len(picked) == min(m, eligible.size)
        assert set(picked.tolist()) <= set(eligible.tolist())
        values = _ranking_values(aff, c)
        assert np.all(np.diff(values[picked]) <= 0)  # best first
        np.testing.assert_array_equal(values[picked], -np.sort(-values[eligible])[: picked.size])


def _selections(aff: Affinity, client: int, m: int, draws: int, form: str, **options) -> list:
    """``draws`` selections for ``client``, one call each ("one") or in one call ("many")."""
    if form == "one":
        return [aff.select(client, m, **options) for _ in range(draws)]
    return aff.select_many([client] * draws, m, **options)


@pytest.mark.parametrize("form", ["one", "many"])
def test_ties_with_untouched_clients_are_drawn_uniformly_from_a_large_pool(form):
    n, draws = 2000, 3000
    aff = Affinity(n, k=4, selection="top_m", seed=3)
    aff.update(0, [1, 2, 3], [1.0, 0.0, -1.0])  # 1 helps, 2 scored 0 (neutral again), 3 hurt
    counts = np.zeros(n)
    for ids in _selections(aff, 0, 2, draws, form):
        assert ids[0] == 1 and ids[1] not in (0, 1, 3)
        counts[ids[1]] += 1
    # 3000 uniform draws over the 1997 neutral clients (2 included): about 1.5 each; none drawn
    # 14 times or more (p < 2e-6), about 1550 drawn at least once
    assert counts.max() <= 13 and (counts > 0).sum() > 1400 and counts[2] >= 0


@pytest.mark.parametrize("form", ["one", "many"])
def test_exploration_samples_the_pool_uniformly(form):
    n, m, draws = 300, 3, 4000
    aff = Affinity(n, epsilon=1.0, epsilon_decay=0.0, k=8, seed=4)
    aff.update(0, [1, 2, 3], [5.0, 5.0, 5.0])
    counts = np.bincount(np.concatenate(_selections(aff, 0, m, draws, form, round=0)), minlength=n)
    assert counts[0] == 0
    expected = draws * m / (n - 1)  # about 40 per client
    # a binomial with mean 40 stays within 40 +- 40 for all 299 clients (p of any outside < 1e-6)
    assert np.all(np.abs(counts[1:] - expected) < expected)


def test_a_full_row_keeps_its_top_k_and_parks_what_hurt():
    aff = Affinity(20, k=3, selection="top_m", seed=0)
    aff.update(0, [1, 2, 3], [3.0, 2.0, 1.0])
    aff.update(0, [4], [0.5])  # below the row's top 3: falls out (an entry that helped a little)
    assert aff.row(0)[[1, 2, 3, 4]].tolist() == [3.0, 2.0, 1.0, 0.0] and aff.evicted == 1
    aff.update(0, [5], [4.0])  # above: evicts the lowest (client 3)
    assert aff.row(0)[[5, 3]].tolist() == [4.0, 0.0] and aff.evicted == 2
    aff.update(0, [6, 7], [-1.0, -2.0])  # negative, below every kept entry: parked
    assert aff.evicted == 4 and aff._parked[0].tolist()[:2] == [6, 7]
    # parked clients rank below every untouched one: with 19 others, 3 kept and 2 parked,
    # a top 17 ends with the 14 untouched clients; the parked ones never come before them
    for _ in range(20):
        ids = aff.select(0, 17)
        assert ids[:3].tolist() == [5, 1, 2] and not {6, 7} & set(ids.tolist())
    assert set(aff.select(0, 19)[-2:].tolist()) == {6, 7}
    aff.update(0, [6], [9.0])  # scored again: its new score replaces the parking
    assert aff.row(0)[6] == 9.0 and 6 not in aff._parked[0]
    aff.update(0, [8, 9, 10, 11], [-5.0, -6.0, -7.0, -8.0])  # the park list holds k = 3 ids
    assert aff.forgotten == 2 and aff._parked[0].tolist() == [9, 10, 11]
    aff.update(0, [5], [-4.0])  # back at exactly 0: the slot is freed
    assert 5 not in aff._entry_ids[0]


def test_k_is_a_server_policy_field_and_presets_of_peers_keep_every_entry():
    assert fc.ServerPolicy().affinity_k == 16
    for name in ("paper", "pfllib", "fl-bench"):
        assert fc.get_preset(name).server.affinity_k is None
    assert fc.Affinity.from_preset("fomo-core", 100).k == 16
    with pytest.raises(ValueError, match="affinity_k must be an integer >= 1"):
        fc.ServerPolicy(affinity_k=0)
    with pytest.raises(TypeError, match="affinity_k must be an integer"):
        fc.ServerPolicy(affinity_k=2.5)


def test_memory_is_n_times_k():
    aff = Affinity(100_000, k=16, seed=0)
    held = sum(a.nbytes for a in (aff._entry_ids, aff._entry_values, aff._parked, aff._diag))
    assert held < 100_000 * 16 * 17  # 12 bytes an entry, 4 per parked id, the diagonal
    with pytest.raises(ValueError, match="Affinity.row"):
        aff.matrix  # noqa: B018 (a 74 GiB array is refused, not attempted)
    assert aff.row(5).shape == (100_000,)


def test_save_and_load_sparse_rows_continue_exactly(tmp_path):
    aff = Affinity(30, k=3, epsilon=0.3, seed=5)
    for client, ids, scores in _random_updates(np.random.default_rng(2), 30, 300):
        aff.update(client, ids, scores)
    assert aff.evicted and aff.forgotten
    aff.save(tmp_path / "a.npz")
    back = Affinity.load(tmp_path / "a.npz")
    assert (back.evicted, back.forgotten, back.k) == (aff.evicted, aff.forgotten, 3)
    np.testing.assert_array_equal(back._parked, aff._parked)
    for r in range(5):
        assert [x.tolist() for x in back.select_many(range(30), 4, round=r)] == [
            x.tolist() for x in aff.select_many(range(30), 4, round=r)
        ]


def test_grow_keeps_sparse_rows():
    aff = Affinity(4, k=2, seed=0)
    aff.update(0, [1, 2, 3], [1.0, 2.0, -1.0])  # three entries, k = 2: client 3 is parked
    aff.grow(10)
    assert aff.row(0)[:4].tolist() == [0.1, 1.0, 2.0, 0.0] and aff._parked[0].tolist() == [3, -1]
    aff.update(0, [5, 6], [3.0, -2.0])  # 5 evicts client 1, 6 is parked beside 3
    assert aff.row(0)[[1, 2, 5]].tolist() == [0.0, 2.0, 3.0] and aff._parked[0].tolist() == [3, 6]
    assert len(aff.select(9, 5, round=0)) == 5  # a newcomer is served at once


def test_a_client_cannot_make_its_row_infinite(tmp_path):
    server = fc.Server(3, np.zeros(4, np.float32), m=2, seed=0)
    for _ in range(3):
        server.receive(0, np.ones(4, np.float32), [1, 2], [1e308, -1e308])
    row = server.affinity.row(0)
    assert row[1] == pytest.approx(3e100) and row[2] == pytest.approx(-3e100)  # each score clipped to 1e100
    server.end_round()
    server.save(tmp_path / "s.npz")
    np.testing.assert_array_equal(fc.Server.load(tmp_path / "s.npz").affinity.row(0), row)  # it reads what it wrote
    aff = Affinity(2, k=None)
    for _ in range(10):
        aff.update(0, [1], [1e100])
    aff._entry_values[0, 0] = 1e300  # at the cap: further scores keep it there
    aff.update(0, [1], [1e100])
    assert aff.row(0)[1] == fc.affinity.VALUE_LIMIT


def test_epsilon_at_any_round():
    aff = Affinity(3, epsilon=0.3, epsilon_decay=0.05)
    assert aff.epsilon_at(10**400) == 0.0  # was an OverflowError
    assert Affinity(3, epsilon=0.3, epsilon_decay=0.0).epsilon_at(10**400) == 0.3
    assert Affinity(3, epsilon=0.3, epsilon_decay=1e-320).epsilon_at(10**300) == pytest.approx(0.3 - 1e-20)
    with pytest.raises(ValueError, match="round must be an integer >= 0"):
        aff.epsilon_at(-1)
    with pytest.raises(TypeError, match="round must be an integer"):
        aff.epsilon_at(1.5)


def test_among_keeps_its_order_for_torch_topk_ties():
    torch = pytest.importorskip("torch")
    aff = Affinity(8, selection="top_m", tie="torch_topk", init="identity", include_self="compete", k=None)
    among = [5, 3, 7, 1, 0]
    expected = [among[j] for j in torch.topk(torch.zeros(5), 3).indices.tolist()]  # all tied
    assert aff.select(2, 3, among=among).tolist() == expected
    assert aff.select(0, 1, among=among).tolist() == [0]  # its own diagonal (1) first
