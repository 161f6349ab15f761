"""The simulator's scikit-learn backend (``fomo-core demo --backend sklearn``): the clients are
this package's :class:`~fomo_core.adapters.numpy.MLPClassifierClient`. ``fomo_core.simulate``
finds it by name (``backend="sklearn"``) and never imports it otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fomo_core.simulate.backends import TrainSettings
from fomo_core.simulate.data import ClientData, Dataset

from . import numpy as adapter

__all__ = ["SklearnBackend"]


class SklearnBackend:
    """Clients are :class:`fomo_core.adapters.numpy.MLPClassifierClient` around scikit-learn
    MLPClassifiers (solver "sgd", trained with partial_fit); the table is a NumPy array [N, P]."""

    name = "sklearn"

    def __init__(self, dataset: Dataset, settings: TrainSettings, seed: int, preset: str = "fomo-core"):
        if dataset.x.ndim != 2:
            raise ValueError(
                f"backend 'sklearn' needs flat features, got {dataset.name} of shape {dataset.x.shape[1:]}"
            )
        self.adapter = adapter
        self.dataset, self.settings, self.seed = dataset, settings, seed
        self.preset = preset

    def build_estimator(self, seed: int):
        from sklearn.neural_network import MLPClassifier

        s = self.settings
        return MLPClassifier(
            hidden_layer_sizes=s.hidden,
            solver="sgd",
            learning_rate_init=s.lr,
            momentum=s.momentum,
            nesterovs_momentum=False,
            batch_size=s.batch_size,
            alpha=0.0,
            random_state=seed,
        )

    def _initialised(self):
        d = self.dataset
        return self.adapter.initialise_mlp(self.build_estimator(self.seed), d.x, d.y, np.arange(d.num_classes))

    def dense_spec(self):
        """The :class:`fomo_core.DenseSpec` of the clients' MLPClassifier."""
        return self.adapter.mlp_spec(self._initialised())

    def init_params(self):
        return self.adapter.get_flat_params(self._initialised())

    def new_client(self, data: ClientData, init: Any, seed: int, global_train: Any = None):
        """A client on ``data``; ``global_train``: (x, y) arrays the copy of the global model
        trains on (default: its training data)."""
        s = self.settings
        # partial_fit allocates the parameters (one step on one sample); set_params then loads
        # the common initial model over them
        est = self.adapter.initialise_mlp(
            self.build_estimator(seed), data.x_train, data.y_train, np.arange(self.dataset.num_classes)
        )
        client = self.adapter.MLPClassifierClient(
            est,
            (data.x_val, data.y_val),
            (data.x_train, data.y_train),
            global_train_data=global_train,
            epochs=s.epochs,
            preset=self.preset,
        )
        client.set_flat(init)
        client.test_data = (data.x_test, data.y_test)
        return client

    def set_data(self, client: Any, data: ClientData) -> None:
        """Gives ``client`` new training and validation data (its model and test data stay)."""
        client.val_data = (data.x_val, data.y_val)
        client.train_data = (data.x_train, data.y_train)

    def as_batch(self, params: Any):
        return params[None, :]

    def average(self, models: list, weights: np.ndarray):
        return (weights / weights.sum()).astype(models[0].dtype) @ np.stack(models)
