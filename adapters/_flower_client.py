"""ClientApp side of FedFomo on Flower: a received message in, the existing client round, a reply out.

The clients are the adapters' own: :class:`fomo_core.adapters.torch.FedFomoClient` (PyTorch) and
:class:`fomo_core.adapters.numpy.MLPClassifierClient` (scikit-learn). This module only converts
Flower's ArrayRecords to and from their parameters and calls their ``round`` / ``evaluate``.

Clients are stateless between messages: the server sends every client its own latest model with
its candidates (FedFomo's server keeps every client's model anyway), so a node restarted or served
by another simulation actor picks up exactly where it was. Optimizer state does not travel:
FedFomoClient starts a fresh SGD every round anyway; an MLPClassifier's partial_fit momentum
restarts every round.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional

import numpy as np
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from . import _flower_protocol as protocol

__all__ = ["model_record", "fedfomo_train", "fedfomo_evaluate", "fedfomo_client_app"]


def _check_shapes(record: ArrayRecord, expected: dict, role: str) -> None:
    """record must have exactly the keys of ``expected`` {key: shape}, with those shapes."""
    if not isinstance(record, ArrayRecord):
        raise TypeError(f"{role} must be a flwr.app.ArrayRecord, got {type(record).__name__}")
    if set(record.keys()) != set(expected):
        missing = [k for k in expected if k not in record]
        extra = [k for k in record if k not in expected]
        raise ValueError(f"{role} has keys {list(record.keys())}, expected {list(expected)} (missing {missing}, unexpected {extra})")
    for key, shape in expected.items():
        if tuple(record[key].shape) != tuple(shape):
            raise ValueError(f"{role}[{key!r}] has shape {tuple(record[key].shape)}, expected {tuple(shape)}")


def _pair_size(data: Any) -> int:
    """Samples in a data pair (X, y) or a DataLoader-like object with a dataset (0 if unknown)."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return int(len(data[1]))
    dataset = getattr(data, "dataset", None)
    return int(len(dataset)) if dataset is not None and hasattr(dataset, "__len__") else 0


# --- per framework: ArrayRecord <-> the client's parameters ---------------------------------------


class _TorchCodec:
    """FedFomoClient: the model's state_dict is the ArrayRecord (Flower's own torch convention)."""

    @staticmethod
    def record(client: Any) -> ArrayRecord:
        return ArrayRecord(client.module.state_dict())

    @staticmethod
    def shapes(client: Any) -> dict:
        return {k: tuple(t.shape) for k, t in client.module.state_dict().items()}

    @classmethod
    def load(cls, client: Any, record: ArrayRecord, role: str) -> None:
        _check_shapes(record, cls.shapes(client), role)
        # load_state_dict copies in place, so the parameters stay views of the client's flat buffer
        client.module.load_state_dict(record.to_torch_state_dict())

    @classmethod
    def candidates(cls, client: Any, records: list) -> list:
        shapes = cls.shapes(client)
        for k, r in enumerate(records):
            _check_shapes(r, shapes, f"candidate {k}")
        return [r.to_torch_state_dict() for r in records]  # FedFomoClient fills its bank from these

    @staticmethod
    def own_batch(client: Any) -> Any:
        return client.params.unsqueeze(0)

    @staticmethod
    def train_size(client: Any) -> int:
        return _pair_size(client.train_data)


class _MLPCodec:
    """MLPClassifierClient: the ArrayRecord is the layer list [W1, b1, W2, b2, ...] (coefs_ and
    intercepts_ interleaved, keys "0", "1", ... as Flower names a list of arrays), which laid end
    to end is the client's flat layout."""

    @staticmethod
    def layers(estimator: Any) -> list:
        return [a for pair in zip(estimator.coefs_, estimator.intercepts_) for a in pair]

    @classmethod
    def record(cls, client: Any) -> ArrayRecord:
        return ArrayRecord([np.asarray(a) for a in cls.layers(client.estimator)])

    @classmethod
    def shapes(cls, client: Any) -> dict:
        return {str(k): a.shape for k, a in enumerate(cls.layers(client.estimator))}

    @classmethod
    def flat(cls, client: Any, record: ArrayRecord, role: str) -> np.ndarray:
        from ..dense import flat_from_layers
        from .numpy import mlp_spec

        _check_shapes(record, cls.shapes(client), role)
        arrays = [record[str(k)].numpy() for k in range(len(record))]
        return flat_from_layers(mlp_spec(client.estimator), arrays[0::2], arrays[1::2], dtype=client.params.dtype)

    @classmethod
    def load(cls, client: Any, record: ArrayRecord, role: str) -> None:
        client.set_flat(cls.flat(client, record, role))

    @classmethod
    def candidates(cls, client: Any, records: list) -> np.ndarray:
        out = np.empty((len(records), client.params.size), dtype=client.params.dtype)
        for k, r in enumerate(records):
            out[k] = cls.flat(client, r, f"candidate {k}")
        return out

    @staticmethod
    def own_batch(client: Any) -> Any:
        return client.params[None, :]

    @staticmethod
    def train_size(client: Any) -> int:
        return _pair_size(client.train_data)


