"""The simulator's model backends, by name: PyTorch modules and scikit-learn MLPClassifiers.

A backend builds the clients (the adapters' FedFomo clients, so the simulator runs exactly the
code a user would) and the server's table of uploaded models [N, P]. The backends live with their
frameworks in ``fomo_core.adapters``; the simulator knows them only as "module:attribute" names,
resolved on first use (as entry points are), so that it imports no framework of its own. A
backend has ``name``; ``init_params()``, the common initial model [P];
``new_client(data, init, seed, global_train=None)``, a client (``global_train``: the (x, y) the
copy of the global model trains on, default its training data) with ``round``/``update``/``train``/``evaluate``/
``get_flat``/``set_flat`` and ``test_data``; ``set_data(client, data)``, new training and
validation data for a client; ``as_batch(params)``, [1, P];
``average(models, weights)``, the weighted mean of flat models; and ``dense_spec()``, the
:class:`fomo_core.DenseSpec` of the clients' model when it is a dense network (else None).
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass

from .data import Dataset

__all__ = ["TrainSettings", "backend_class", "make_backend", "BACKENDS"]

_BACKEND_CLASSES = {
    "torch": "fomo_core.adapters.simulate_torch:TorchBackend",
    "sklearn": "fomo_core.adapters.simulate_sklearn:SklearnBackend",
}
BACKENDS = tuple(_BACKEND_CLASSES)


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


def backend_class(name: str) -> type:
    """The backend class registered under ``name``, imported on first use."""
    if name not in _BACKEND_CLASSES:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    module, _, attribute = _BACKEND_CLASSES[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def make_backend(name: str, dataset: Dataset, settings: TrainSettings, seed: int, preset: str = "fomo-core"):
    """A new backend ``name`` for ``dataset``: the model, the clients and the server's table."""
    return backend_class(name)(dataset, settings, seed, preset)
