"""Baselines beside FedFomo, FedAvg and Local, with the same clients, data and training budget:

FedAvg + local fine-tuning ("fedavg_ft")
    FedAvg's rounds; then every participant fine-tunes a copy of the new global model on its own
    training data (``epochs`` local epochs, not uploaded) and is tested with it. After the update:
    the global model; after local training: the fine-tuned one.
Per-group FedAvg oracle ("oracle")
    FedAvg run separately inside every latent group, as if the groups were known: the ceiling a
    personalisation method that finds its group can reach. Needs a partition with groups.

Both share one loop: FedAvg over *cohorts* of clients (one cohort of everyone, or one per group).
"""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np

from ..round import timed
from .federation import FederationSettings, OnRound, _client_accuracy, _train_size, participants
from .metrics import MethodRun, RoundRecord

__all__ = ["run_fedavg_finetune", "run_group_oracle", "BASELINES"]


def _cohort_averaging(
    name: str,
    backend: Any,
    clients: list,
    init: Any,
    fed: FederationSettings,
    on_round: OnRound,
    cohort: np.ndarray,
    fine_tune: bool,
) -> MethodRun:
    """FedAvg inside each cohort (``cohort[k]``: the cohort of client k): participants start from
    their cohort's model, train, and the cohort's model becomes their size-weighted average. With
    ``fine_tune`` every participant then trains a copy of its cohort's new model and keeps it."""
    n = len(clients)
    sizes = np.array([_train_size(c) for c in clients], dtype=np.float64)
    models = {int(c): init for c in np.unique(cohort)}
    personal: list = [init] * n  # what each client is tested with after local training
    run = MethodRun(name)
    for r in range(fed.rounds):
        part = participants(n, fed.participation, r, fed.seed)
        record = RoundRecord(r, 0.0, [], part.tolist())
        for c in models:
            members = part[cohort[part] == c]
            if members.size == 0:
                continue
            trained = []
            for i in members:
                clients[i].set_flat(models[c])
                record.train_seconds += timed(clients[i].train)
                trained.append(clients[i].get_flat())
            t0 = time.perf_counter()
            models[c] = backend.average(trained, sizes[members])
            record.step_seconds += time.perf_counter() - t0
        after_update = [_client_accuracy(backend, clients[k], models[int(cohort[k])]) for k in range(n)]
        record.update_accuracy = float(np.mean(after_update))
        if fine_tune:
            for i in part:
                clients[i].set_flat(models[int(cohort[i])])
                record.train_seconds += timed(clients[i].train)
                personal[i] = clients[i].get_flat()
            record.client_accuracy = [_client_accuracy(backend, c, p) for c, p in zip(clients, personal)]
        else:
            record.client_accuracy = after_update
        record.accuracy = float(np.mean(record.client_accuracy))
        run.rounds.append(record)
        if on_round is not None:
            on_round(run.name, record)
    return run


def run_fedavg_finetune(
    backend: Any,
    clients: list,
    init: Any,
    fed: FederationSettings,
    on_round: OnRound = None,
    groups: Optional[np.ndarray] = None,
) -> MethodRun:
    """FedAvg + local fine-tuning: one global model; each participant is tested with its own
    fine-tuned copy (non-participants keep the copy they last fine-tuned)."""
    return _cohort_averaging(
        "fedavg_ft", backend, clients, init, fed, on_round, np.zeros(len(clients), dtype=np.int64), fine_tune=True
    )


def run_group_oracle(
    backend: Any,
    clients: list,
    init: Any,
    fed: FederationSettings,
    on_round: OnRound = None,
    groups: Optional[np.ndarray] = None,
) -> MethodRun:
    """The per-group FedAvg oracle: one FedAvg per latent group (``groups`` [N], the partition's)."""
    if groups is None:
        raise ValueError("method 'oracle' needs a partition with latent groups (groups, pathological or clusters)")
    groups = np.asarray(groups, dtype=np.int64)
    if groups.shape != (len(clients),):
        raise ValueError(f"groups must have one entry per client ({len(clients)}), got shape {groups.shape}")
    return _cohort_averaging("oracle", backend, clients, init, fed, on_round, groups, fine_tune=False)


# run_experiment passes the partition's groups to these (keyword ``groups``)
BASELINES = {"fedavg_ft": run_fedavg_finetune, "oracle": run_group_oracle}
