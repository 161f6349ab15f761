"""Quickstart: FedFomo among a few PyTorch models on scikit-learn's digits, with fomo_core doing the
weights and the update.

Six clients in three groups; each group's clients see the same two digit classes. Every round each
client scores the other clients' models on its own validation data and moves towards the ones that
help (fomo_core.fomo_step), then trains locally. Clients should learn to weight their own group.

    python examples/quickstart.py
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import fomo_core as fc

GROUP_CLASSES = [(0, 1), (2, 3), (4, 5)]
CLIENTS_PER_GROUP = 2
ROUNDS = 2
EPOCHS = 5


def client_data(rng: np.random.Generator) -> list[dict[str, torch.Tensor]]:
    digits = load_digits()
    X = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    clients = []
    for classes in GROUP_CLASSES:
        idx = rng.permutation(np.flatnonzero(np.isin(digits.target, classes)))
        for part in np.array_split(idx, CLIENTS_PER_GROUP):
            n = len(part)
            # train 60% (a small, noisy slice, so that peers help), validation 20%, test 20%
            train, val, test = np.split(part, [int(0.6 * n), int(0.8 * n)])
            train = train[: max(8, len(train) // 4)]
            clients.append({"train": (X[train], y[train]), "val": (X[val], y[val]), "test": (X[test], y[test])})
    return clients


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


@torch.no_grad()
def evaluate(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
    model.eval()
    logits = model(data[0])
    loss = nn.functional.cross_entropy(logits, data[1]).item()
    return loss, (logits.argmax(1) == data[1]).float().mean().item()


def train(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(EPOCHS):
        opt.zero_grad()
        nn.functional.cross_entropy(model(data[0]), data[1]).backward()
        opt.step()


def main() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    clients = client_data(rng)
    models = [make_model() for _ in clients]
    for model, data in zip(models, clients):
        train(model, data["train"])
    print(f"fomo_core {fc.__version__}: {len(clients)} clients, groups {GROUP_CLASSES}")

    for round_ in range(1, ROUNDS + 1):
        # what the server sends: every client's current parameters
        uploaded = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]
        for i, (model, data) in enumerate(zip(models, clients)):
            peers = [n for n in range(len(models)) if n != i]
            local_loss, _ = evaluate(model, data["val"])
            candidate_losses = []
            for n in peers:
                model.load_state_dict(uploaded[n])
                candidate_losses.append(evaluate(model, data["val"])[0])
            # FedFomo's weights and update, over the state_dict, written straight into the model
            state = model.state_dict()
            for key, value in uploaded[i].items():
                state[key].copy_(value)
            step = fc.fomo_step(state, [uploaded[n] for n in peers], local_loss, candidate_losses, out=state)
            weights = ", ".join(f"{n}:{w:.2f}" for n, w in zip(peers, step.weights.tolist()) if w > 0)
            train(model, data["train"])
            print(f"round {round_} client {i} (group {i // CLIENTS_PER_GROUP}): weights {{{weights}}}")
        accuracy = np.mean([evaluate(m, d["test"])[1] for m, d in zip(models, clients)])
        print(f"round {round_}: mean personalised test accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
