"""ClientApp side of FedFomo on Flower: a received message in, the client round, a reply out.

The clients are the adapters' own: :class:`fomo_core.adapters.torch.FedFomoClient` (PyTorch) and
:class:`fomo_core.adapters.numpy.MLPClassifierClient` (scikit-learn), or any object with the
same interface (``get_flat``, ``set_flat``, ``round``, ``evaluate``: e.g. one built on
:func:`fomo_core.round.federate` with its own training and evaluation). This module converts
Flower's ArrayRecords to and from their parameters (decoding 16-bit candidates) and calls their
``round`` / ``evaluate``.

Clients are stateless between messages: the server sends every client its own latest model with
its candidates, so a node restarted or served by another simulation actor picks up exactly where
it was. Each node says who it is with a stable id: ``client-id`` from its node config, else its
``partition-id`` (what Flower's simulation and ``--node-config "partition-id=..."`` give).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from . import _flower_protocol as protocol
from ._flower_layout import ModelLayout

__all__ = ["DictBatches", "model_record", "node_client_id", "fedfomo_train", "fedfomo_evaluate", "fedfomo_client_app"]


class DictBatches:
    """(X, y) batches from batches that are mappings, the flwr-datasets convention
    (``{"img": ..., "label": ...}`` from a DataLoader over a partition): what the FedFomo clients
    take as ``val_data`` / ``train_data``. Re-iterable; ``dataset`` is the loader's.

    >>> FedFomoClient(Net(), val_data=DictBatches(val_loader, "img", "label"), ...)
    """

    def __init__(self, batches, features: str = "img", label: str = "label"):
        if not hasattr(batches, "__iter__"):
            raise TypeError(f"batches must be an iterable of mappings (a DataLoader), got {type(batches).__name__}")
        for name, key in (("features", features), ("label", label)):
            if not isinstance(key, str):
                raise TypeError(f"{name} must be a key (str), got {type(key).__name__}")
        self.batches, self.features, self.label = batches, features, label
        self.dataset = getattr(batches, "dataset", None)

    def __iter__(self):
        for k, batch in enumerate(self.batches):
            try:
                yield batch[self.features], batch[self.label]
            except (KeyError, TypeError, IndexError):
                keys = list(batch.keys()) if hasattr(batch, "keys") else type(batch).__name__
                raise ValueError(
                    f"batch {k} has no {self.features!r} and {self.label!r} entries (it has {keys})"
                ) from None

    def __len__(self) -> int:
        return len(self.batches)


def _data_size(data: Any) -> int:
    """Samples in a data pair (X, y), a mapping of columns, or a DataLoader-like object with a
    dataset (0 if unknown)."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return int(len(data[1]))
    if isinstance(data, dict) and data:
        return int(len(next(iter(data.values()))))
    dataset = getattr(data, "dataset", None)
    return int(len(dataset)) if dataset is not None and hasattr(dataset, "__len__") else 0


# --- per framework: ArrayRecord <-> the client's parameters ---------------------------------------


class _TorchCodec:
    """FedFomoClient: the model's state_dict is the ArrayRecord (Flower's own torch convention)."""

    @staticmethod
    def record(client: Any) -> ArrayRecord:
        return ArrayRecord(client.module.state_dict())

    @staticmethod
    def from_arrays(client: Any, layout: ModelLayout, arrays: list) -> Any:
        import torch

        return {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in zip(layout.keys, arrays)}

    @staticmethod
    def load(client: Any, model: Any) -> None:
        # load_state_dict copies in place, so the parameters stay views of the client's flat buffer
        client.module.load_state_dict(model)

    @staticmethod
    def stack(client: Any, models: list) -> Any:
        return models  # FedFomoClient fills its candidate bank from state_dicts

    @staticmethod
    def own_batch(client: Any) -> Any:
        return client.params.unsqueeze(0)


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

    @staticmethod
    def from_arrays(client: Any, layout: ModelLayout, arrays: list) -> np.ndarray:
        from ..dense import flat_from_layers
        from .numpy import mlp_spec

        return flat_from_layers(mlp_spec(client.estimator), arrays[0::2], arrays[1::2], dtype=client.params.dtype)

    @staticmethod
    def load(client: Any, model: Any) -> None:
        client.set_flat(model)

    @staticmethod
    def stack(client: Any, models: list) -> np.ndarray:
        out = np.empty((len(models), client.params.size), dtype=client.params.dtype)
        for k, flat in enumerate(models):
            out[k] = flat
        return out

    @staticmethod
    def own_batch(client: Any) -> Any:
        return client.params[None, :]


