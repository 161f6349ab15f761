"""The three methods compared by the simulator, with the same clients, data and training budget:
FedFomo (this library), FedAvg (one global model) and Local (no communication).

Every participating client trains ``epochs`` local epochs per round in all three methods;
FedFomo's clients additionally evaluate the candidates on their validation data (never trained on).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ..affinity import Affinity
from ..guard import distance_bound
from .attacks import AttackSettings, attacker_ids, corrupt, diverge, lying_evaluation
from .metrics import MethodRun, RoundRecord

__all__ = ["FederationSettings", "participants", "run_fedfomo", "run_fedavg", "run_local", "METHODS"]


@dataclass(frozen=True)
class FederationSettings:
    """rounds: communication rounds. m: candidates per FedFomo client and round.
    participation: fraction of the clients that train each round (the same draw for every method).
    epsilon, epsilon_decay, decay, affinity_update: the server's Affinity options. seed: everything.
    guard: FedFomo's poisoned-client guard, a multiple of each client's own model norm beyond which
    candidates are rejected (None: off). attack: attackers and diverging clients (see attacks.py)."""

    rounds: int = 20
    m: int = 5
    participation: float = 1.0
    epsilon: float = 0.3
    epsilon_decay: float = 0.05
    decay: str = "linear"
    affinity_update: str = "raw"
    seed: int = 0
    guard: Optional[float] = None
    attack: AttackSettings = field(default_factory=AttackSettings)

    def as_dict(self) -> dict:
        return asdict(self)


def participants(num_clients: int, fraction: float, round: int, seed: int) -> np.ndarray:
    """The clients taking part in ``round``: all of them, or a seeded random ``fraction`` (>= 1)."""
    if fraction >= 1.0:
        return np.arange(num_clients)
    k = max(1, int(round_half_up(fraction * num_clients)))
    rng = np.random.default_rng([seed, 7919, round])
    return np.sort(rng.choice(num_clients, k, replace=False))


def round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def _client_accuracy(backend: Any, client: Any, params: Any) -> float:
    _, acc = client.evaluate(backend.as_batch(params), client.test_data)
    return float(acc[0])


OnRound = Optional[Callable[[str, RoundRecord], None]]


class _Adversity:
    """The attack of a run: who attacks, who diverges, and what they upload."""

    def __init__(self, num_clients: int, fed: FederationSettings):
        self.settings = fed.attack
        self.attackers, self.diverging = attacker_ids(num_clients, fed.attack, fed.seed)
        self.rng = np.random.default_rng([fed.seed, 31337])

    def after_training(self, i: int, client: Any, round: int) -> Any:
        """The model client i uploads after training in ``round`` (its own, or the attack's)."""
        if i in self.diverging and round >= self.settings.diverge_round:
            diverge(client)
        params = client.get_params()
        return corrupt(params, self.settings, self.rng) if i in self.attackers else params

    def liars_among(self, i: int, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` whose loss client i is made to see as 0 (the 'lying' attack)."""
        if self.settings.kind != "lying" or i in self.attackers:
            return np.zeros(0, np.int64)
        return np.flatnonzero(np.isin(ids, self.attackers))


def run_fedfomo(backend: Any, clients: list, init: Any, fed: FederationSettings, on_round: OnRound = None) -> MethodRun:
    """FedFomo: each round a participating client receives the models the server's Affinity picks
    for it (among the clients that have uploaded one), runs its FedFomo round (evaluate, update,
    train) and uploads its model and scores. Uploads become visible the next round."""
    n = len(clients)
    aff = Affinity(n, epsilon=fed.epsilon, epsilon_decay=fed.epsilon_decay, decay=fed.decay,
                   update=fed.affinity_update, seed=fed.seed)
    table = backend.table(n, init)
    uploaded = np.zeros(n, dtype=bool)
    adversity = _Adversity(n, fed)
    run = MethodRun("fedfomo")
    for r in range(fed.rounds):
        part = participants(n, fed.participation, r, fed.seed)
        among = np.flatnonzero(uploaded)
        record = RoundRecord(r, 0.0, [], part.tolist())
        uploads = {}
        taking_part = set(part.tolist())
        after_update = [None if k in taking_part else _client_accuracy(backend, c, c.params) for k, c in enumerate(clients)]
        for i in part:
            ids = aff.select(int(i), fed.m, round=r, among=among)
            if fed.guard is not None:
                clients[i].step_options["max_distance"] = distance_bound(clients[i].params, fed.guard)
            with lying_evaluation(clients[i], adversity.liars_among(int(i), ids)):
                res = clients[i].update(backend.candidates(table, ids, clients[i]))
            aff.update(int(i), ids, res.scores)
            after_update[i] = _client_accuracy(backend, clients[i], clients[i].params)
            record.train_seconds += timed(clients[i].train)
            uploads[int(i)] = adversity.after_training(int(i), clients[i], r)
            record.eval_seconds += res.eval_seconds
            record.step_seconds += res.step_seconds
        record.update_accuracy = float(np.mean(after_update))
        record.affinity = aff.matrix.tolist()
        for i, params in uploads.items():
            table[i] = params
            uploaded[i] = True
        record.client_accuracy = [_client_accuracy(backend, c, c.params) for c in clients]
        record.accuracy = float(np.mean(record.client_accuracy))
        run.rounds.append(record)
        if on_round is not None:
            on_round(run.name, record)
    run.affinity = aff.matrix.copy()
    return run


def run_fedavg(backend: Any, clients: list, init: Any, fed: FederationSettings, on_round: OnRound = None) -> MethodRun:
    """FedAvg: participants start from the global model, train, and the server averages their
    models weighted by training-set size. Every client is tested with the global model."""
    global_params = init
    sizes = np.array([_train_size(c) for c in clients], dtype=np.float64)
    adversity = _Adversity(len(clients), fed)
    run = MethodRun("fedavg")
    for r in range(fed.rounds):
        part = participants(len(clients), fed.participation, r, fed.seed)
        record = RoundRecord(r, 0.0, [], part.tolist())
        models = []
        for i in part:
            clients[i].set_params(global_params)
            record.train_seconds += timed(clients[i].train)
            models.append(adversity.after_training(int(i), clients[i], r))
        t0 = time.perf_counter()
        global_params = backend.average(models, sizes[part])
        record.step_seconds += time.perf_counter() - t0
        record.client_accuracy = [_client_accuracy(backend, c, global_params) for c in clients]
        record.accuracy = float(np.mean(record.client_accuracy))
        run.rounds.append(record)
        if on_round is not None:
            on_round(run.name, record)
    return run


def run_local(backend: Any, clients: list, init: Any, fed: FederationSettings, on_round: OnRound = None) -> MethodRun:
    """Local: every participant trains its own model on its own data; nothing is shared."""
    run = MethodRun("local")
    adversity = _Adversity(len(clients), fed)
    for r in range(fed.rounds):
        part = participants(len(clients), fed.participation, r, fed.seed)
        record = RoundRecord(r, 0.0, [], part.tolist())
        for i in part:
            record.train_seconds += timed(clients[i].train)
            adversity.after_training(int(i), clients[i], r)  # diverging clients break; nothing is sent
        record.client_accuracy = [_client_accuracy(backend, c, c.params) for c in clients]
        record.accuracy = float(np.mean(record.client_accuracy))
        run.rounds.append(record)
        if on_round is not None:
            on_round(run.name, record)
    return run


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _train_size(client: Any) -> int:
    return int(client.train_data[1].shape[0])


METHODS = {"fedfomo": run_fedfomo, "fedavg": run_fedavg, "local": run_local}
