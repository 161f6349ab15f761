"""ServerApp: the FedFomo strategy (or, with ``strategy = "fedavg"``, Flower's FedAvg on the same
app: the baseline). With a ``state-dir`` FedFomo checkpoints every round there and a restarted
run resumes from it; ``results.json`` (in ``results-dir``, else ``state-dir``) holds every
round's numbers."""

from __future__ import annotations

import json
import os

from flwr.app import Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fomo_core.adapters.flower import FedFomo, load_model_record, model_record

from . import fedavg
from .task import evaluate, initial_model, make_client, partition, test_split

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    n, framework = int(rc["num-clients"]), str(rc["framework"])
    state_dir = str(rc["state-dir"]) or None
    initial = model_record(initial_model(framework, 0))
    min_nodes = min(int(rc["min-available-nodes"]), n)
    if rc["strategy"] == "fedavg":
        summary = {"strategy": "fedavg", "rounds": fedavg.run(grid, rc, initial, min_nodes)}
    elif rc["strategy"] == "fedfomo":
        summary = run_fedfomo(grid, rc, initial, min_nodes, state_dir)
    else:
        raise ValueError(f"run config 'strategy' must be 'fedfomo' or 'fedavg', got {rc['strategy']!r}")
    folder = str(rc["results-dir"]) or state_dir
    if folder is not None:
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "results.json")
        with open(path + ".tmp", "w") as f:
            json.dump(summary, f)
        os.replace(path + ".tmp", path)


def run_fedfomo(grid: Grid, rc: dict, initial, min_nodes: int, state_dir) -> dict:
    n, framework = int(rc["num-clients"]), str(rc["framework"])
    groups, data = partition(n, int(rc["num-groups"]), int(rc["seed"]), int(rc["samples-per-client"]))
    strategy = FedFomo(
        m=int(rc["candidates"]),
        preset=str(rc["preset"]),
        num_clients=n,
        seed=int(rc["seed"]),
        fraction_train=float(rc["fraction-train"]),
        min_available_nodes=min_nodes,
        min_train_nodes=1,
        node_wait_timeout=float(rc["node-wait-timeout"]),
        identify_all=bool(rc["identify-all"]),
        candidate_dtype=str(rc["candidate-dtype"]),
        state_dir=state_dir,
    )

    def measure(server_round: int, client_id: str, arrays) -> MetricRecord:
        """The server's own measurement: this simulation's server can rebuild every client's
        test split, so no client's report decides the headline."""
        k = int(client_id)
        client = make_client(framework, k, data[k], 1)
        load_model_record(client, arrays)
        loss, accuracy = evaluate(client, test_split(framework, data[k]))
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=int(rc["num-server-rounds"]),
        evaluate_client_fn=measure if rc["server-evaluate"] else None,
    )

    def percent(value) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    for r in strategy.rounds:
        print(
            f"round {r.round}: personalised test accuracy {percent(r.server_accuracy)} (measured by the server), "
            f"reported by the clients: mean {percent(r.mean_accuracy)}, median {percent(r.median_accuracy)}; "
            f"{len(r.scores)} clients updated, {len(r.failed)} failed, "
            f"{r.bytes_down / 1e3:.0f} kB down / {r.bytes_up / 1e3:.0f} kB up, {r.seconds:.1f} s"
        )
    rounds = [
        r.to_json()
        | {"mean_accuracy": r.mean_accuracy, "median_accuracy": r.median_accuracy}
        | {"server_accuracy": r.server_accuracy}
        for r in strategy.rounds
    ]
    summary = {
        "strategy": "fedfomo",
        "rounds": rounds,
        "client_ids": strategy.client_ids,
        "groups": [int(groups[int(c)]) if c is not None and c.isdigit() else None for c in strategy.client_ids],
        "train_metrics": {str(k): dict(v) for k, v in result.train_metrics_clientapp.items()},
    }
    if n <= 200:  # N x N numbers: left out of larger federations' summaries
        summary["affinity"] = strategy.affinity_matrix.tolist()
    return summary
