"""A personalised federation of scikit-learn MLPClassifiers with fomo-core's pieces.

Models travel as flat NumPy vectors; every client evaluates its candidates with fomo-core's fused
dense kernel, moves by fomo_step and trains with the estimator's own partial_fit.
Run:  python examples/sklearn_federation.py [preset]
"""

import sys

import numpy as np
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

import fomo_core as fc
from fomo_core.adapters.numpy import MLPClassifierClient, get_flat_params, initialise_mlp

NUM_CLIENTS, GROUPS, M, ROUNDS = 9, 3, 3, 10
PRESET = sys.argv[1] if len(sys.argv) > 1 else "fomo-core"  # or paper, pfllib, fl-bench
rng = np.random.default_rng(0)

# --- data: client k holds the classes of group k % 3, split into train / validation / test ------
digits = load_digits()
x, y = digits.data / 16.0, digits.target
group_classes = np.array_split(rng.permutation(10), GROUPS)
splits = []
for k in range(NUM_CLIENTS):
    mine = np.flatnonzero(np.isin(y, group_classes[k % GROUPS]))
    mine = rng.permutation(mine[k // GROUPS :: NUM_CLIENTS // GROUPS])
    n = len(mine)
    splits.append(
        {
            part: (x[ix], y[ix])
            for part, ix in (
                ("train", mine[: n // 2]),
                ("val", mine[n // 2 : 3 * n // 4]),
                ("test", mine[3 * n // 4 :]),
            )
        }
    )


def make_estimator(k):
    clf = MLPClassifier(
        hidden_layer_sizes=(32,), solver="sgd", learning_rate_init=0.05, momentum=0.5, batch_size=16, random_state=k
    )
    return initialise_mlp(clf, *splits[k]["train"], classes=np.arange(10))  # allocates coefs_


# --- clients, all starting from one model --------------------------------------------------------
clients = [
    MLPClassifierClient(make_estimator(k), splits[k]["val"], splits[k]["train"], preset=PRESET, epochs=2)
    for k in range(NUM_CLIENTS)
]
start = get_flat_params(clients[0].estimator)
for c in clients:
    c.set_flat(start)

# --- server: the latest model of every client, the affinity, the selection -----------------------
server = fc.Server(NUM_CLIENTS, start, preset=PRESET, m=M, seed=0)

for r in range(ROUNDS):
    for k, client in enumerate(clients):
        ids, candidates = server.candidates(k)  # none in round 0: nobody has uploaded yet
        # the fomo-core round also moves toward the server's global model (None for the peers' presets)
        global_model = server.global_params()
        result = client.round(candidates, global_model)  # evaluate, weigh, update, partial_fit
        server.receive(
            k,
            client.get_flat(),
            ids,
            result.scores,
            self_score=result.self_score,
            global_update=result.global_update,  # its contribution to the global model
            num_examples=len(splits[k]["train"][1]),
        )
    server.end_round()
    acc = np.mean([c.estimator.score(*splits[k]["test"]) for k, c in enumerate(clients)])
    print(f"round {r + 1:2d}: mean personalised test accuracy {100 * acc:.1f}%")

order = np.argsort([k % GROUPS for k in range(NUM_CLIENTS)], kind="stable")
print("affinity, clients ordered by group (positive: helpful):")
print(
    np.array2string(server.affinity.matrix[np.ix_(order, order)], precision=1, suppress_small=True, max_line_width=120)
)
