"""ClientApp: each node builds its FedFomo client from its partition; the model's values arrive
with every message (the server holds every client's latest model)."""

from __future__ import annotations

from flwr.app import Context

from fomo_core.adapters.flower import fedfomo_client_app

from .task import initial_model, partition


def _data(context: Context):
    rc = context.run_config
    _, data = partition(int(rc["num-clients"]), int(rc["num-groups"]), int(rc["seed"]))
    k = int(context.node_config["partition-id"])
    if not 0 <= k < len(data):
        raise ValueError(f"partition-id must be in [0, {len(data)}), got {k}")
    return k, data[k]


def client_fn(context: Context):
    rc = context.run_config
    k, d = _data(context)
    epochs = int(rc["local-epochs"])
    if rc["framework"] == "sklearn":
        from fomo_core.adapters.numpy import MLPClassifierClient

        return MLPClassifierClient(
            initial_model("sklearn", k), (d.x_val, d.y_val), (d.x_train, d.y_train), epochs=epochs
        )
    import torch

    from fomo_core.adapters.torch import FedFomoClient

    torch.set_num_threads(1)  # a tiny model: one CPU per client
    return FedFomoClient(
        initial_model("torch", k),
        val_data=(torch.tensor(d.x_val), torch.tensor(d.y_val)),  # copies: arrays arrive read-only
        train_data=(torch.tensor(d.x_train), torch.tensor(d.y_train)),
        epochs=epochs,
        lr=0.05,
        momentum=0.5,
        batch_size=16,
        seed=k,
    )


def test_data_fn(context: Context):
    _, d = _data(context)
    if context.run_config["framework"] == "sklearn":
        return d.x_test, d.y_test
    import torch

    return torch.tensor(d.x_test), torch.tensor(d.y_test)


app = fedfomo_client_app(client_fn, test_data_fn=test_data_fn)
