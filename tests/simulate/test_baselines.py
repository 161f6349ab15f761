"""The baselines beside FedFomo: FedAvg + local fine-tuning and the per-group FedAvg oracle, and
the after-update accuracy every method records."""

from __future__ import annotations

import numpy as np
import pytest

from fomo_core.simulate import ExperimentConfig, FederationSettings, TrainSettings, run_experiment
from fomo_core.simulate.backends import make_backend
from fomo_core.simulate.baselines import run_fedavg_finetune, run_group_oracle
from fomo_core.simulate.data import load_digits, split_clients
from fomo_core.simulate.experiment import method_parts
from fomo_core.simulate.federation import run_fedavg
from fomo_core.simulate.partition import latent_groups

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cfg(methods, **kw) -> ExperimentConfig:
    fed = FederationSettings(rounds=kw.pop("rounds", 3), m=2, seed=kw.pop("seed", 0))
    return ExperimentConfig(
        clients=kw.pop("clients", 6),
        groups=kw.pop("groups", 3),
        methods=tuple(methods),
        federation=fed,
        training=TrainSettings(epochs=1, hidden=(16,)),
        **kw,
    )


def test_oracle_with_one_group_is_fedavg():
    """One latent group: the per-group oracle averages over everyone, exactly as FedAvg does."""
    res = run_experiment(cfg(["fedavg", "oracle"], groups=1))
    fedavg, oracle = res["methods"]["fedavg"], res["methods"]["oracle"]
    assert oracle["accuracy_per_round"] == fedavg["accuracy_per_round"]
    assert oracle["accuracy_after_update_per_round"] == fedavg["accuracy_after_update_per_round"]


def test_fedavg_ft_after_update_is_fedavg_before_its_first_fine_tuning():
    """Round 1 of FedAvg+FT averages the same trained models as FedAvg (same seeds, nothing
    fine-tuned yet), so its after-update accuracy is FedAvg's; its after-training accuracy is the
    fine-tuned copies'."""
    res = run_experiment(cfg(["fedavg", "fedavg_ft"]))
    fedavg, ft = res["methods"]["fedavg"], res["methods"]["fedavg_ft"]
    assert ft["accuracy_after_update_per_round"][0] == fedavg["accuracy_per_round"][0]
    assert ft["accuracy_per_round"] != ft["accuracy_after_update_per_round"]
    assert ft["seconds"]["train"] > 0


def federation(groups: int):
    """(backend, initial model, partition, fresh()) for 6 digits clients in ``groups`` groups;
    fresh() builds the clients anew (same data and seeds)."""
    digits = load_digits()
    rng = np.random.default_rng(0)
    partition = latent_groups(digits.y, 6, groups, rng)
    data = split_clients(digits, partition, rng)
    backend = make_backend("torch", digits, TrainSettings(epochs=1, hidden=(8,)), seed=0)
    init = backend.init_params()
    return backend, init, partition, lambda: [backend.new_client(d, init, k) for k, d in enumerate(data)]


def test_oracle_is_fedavg_run_inside_each_group():
    """The oracle's per-client accuracies equal those of FedAvg run separately on each group's
    clients (the same clients, seeds and data), round by round."""
    backend, init, partition, fresh = federation(2)
    fed = FederationSettings(rounds=2)
    oracle = run_group_oracle(backend, fresh(), init, fed, groups=partition.groups)
    expected = np.zeros((2, 6))
    for g in (0, 1):
        members = np.flatnonzero(partition.groups == g)
        clients = fresh()
        alone = run_fedavg(backend, [clients[k] for k in members], init, fed)
        for r, record in enumerate(alone.rounds):
            expected[r, members] = record.client_accuracy
    assert np.array_equal(np.array([r.client_accuracy for r in oracle.rounds]), expected)
    assert oracle.rounds[-1].update_accuracy == oracle.rounds[-1].accuracy


def test_fedavg_ft_clients_skipping_a_round_keep_their_copy():
    """With participation < 1 a client that does not take part keeps its last fine-tuned copy,
    so its after-training accuracy is unchanged in a round it skips."""
    backend, init, _, fresh = federation(3)
    fed = FederationSettings(rounds=3, participation=0.5, seed=4)
    run = run_fedavg_finetune(backend, fresh(), init, fed)
    for prev, cur in zip(run.rounds, run.rounds[1:]):
        for k in set(range(6)) - set(cur.participants):
            assert cur.client_accuracy[k] == prev.client_accuracy[k]


def test_every_method_records_both_accuracies():
    res = run_experiment(cfg(["fedfomo", "fedavg", "local", "fedavg_ft", "oracle"], rounds=2))
    for run in res["methods"].values():
        assert len(run["accuracy_after_update_per_round"]) == 2
        assert run["final_accuracy_after_update"] == run["accuracy_after_update_per_round"][-1]
        assert all(0 <= a <= 1 for a in run["accuracy_after_update_per_round"])
    # Local has no update: round 2's after-update is its model after round 1's training
    local = res["methods"]["local"]
    assert local["accuracy_after_update_per_round"][1] == pytest.approx(local["accuracy_per_round"][0])


def test_method_names_and_errors():
    assert method_parts("fedfomo") == ("fedfomo", None)
    assert method_parts("fedfomo:paper") == ("fedfomo", "paper")
    with pytest.raises(ValueError, match="only FedFomo takes a preset"):
        method_parts("fedavg:paper")
    with pytest.raises(ValueError, match="methods must be among"):
        method_parts("fedprox")
    with pytest.raises(ValueError, match="'oracle' needs a partition with latent groups"):
        run_experiment(cfg(["oracle"], partition="dirichlet", clients=5))
