"""fomo_core.Affinity: epsilon-greedy top-M selection, update rules, presets, persistence."""

from __future__ import annotations

import numpy as np
import pytest

import fomo_core as fc
from fomo_core import Affinity


def _set(aff: Affinity, index, value) -> None:
    """Writes entries of the affinity through a dense copy (Affinity.matrix is read-only)."""
    dense = aff.matrix.copy()
    dense[index] = value
    aff.matrix = dense


def test_initial_matrices():
    assert np.array_equal(Affinity(3, init="identity").matrix, np.eye(3))
    assert np.array_equal(Affinity(3, init="self", self_affinity=0.0).matrix, np.zeros((3, 3)))
    m = Affinity(3, init="self", self_affinity=0.25).matrix
    assert np.array_equal(m, np.diag([0.25] * 3))


def test_greedy_selection_is_top_m_in_order_and_excludes_the_client():
    aff = Affinity(6, epsilon=0.0, init="self", self_affinity=0.0, seed=0)
    _set(aff, 2, [5.0, 1.0, 100.0, 3.0, -1.0, 4.0])  # the client's own entry is the largest
    ids = aff.select(2, 3, round=0)
    assert ids.dtype == np.int64
    assert ids.tolist() == [0, 5, 3]


def test_m_larger_than_the_pool_returns_every_other_client():
    aff = Affinity(4, epsilon=0.0, seed=0)
    assert sorted(aff.select(1, 10, round=0).tolist()) == [0, 2, 3]


def test_ties_are_broken_at_random():
    aff = Affinity(6, epsilon=0.0, init="self", self_affinity=0.0, seed=1)
    _set(aff, 0, [0.0, 2.0, 1.0, 1.0, 1.0, 1.0])
    seen = set()
    for _ in range(200):
        ids = aff.select(0, 2, round=0)
        assert ids[0] == 1  # the unique best always first
        seen.add(int(ids[1]))
    # 200 draws among 4 tied clients: each is missed with probability (3/4)^200 < 1e-24
    assert seen == {2, 3, 4, 5}


def test_epsilon_one_explores_uniformly():
    n, m, draws = 8, 2, 7000
    aff = Affinity(n, epsilon=1.0, epsilon_decay=0.0, init="self", self_affinity=0.0, seed=2)
    _set(aff, (0, slice(1, 3)), 10.0)  # greedy would always pick 1 and 2
    counts = np.zeros(n)
    for ids in aff.select_many([0] * draws, m, round=0):
        counts[ids] += 1
    assert counts[0] == 0
    expected = draws * m / (n - 1)  # 2000 per client
    # binomial std is sqrt(14000 * 2/7 * 5/7) ~ 53; 5 sigma keeps this deterministic test robust to the seed
    assert np.all(np.abs(counts[1:] - expected) < 5 * 53)


def test_epsilon_zero_never_explores():
    aff = Affinity(8, epsilon=0.0, init="self", self_affinity=0.0, seed=3)
    _set(aff, (0, 5), 1.0)
    _set(aff, (0, 6), 0.5)
    for _ in range(100):
        assert aff.select(0, 2, round=0).tolist() == [5, 6]


def test_explicit_epsilon_overrides_the_schedule():
    aff = Affinity(8, epsilon=0.0, init="self", self_affinity=0.0, seed=4)
    _set(aff, (0, 5), 1.0)
    picks = {int(aff.select(0, 1, epsilon=1.0)[0]) for _ in range(100)}
    assert len(picks) > 1 and 0 not in picks


def test_linear_and_no_decay():
    aff = Affinity(3, epsilon=0.3, epsilon_decay=0.05)
    assert [round(aff.epsilon_at(r), 10) for r in (0, 1, 2, 6, 7, 50)] == [0.3, 0.25, 0.2, 0.0, 0.0, 0.0]
    assert Affinity(3, epsilon=0.3, epsilon_decay=0.0).epsilon_at(40) == 0.3
    assert Affinity(3, selection="top_m", epsilon=0.3).epsilon_at(0) == 0.0


def test_among_restricts_the_choice():
    aff = Affinity(10, epsilon=1.0, epsilon_decay=0.0, seed=5)
    for _ in range(50):
        ids = aff.select(0, 3, round=0, among=[0, 4, 7, 9])
        assert set(ids.tolist()) <= {4, 7, 9} and len(ids) == 3


