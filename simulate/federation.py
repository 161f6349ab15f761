"""The three methods compared by the simulator, with the same clients and data: FedFomo (this
library), FedAvg (one global model) and Local (no communication).

Every participating client trains ``epochs`` local epochs per round in FedAvg and Local; under
the fomo-core preset FedFomo's clients train twice (their model, and a copy of the global model),
under the peer presets once. FedFomo's clients also evaluate the candidates on their validation
data (never trained on, unless the label budget says so: ``fomo_core.simulate.experiment``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .._validate import flag, real
from ..presets import get_preset
from ..round import timed
from ..server import Server
from .attacks import AttackSettings, attacker_ids, corrupt, diverge, lying_evaluation
from .metrics import MethodRun, RoundRecord

__all__ = ["FederationSettings", "participants", "run_fedfomo", "run_fedavg", "run_local", "METHODS"]


@dataclass(frozen=True)
class FederationSettings:
    """rounds: communication rounds. m: candidates per FedFomo client and round.
    participation: fraction of the clients that train each round (the same draw for every method).
    preset: the FedFomo round (fomo_core.PRESETS: client and server policy).
    epsilon, epsilon_decay, affinity_update, affinity_k, free_riders: override the preset's server
    policy when not None (affinity_k: entries kept per affinity row; any k >= clients - 1 keeps
    every entry).
    seed: everything.
    guard, rebalance: override the client policy's poisoned-client guard when not None (how far a
    candidate's layers may move, as a multiple of each layer's norm, ``math.inf`` for no bound;
    whether candidates are rescaled to the client's balance first); the guard also bounds the
    server's contributions to the global model when it keeps one.
    attack: attackers and diverging clients (fomo_core.simulate.attacks)."""

    rounds: int = 20
    m: int = 5
    participation: float = 1.0
    preset: str = "fomo-core"
    epsilon: Optional[float] = None
    epsilon_decay: Optional[float] = None
    affinity_update: Optional[str] = None
    affinity_k: Optional[int] = None
    free_riders: Optional[str] = None
    seed: int = 0
    guard: Optional[float] = None
    rebalance: Optional[bool] = None
    attack: AttackSettings = field(default_factory=AttackSettings)

    def __post_init__(self) -> None:
        get_preset(self.preset)
        if self.guard is not None:
            real(self.guard, "guard", low=0.0, finite=False)
        if self.rebalance is not None:
            flag(self.rebalance, "rebalance")
        if isinstance(self.attack, dict):  # as a grid file (fomo_core.simulate.runner) spells it
            object.__setattr__(self, "attack", AttackSettings(**self.attack))
        if not isinstance(self.attack, AttackSettings):
            raise TypeError(f"attack must be an AttackSettings, got {type(self.attack).__name__}")

    def server_policy(self):
        """The preset's server policy with this run's overrides."""
        overrides = ("epsilon", "epsilon_decay", "affinity_update", "affinity_k", "free_riders")
        changes = {k: getattr(self, k) for k in overrides if getattr(self, k) is not None}
        policy = get_preset(self.preset).server
        if self.guard is not None and policy.global_model != "off":
            changes["global_guard"] = None if math.isinf(self.guard) else self.guard
        return policy.replace(**changes)

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
    """The attack of a run: who attacks, who diverges, who free-rides, and what they upload."""

    def __init__(self, num_clients: int, fed: FederationSettings, backend: Any):
        self.settings = fed.attack
        self.attackers, self.diverging = attacker_ids(num_clients, fed.attack, fed.seed)
        self.rng = np.random.default_rng([fed.seed, 31337])
        self.spec = backend.dense_spec() if fed.attack.kind == "reparam" else None

    def trains(self, i: int) -> bool:
        """Whether client i trains (free riders never do)."""
        return not (self.settings.kind == "free_ride" and i in self.attackers)

    def after_training(self, i: int, client: Any, round: int) -> Any:
        """The model client i uploads after training in ``round`` (its own, or the attack's)."""
        if i in self.diverging and round == self.settings.diverge_round:
            diverge(client)
        params = client.get_flat()
        if i not in self.attackers or not self.trains(i):
            return params
        return corrupt(params, self.settings, self.rng, spec=self.spec, client=client)

    def global_update(self, i: int, update: Any) -> Any:
        """The contribution to the global model client i sends (its own, or the attack's)."""
        # a reparametrisation needs a model; an update is none, so it goes out as it is
        if update is None or i not in self.attackers or self.settings.kind == "reparam":
            return update
        return corrupt(update, self.settings, self.rng)

    def fooled(self, i: int) -> bool:
        """Whether client i sees the lying attackers' models with a loss of 0."""
        return self.settings.kind == "lying" and i not in self.attackers


def run_fedfomo(
    backend: Any,
    clients: list,
    init: Any,
    fed: FederationSettings,
    on_round: OnRound = None,
    data_for_turn: Optional[Callable[[int, int], Any]] = None,
) -> MethodRun:
    """FedFomo with the shared :class:`fomo_core.Server` and the clients' own round (the preset's
    policies): each round a participating client receives the models the server selects for it,
    runs its round (evaluate, weigh, update, train) and uploads its model and scores; uploads
    become visible the next round.

    data_for_turn: ``data_for_turn(k, t)``, client k's data (a ClientData) in the t-th round it
    takes part in (t = 0, 1, ...), set before that round (a rotating validation fold:
    :func:`fomo_core.simulate.data.rotate_validation`); None: the clients keep their data."""
    n = len(clients)
    turns = np.zeros(n, dtype=np.int64)  # rounds each client has taken part in
    server = Server(n, init, preset=fed.preset, m=fed.m, seed=fed.seed, policy=fed.server_policy())
    adversity = _Adversity(n, fed, backend)
    guard = {k: getattr(fed, k) for k in ("guard", "rebalance") if getattr(fed, k) is not None}
    for client in clients:
        client.policy = client.policy.replace(**guard)
    run = MethodRun("fedfomo")
    for r in range(fed.rounds):
        part = participants(n, fed.participation, r, fed.seed)
        record = RoundRecord(r, 0.0, [], part.tolist(), no_positive_weight=0, moved_to_global=0)
        taking_part = set(part.tolist())
        after_update = [
            None if k in taking_part else _client_accuracy(backend, c, c.params) for k, c in enumerate(clients)
        ]
        g = server.global_params()
        g = None if g is None else g.clone() if hasattr(g, "clone") else g.copy()  # this round's, for everyone
        for i in part:
            if data_for_turn is not None:
                backend.set_data(clients[i], data_for_turn(int(i), int(turns[i])))
            turns[i] += 1
            ids, cands = server.candidates(int(i))
            with lying_evaluation(clients[i], adversity.fooled(int(i))):
                g_i = None if server.global_params(int(i)) is None else g  # none for an excluded free rider
                res = clients[i].update(cands, g_i)
                after_update[i] = _client_accuracy(backend, clients[i], clients[i].params)
                if adversity.trains(int(i)):
                    clients[i].train_round(res, g_i)
            record.train_seconds += res.train_seconds
            upload = adversity.after_training(int(i), clients[i], r)
            try:
                server.receive(
                    int(i),
                    upload,
                    ids,
                    res.scores,
                    self_score=res.self_score,
                    global_update=adversity.global_update(int(i), res.global_update),
                    num_examples=_train_size(clients[i]),
                )
            except ValueError:  # a non-finite model (a diverged or poisoned client): refused, the run goes on
                pass
            record.eval_seconds += res.eval_seconds
            record.step_seconds += res.step_seconds
            record.no_positive_weight += int(not np.any(res.weights > 0))
            record.moved_to_global += int(bool(res.global_step))
        server.end_round()
        record.update_accuracy = float(np.mean(after_update))
        record.affinity = server.affinity.matrix.tolist()
        record.client_accuracy = [_client_accuracy(backend, c, c.params) for c in clients]
        record.accuracy = float(np.mean(record.client_accuracy))
        run.rounds.append(record)
        if on_round is not None:
            on_round(run.name, record)
    run.affinity = server.affinity.matrix.copy()
    return run


def run_fedavg(backend: Any, clients: list, init: Any, fed: FederationSettings, on_round: OnRound = None) -> MethodRun:
    """FedAvg: participants start from the global model, train, and the server averages their
    models weighted by training-set size. Every client is tested with the global model."""
    global_params = init
    sizes = np.array([_train_size(c) for c in clients], dtype=np.float64)
    adversity = _Adversity(len(clients), fed, backend)
    run = MethodRun("fedavg")
    for r in range(fed.rounds):
        part = participants(len(clients), fed.participation, r, fed.seed)
        record = RoundRecord(r, 0.0, [], part.tolist())
        models = []
        for i in part:
            clients[i].set_flat(global_params)
            if adversity.trains(int(i)):
                record.train_seconds += timed(clients[i].train)
            models.append(adversity.after_training(int(i), clients[i], r))
        t0 = time.perf_counter()
        global_params = backend.average(models, sizes[part])
        record.step_seconds += time.perf_counter() - t0
        record.client_accuracy = [_client_accuracy(backend, c, global_params) for c in clients]
        record.accuracy = float(np.mean(record.client_accuracy))
        record.update_accuracy = record.accuracy  # the averaged model is the after-update model too
        run.rounds.append(record)
        if on_round is not None:
            on_round(run.name, record)
    return run


def run_local(backend: Any, clients: list, init: Any, fed: FederationSettings, on_round: OnRound = None) -> MethodRun:
    """Local: every participant trains its own model on its own data; nothing is shared."""
    run = MethodRun("local")
    adversity = _Adversity(len(clients), fed, backend)
    for r in range(fed.rounds):
        part = participants(len(clients), fed.participation, r, fed.seed)
        record = RoundRecord(r, 0.0, [], part.tolist())
        # no federated update: "after the update" is the model before this round's training
        record.update_accuracy = float(np.mean([_client_accuracy(backend, c, c.params) for c in clients]))
        for i in part:
            if adversity.trains(int(i)):
                record.train_seconds += timed(clients[i].train)
            adversity.after_training(int(i), clients[i], r)  # diverging clients break; nothing is sent
        record.client_accuracy = [_client_accuracy(backend, c, c.params) for c in clients]
        record.accuracy = float(np.mean(record.client_accuracy))
        run.rounds.append(record)
        if on_round is not None:
            on_round(run.name, record)
    return run


def _train_size(client: Any) -> int:
    return int(client.train_data[1].shape[0])


METHODS = {"fedfomo": run_fedfomo, "fedavg": run_fedavg, "local": run_local}
