"""Label budgets in the simulator (who trains and validates on which labelled samples), the
empty-split errors, the named "partitions" grid, and the per-cell shares of client-rounds the
runner reports."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from fomo_core.adapters.numpy import MLPClassifierClient, initialise_mlp
from fomo_core.adapters.torch import FedFomoClient
from fomo_core.cli import main
from fomo_core.simulate import ExperimentConfig, FederationSettings, TrainSettings, run_experiment
from fomo_core.simulate.backends import make_backend
from fomo_core.simulate.data import (
    carve_validation,
    keep_validation,
    rotate_validation,
    split_clients,
    with_validation_labels,
)
from fomo_core.simulate.experiment import _global_train, load_dataset, make_partition, method_data
from fomo_core.simulate.federation import run_fedfomo
from fomo_core.simulate.partition import Partition
from fomo_core.simulate.runner import GRIDS, PARTITIONS_GRID, Grid, config_from_flat, run_grid

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small(budget: str, **kw) -> ExperimentConfig:
    return ExperimentConfig(
        dataset="digits",
        clients=4,
        groups=2,
        max_train=12,
        budget=budget,
        federation=FederationSettings(rounds=1, m=2, seed=3),
        training=TrainSettings(epochs=1, hidden=(8,)),
        **kw,
    )


def client_data(cfg: ExperimentConfig) -> list:
    dataset = load_dataset(cfg)
    rng = np.random.default_rng(cfg.federation.seed)
    return split_clients(
        dataset, make_partition(cfg, dataset, rng), rng, val_fraction=0.2, test_fraction=0.4, max_train=cfg.max_train
    )


def test_equal_gives_the_baselines_fedfomos_validation_labels_to_train_on():
    cfg = small("equal")
    data = client_data(cfg)
    fedfomo, fedavg = method_data(cfg, "fedfomo", data), method_data(cfg, "fedavg", data)
    assert fedfomo is data  # FedFomo's own split, untouched
    for mine, theirs in zip(data, fedavg):
        assert theirs.y_train.size == mine.y_train.size + mine.y_val.size
        np.testing.assert_array_equal(theirs.x_train, np.concatenate([mine.x_train, mine.x_val]))
        np.testing.assert_array_equal(theirs.y_test, mine.y_test)  # tested on the same data


def test_carved_takes_fedfomos_validation_out_of_the_same_budget():
    cfg = small("carved")
    data = client_data(cfg)
    local, fedfomo = method_data(cfg, "local", data), method_data(cfg, "fedfomo", data)
    assert local is data
    share = cfg.val_fraction / (1 - cfg.test_fraction)  # 1/3 of the labels validate
    for base, carved in zip(data, fedfomo):
        n = base.y_train.size
        v = max(1, int(np.floor(share * n + 0.5)))
        assert carved.y_val.size == v and carved.y_train.size == n - v  # train + val = the others' train
        np.testing.assert_array_equal(carved.y_val, base.y_val[:v])
        np.testing.assert_array_equal(carved.x_train, base.x_train[: n - v])


def test_fedfomo_can_train_on_all_but_some_of_its_validation_labels():
    cfg = small("equal", fedfomo_validation=3)
    data = client_data(cfg)
    for base, mine, theirs in zip(data, method_data(cfg, "fedfomo", data), method_data(cfg, "local", data)):
        assert mine.y_val.size == min(3, base.y_val.size)
        np.testing.assert_array_equal(mine.x_val, base.x_val[:3])
        np.testing.assert_array_equal(mine.x_train, np.concatenate([base.x_train, base.x_val[3:]]))
        assert mine.y_train.size + mine.y_val.size == theirs.y_train.size  # still the same labels
    with pytest.raises(ValueError, match="fedfomo_validation moves FedFomo's validation labels .* budget='equal'"):
        small("free", fedfomo_validation=3)
    with pytest.raises(ValueError, match="fedfomo_validation must be an integer >= 0"):
        small("equal", fedfomo_validation=-1)


# --- a rotating validation fold --------------------------------------------------------------------


def _labels(d) -> set:
    """Every labelled sample of a client's data (training + validation) as a set of rows."""
    return {row.tobytes() for row in np.concatenate([d.x_train, d.x_val])}


