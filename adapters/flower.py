"""Flower adapter: FedFomo as a strategy of Flower's Message API, and ClientApps running the
adapters' FedFomo clients.

Server (a ``ServerApp``):

>>> strategy = FedFomo(m=3, preset="fomo-core", seed=0, state_dir="fedfomo-state")
>>> result = strategy.start(grid=grid, initial_arrays=model_record(Net()), num_rounds=10)
>>> strategy.affinity_matrix, strategy.model_record("3"), strategy.rounds[-1].mean_accuracy

Clients (a ``ClientApp``): build the node's client from its context; the model's values come
from the server with every message. Each node names itself with a stable id (its
``partition-id``, or a ``client-id`` in its node config).

>>> def client_fn(context):
...     train, val = load_partition(context.node_config["partition-id"])
...     return FedFomoClient(Net(), val_data=val, train_data=train, epochs=2)
>>> app = fedfomo_client_app(client_fn, test_data_fn=lambda ctx: load_test(ctx))

The server side (strategy, protocol, layout) imports NumPy and Flower, never torch; the messages'
layout is in ``fomo_core.adapters._flower_protocol``.
"""

from __future__ import annotations

from .._optional import optional_import

with optional_import("fomo_core.adapters.flower"):
    from ._flower_client import (
        DictBatches,
        fedfomo_client_app,
        fedfomo_evaluate,
        fedfomo_train,
        load_model_record,
        model_record,
        node_client_id,
    )
    from ._flower_layout import ModelLayout
    from ._flower_protocol import RecordKeys
    from ._flower_records import FedFomoRound
    from ._flower_strategy import FedFomo

__all__ = [
    "DictBatches",
    "FedFomo",
    "FedFomoRound",
    "ModelLayout",
    "RecordKeys",
    "fedfomo_client_app",
    "fedfomo_train",
    "fedfomo_evaluate",
    "load_model_record",
    "model_record",
    "node_client_id",
]