class _FlatCodec:
    """Any other client with the FedFomo client interface: ``get_flat()`` -> [P], ``set_flat(flat)``,
    ``round(candidates [M, P])`` -> a round result (:class:`fomo_core.ClientRound`'s fields),
    ``evaluate(models [K, P], data=None)`` -> (losses [K], accuracies [K]) and ``train_data`` /
    ``val_data``. Its model travels as one flat array ``"flat"``."""

    @staticmethod
    def record(client: Any) -> ArrayRecord:
        return ArrayRecord({"flat": Array(np.array(_numpy(client.get_flat())))})

    @staticmethod
    def from_arrays(client: Any, layout: ModelLayout, arrays: list) -> np.ndarray:
        return arrays[0]

    @staticmethod
    def load(client: Any, model: Any) -> None:
        client.set_flat(model)

    @staticmethod
    def stack(client: Any, models: list) -> np.ndarray:
        return np.stack(models) if models else np.empty((0, np.size(_numpy(client.get_flat()))), np.float32)

    @staticmethod
    def own_batch(client: Any) -> Any:
        return _numpy(client.get_flat())[None, :]


# The record keys of Flower's defaults (an immutable value, shared by every call)
DEFAULT_KEYS = protocol.RecordKeys()

_CLIENT_INTERFACE = ("get_flat", "set_flat", "round", "evaluate")


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _codec(client: Any):
    from .numpy import MLPClassifierClient

    if isinstance(client, MLPClassifierClient):
        return _MLPCodec
    if "torch" in sys.modules:  # never import torch for a scikit-learn federation
        from .torch import FedFomoClient

        if isinstance(client, FedFomoClient):
            return _TorchCodec
    if all(callable(getattr(client, name, None)) for name in _CLIENT_INTERFACE):
        return _FlatCodec
    raise TypeError(
        "client must be a fomo_core.adapters.torch.FedFomoClient, a fomo_core.adapters.numpy.MLPClassifierClient "
        f"or have the FedFomo client interface ({', '.join(_CLIENT_INTERFACE)}), got {type(client).__name__}"
    )


def model_record(model: Any) -> ArrayRecord:
    """The ArrayRecord FedFomo exchanges for ``model``: a torch ``nn.Module`` or FedFomoClient
    (its state_dict), a fitted / initialised scikit-learn MLPClassifier or MLPClassifierClient (its
    layers [W1, b1, W2, b2, ...]), or any other client with the FedFomo client interface (its flat
    model, one array). Use it for the strategy's ``initial_arrays``."""
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
    if all(callable(getattr(model, name, None)) for name in _CLIENT_INTERFACE):
        return _FlatCodec.record(model)
    raise TypeError(
        "model must be a torch.nn.Module, a scikit-learn MLPClassifier with parameters (fitted, or "
        f"initialise_mlp), a FedFomoClient / MLPClassifierClient or a client with {_CLIENT_INTERFACE}, "
        f"got {type(model).__name__}"
    )


def load_model_record(client: Any, record: ArrayRecord) -> None:
    """Sets ``client``'s model to ``record``, an ArrayRecord of the client's own layout (as
    :func:`model_record` gives it), checked as any model from the network (dtypes, shapes,
    bytes, finite values). For ClientApps of other strategies (a FedAvg baseline)."""
    _load_record(client, record, "record")


def _load_record(client: Any, record: ArrayRecord, role: str) -> None:
    codec = _codec(client)
    codec.load(client, _decode(client, codec, ModelLayout.of(codec.record(client)), record, role))


def node_client_id(context: Context) -> str:
    """The node's stable client id: ``client-id`` from its node config, else ``partition-id``."""
    config = context.node_config
    for key in ("client-id", "partition-id"):
        if key in config:
            return protocol.check_client_id(config[key], f"node_config[{key!r}]")
    raise ValueError(
        "the node config has neither 'client-id' nor 'partition-id': start the SuperNode with "
        '--node-config "partition-id=<k>" (or client-id=<name>), or pass client_id_fn'
    )


def _decode(
    client: Any, codec: Any, layout: ModelLayout, record: ArrayRecord, role: str, transport: str = "float32"
) -> Any:
    flat = layout.flat_from_record(record, role, transport=transport)
    return codec.from_arrays(client, layout, layout.arrays(flat))


LAST_UPDATE_KEY = "fedfomo.last-update"


def _restore_last_update(client: Any, state: Any) -> None:
    """Presets whose baseline is the model at the client's last federated update (PFLlib's) need
    that model across rounds; a ClientApp is rebuilt for every message, so it lives in the node's
    Context.state. Without one saved yet, the model just received is the baseline."""
    last = getattr(client, "last_update", None)
    if last is None:
        return
    saved = None if state is None else state.array_records.get(LAST_UPDATE_KEY)
    values = client.params if saved is None else saved["0"].numpy()
    if hasattr(last, "copy_"):
        import torch

        with torch.no_grad():
            last.copy_(torch.as_tensor(np.asarray(values) if saved is not None else values))
    else:
        last[...] = np.asarray(values)


def _save_last_update(client: Any, state: Any) -> None:
    last = getattr(client, "last_update", None)
    if last is not None and state is not None:
        values = last.detach().cpu().numpy() if hasattr(last, "detach") else np.asarray(last)
        state[LAST_UPDATE_KEY] = ArrayRecord([np.array(values)])


