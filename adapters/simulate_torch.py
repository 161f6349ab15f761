"""The simulator's PyTorch backend (``fomo-core demo --backend torch``): the clients are this
package's :class:`~fomo_core.adapters.torch.FedFomoClient`, so the simulator runs exactly the code
a user would. ``fomo_core.simulate`` finds it by name (``backend="torch"``) and never imports it
otherwise; the methods below are all the federation loops call.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fomo_core.presets import client_policy
from fomo_core.simulate.backends import TrainSettings
from fomo_core.simulate.data import ClientData, Dataset

from . import torch as adapter

__all__ = ["TorchBackend"]


class TorchBackend:
    """Clients are :class:`fomo_core.adapters.torch.FedFomoClient` around an MLP (flat features)
    or a small CNN (images [3, 32, 32]); the server's table is a float32 tensor [N, P]."""

    name = "torch"

    def __init__(self, dataset: Dataset, settings: TrainSettings, seed: int, preset: str = "fomo-core"):
        self.torch, self.adapter = adapter.torch, adapter
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
            nn.Conv2d(x.shape[1], 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 5 * 5, 128),
            nn.ReLU(),
            nn.Linear(128, c),
        )

    def dense_spec(self):
        """The :class:`fomo_core.DenseSpec` of the clients' MLP (None for the CNN)."""
        module = self.build_module()
        return self.adapter.dense_spec(module) if self.dataset.x.ndim == 2 else None

    def init_params(self):
        """The common initial model, flat [P]."""
        self.torch.manual_seed(self.seed)
        carries = client_policy(self.preset).carries_buffers
        return self.adapter.flatten_module(self.build_module(), include_buffers=carries).detach().clone()

    def _pair(self, x: np.ndarray, y: np.ndarray) -> tuple:
        return self.torch.from_numpy(x), self.torch.from_numpy(y)

    def new_client(self, data: ClientData, init: Any, seed: int, global_train: Any = None):
        """A client on ``data``; ``global_train``: (x, y) arrays the copy of the global model
        trains on (default: its training data)."""
        s = self.settings
        client = self.adapter.FedFomoClient(
            self.build_module(),
            self._pair(data.x_val, data.y_val),
            self._pair(data.x_train, data.y_train),
            global_train_data=None if global_train is None else self._pair(*global_train),
            epochs=s.epochs,
            lr=s.lr,
            momentum=s.momentum,
            batch_size=s.batch_size,
            seed=seed,
            preset=self.preset,
        )
        client.set_flat(init)
        client.test_data = self._pair(data.x_test, data.y_test)
        return client

    def set_data(self, client: Any, data: ClientData) -> None:
        """Gives ``client`` new training and validation data (its model and test data stay)."""
        client.val_data = self._pair(data.x_val, data.y_val)
        client.train_data = self._pair(data.x_train, data.y_train)

    def as_batch(self, params: Any):
        return params.unsqueeze(0)

    def average(self, models: list, weights: np.ndarray):
        stacked = self.torch.stack(models)
        w = self.torch.as_tensor(weights / weights.sum(), dtype=stacked.dtype)
        return w @ stacked
