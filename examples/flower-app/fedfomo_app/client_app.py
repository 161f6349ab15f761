"""ClientApp: each node builds its FedFomo client from its partition; the model's values arrive
with every message (the server holds every client's latest model). With run config
``strategy = "fedavg"`` the same clients answer Flower's FedAvg instead (the baseline)."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fomo_core.adapters.flower import fedfomo_client_app

from . import fedavg
from .task import client_data, make_client, test_split


def client_fn(context: Context):
    rc = context.run_config
    k, d = client_data(rc, context.node_config)
    return make_client(str(rc["framework"]), k, d, int(rc["local-epochs"]), str(rc["global-model"]))


def test_data_fn(context: Context):
    _, d = client_data(context.run_config, context.node_config)
    return test_split(str(context.run_config["framework"]), d)


fedfomo = fedfomo_client_app(client_fn, test_data_fn=test_data_fn)
baseline = fedavg.client_app(client_fn, test_data_fn)
app = ClientApp()


@app.query()
@app.train()
@app.evaluate()
def handle(message: Message, context: Context) -> Message:
    """Every message goes to the ClientApp of the run's strategy."""
    chosen = baseline if context.run_config["strategy"] == "fedavg" else fedfomo
    return chosen(message, context)