def test_a_rotating_fold_holds_out_the_next_labels_each_turn_and_every_label_trains():
    cfg = small("equal", fedfomo_validation=3)
    for base in client_data(cfg):
        n = base.y_val.size
        assert n > 3  # the test needs more validation samples than the fold
        first = rotate_validation(base, 3, 0)
        fixed = keep_validation(base, 3)
        for a, b in ((first.x_train, fixed.x_train), (first.y_val, fixed.y_val), (first.x_val, fixed.x_val)):
            np.testing.assert_array_equal(a, b)  # turn 0 is the fixed fold
        trained, held = set(), set()
        for turn in range(-(-n // 3)):  # ceil(n / 3) turns
            d = rotate_validation(base, 3, turn)
            assert d.y_val.size == 3 and d.y_train.size == base.y_train.size + n - 3
            assert _labels(d) == _labels(base)  # the same labels, only split differently
            val = {row.tobytes() for row in d.x_val}
            assert not val & {row.tobytes() for row in d.x_train}  # never validates on what trains
            held |= val
            trained |= {row.tobytes() for row in d.x_train}
            np.testing.assert_array_equal(d.x_test, base.x_test)
        assert held == {row.tobytes() for row in base.x_val}  # each validation label held out once ...
        assert trained == _labels(base)  # ... and trains in the other turns: every label trains
        again = rotate_validation(base, 3, 5)
        np.testing.assert_array_equal(again.x_val, rotate_validation(base, 3, 5).x_val)  # no hidden state
    small_client = keep_validation(base, 2)  # 2 validation samples: a fold of 3 keeps them all
    assert rotate_validation(small_client, 3, 4) is small_client


def test_a_rotating_fold_is_checked():
    base = client_data(small("equal"))[0]
    with pytest.raises(ValueError, match="keep must be an integer >= 1"):
        rotate_validation(base, 0, 1)
    with pytest.raises(ValueError, match="turn must be an integer >= 0"):
        rotate_validation(base, 3, -1)
    with pytest.raises(ValueError, match="validation_fold must be one of 'fixed', 'rotating'"):
        small("equal", fedfomo_validation=3, validation_fold="sideways")
    with pytest.raises(ValueError, match="validation_fold='rotating' .* needs fedfomo_validation > 0"):
        small("equal", validation_fold="rotating")
    with pytest.raises(ValueError, match="setting key 'validation_fold' must be one of"):
        flat = {"budget": "equal", "fedfomo_validation": 3, "validation_fold": "up"}
        config_from_flat(flat, seed=0, method="fedfomo")


@pytest.mark.parametrize("backend_name", ["torch", "sklearn"])
def test_the_federation_gives_each_client_its_next_fold_every_round_it_takes_part_in(backend_name):
    cfg = small("equal", fedfomo_validation=3)
    data = client_data(cfg)
    dataset = load_dataset(cfg)
    backend = make_backend(backend_name, dataset, cfg.training, 3)
    init = backend.init_params()
    clients = [backend.new_client(keep_validation(d, 3), init, k) for k, d in enumerate(data)]
    asked = []

    def fold(k: int, turn: int):
        asked.append((k, turn))
        return rotate_validation(data[k], 3, turn)

    fed = FederationSettings(rounds=3, m=2, seed=3, participation=0.5)
    run = run_fedfomo(backend, clients, init, fed, data_for_turn=fold)
    # asked before each round a client takes part in, and only then
    assert [k for k, _ in asked] == [k for r in run.rounds for k in r.participants]
    for k in range(len(clients)):
        turns = [t for i, t in asked if i == k]
        assert turns == list(range(len(turns)))  # its own count of rounds taken part in, in order
        if turns:  # the client holds the fold of its last turn
            y_val = clients[k].val_data[1]
            y_val = y_val.numpy() if hasattr(y_val, "numpy") else y_val
            np.testing.assert_array_equal(y_val, rotate_validation(data[k], 3, turns[-1]).y_val)
    assert len(asked) == 3 * 2  # half of the 4 clients in each of 3 rounds
    assert any(t > 0 for _, t in asked)


def test_a_rotating_fold_runs_from_the_config_and_is_deterministic():
    three_rounds = FederationSettings(rounds=3, m=2, seed=3)
    cfg = replace(small("equal", fedfomo_validation=3, validation_fold="rotating"), federation=three_rounds)
    cfg.methods = ("fedfomo",)
    first, second = run_experiment(cfg), run_experiment(cfg)
    acc = first["methods"]["fedfomo"]["accuracy_per_round"]
    assert acc == second["methods"]["fedfomo"]["accuracy_per_round"]
    fixed = run_experiment(replace(cfg, validation_fold="fixed"))
    assert fixed["methods"]["fedfomo"]["accuracy_per_round"] != acc  # the folds did change what it trained on
    assert first["config"]["validation_fold"] == "rotating"


def test_a_new_validation_fold_reruns_fedfomos_cells_and_keeps_the_baselines(tmp_path):
    base = {"dataset": "digits", "clients": 4, "groups": 2, "rounds": 2, "m": 2, "epochs": 1, "hidden": 8}
    base["max_train"] = 12
    setting = {"budget": "equal", "fedfomo_validation": 3}
    first = Grid({"e": setting}, ("fedfomo", "local"), (0,), base)
    run_grid(first, str(tmp_path), progress=False, plots=False)
    rotating = Grid({"e": {**setting, "validation_fold": "rotating"}}, ("fedfomo", "local"), (0,), base)
    done = run_grid(rotating, str(tmp_path), progress=False, plots=False)
    assert done["ran"] == ["e__fedfomo__seed0"] and done["reused"] == ["e__local__seed0"]
    local = json.loads((tmp_path / "cells" / "e__local__seed0.json").read_text())
    assert local["config"]["validation_fold"] == "rotating"  # its record says what the grid ran
    fewer = Grid({"e": {**setting, "fedfomo_validation": 2}}, ("fedfomo", "local"), (0,), base)
    assert run_grid(fewer, str(tmp_path), progress=False, plots=False)["reused"] == ["e__local__seed0"]
    free = Grid({"e": {"budget": "free"}}, ("fedfomo", "local"), (0,), base)
    assert run_grid(free, str(tmp_path), progress=False, plots=False)["reused"] == []  # their data changed


# --- the global model on every label ---------------------------------------------------------------


def test_global_labels_all_gives_the_copy_of_the_global_model_every_label():
    cfg = replace(small("equal", fedfomo_validation=3, global_labels="all"), methods=("fedfomo",))
    data = client_data(cfg)
    backend = make_backend("torch", load_dataset(cfg), cfg.training, 3)
    for d in method_data(cfg, "fedfomo", data):
        client = backend.new_client(d, backend.init_params(), 0, **_global_train(True, d))
        x, y = client.global_train_data
        assert y.shape[0] == d.y_train.size + d.y_val.size  # the labels it validates on too
        np.testing.assert_array_equal(x.numpy(), np.concatenate([d.x_train, d.x_val]))
        assert client.train_data[1].shape[0] == d.y_train.size  # its own model: not the validation labels
    assert _global_train(False, data[0]) == {}
    results = run_experiment(cfg)
    training = run_experiment(replace(cfg, global_labels="training"))
    assert results["methods"]["fedfomo"]["accuracy_per_round"] != training["methods"]["fedfomo"]["accuracy_per_round"]
    assert results["config"]["global_labels"] == "all"


def test_global_labels_are_checked():
    with pytest.raises(ValueError, match="global_labels must be one of 'training', 'all'"):
        small("equal", global_labels="some")
    with pytest.raises(ValueError, match="global_labels='all' trains the global model .* needs budget='equal'"):
        small("free", global_labels="all")
    with pytest.raises(ValueError, match="setting key 'global_labels' must be one of"):
        config_from_flat({"budget": "equal", "global_labels": "most"}, seed=0, method="fedfomo")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--global-labels", "all"], "argument --global-labels: needs --budget equal"),
        (["--budget", "equal", "--validation-fold", "rotating"], "--validation-fold: needs --fedfomo-validation"),
        (["--validation-fold", "spiral"], "argument --validation-fold: invalid choice: 'spiral'"),
    ],
)
def test_the_cli_checks_the_fold_and_the_global_labels(argv, message, cli_refuses):
    cli_refuses("demo", argv, message)