def _evaluate(client: Any, codec: Any, data: Any) -> protocol.Evaluation:
    losses, accuracies = client.evaluate(codec.own_batch(client), data)
    size = _data_size(client.val_data if data is None else data)
    return protocol.Evaluation(float(np.asarray(losses)[0]), float(np.asarray(accuracies)[0]), size)


# --- message handlers ----------------------------------------------------------------------------


def fedfomo_train(
    message: Message,
    client: Any,
    *,
    client_id: str,
    test_data: Any = None,
    keys: protocol.RecordKeys = DEFAULT_KEYS,
    state: Any = None,
) -> Message:
    """Runs one FedFomo round of ``client`` on a train message and returns the reply.

    Loads the client's model from the message (its baseline), decodes the candidates (16-bit ones
    widened), runs ``client.round`` (evaluate on its validation data, fomo_step with the server's
    ``norm``/``eps``, local training) and, when the server asks, evaluates the new model on
    ``test_data`` (the validation data when None) in the same reply. ``state`` (the node's
    ``context.state``) keeps what the client's preset needs between rounds (PFLlib's baseline).
    """
    codec = _codec(client)
    instruction = protocol.read_train_instruction(message.content, keys)
    own = codec.record(client)
    layout = ModelLayout.of(own)
    codec.load(client, _decode(client, codec, layout, instruction.model, f"the message's {keys.arrays!r}"))
    _restore_last_update(client, state)
    candidates = codec.stack(
        client,
        [
            _decode(client, codec, layout, r, f"candidate {k}", instruction.transport)
            for k, r in enumerate(instruction.candidates)
        ],
    )
    options = {key: instruction.config[key] for key in ("norm", "eps") if key in instruction.config}
    if options:
        client.policy = client.policy.replace(**options)
    result = client.round(candidates)
    _save_last_update(client, state)
    evaluation = _evaluate(client, codec, test_data) if instruction.evaluate else None
    content = protocol.train_reply(
        codec.record(client),
        result,
        instruction.candidate_clients,
        keys=keys,
        client_id=client_id,
        num_examples=_data_size(client.train_data),
        evaluation=evaluation,
    )
    return Message(content, reply_to=message)


def fedfomo_evaluate(
    message: Message, client: Any, *, client_id: str, data: Any = None, keys: protocol.RecordKeys = DEFAULT_KEYS
) -> Message:
    """Evaluates the model in an evaluate message (the client's own latest model) on ``data``
    (the client's validation data when None) and replies with its loss and accuracy."""
    content = message.content
    if keys.arrays not in content.array_records:
        raise ValueError(
            f"message content must hold the client's model as ArrayRecord {keys.arrays!r}, got keys {list(content)}"
        )
    _load_record(client, content.array_records[keys.arrays], f"the message's {keys.arrays!r}")
    return Message(
        protocol.evaluate_reply(_evaluate(client, _codec(client), data), keys=keys, client_id=client_id),
        reply_to=message,
    )


def fedfomo_client_app(
    client_fn: Callable[[Context], Any],
    *,
    test_data_fn: Optional[Callable[[Context], Any]] = None,
    client_id_fn: Callable[[Context], Any] = node_client_id,
    arrayrecord_key: str = "arrays",
    configrecord_key: str = "config",
    metricrecord_key: str = "metrics",
) -> ClientApp:
    """A ClientApp running FedFomo clients.

    client_fn(context):     the node's client, a FedFomoClient or an MLPClassifierClient (built
                            anew for every message: the model's values come from the server)
    test_data_fn(context):  the data the client's evaluations measure its model on (its test
                            split); the client's validation data when None
    client_id_fn(context):  the node's stable id (default: :func:`node_client_id`)
    *_key:                  record names, as the strategy's
    """
    if not callable(client_fn):
        raise TypeError(f"client_fn must be callable (context -> client), got {type(client_fn).__name__}")
    if test_data_fn is not None and not callable(test_data_fn):
        raise TypeError(f"test_data_fn must be callable (context -> data) or None, got {type(test_data_fn).__name__}")
    if not callable(client_id_fn):
        raise TypeError(f"client_id_fn must be callable (context -> id), got {type(client_id_fn).__name__}")
    keys = protocol.RecordKeys(arrayrecord_key, configrecord_key, metricrecord_key)
    app = ClientApp()

    def test_data(context: Context) -> Any:
        return None if test_data_fn is None else test_data_fn(context)

    @app.query()
    def query(message: Message, context: Context) -> Message:
        if not protocol.is_identify(message.content, keys):
            raise ValueError(f"unknown query: {list(message.content)}")
        return Message(protocol.identify_reply(protocol.check_client_id(client_id_fn(context)), keys), reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        cid = protocol.check_client_id(client_id_fn(context))
        return fedfomo_train(
            message, client_fn(context), client_id=cid, test_data=test_data(context), keys=keys, state=context.state
        )

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        cid = protocol.check_client_id(client_id_fn(context))
        return fedfomo_evaluate(message, client_fn(context), client_id=cid, data=test_data(context), keys=keys)

    return app
