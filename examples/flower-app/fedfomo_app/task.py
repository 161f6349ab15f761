"""The federation's data and models: scikit-learn's digits dealt to ``num-clients`` clients in
``num-groups`` latent groups (each group owns its own classes), and a small MLP (scikit-learn's
MLPClassifier, or the same shape in PyTorch). Every process rebuilds the same partition from the
run config, so a node only needs its ``partition-id``."""

from __future__ import annotations

import copy
import functools

import numpy as np

HIDDEN = 32


@functools.lru_cache(maxsize=4)
def partition(num_clients: int, num_groups: int, seed: int, samples_per_client: int = 0) -> tuple:
    """(groups [num_clients], per-client ClientData: train / val / test splits).

    samples_per_client = 0 deals the digits' 1,797 samples to the clients (each sample once);
    n > 0 gives every client n samples drawn from its group's classes, so that clients of a
    group share samples and any number of clients has data (1,000 clients: 60 samples each).
    """
    from fomo_core.simulate.data import load_digits, split_clients
    from fomo_core.simulate.partition import latent_groups

    rng = np.random.default_rng(seed)
    digits = load_digits()
    if samples_per_client:
        part = _drawn_from_groups(digits.y, num_clients, num_groups, samples_per_client, rng)
    else:
        part = latent_groups(digits.y, num_clients, num_groups, rng)
    try:
        data = split_clients(digits, part, rng, val_fraction=0.2, test_fraction=0.3)
    except ValueError as e:  # a client left without one of its splits
        raise ValueError(
            f"{e} (the digits' {digits.y.size} samples dealt to {num_clients} clients): set samples-per-client "
            "(e.g. 60)"
        ) from e
    return part.groups, data


def _drawn_from_groups(labels: np.ndarray, num_clients: int, num_groups: int, size: int, rng: np.random.Generator):
    """Groups own classes as in latent_groups (client k in group k % num_groups); every client
    draws ``size`` samples of its group's classes, without replacement within the client."""
    from fomo_core.simulate.partition import Partition

    group_classes = np.array_split(rng.permutation(np.unique(labels)), num_groups)
    pools = [np.flatnonzero(np.isin(labels, classes)) for classes in group_classes]
    groups = np.arange(num_clients, dtype=np.int64) % num_groups
    indices = [np.sort(rng.choice(pools[g], size=min(size, pools[g].size), replace=False)) for g in groups]
    return Partition(indices, groups, [np.unique(labels[ix]) for ix in indices])


def client_data(run_config: dict, node_config: dict) -> tuple:
    """(k, ClientData) of the node with ``partition-id`` k."""
    rc = run_config
    _, data = partition(int(rc["num-clients"]), int(rc["num-groups"]), int(rc["seed"]), int(rc["samples-per-client"]))
    k = int(node_config["partition-id"])
    if not 0 <= k < len(data):
        raise ValueError(f"partition-id must be in [0, {len(data)}), got {k}")
    return k, data[k]


def make_estimator(seed: int):
    """An MLPClassifier whose parameters exist (partial_fit on one sample allocates them)."""
    from sklearn.neural_network import MLPClassifier

    from fomo_core.adapters.numpy import initialise_mlp

    est = MLPClassifier(
        hidden_layer_sizes=(HIDDEN,),
        solver="sgd",
        learning_rate_init=0.05,
        momentum=0.5,
        batch_size=16,
        random_state=seed,
    )
    x = np.zeros((1, 64), dtype=np.float32)
    return initialise_mlp(est, x, np.zeros(1, dtype=np.int64), np.arange(10))


@functools.lru_cache(maxsize=1)
def _estimator_template():
    return make_estimator(0)


def make_module(seed: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))


def initial_model(framework: str, seed: int):
    if framework == "sklearn":
        return make_estimator(seed)
    if framework == "torch":
        return make_module(seed)
    raise ValueError(f"run config 'framework' must be 'sklearn' or 'torch', got {framework!r}")


def client_policy(global_model: str = "train"):
    """The fomo-core client policy, contributing to the global model by ``global_model``: "train"
    (a copy of the global model trained too: twice the local training) or "follow" (the change the
    client's own training made: no second training)."""
    from fomo_core import presets

    if global_model not in ("train", "follow"):
        raise ValueError(f"run config 'global-model' must be 'train' or 'follow', got {global_model!r}")
    return presets.client_policy("fomo-core").replace(global_model=global_model)


def make_client(framework: str, k: int, d, epochs: int, global_model: str = "train"):
    """Client k's FedFomo client (its validation and training data; the model's values come from
    the server), contributing to the global model by ``global_model`` (:func:`client_policy`)."""
    policy = client_policy(global_model)
    if framework == "sklearn":
        from fomo_core.adapters.numpy import MLPClassifierClient

        # a copy of one initialised estimator: the values come from the server, and partial_fit
        # reseeds from random_state at every call, so this is make_estimator(k) without its cost
        estimator = copy.deepcopy(_estimator_template()).set_params(random_state=k)
        return MLPClassifierClient(estimator, (d.x_val, d.y_val), (d.x_train, d.y_train), epochs=epochs, policy=policy)
    import torch

    from fomo_core.adapters.torch import FedFomoClient

    torch.set_num_threads(1)  # a tiny model: one CPU per client
    return FedFomoClient(
        initial_model(framework, k),
        val_data=(torch.tensor(d.x_val), torch.tensor(d.y_val)),  # copies: arrays arrive read-only
        train_data=(torch.tensor(d.x_train), torch.tensor(d.y_train)),
        epochs=epochs,
        lr=0.05,
        momentum=0.5,
        batch_size=16,
        seed=k,
        policy=policy,
    )


def test_split(framework: str, d):
    """Client data ``d``'s test split, as the framework's client evaluates it."""
    if framework == "sklearn":
        return d.x_test, d.y_test
    import torch

    return torch.tensor(d.x_test), torch.tensor(d.y_test)


def evaluate(client, data) -> tuple:
    """(loss, accuracy) of the client's current model on ``data``."""
    losses, accuracies = client.evaluate(client.get_flat()[None], data)
    return float(np.asarray(losses)[0]), float(np.asarray(accuracies)[0])
