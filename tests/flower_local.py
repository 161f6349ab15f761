"""An in-process Flower Grid for the strategy's tests: nodes are ClientApps called directly, with
the message ids, node ids and error replies a SuperLink would give, and hooks to tamper with,
drop or fail replies (the attack tests). Also runnable as a script (the killed-server test):

    python tests/flower_local.py STATE_DIR ROUNDS      # a 4-client scikit-learn federation
"""

from __future__ import annotations

import os
import sys
import uuid
from typing import Callable, Optional

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid

SUPERLINK_NODE_ID = 1


class LocalGrid(Grid):
    """nodes: {node id: partition id}. ``tamper(node, message, reply) -> reply`` may replace any
    reply; ``silent`` nodes never answer; ``unavailable`` nodes get the SuperLink's error reply."""

    def __init__(self, app, nodes: dict, run_config: Optional[dict] = None):
        self.app = app
        self.nodes = dict(nodes)
        self.run_config = dict(run_config or {})
        self.tamper: Optional[Callable] = None
        self.silent: set = set()
        self.unavailable: set = set()
        self.sent: list = []  # (message type, node) of every message pushed
        self.exchanges: list = []  # the message types of each send_and_receive
        self.states: dict = {}

    # Grid's abstract interface (only what the strategy uses does anything)
    def set_run(self, run_id: int) -> None:
        pass

    @property
    def run(self):
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def context(self, node: int) -> Context:
        config = (
            {"partition-id": self.nodes[node]} if isinstance(self.nodes[node], int) else {"client-id": self.nodes[node]}
        )
        return Context(
            run_id=7,
            node_id=node,
            node_config=config,
            state=self.states.setdefault(node, RecordDict()),
            run_config=self.run_config,
        )

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        messages = list(messages)
        self.exchanges.append([m.metadata.message_type for m in messages])
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            node = message.metadata.dst_node_id
            self.sent.append((message.metadata.message_type, node))
            if node in self.silent or node not in self.nodes:
                continue
            if node in self.unavailable:
                reply = Message(Error(code=1, reason="Node Unavailable"), reply_to=message)
                reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
            else:
                try:
                    reply = self.app(message, self.context(node))
                except Exception as e:  # as Flower's runtime: the ClientApp's exception becomes an error reply
                    reply = Message(Error(code=2, reason=f"{type(e).__name__}: {e}"), reply_to=message)
            if self.tamper is not None:
                reply = self.tamper(node, message, reply)
            replies.append(reply)
        return replies


# --- a small scikit-learn federation ----------------------------------------------------------------


def digits_clients(num_clients: int = 4, num_groups: int = 2):
    from fomo_core.simulate.data import load_digits, split_clients
    from fomo_core.simulate.partition import latent_groups

    rng = np.random.default_rng(0)
    digits = load_digits()
    partition = latent_groups(digits.y, num_clients, num_groups, rng)
    return partition, split_clients(digits, partition, rng, val_fraction=0.2, test_fraction=0.3)


def estimator(seed: int):
    from sklearn.neural_network import MLPClassifier

    from fomo_core.adapters.numpy import initialise_mlp

    est = MLPClassifier(
        hidden_layer_sizes=(16,), solver="sgd", learning_rate_init=0.05, batch_size=32, random_state=seed
    )
    return initialise_mlp(est, np.zeros((1, 64), np.float32), np.zeros(1, np.int64), np.arange(10))


def sklearn_app(data, **app_options):
    from fomo_core.adapters.flower import fedfomo_client_app
    from fomo_core.adapters.numpy import MLPClassifierClient

    def client_fn(context: Context):
        k = int(context.node_config.get("partition-id", 0))
        d = data[k]
        return MLPClassifierClient(estimator(k), (d.x_val, d.y_val), (d.x_train, d.y_train), epochs=1)

    def test_data_fn(context: Context):
        d = data[int(context.node_config.get("partition-id", 0))]
        return d.x_test, d.y_test

    return fedfomo_client_app(client_fn, test_data_fn=test_data_fn, **app_options)


def lying_app(data, liar: int, **app_options):
    """The scikit-learn ClientApp, except that client ``liar`` (its partition id) trains honestly
    and then claims accuracy 1.0 and 10**9 training examples in its replies."""
    from flwr.clientapp import ClientApp

    honest = sklearn_app(data, **app_options)
    app = ClientApp()

    @app.query()
    @app.train()
    @app.evaluate()
    def handle(message: Message, context: Context) -> Message:
        reply = honest(message, context)
        if context.node_config.get("partition-id") == liar and "metrics" in reply.content.metric_records:
            metrics = reply.content["metrics"]
            for key, lie in (("accuracy", 1.0), ("num-examples", 10**9)):
                if key in metrics:
                    metrics[key] = lie
        return reply

    return app


def set_task_identity() -> None:
    """Flower >= 1.4x stamps every new Message with the running task's identity, which a real
    runtime sets; the in-process grid sets one the same way."""
    try:
        from flwr.supercore.task_identity import TaskIdentity
    except ImportError:
        return
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 1


def run_federation(state_dir: Optional[str], rounds: int, *, nodes: Optional[dict] = None, seed: int = 0, **options):
    """(strategy, grid) after ``rounds`` rounds of a 4-client federation (M = 2)."""
    from fomo_core.adapters.flower import FedFomo, model_record

    _, data = digits_clients()
    nodes = nodes or {1001: 0, 2002: 1, 3003: 2, 4004: 3}
    grid = LocalGrid(sklearn_app(data), nodes)
    options = {"m": 2, "seed": seed, "num_clients": 4, **options}
    strategy = FedFomo(state_dir=state_dir, **options)
    strategy.start(grid=grid, initial_arrays=model_record(estimator(0)), num_rounds=rounds)
    return strategy, grid


if __name__ == "__main__":
    set_task_identity()
    run_federation(sys.argv[1], int(sys.argv[2]))
