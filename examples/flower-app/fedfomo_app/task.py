"""The federation's data and models: scikit-learn's digits dealt to ``num-clients`` partitions in
``num-groups`` latent groups (each group owns its own classes), and a small MLP (scikit-learn's
MLPClassifier, or the same shape in PyTorch). Every process rebuilds the same partition from the
run config's seed, so a node only needs its ``partition-id``."""

from __future__ import annotations

import functools

import numpy as np

HIDDEN = 32


@functools.lru_cache(maxsize=4)
def partition(num_clients: int, num_groups: int, seed: int) -> tuple:
    """(groups [num_clients], per-client ClientData) for the run config's numbers."""
    from fomo_core.simulate.data import load_digits, split_clients
    from fomo_core.simulate.partition import latent_groups

    rng = np.random.default_rng(seed)
    digits = load_digits()
    part = latent_groups(digits.y, num_clients, num_groups, rng)
    return part.groups, split_clients(digits, part, rng, val_fraction=0.2, test_fraction=0.3)


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