def test_epsilon_greedy_selection_requires_the_round():
    # An epsilon that silently never decays (round defaulting to 0) is a trap: round is required.
    aff = Affinity(5, epsilon=0.3, epsilon_decay=0.05)
    with pytest.raises(TypeError, match="needs round="):
        aff.select(0, 2)
    assert Affinity(5, selection="top_m", init="identity").select(0, 2).size == 2  # no schedule: no round


def test_lowest_index_ties_and_per_slot_selection():
    aff = Affinity(6, selection="top_m", tie="lowest_index", init="identity", include_self="compete")
    assert aff.select(3, 3).tolist() == [3, 0, 1]
    slot = Affinity(6, selection="epsilon_greedy_per_slot", epsilon=0.0, init="self", self_affinity=0.0, seed=0)
    _set(slot, 0, [0, 5, 4, 3, 2, 1])
    assert slot.select(0, 3, round=0).tolist() == [1, 2, 3]
    explored = Affinity(6, selection="epsilon_greedy_per_slot", epsilon=1.0, epsilon_decay=0.0, seed=1)
    picks = [explored.select(0, 5, round=0) for _ in range(50)]
    assert all(sorted(p.tolist()) == [1, 2, 3, 4, 5] for p in picks) and len({tuple(p) for p in picks}) > 1


def test_include_self_modes():
    greedy = dict(epsilon=0.0, init="self", self_affinity=0.1)
    # compete: the client competes with its own affinity
    assert Affinity(4, include_self="compete", seed=0, **greedy).select(2, 1, round=0).tolist() == [2]
    # always: it competes, and is added last when not picked (FL-bench's own slot)
    ids = Affinity(4, include_self="always", seed=0, **greedy).select(2, 2, round=0, among=[0, 1, 3])
    assert len(ids) == 3 and ids[-1] == 2
    assert Affinity(4, include_self="always", seed=0, **greedy).select(2, 2, round=0).tolist()[0] == 2


def test_seeded_selection_is_reproducible():
    a, b = Affinity(12, epsilon=0.5, seed=7), Affinity(12, epsilon=0.5, seed=7)
    for r in range(10):
        assert a.select(r % 12, 4, round=r).tolist() == b.select(r % 12, 4, round=r).tolist()
    rng1, rng2 = np.random.default_rng(9), np.random.default_rng(9)
    assert a.select(0, 4, round=0, rng=rng1).tolist() == b.select(0, 4, round=0, rng=rng2).tolist()


def test_raw_update_adds_scores_and_ignores_nan():
    aff = Affinity(4, init="self", self_affinity=0.0)
    aff.update(1, [0, 2, 3], [0.5, -0.25, np.nan])
    aff.update(1, np.array([2]), np.array([1.0]))
    assert aff.matrix[1].tolist() == [0.5, 0.0, 0.75, 0.0]
    assert not aff.matrix[[0, 2, 3]].any()


def test_normalised_update_divides_by_the_absolute_sum():
    aff = Affinity(4, init="self", self_affinity=0.0, update="normalised")
    aff.update(0, [1, 2, 3], [0.6, -0.2, 0.0])  # |sum| = 0.4
    np.testing.assert_allclose(aff.matrix[0], [0.0, 1.5, -0.5, 0.0], rtol=0, atol=1e-15)  # one division
    aff.update(0, [1, 2], [1e-10, 0.0])  # |sum| below 1e-9 is raised by 1e-9, as the authors do
    np.testing.assert_allclose(aff.matrix[0], [0.0, 1.5 + 1e-10 / 1.1e-9, -0.5, 0.0], rtol=1e-12)


def test_update_accepts_torch_scores():
    torch = pytest.importorskip("torch")
    aff = Affinity(3, init="self", self_affinity=0.0)
    aff.update(0, torch.tensor([1, 2]), torch.tensor([0.5, 1.5], dtype=torch.float64))
    assert aff.matrix[0].tolist() == [0.0, 0.5, 1.5]


@pytest.mark.parametrize("name", sorted(fc.PRESETS))
def test_from_preset(name):
    p = fc.get_preset(name)
    aff = Affinity.from_preset(name, 5, seed=0)
    server_only = ("pool", "uploads", "free_riders", "global_model", "global_guard")  # the Server's, not the rows'
    assert aff.policy.replace(**{k: getattr(p.server, k) for k in server_only}) == p.server
    if p.server.affinity_init == "self":
        assert np.all(np.diag(aff.matrix) == p.server.self_affinity)
    else:
        assert np.array_equal(aff.matrix, np.eye(5))
    assert Affinity.from_preset(p, 5, epsilon=0.5).policy.epsilon == 0.5


