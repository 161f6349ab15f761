"""ServerApp: the FedFomo strategy. With a ``state-dir`` it checkpoints every round there and a
restarted run resumes from it; ``results.json`` there holds every round's numbers."""

from __future__ import annotations

import json
import os

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fomo_core.adapters.flower import FedFomo, model_record

from .task import initial_model, partition

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    n = int(rc["num-clients"])
    state_dir = str(rc["state-dir"]) or None
    strategy = FedFomo(
        m=int(rc["candidates"]),
        preset=str(rc["preset"]),
        num_clients=n,
        seed=int(rc["seed"]),
        fraction_train=float(rc["fraction-train"]),
        min_available_nodes=n,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        candidate_dtype=str(rc["candidate-dtype"]),
        state_dir=state_dir,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=model_record(initial_model(str(rc["framework"]), 0)),
        num_rounds=int(rc["num-server-rounds"]),
    )
    for r in strategy.rounds:
        acc = r.mean_accuracy
        print(
            f"round {r.round}: mean personalised test accuracy {'n/a' if acc is None else f'{100 * acc:.1f}%'}, "
            f"{len(r.scores)} clients updated, {len(r.failed)} failed, "
            f"{r.bytes_down / 1e3:.0f} kB down / {r.bytes_up / 1e3:.0f} kB up, {r.seconds:.1f} s"
        )
    if state_dir is not None:
        groups, _ = partition(n, int(rc["num-groups"]), int(rc["seed"]))
        summary = {
            "rounds": [r.to_json() | {"mean_accuracy": r.mean_accuracy} for r in strategy.rounds],
            "client_ids": strategy.client_ids,
            "groups": [int(groups[int(c)]) if c is not None and c.isdigit() else None for c in strategy.client_ids],
            "affinity": strategy.affinity_matrix.tolist(),
            "train_metrics": {str(k): dict(v) for k, v in result.train_metrics_clientapp.items()},
        }
        path = os.path.join(state_dir, "results.json")
        with open(path + ".tmp", "w") as f:
            json.dump(summary, f)
        os.replace(path + ".tmp", path)
