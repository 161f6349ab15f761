"""The baseline (run config ``strategy = "fedavg"``): Flower's own FedAvg on the same data, models
and local training, one global model. The fomo-core benchmark of Flower at many clients runs both
on the same app."""

from __future__ import annotations

import time

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fomo_core.adapters.flower import load_model_record, model_record

from .task import evaluate


def client_app(client_fn, test_data_fn) -> ClientApp:
    """A ClientApp answering FedAvg: train the global model locally, or evaluate it on the
    client's test split (the same ``client_fn`` and ``test_data_fn`` as FedFomo's ClientApp)."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        client = client_fn(context)
        load_model_record(client, message.content["arrays"])
        client.train()
        metrics = MetricRecord({"num-examples": len(client.train_data[1])})
        return Message(RecordDict({"arrays": model_record(client), "metrics": metrics}), reply_to=message)

    @app.evaluate()
    def evaluate_global(message: Message, context: Context) -> Message:
        client = client_fn(context)
        load_model_record(client, message.content["arrays"])
        data = test_data_fn(context)
        loss, accuracy = evaluate(client, data)
        metrics = MetricRecord({"loss": loss, "accuracy": accuracy, "num-examples": len(data[1])})
        return Message(RecordDict({"metrics": metrics}), reply_to=message)

    return app


def run(grid: Grid, run_config: dict, initial_arrays, min_available_nodes: int) -> list:
    """FedAvg's rounds: [{"round", "started", "seconds", "mean_accuracy"}], the
    accuracy being FedAvg's (the global model on the evaluated clients' test data, weighted by
    their sizes)."""
    fraction = float(run_config["fraction-train"])
    strategy = FedAvg(
        fraction_train=fraction,
        fraction_evaluate=fraction,  # as many evaluations as FedFomo's (its training clients)
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=min_available_nodes,
    )
    ends: list = []

    def round_end(server_round: int, arrays) -> None:  # Flower calls it before round 1 and after each
        ends.append(time.time())

    result = strategy.start(
        grid=grid, initial_arrays=initial_arrays, num_rounds=int(run_config["num-server-rounds"]), evaluate_fn=round_end
    )
    rounds = []
    for r in range(1, len(ends)):
        metrics = result.evaluate_metrics_clientapp.get(r)
        rounds.append(
            {
                "round": r,
                "started": ends[r - 1],
                "seconds": ends[r] - ends[r - 1],
                "mean_accuracy": None if metrics is None else float(metrics["accuracy"]),
            }
        )
    return rounds
