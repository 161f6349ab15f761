"""A personalised federation in plain PyTorch with fomo-core's pieces.

Nine clients hold digits of three disjoint class groups. Each round the server picks M candidate
models per client from its affinity matrix; each client weighs them on its own validation data
(FedFomo), moves its model and trains it. Run:  python examples/torch_federation.py [preset]
"""

import sys

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import fomo_core as fc
from fomo_core.adapters.torch import FedFomoClient

torch.set_num_threads(1)  # tiny models: one thread is fastest
NUM_CLIENTS, GROUPS, M, ROUNDS = 9, 3, 3, 10
PRESET = sys.argv[1] if len(sys.argv) > 1 else "fomo-core"  # or paper, pfllib, fl-bench
rng = np.random.default_rng(0)

# --- data: client k holds the classes of group k % 3, split into train / validation / test ------
digits = load_digits()
x, y = torch.tensor(digits.data / 16.0, dtype=torch.float32), torch.tensor(digits.target)
group_classes = np.array_split(rng.permutation(10), GROUPS)
splits = []
for k in range(NUM_CLIENTS):
    mine = np.flatnonzero(np.isin(digits.target, group_classes[k % GROUPS]))
    mine = rng.permutation(mine[k // GROUPS :: NUM_CLIENTS // GROUPS])  # this client's share of its group
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


def make_model():
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


# --- clients: one FedFomoClient per model (its parameters now live in one flat buffer) ------------
torch.manual_seed(0)
start = make_model().state_dict()
clients = []
for k in range(NUM_CLIENTS):
    model = make_model()
    model.load_state_dict(start)
    clients.append(
        FedFomoClient(
            model,
            splits[k]["val"],
            splits[k]["train"],
            preset=PRESET,
            epochs=2,
            lr=0.05,
            momentum=0.5,
            batch_size=16,
            seed=k,
        )
    )

# --- server: the latest model of every client, the affinity, the selection -----------------------
server = fc.Server(NUM_CLIENTS, clients[0].get_flat(), preset=PRESET, m=M, seed=0)

for r in range(ROUNDS):
    for k, client in enumerate(clients):
        ids, candidates = server.candidates(k)  # none in round 0: nobody has uploaded yet
        # the fomo-core round also moves toward the server's global model (None for the peers' presets)
        global_model = server.global_params()
        result = client.round(candidates, global_model)  # evaluate, weigh, update, train
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
    acc = np.mean([c.evaluate(c.params[None, : c.num_params], splits[k]["test"])[1][0] for k, c in enumerate(clients)])
    print(f"round {r + 1:2d}: mean personalised test accuracy {100 * acc:.1f}%")

order = np.argsort([k % GROUPS for k in range(NUM_CLIENTS)], kind="stable")
print("affinity, clients ordered by group (positive: helpful):")
print(
    np.array2string(server.affinity.matrix[np.ix_(order, order)], precision=1, suppress_small=True, max_line_width=120)
)
