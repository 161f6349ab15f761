"""The simulator's model backends, by name: PyTorch modules and scikit-learn MLPClassifiers.

A backend builds the clients (the adapters' FedFomo clients, so the simulator runs exactly the
code a user would) and the server's table of uploaded models [N, P]. Each backend is a module of
this package (``torch_backend.py``, ``sklearn_backend.py``) imported only when it is asked for, so
that the simulator imports a framework only when it runs on it. A backend has ``name``;
``init_params()``, the common initial model [P]; ``new_client(data, init, seed, global_train=None)``,
a client (``global_train``: the (x, y) the copy of the global model trains on, default its
training data) with ``round``/``update``/``train``/``evaluate``/``get_flat``/``set_flat`` and
``test_data``; ``set_data(client, data)``, new training and validation data for a client;
``as_batch(params)``, [1, P]; ``average(models, weights)``, the weighted mean of flat models; and
``dense_spec()``, the :class:`fomo_core.DenseSpec` of the clients' model when it is a dense
network (else None).
"""

from __future__ import annotations

from .data import Dataset
from .train_settings import TrainSettings

__all__ = ["backend_class", "make_backend", "BACKENDS"]

BACKENDS = ("torch", "sklearn")


def backend_class(name: str) -> type:
    """The backend class named ``name``, imported on first use (torch and scikit-learn stay
    optional: only the backend that runs imports its framework)."""
    if name == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend
    if name == "sklearn":
        from .sklearn_backend import SklearnBackend

        return SklearnBackend
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def make_backend(name: str, dataset: Dataset, settings: TrainSettings, seed: int, preset: str = "fomo-core"):
    """A new backend ``name`` for ``dataset``: the model, the clients and the server's table."""
    return backend_class(name)(dataset, settings, seed, preset)