def test_save_and_load_continue_exactly(tmp_path):
    aff = Affinity(6, epsilon=0.4, update="normalised", seed=11)
    aff.update(0, [1, 2], [0.3, -0.1])
    path = tmp_path / "aff.npz"
    aff.save(path)
    back = Affinity.load(path)
    assert back.options() == aff.options()
    assert np.array_equal(back.matrix, aff.matrix)
    for r in range(20):
        assert back.select(r % 6, 3, round=r).tolist() == aff.select(r % 6, 3, round=r).tolist()


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, x=np.zeros(3))
    with pytest.raises(ValueError, match="path .* is not an Affinity file"):
        Affinity.load(path)


@pytest.mark.parametrize(
    "call, exc, message",
    [
        (lambda: Affinity(0), ValueError, "num_clients must be an integer >= 1, got 0"),
        (lambda: Affinity(2.5), TypeError, "num_clients must be an integer, got float"),
        (lambda: Affinity(3, selection="best"), ValueError, "selection must be one of .*got 'best'"),
        (lambda: Affinity(3, epsilon=1.5), ValueError, r"epsilon must be a finite number in \[0.0, 1.0\], got 1.5"),
        (lambda: Affinity(3, epsilon_decay=-1), ValueError, "epsilon_decay must be"),
        (lambda: Affinity(3, update="mean"), ValueError, "affinity_update must be one of"),
        (lambda: Affinity(3, init="ones"), ValueError, "affinity_init must be one of"),
        (lambda: Affinity(3, include_self="yes"), ValueError, "include_self must be one of"),
        (lambda: Affinity(3, seed="x"), TypeError, "seed must be"),
        (lambda: Affinity(3).select(3, 1, round=0), ValueError, r"client must be a client index in \[0, 3\), got 3"),
        (lambda: Affinity(3).select(0, -1), ValueError, "m must be an integer >= 0, got -1"),
        (lambda: Affinity(3).select(0, 1, epsilon=2.0), ValueError, "epsilon must be"),
        (lambda: Affinity(3).select(0, 1, round=0, among=[0, 5]), ValueError, "among must hold client indices"),
        (lambda: Affinity(3).select(0, 1, round=0, rng=0), TypeError, "rng must be a numpy.random.Generator"),
        (lambda: Affinity(3).update(0, [1, 1], [0.1, 0.2]), ValueError, "ids must not repeat a client"),
        (lambda: Affinity(3).update(0, [1, 2], [0.1]), ValueError, "scores must have one value per id"),
        (lambda: Affinity(3).update(0, [1], [np.inf]), ValueError, "scores must be finite"),
        (lambda: Affinity(3).update(0, [1.5], [0.1]), TypeError, "ids must hold integer client indices"),
        (lambda: Affinity.from_preset("nope", 3), ValueError, "unknown preset 'nope'"),
        (lambda: Affinity.from_preset(3, 3), TypeError, "preset must be"),
    ],
)
def test_bad_arguments_are_named(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_a_rejected_update_changes_nothing():
    aff = Affinity(3, init="self", self_affinity=0.0)
    before = aff.matrix.copy()
    with pytest.raises(ValueError):
        aff.update(0, [1, 2], [0.5, np.inf])
    assert np.array_equal(aff.matrix, before)


def test_grow_keeps_entries_and_initialises_the_newcomers():
    aff = fc.Affinity(3, init="self", self_affinity=0.1, seed=0)
    aff.update(0, [1, 2], [0.5, -0.25])
    before = aff.matrix.copy()
    aff.grow(5)
    assert aff.num_clients == 5 and aff.matrix.shape == (5, 5)
    np.testing.assert_array_equal(aff.matrix[:3, :3], before)
    np.testing.assert_array_equal(aff.matrix[3:, 3:], np.diag([0.1, 0.1]))
    assert not aff.matrix[:3, 3:].any() and not aff.matrix[3:, :3].any()
    assert len(aff.select(4, 3, round=0)) == 3  # a newcomer can be served at once
    with pytest.raises(ValueError, match="num_clients"):
        aff.grow(2)  # never shrinks
