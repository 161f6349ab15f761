"""The shared round machinery: ClientPolicy/ServerPolicy checks, the client round's outcomes under
fomo-core's policy, the Server (pools, uploads, checkpoints), and the simulator driving exactly
the same server and client round as a hand-written loop."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from round_models import mlp

import fomo_core as fc
from fomo_core.adapters.torch import FedFomoClient
from fomo_core.simulate import ExperimentConfig, FederationSettings, TrainSettings
from fomo_core.simulate.backends import make_backend
from fomo_core.simulate.data import split_clients
from fomo_core.simulate.experiment import load_dataset, make_partition
from fomo_core.simulate.federation import participants, run_fedfomo

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- policies -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: fc.ClientPolicy(baseline="old"), ValueError, "baseline must be one of"),
        (lambda: fc.ClientPolicy(measure="state"), ValueError, "buffers='moved'"),
        (lambda: fc.ClientPolicy(self_candidate="trained"), ValueError, "needs baseline='last_update'"),
        (lambda: fc.ClientPolicy(eps=-1.0), ValueError, "eps must be a finite number"),
        (lambda: fc.ClientPolicy(eps="0"), TypeError, "eps must be a real number"),
        (lambda: fc.ServerPolicy(epsilon=2.0), ValueError, "epsilon must be a finite number in [0.0, 1.0]"),
        (lambda: fc.ServerPolicy(tie="torch_topk"), ValueError, "needs selection='top_m'"),
        (lambda: fc.ServerPolicy(pool="friends"), ValueError, "pool must be one of"),
        (lambda: fc.ClientPolicy().replace(nrom="l1"), TypeError, "has no field 'nrom'"),
        (lambda: fc.ClientPolicy.from_dict({"baseline": "current"}), ValueError, "needs exactly the fields"),
    ],
)
def test_bad_policies_are_refused_naming_the_field(make, error, message):
    with pytest.raises(error) as info:
        make()
    assert message in str(info.value)


def test_every_preset_round_trips_through_a_dict():
    for preset in fc.PRESETS.values():
        assert fc.ClientPolicy.from_dict(preset.client.as_dict()) == preset.client
        assert fc.ServerPolicy.from_dict(preset.server.as_dict()) == preset.server


# --- the client round -----------------------------------------------------------------------------


def test_a_diverged_client_adopts_its_best_finite_candidate(digits):
    train, val = digits
    broken = mlp(0)
    with torch.no_grad():
        broken[0].weight.fill_(float("nan"))
    good = [copy.deepcopy(mlp(s)) for s in (1, 2)]
    for g in good:
        fc.adapters.torch.train_sgd(g, train, epochs=3, lr=0.1)
    client = FedFomoClient(broken, val, train, seed=0)
    losses, _ = client.evaluate(torch.stack([fc.adapters.torch.flatten_module(g).detach().clone() for g in good]))

    res = client.update([g.state_dict() for g in good])

    best = int(np.argmin(losses))
    assert res.outcome == "adopted" and res.weights.tolist() == [1.0 * (k == best) for k in range(2)]
    assert torch.equal(client.get_flat(), fc.adapters.torch.flatten_module(good[best]).detach())
    assert np.all(res.scores == 0)  # nothing was measured from a NaN baseline: no affinity


def test_the_same_diverged_client_stays_broken_under_a_skipping_policy(digits):
    train, val = digits
    broken = mlp(0)
    with torch.no_grad():
        broken[0].weight.fill_(float("nan"))
    client = FedFomoClient(broken, val, train, policy=fc.ClientPolicy(nonfinite="skip_round"))
    res = client.update([mlp(1).state_dict()])
    assert res.outcome == "skipped" and torch.isnan(client.get_flat()).any()


def test_nothing_helps_keeps_or_reverts_per_the_policy(digits):
    train, val = digits
    trained = mlp(0)
    fc.adapters.torch.train_sgd(trained, train, epochs=3, lr=0.1)
    for rule, expect_revert in (("keep", False), ("revert", True)):
        base = mlp(0)
        client = FedFomoClient(base, val, train, policy=fc.ClientPolicy(baseline="last_update", nothing_helps=rule))
        before_training = client.get_flat()
        base.load_state_dict(trained.state_dict())
        worse = mlp(9)
        with torch.no_grad():
            for p in worse.parameters():
                p.mul_(30)  # confidently wrong everywhere: no help
        res = client.update([worse.state_dict()])
        assert res.outcome == "nothing_helps"
        expected = before_training if expect_revert else fc.adapters.torch.flatten_module(trained).detach()
        assert torch.equal(client.get_flat(), expected)


# --- the server -----------------------------------------------------------------------------------


def test_server_pools_and_upload_visibility():
    init = np.zeros(3, dtype=np.float32)
    fresh = fc.Server(4, init, preset="fomo-core", m=2, seed=0)
    assert fresh.select(0).size == 0  # nobody has uploaded yet
    fresh.receive(1, np.ones(3, dtype=np.float32), [], [])
    assert fresh.select(0).size == 0  # visible from the next round
    fresh.end_round()
    assert fresh.select(0).tolist() == [1] and fresh.round == 1

    capped = fc.Server(4, init, preset="pfllib", m=3)
    assert capped.select(0).size == 0  # at most as many as last round's uploaders: none
    capped.receive(2, init, [], [])
    capped.end_round()
    assert capped.select(0).tolist() == [0]  # top-1 of the whole identity row: itself

    immediate = fc.Server(4, init, preset="fl-bench", m=2)
    immediate.receive(3, np.full(3, 7, dtype=np.float32), [], [])
    assert immediate.model(3)[0] == 7 and immediate.select(3).tolist() == [3]


def test_server_rejects_bad_uploads_naming_the_argument():
    server = fc.Server(3, np.zeros(4), m=1)
    with pytest.raises(ValueError, match=r"params has shape \(3,\), expected \(4,\)"):
        server.receive(0, np.zeros(3), [], [])
    with pytest.raises(ValueError, match="client must be a client index"):
        server.receive(5, np.zeros(4), [], [])
    with pytest.raises(ValueError, match="scores must have one value per id"):
        server.receive(0, np.zeros(4), [1], [0.1, 0.2])
    assert not server._pending


def test_server_refuses_to_checkpoint_mid_round(tmp_path):
    server = fc.Server(3, np.zeros(2), m=1)
    server.receive(0, np.ones(2), [], [])
    with pytest.raises(ValueError, match="between rounds"):
        server.save(tmp_path / "mid.npz")
    assert not (tmp_path / "mid.npz").exists()


def test_server_checkpoint_replay_matches(tmp_path):
    def drive(server, rounds, seed):
        rng = np.random.default_rng(seed)
        picks = []
        for _ in range(rounds):
            for i in range(server.num_clients):
                ids = server.select(i)
                picks.append(ids.tolist())
                server.receive(i, rng.standard_normal(6).astype(np.float32), ids, rng.standard_normal(ids.size))
            server.end_round()
        return picks

    a = fc.Server(5, np.zeros(6, dtype=np.float32), m=2, seed=3)
    drive(a, 3, seed=1)
    a.save(tmp_path / "s.npz")
    b = fc.Server.load(tmp_path / "s.npz")
    assert drive(a, 3, seed=2) == drive(b, 3, seed=2)
    np.testing.assert_array_equal(a.affinity.matrix, b.affinity.matrix)
    np.testing.assert_array_equal(a.models, b.models)


def test_server_load_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable Server checkpoint"):
        fc.Server.load(bad)
    aff = tmp_path / "aff.npz"
    fc.Affinity(3).save(aff)
    with pytest.raises(ValueError, match="Server checkpoint"):
        fc.Server.load(aff)


# --- the simulator is the shared server and client round ------------------------------------------


@pytest.mark.parametrize("preset", ["fomo-core", "pfllib"])
def test_the_simulator_equals_a_hand_driven_loop(preset):
    fed = FederationSettings(rounds=3, m=2, participation=0.6, preset=preset, seed=4)
    cfg = ExperimentConfig(clients=5, groups=2, federation=fed, training=TrainSettings(epochs=1, hidden=(8,)))
    dataset = load_dataset(cfg)
    rng = np.random.default_rng(4)
    data = split_clients(
        dataset, make_partition(cfg, dataset, rng), rng, val_fraction=0.2, test_fraction=0.2, target="local"
    )

    def fresh():
        backend = make_backend("torch", dataset, cfg.training, 4, preset=preset)
        init = backend.init_params()
        return backend, init, [backend.new_client(d, init, 4000 + k) for k, d in enumerate(data)]

    backend, init, clients = fresh()
    run = run_fedfomo(backend, clients, init, fed)

    backend, init, hand = fresh()
    server = fc.Server(5, init, preset=preset, m=2, seed=4)
    for r in range(3):
        for i in participants(5, 0.6, r, 4):
            ids, cands = server.candidates(int(i))
            res = hand[i].round(cands, server.global_params())
            server.receive(
                int(i),
                hand[i].get_flat(),
                ids,
                res.scores,
                self_score=res.self_score,
                global_update=res.global_update,
                num_examples=len(data[i].y_train),
            )
        server.end_round()

    np.testing.assert_array_equal(run.affinity, server.affinity.matrix)
    for a, b in zip(clients, hand):
        assert torch.equal(a.get_flat(), b.get_flat())


@pytest.mark.parametrize("preset", sorted(fc.PRESETS))
@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_every_preset_runs_in_the_simulator(preset, backend):
    from fomo_core.simulate import run_experiment

    fed = FederationSettings(rounds=2, m=2, preset=preset, seed=1)
    cfg = ExperimentConfig(
        clients=4,
        groups=2,
        backend=backend,
        methods=("fedfomo",),
        federation=fed,
        training=TrainSettings(epochs=1, hidden=(8,)),
    )
    results = run_experiment(cfg)
    assert len(results["methods"]["fedfomo"]["accuracy_per_round"]) == 2
    assert np.isfinite(np.asarray(results["affinity"])).all()
