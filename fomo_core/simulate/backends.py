"""The two model backends of the simulator: PyTorch modules and scikit-learn MLPClassifiers.

A backend builds the clients (the adapters' FedFomo clients, so the simulator runs exactly the
code a user would) and the server's table of uploaded models [N, P]; the federation loops in
federation.py only call the methods below.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..presets import client_policy
from .data import ClientData, Dataset

__all__ = ["TrainSettings", "TorchBackend", "SklearnBackend", "make_backend", "BACKENDS"]

BACKENDS = ("torch", "sklearn")


@dataclass(frozen=True)
class TrainSettings:
    """Local training, the same for every method: ``epochs`` of minibatch SGD per round with
    ``lr``, ``momentum`` and ``batch_size``; ``hidden``: the MLP's hidden layer sizes."""

    epochs: int = 2
    lr: float = 0.05
    momentum: float = 0.5
    batch_size: int = 16
    hidden: tuple = (64,)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


class TorchBackend:
    """Clients are :class:`fomo_core.adapters.torch.FedFomoClient` around an MLP (flat features)
    or a small CNN (images [3, 32, 32]); the server's table is a float32 tensor [N, P]."""

    name = "torch"

    def __init__(self, dataset: Dataset, settings: TrainSettings, seed: int, preset: str = "fomo-core"):
        import torch

        from ..adapters import torch as adapter

        self.torch, self.adapter = torch, adapter
        self.dataset, self.settings, self.seed = dataset, settings, seed
        self.preset = preset

    def build_module(self):
        nn = self.torch.nn
        x = self.dataset.x
        c = self.dataset.num_classes
        if x.ndim == 2:
            sizes = [x.shape[1], *self.settings.hidden]
            layers: list = []
            for a, b in zip(sizes[:-1], sizes[1:]):
                layers += [nn.Linear(a, b), nn.ReLU()]
            return nn.Sequential(*layers, nn.Linear(sizes[-1], c))
        # LeNet-style CNN for 3x32x32 images
        return nn.Sequential(
            nn.Conv2d(x.shape[1], 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(32 * 5 * 5, 128), nn.ReLU(), nn.Linear(128, c),
        )

    def init_params(self):
        """The common initial model, flat [P]."""
        self.torch.manual_seed(self.seed)
        carries = client_policy(self.preset).carries_buffers
        return self.adapter.flatten_module(self.build_module(), include_buffers=carries).detach().clone()

    def _pair(self, x: np.ndarray, y: np.ndarray) -> tuple:
        return self.torch.from_numpy(x), self.torch.from_numpy(y)

    def new_client(self, data: ClientData, init: Any, seed: int):
        s = self.settings
        client = self.adapter.FedFomoClient(
            self.build_module(),
            self._pair(data.x_val, data.y_val),
            self._pair(data.x_train, data.y_train),
            epochs=s.epochs, lr=s.lr, momentum=s.momentum, batch_size=s.batch_size, seed=seed, preset=self.preset,
        )
        client.set_flat(init)
        client.test_data = self._pair(data.x_test, data.y_test)
        return client

    def as_batch(self, params: Any):
        return params.unsqueeze(0)

    def average(self, models: list, weights: np.ndarray):
        stacked = self.torch.stack(models)
        w = self.torch.as_tensor(weights / weights.sum(), dtype=stacked.dtype)
        return w @ stacked


class SklearnBackend:
    """Clients are :class:`fomo_core.adapters.numpy.MLPClassifierClient` around scikit-learn
    MLPClassifiers (solver "sgd", trained with partial_fit); the table is a NumPy array [N, P]."""

    name = "sklearn"

    def __init__(self, dataset: Dataset, settings: TrainSettings, seed: int, preset: str = "fomo-core"):
        from ..adapters import numpy as adapter

        if dataset.x.ndim != 2:
            raise ValueError(f"backend 'sklearn' needs flat features, got {dataset.name} of shape {dataset.x.shape[1:]}")
        self.adapter = adapter
        self.dataset, self.settings, self.seed = dataset, settings, seed
        self.preset = preset

    def build_estimator(self, seed: int):
        from sklearn.neural_network import MLPClassifier

        s = self.settings
        return MLPClassifier(
            hidden_layer_sizes=s.hidden, solver="sgd", learning_rate_init=s.lr, momentum=s.momentum,
            nesterovs_momentum=False, batch_size=s.batch_size, alpha=0.0, random_state=seed,
        )

    def init_params(self):
        d = self.dataset
        est = self.adapter.initialise_mlp(self.build_estimator(self.seed), d.x, d.y, np.arange(d.num_classes))
        return self.adapter.get_flat_params(est)

    def new_client(self, data: ClientData, init: Any, seed: int):
        s = self.settings
        # partial_fit allocates the parameters (one step on one sample); set_params then loads
        # the common initial model over them
        est = self.adapter.initialise_mlp(self.build_estimator(seed), data.x_train, data.y_train,
                                          np.arange(self.dataset.num_classes))
        client = self.adapter.MLPClassifierClient(
            est, (data.x_val, data.y_val), (data.x_train, data.y_train), epochs=s.epochs, preset=self.preset
        )
        client.set_flat(init)
        client.test_data = (data.x_test, data.y_test)
        return client

    def as_batch(self, params: Any):
        return params[None, :]

    def average(self, models: list, weights: np.ndarray):
        return (weights / weights.sum()).astype(models[0].dtype) @ np.stack(models)


def make_backend(name: str, dataset: Dataset, settings: TrainSettings, seed: int, preset: str = "fomo-core"):
    if name == "torch":
        return TorchBackend(dataset, settings, seed, preset)
    if name == "sklearn":
        return SklearnBackend(dataset, settings, seed, preset)
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