def _codec(client: Any):
    from .numpy import MLPClassifierClient

    if isinstance(client, MLPClassifierClient):
        return _MLPCodec
    if "torch" in sys.modules:  # never import torch for a scikit-learn federation
        from .torch import FedFomoClient

        if isinstance(client, FedFomoClient):
            return _TorchCodec
    raise TypeError(
        "client must be a fomo_core.adapters.torch.FedFomoClient or a "
        f"fomo_core.adapters.numpy.MLPClassifierClient, got {type(client).__name__}"
    )


def model_record(model: Any) -> ArrayRecord:
    """The ArrayRecord FedFomo exchanges for ``model``: a torch ``nn.Module`` or FedFomoClient
    (its state_dict), a fitted / initialised scikit-learn MLPClassifier or MLPClassifierClient (its
    layers [W1, b1, W2, b2, ...]). Use it for the strategy's ``initial_arrays``."""
    from .numpy import MLPClassifierClient

    if isinstance(model, MLPClassifierClient):
        model = model.estimator
    if hasattr(model, "coefs_") and hasattr(model, "intercepts_"):
        return ArrayRecord([np.asarray(a) for a in _MLPCodec.layers(model)])
    if "torch" in sys.modules:
        import torch

        from .torch import FedFomoClient

        if isinstance(model, FedFomoClient):
            model = model.module
        if isinstance(model, torch.nn.Module):
            return ArrayRecord(model.state_dict())
    raise TypeError(
        "model must be a torch.nn.Module, a scikit-learn MLPClassifier with parameters (fitted, or "
        f"initialise_mlp) or a FedFomoClient / MLPClassifierClient, got {type(model).__name__}"
    )


# --- message handlers ----------------------------------------------------------------------------


def fedfomo_train(message: Message, client: Any, *, partition_id: Optional[int] = None) -> Message:
    """Runs one FedFomo round of ``client`` on a train message and returns the reply.

    Loads the client's model from the message (its baseline), runs ``client.round`` on the
    received candidates (evaluate on its validation data, fomo_step, local training) with the
    fomo_step options the server sent (``norm``, ``eps``), and replies with the new model, the raw
    scores and the round's numbers (see :mod:`._flower_protocol`). ``partition_id`` is reported
    to the server when given (simulations: ``context.node_config["partition-id"]``).
    """
    codec = _codec(client)
    instruction = protocol.read_train_instruction(message.content)
    codec.load(client, instruction.model, f"the message's {protocol.ARRAYS!r} (the client's model)")
    candidates = codec.candidates(client, instruction.candidates)
    options = {key: instruction.config[key] for key in ("norm", "eps") if key in instruction.config}
    if options:
        client.policy = client.policy.replace(**options)
    result = client.round(candidates)
    content = protocol.train_reply(
        codec.record(client),
        result,
        instruction.candidate_clients,
        num_examples=codec.train_size(client),
        partition_id=partition_id,
    )
    return Message(content, reply_to=message)


def fedfomo_evaluate(message: Message, client: Any, data: Any = None) -> Message:
    """Evaluates the model in an evaluate message (the client's own latest model) on ``data``
    (the client's validation data when None) and replies with its loss and accuracy."""
    codec = _codec(client)
    content = message.content
    if protocol.ARRAYS not in content.array_records:
        raise ValueError(f"message content must hold the client's model as ArrayRecord {protocol.ARRAYS!r}, got keys {list(content)}")
    codec.load(client, content.array_records[protocol.ARRAYS], f"the message's {protocol.ARRAYS!r}")
    losses, accuracies = client.evaluate(codec.own_batch(client), data)
    size = _pair_size(client.val_data if data is None else data)
    return Message(protocol.evaluate_reply(losses[0], accuracies[0], num_examples=size), reply_to=message)


def fedfomo_client_app(
    client_fn: Callable[[Context], Any],
    *,
    test_data_fn: Optional[Callable[[Context], Any]] = None,
) -> ClientApp:
    """A ClientApp running FedFomo clients.

    client_fn(context):     the node's client, a FedFomoClient or an MLPClassifierClient (built
                            anew for every message: the model's values come from the server)
    test_data_fn(context):  the data the evaluate messages measure the client's model on (its
                            test split); the client's validation data when None
    The train handler reports ``context.node_config["partition-id"]`` when the node has one.
    """
    if not callable(client_fn):
        raise TypeError(f"client_fn must be callable (context -> client), got {type(client_fn).__name__}")
    if test_data_fn is not None and not callable(test_data_fn):
        raise TypeError(f"test_data_fn must be callable (context -> data) or None, got {type(test_data_fn).__name__}")
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        pid = context.node_config.get("partition-id")
        return fedfomo_train(message, client_fn(context), partition_id=None if pid is None else int(pid))

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        data = None if test_data_fn is None else test_data_fn(context)
        return fedfomo_evaluate(message, client_fn(context), data)

    return app