def test_carving_needs_two_training_samples():
    data = client_data(small("free"))[0]
    one = with_validation_labels(data).__class__(
        data.x_train[:1], data.y_train[:1], data.x_val, data.y_val, data.x_test, data.y_test, 0
    )
    with pytest.raises(ValueError, match="budget 'carved' needs at least 2 training samples"):
        carve_validation(one, 0.3)


def test_results_state_each_methods_labelled_samples():
    results = run_experiment(small("equal", methods=("fedfomo", "local")))
    fedfomo = results["methods"]["fedfomo"]["labelled_samples"]
    local = results["methods"]["local"]["labelled_samples"]
    assert local["validation"] == 0 and fedfomo["validation"] > 0
    assert local["training"] == fedfomo["training"] + fedfomo["validation"]  # the same labels in all
    assert results["config"]["budget"] == "equal"


def test_an_unknown_budget_is_refused():
    with pytest.raises(ValueError, match="budget must be one of 'free', 'equal', 'carved'"):
        small("generous")
    with pytest.raises(ValueError, match="setting key 'budget' must be one of"):
        config_from_flat({"budget": "generous"}, seed=0, method="fedfomo")


# --- empty splits ---------------------------------------------------------------------------------


def test_an_empty_split_names_the_client_and_the_split():
    cfg = small("free")
    dataset = load_dataset(cfg)
    labels = dataset.y
    # client 1 holds two samples of one class: too few for a validation and a test sample
    two = np.flatnonzero(labels == 0)[:2]
    rest = np.setdiff1d(np.arange(labels.size), two)
    partition = Partition([rest, two], None, [np.unique(labels[rest]), np.array([0])])
    with pytest.raises(ValueError, match=r"client 1 has an empty (validation|test) split \(2 samples in its partition"):
        split_clients(dataset, partition, np.random.default_rng(0), val_fraction=0.2, test_fraction=0.2)


