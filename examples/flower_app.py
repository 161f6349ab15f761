"""FedFomo on Flower: a real simulation on Flower's Ray engine, with Flower's Message API.

Six clients hold scikit-learn's digits in three latent groups (each group its own classes). The
FedFomo strategy keeps every client's model and an affinity matrix, and sends each client M
candidate models picked from its row; each client (a ClientApp around a PyTorch FedFomoClient)
weighs them on its validation data, moves its model, trains it and returns its scores.
Run:  python examples/flower_app.py          (needs: pip install "fomo-core[flower,torch,sklearn]")
      python examples/flower_app.py --sklearn   (scikit-learn MLPClassifier clients instead)
"""

import os
import sys

# before Flower and Ray start: no telemetry; opt in to Ray's future behaviour (it leaves
# CUDA_VISIBLE_DEVICES alone for actors without GPUs) instead of a FutureWarning
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

import numpy as np
import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from sklearn.neural_network import MLPClassifier
from torch import nn

from fomo_core.adapters.flower import FedFomo, fedfomo_client_app, model_record
from fomo_core.adapters.numpy import MLPClassifierClient, initialise_mlp
from fomo_core.adapters.torch import FedFomoClient
from fomo_core.simulate.data import load_digits, split_clients
from fomo_core.simulate.metrics import within_group_fraction
from fomo_core.simulate.partition import latent_groups

NUM_CLIENTS, GROUPS, M, ROUNDS = 6, 3, 2, 5
SKLEARN = "--sklearn" in sys.argv

# --- data: the simulator's latent-group partition of the digits, split per client ----------------
rng = np.random.default_rng(0)
digits = load_digits()
partition = latent_groups(digits.y, NUM_CLIENTS, GROUPS, rng)
data = split_clients(digits, partition, rng, val_fraction=0.2, test_fraction=0.3)


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def make_estimator(seed: int) -> MLPClassifier:
    """An MLPClassifier whose parameters exist (partial_fit on one sample allocates them)."""
    est = MLPClassifier(hidden_layer_sizes=(32,), solver="sgd", learning_rate_init=0.05, momentum=0.5,
                        batch_size=16, random_state=seed)
    return initialise_mlp(est, digits.x[:1], digits.y[:1], np.arange(10))


# --- ClientApp: each node builds its client; the model's values arrive with every message --------
def client_fn(context: Context):
    k = int(context.node_config["partition-id"])
    d = data[k]
    if SKLEARN:
        return MLPClassifierClient(make_estimator(k), (d.x_val, d.y_val), (d.x_train, d.y_train), epochs=2)
    torch.set_num_threads(1)  # tiny model, one CPU per simulated client
    return FedFomoClient(
        make_model(),
        val_data=(torch.tensor(d.x_val), torch.tensor(d.y_val)),  # copies: arrays arrive read-only
        train_data=(torch.tensor(d.x_train), torch.tensor(d.y_train)),
        epochs=2, lr=0.05, momentum=0.5, batch_size=16, seed=k,
    )


def test_data_fn(context: Context):
    d = data[int(context.node_config["partition-id"])]
    return (d.x_test, d.y_test) if SKLEARN else (torch.tensor(d.x_test), torch.tensor(d.y_test))


client_app = fedfomo_client_app(client_fn, test_data_fn=test_data_fn)

# --- ServerApp: the FedFomo strategy ------------------------------------------------------------
strategy = FedFomo(m=M, seed=0, min_available_nodes=NUM_CLIENTS, min_train_nodes=NUM_CLIENTS,
                   min_evaluate_nodes=NUM_CLIENTS)
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    torch.manual_seed(0)
    initial = model_record(make_estimator(0) if SKLEARN else make_model())
    strategy.start(grid=grid, initial_arrays=initial, num_rounds=ROUNDS)


if __name__ == "__main__":
    # Ray puts the current directory first on its workers' import path: started from a source
    # checkout's root, they would import the uncompiled fomo_core/ there instead of the install
    os.chdir(os.path.dirname(os.path.abspath(__file__)))
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=NUM_CLIENTS,
        backend_config={"client_resources": {"num_cpus": 1}},  # two clients at a time on 2 cores
    )
    print()
    for r in strategy.rounds:
        print(f"round {r.round}: mean personalised test accuracy {100 * r.mean_accuracy:.1f}% "
              f"({len(r.accuracy)} clients; candidates {r.candidates})")
    # strategy index -> the node's partition -> its latent group
    groups = np.array([partition.groups[strategy.partition_ids[i]] for i in range(NUM_CLIENTS)])
    order = np.argsort(groups, kind="stable")
    print("affinity, clients ordered by group (row: receiving client; positive: helpful):")
    print(np.array2string(strategy.affinity_matrix[np.ix_(order, order)], precision=1, suppress_small=True,
                          max_line_width=120))
    fraction, counted = within_group_fraction(strategy.affinity_matrix, groups)
    print(f"share of positive affinity within the client's own group: {fraction:.2f} ({counted} clients)")
