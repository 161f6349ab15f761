"""Free riders: clients that upload what they were sent instead of training. Free riding paid
(89.8% on the free riders' own data against 84.8% training honestly); the server could not tell.
These tests pin the signal (an upload in the affine hull of what the client was sent and its own
last upload) and the server policy that stops sending such a client candidates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fomo_core as fc
from fomo_core.free_riding import _CHUNK, FREE_RIDE_TOLERANCE, hull_distance, is_free_ride


def _models(k: int, p: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((k, p)).astype(np.float32)


@pytest.mark.parametrize("p", [50, _CHUNK + 37])  # one chunk, and several
def test_a_mix_of_what_was_sent_is_at_distance_zero_and_training_is_not(p):
    refs = _models(4, p)
    weights = np.array([0.5, 0.2, 0.0, 0.3])
    mix = (weights @ refs).astype(np.float32)
    assert hull_distance(refs[2], refs) < 1e-12  # one of them, verbatim
    assert hull_distance(mix, refs) < 1e-6  # an update's convex mix, rounded to float32
    affine = (1.5 * refs[0] - 0.5 * refs[1]).astype(np.float32)
    assert hull_distance(affine, refs) < 1e-6  # any affine combination
    trained = mix + 0.05 * np.linalg.norm(mix) / np.sqrt(p) * _models(1, p, seed=1)[0]
    assert 0.02 < hull_distance(trained, refs) <= 0.051  # the part of the step outside the hull
    assert hull_distance(torch.from_numpy(trained), torch.from_numpy(refs)) == pytest.approx(
        hull_distance(trained, refs), rel=1e-9
    )
    assert is_free_ride(mix, refs) and not is_free_ride(trained, refs)


def test_edge_cases_of_the_hull():
    refs = _models(3, 10)
    assert hull_distance(refs[0], refs[:0]) == 1.0  # nothing was sent: nothing to copy
    assert hull_distance(np.zeros(10, np.float32), np.zeros((2, 10), np.float32)) == 0.0
    assert hull_distance(np.zeros(10, np.float32), refs) == float("inf")  # zero, but not a mix
    nan = refs[0].copy()
    nan[3] = np.nan
    assert np.isnan(hull_distance(nan, refs)) and not is_free_ride(nan, refs)
    dup = np.stack([refs[0], refs[0], refs[1]])  # a rank-deficient set: the same model sent twice
    assert hull_distance((0.5 * refs[0] + 0.5 * refs[1]).astype(np.float32), dup) < 1e-6
    assert FREE_RIDE_TOLERANCE == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="tolerance must be a finite number in"):
        is_free_ride(refs[0], refs, tolerance=-1.0)


def test_the_server_stops_sending_candidates_to_a_free_rider():
    init = np.zeros(30, np.float32)
    policy = fc.get_preset("fomo-core").server.replace(free_riders="exclude", epsilon=0.0)
    server = fc.Server(4, init, m=3, seed=0, policy=policy)
    trained = _models(4, 30, seed=2)
    for i in range(4):  # round 0: everyone trains
        ids, _ = server.candidates(i)
        server.receive(i, trained[i], ids, np.zeros(len(ids)))
    server.end_round()
    assert not server.free_riding.any()
    ids, cands = server.candidates(0)
    mix = (0.6 * cands[0] + 0.4 * cands[1]).astype(np.float32)  # client 0 free-rides
    server.receive(0, mix, ids, np.ones(len(ids)))
    for i in (1, 2, 3):
        got, _ = server.candidates(i)
        server.receive(i, trained[i] + 0.1, got, np.zeros(len(got)))
    server.end_round()
    assert server.free_riding.tolist() == [True, False, False, False]
    assert server.select(0).size == 0  # no candidates for it
    for i in (1, 2, 3):
        assert 0 not in server.select(i).tolist()  # and its copy is offered to no one
    many = server.select_many([0, 1, 2, 3])  # the vectorised selection alike
    assert many[0].size == 0 and all(0 not in p.tolist() and p.size == 2 for p in many[1:])
    server.receive(0, server.model(0) + 0.2, [], [])  # it trains again: back in
    server.end_round()
    assert not server.free_riding[0] and server.select(0).size == 3
    server.receive(1, server.model(1), [], [])  # its own last upload again, with nothing sent: out
    assert server.free_riding[1]


def test_free_riders_are_allowed_by_default_and_the_policy_is_checked():
    init = np.zeros(5, np.float32)
    server = fc.Server(3, init, m=2, seed=0)
    for i in range(3):
        server.receive(i, init, [], [])  # the initial model back: a free ride, not looked at
    server.end_round()
    assert not server.free_riding.any() and server.select(0).size > 0
    with pytest.raises(ValueError, match="free_riders must be one of 'allow', 'exclude', got 'ban'"):
        fc.ServerPolicy(free_riders="ban")
    for name in fc.PRESETS:
        assert fc.get_preset(name).server.free_riders == "allow"


def test_free_riding_in_the_simulator():
    from fomo_core.simulate.attacks import AttackSettings
    from fomo_core.simulate.experiment import ExperimentConfig, run_experiment
    from fomo_core.simulate.federation import FederationSettings
    from fomo_core.simulate.train_settings import TrainSettings

    fed = FederationSettings(rounds=2, m=2, attack=AttackSettings(kind="free_ride", attackers=2), free_riders="exclude")
    cfg = ExperimentConfig(
        clients=4, groups=2, methods=("fedfomo",), federation=fed, training=TrainSettings(epochs=1, hidden=(8,))
    )
    results = run_experiment(cfg)
    riders = results["attack"]["attacker_ids"]
    run = results["methods"]["fedfomo"]
    assert len(riders) == 2 and "attacker_final_accuracy" in run
    # excluded, a free rider receives nothing and never trains: it stays at the initial model
    per_round = np.asarray(run["client_accuracy_per_round"])
    np.testing.assert_array_equal(per_round[0, riders], per_round[-1, riders])
    assert run["attacker_final_accuracy"] < run["honest_final_accuracy"]