def test_clients_refuse_empty_validation_data():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    empty = (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="val_data holds no samples"):
        FedFomoClient(model, empty, (torch.randn(5, 4), torch.zeros(5, dtype=torch.int64)))
    from sklearn.neural_network import MLPClassifier

    x, y = np.random.default_rng(0).standard_normal((6, 4)), np.arange(6) % 3
    est = initialise_mlp(MLPClassifier(hidden_layer_sizes=(4,), solver="sgd"), x, y, np.arange(3))
    with pytest.raises(ValueError, match="val_data holds no samples"):
        MLPClassifierClient(est, (x[:0], y[:0]), (x, y))


# --- the partitions grid --------------------------------------------------------------------------


def test_the_partitions_grid_covers_every_partition_at_both_budgets():
    assert GRIDS["partitions"] is PARTITIONS_GRID and PARTITIONS_GRID.seeds == (0, 1, 2, 3, 4)
    assert PARTITIONS_GRID.methods[:4] == ("fedfomo", "fedavg", "local", "fedavg_ft")
    seen = set()
    for name in PARTITIONS_GRID.settings:
        cfg = config_from_flat(PARTITIONS_GRID.flat(name), seed=0, method="fedfomo")
        assert cfg.dataset == "mnist5k" and cfg.max_train == 20
        assert cfg.budget == ("equal" if name.endswith("-equal") else "free")
        assert cfg.fedfomo_validation == (10 if cfg.budget == "equal" else 0)
        assert cfg.global_labels == ("all" if cfg.budget == "equal" else "training")
        assert cfg.validation_fold == "fixed"
        seen.add((cfg.partition, cfg.alpha if cfg.partition == "dirichlet" else None, cfg.clients, cfg.budget))
    for budget in ("free", "equal"):
        for part in (("groups", None), ("dirichlet", 0.1), ("dirichlet", 0.3), ("dirichlet", 0.5)):
            assert (*part, 20, budget) in seen
        assert ("pathological", None, 20, budget) in seen and ("dirichlet", 0.3, 50, budget) in seen


def test_a_grid_reports_the_share_of_rounds_without_a_positive_weight(tmp_path):
    grid = Grid(
        settings={"d": {"partition": "dirichlet", "alpha": 0.5}},
        methods=("fedfomo", "local"),
        seeds=(0,),
        base={"dataset": "digits", "clients": 4, "rounds": 2, "m": 2, "epochs": 1, "hidden": 8},
    )
    done = run_grid(grid, str(tmp_path), progress=False, plots=False)
    cell = json.loads((tmp_path / "cells" / "d__fedfomo__seed0.json").read_text())
    assert 0.0 <= cell["no_positive_weight_share"] <= 1.0 and 0.0 <= cell["moved_to_global_share"] <= 1.0
    assert json.loads((tmp_path / "cells" / "d__local__seed0.json").read_text())["no_positive_weight_share"] is None
    entry = done["summary"]["d"]["methods"]["fedfomo"]
    assert entry["no_positive_weight_share"]["mean"] == cell["no_positive_weight_share"]
    assert "no positive weight" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "3-1"], "seeds must be an integer >= 3"),
        (["--grid", "partition"], "experiment grid: "),  # neither a grid's name nor a file
    ],
)
def test_experiment_seeds_and_grid_names_are_checked(argv, message, cli_refuses):
    cli_refuses("experiment", argv, message)


def test_the_help_names_the_grids(capsys):
    with pytest.raises(SystemExit):
        main(["experiment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "4 settings x 5 methods x 5 seeds" in text and "--grid partitions" in text
