"""The FedFomo strategy for Flower's Message API (``flwr.serverapp.strategy.Strategy``).

There is no global model: the server keeps every client's latest model and an affinity matrix
(:class:`fomo_core.Affinity`), sends each sampled client its own model with M candidates picked
from its row (epsilon-greedy top-M), and adds the scores the client returns to that row. The
choice of candidates and the affinity update are the Affinity's; this module samples nodes, maps
Flower node ids to dense client indices, writes and reads the messages (:mod:`._flower_protocol`)
and records what happened.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ..affinity import Affinity
from ..presets import Preset, get_preset
from . import _flower_protocol as protocol

__all__ = ["FedFomo", "FedFomoRound"]

_log = logging.getLogger("flwr")  # Flower's logger: our lines appear with its own


@dataclass
class FedFomoRound:
    """What happened in one server round (clients by dense index, see ``FedFomo.node_ids``).

    candidates:      {client: candidate clients sent to it} for the clients sampled for training
    scores, weights: {client: [M] first-order scores / normalised weights it returned}
    baseline_loss:   {client: validation loss of its model before the update}
    failed:          {client: why its train reply was not used (error, invalid content, none)}
    affinity:        [N, N] the affinity matrix after this round's updates (None without
                     ``affinity_history``)
    loss, accuracy:  {client: evaluation of its own latest model on its evaluation data}
    evaluate_failed: {client: why its evaluate reply was not used}
    """

    round: int
    candidates: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)
    baseline_loss: dict = field(default_factory=dict)
    failed: dict = field(default_factory=dict)
    affinity: Optional[np.ndarray] = None
    loss: dict = field(default_factory=dict)
    accuracy: dict = field(default_factory=dict)
    evaluate_failed: dict = field(default_factory=dict)

    @property
    def mean_accuracy(self) -> Optional[float]:
        """Mean personalised accuracy over the clients evaluated this round (None if none)."""
        return float(np.mean(list(self.accuracy.values()))) if self.accuracy else None


def _count(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(value).__name__}")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


class FedFomo(Strategy):
    """Personalised federated learning with first-order model optimisation (Zhang et al., ICLR
    2021) as a Flower strategy. Pair it with :func:`fomo_core.adapters.flower.fedfomo_client_app`.

    Parameters
    ----------
    m : int (default: 5)
        Candidates per client and round (fewer while fewer clients have uploaded a model).
    preset : str or fomo_core.Preset (default: "fomo-core")
        Server-side choices (selection, epsilon schedule, affinity init and update, whether a
        client is its own candidate) and the fomo_step options ``norm`` / ``eps`` sent to the
        clients; see ``fomo_core.PRESETS``.
    epsilon, epsilon_decay : float, optional
        Replace the preset's exploration probability at round 1 and its linear decay per round
        (epsilon-greedy presets only).
    fraction_train, fraction_evaluate : float (default: 1.0)
        Fraction of the connected nodes sampled for training / evaluation each round (at least
        ``min_train_nodes`` / ``min_evaluate_nodes``); 0 skips that phase.
    min_train_nodes, min_evaluate_nodes, min_available_nodes : int (default: 2)
        As in Flower's FedAvg: the minimum sampled, and the minimum connected before sampling.
    num_clients : int, optional
        Capacity of the affinity matrix: nodes connecting beyond it are never sampled. By default
        there is no cap: the matrix starts with the nodes connected at the first sampling and grows
        (Affinity.grow) as nodes join later.
    seed : int, optional
        Seeds node sampling and the Affinity's exploration and tie-breaking.
    affinity_history : bool (default: True)
        Keep a copy of the affinity matrix in every round's record (N * N * 8 bytes a round).

    State (read it after ``start``)
    -------------------------------
    affinity_matrix : [N, N] copy of the affinity matrix; ``affinity`` the Affinity itself
    node_ids        : node_ids[i] is the Flower node id of client i
    models          : {client: its latest uploaded ArrayRecord}, the personalised models
    partition_ids   : {client: the partition-id its node reported} (simulations)
    rounds          : one :class:`FedFomoRound` per server round

    Every client's model starts as ``initial_arrays``; uploads become candidates from the next
    round on. There is no global model: ``Result.arrays`` stays empty and a centralised
    ``evaluate_fn`` given to ``start`` only ever sees ``initial_arrays``; the personalised models
    are in ``models``. The preset's ``include_buffers`` / ``update_buffers`` are the client's business
    (the adapters' clients weigh and update the parameters).
    """

    def __init__(
        self,
        *,
        m: int = 5,
        preset: Union[str, Preset] = "fomo-core",
        epsilon: Optional[float] = None,
        epsilon_decay: Optional[float] = None,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        num_clients: Optional[int] = None,
        seed: Optional[int] = None,
        affinity_history: bool = True,
    ) -> None:
        self.m = _count(m, "m", 1)
        if isinstance(preset, str):
            preset = get_preset(preset)
        elif not isinstance(preset, Preset):
            raise TypeError(f"preset must be a preset name or a fomo_core.Preset, got {type(preset).__name__}")
        self.preset = preset
        self._affinity_options: dict = {}
        if (epsilon is not None or epsilon_decay is not None) and preset.server.selection == "top_m":
            raise ValueError(
                f"epsilon and epsilon_decay apply to epsilon-greedy selection; preset {preset.name!r} "
                f"selects by {preset.server.selection!r}, got epsilon={epsilon!r}, epsilon_decay={epsilon_decay!r}"
            )
        if epsilon is not None:
            self._affinity_options["epsilon"] = epsilon
        if epsilon_decay is not None:
            self._affinity_options["epsilon_decay"] = epsilon_decay
        self.fraction_train = _fraction(fraction_train, "fraction_train")
        self.fraction_evaluate = _fraction(fraction_evaluate, "fraction_evaluate")
        self.min_train_nodes = _count(min_train_nodes, "min_train_nodes", 0)
        self.min_evaluate_nodes = _count(min_evaluate_nodes, "min_evaluate_nodes", 0)
        self.min_available_nodes = _count(min_available_nodes, "min_available_nodes", 0)
        self.num_clients = None if num_clients is None else _count(num_clients, "num_clients", 1)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an integer or None, got {type(seed).__name__}")
        if not isinstance(affinity_history, bool):
            raise TypeError(f"affinity_history must be a bool, got {type(affinity_history).__name__}")
        self.affinity_history = affinity_history
        # One Affinity built now checks every option with the Affinity's own messages; the real
        # one is sized when the nodes are known.
        Affinity.from_preset(preset, 1, **self._affinity_options)
        sampling_seed, affinity_seed = np.random.SeedSequence(seed).spawn(2)
        self._rng = np.random.default_rng(sampling_seed)
        self._affinity_seed = affinity_seed

        self.affinity: Optional[Affinity] = None
        self.node_ids: list = []
        self.models: dict = {}
        self.partition_ids: dict = {}
        self.rounds: list = []
        self._index: dict = {}
        self._pending_train: dict = {}  # node id -> (client, candidate clients, model signature)
        self._pending_evaluate: dict = {}  # node id -> client
        self._recent: list = []  # clients that uploaded in the last round (selection top_m_recent)
        self._capacity_warned = False

    # --- Strategy interface ---------------------------------------------------------------------

    def summary(self) -> None:
        """Log the strategy's configuration."""
        p = self.preset
        eps = self._affinity_options.get("epsilon", p.server.epsilon)
        decay = self._affinity_options.get("epsilon_decay", p.server.epsilon_decay)
        _log.info("\t├──> FedFomo: M=%d candidates, preset %r (selection %s, epsilon %.3g - %.3g/round)",
                  self.m, p.name, p.server.selection, eps, decay)
        _log.info("\t│\t└──fomo_step on the clients: norm=%s, eps=%g", p.client.norm, p.client.eps)
        _log.info("\t└──> Sampling: fraction train %.2f | evaluate %.2f, minimum nodes train %d | evaluate %d | available %d",
                  self.fraction_train, self.fraction_evaluate, self.min_train_nodes,
                  self.min_evaluate_nodes, self.min_available_nodes)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Samples nodes and sends each its own model and its M candidates (see train_messages)."""
        if self.fraction_train == 0.0:
            return []
        nodes = self._sample(grid, self.fraction_train, self.min_train_nodes)
        _log.info("configure_train: sampled %d nodes (out of %d)", len(nodes), len(self.node_ids))
        return self.train_messages(server_round, arrays, config, nodes)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[Optional[ArrayRecord], Optional[MetricRecord]]:
        """Stores each client's new model and adds its scores to its affinity row.

        Returns no ArrayRecord (there is no global model: the personalised models are in
        ``models``) and the round's mean baseline loss and candidate counts."""
        record = self._record(server_round)
        uploaded = []
        for reply in replies:
            node = reply.metadata.src_node_id
            pending = self._pending_train.pop(node, None)
            if pending is None:
                _log.warning("aggregate_train: reply from node %d, which was sent no train message; ignored", node)
                continue
            client, ids, model_signature = pending
            if reply.has_error():
                self._fail(record.failed, client, f"error reply: {reply.error.reason}")
                continue
            try:
                parsed = protocol.read_train_reply(reply.content, ids, model_signature)
            except ValueError as e:
                self._fail(record.failed, client, f"invalid reply: {e}")
                continue
            self.affinity.update(client, ids, parsed.scores)
            self.models[client] = parsed.model
            if parsed.partition_id is not None:
                self.partition_ids[client] = parsed.partition_id
            record.scores[client] = parsed.scores.tolist()
            record.weights[client] = parsed.weights.tolist()
            record.baseline_loss[client] = parsed.baseline_loss
            uploaded.append(client)
        for client, _, _ in self._pending_train.values():
            self._fail(record.failed, client, "no reply")
        self._pending_train = {}
        self._recent = sorted(uploaded)
        if self.affinity is not None and self.affinity_history:
            record.affinity = self.affinity.matrix.copy()
        _log.info("aggregate_train: %d replies used, %d failed", len(uploaded), len(record.failed))
        if not uploaded:
            return None, None
        return None, MetricRecord(
            {
                "num-clients": len(uploaded),
                "baseline-loss": float(np.mean([record.baseline_loss[c] for c in uploaded])),
                "candidates": float(np.mean([len(record.weights[c]) for c in uploaded])),
                "helpful-candidates": float(np.mean([np.count_nonzero(np.asarray(record.weights[c]) > 0) for c in uploaded])),
            }
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Samples nodes and sends each its own latest model to evaluate."""
        if self.fraction_evaluate == 0.0:
            return []
        nodes = self._sample(grid, self.fraction_evaluate, self.min_evaluate_nodes)
        _log.info("configure_evaluate: sampled %d nodes (out of %d)", len(nodes), len(self.node_ids))
        return self.evaluate_messages(server_round, arrays, config, nodes)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> Optional[MetricRecord]:
        """Records every client's loss and accuracy; returns their means over the clients (each
        client's personalised model counts once, whatever its data size) and their number."""
        record = self._record(server_round)
        for reply in replies:
            node = reply.metadata.src_node_id
            client = self._pending_evaluate.pop(node, None)
            if client is None:
                _log.warning("aggregate_evaluate: reply from node %d, which was sent no evaluate message; ignored", node)
                continue
            if reply.has_error():
                self._fail(record.evaluate_failed, client, f"error reply: {reply.error.reason}")
                continue
            try:
                parsed = protocol.read_evaluate_reply(reply.content)
            except ValueError as e:
                self._fail(record.evaluate_failed, client, f"invalid reply: {e}")
                continue
            record.loss[client] = parsed.loss
            record.accuracy[client] = parsed.accuracy
        for client in self._pending_evaluate.values():
            self._fail(record.evaluate_failed, client, "no reply")
        self._pending_evaluate = {}
        if not record.accuracy:
            return None
        return MetricRecord(
            {
                "loss": float(np.mean(list(record.loss.values()))),
                "accuracy": float(np.mean(list(record.accuracy.values()))),
                "num-clients": len(record.accuracy),
            }
        )

    # --- messages for given nodes (configure_* sample the nodes, then call these) ----------------

    def train_messages(
        self, server_round: int, arrays: ArrayRecord, config: Optional[ConfigRecord], node_ids: Iterable[int]
    ) -> list:
        """One train message per node: the client's latest model (``arrays`` if it has uploaded
        none yet), the M candidates the Affinity picks from its row among the clients with a
        model (epsilon at round ``server_round - 1``), the config and fomo_step options."""
        server_round = _count(server_round, "server_round", 1)
        nodes = self.register(node_ids)
        record = self._record(server_round)
        among = self._recent if self.preset.server.pool == "last_round" else sorted(self.models)
        messages = []
        self._pending_train = {}
        for node in nodes:
            client = self._index[node]
            ids = self.affinity.select(client, self.m, round=server_round - 1, among=among).tolist()
            own = self.models.get(client, arrays)
            content = protocol.train_instruction(
                own,
                [self.models.get(j, arrays) for j in ids],
                ids,
                server_round=server_round,
                client=client,
                norm=self.preset.client.norm,
                eps=self.preset.client.eps,
                config=config,
            )
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN, group_id=str(server_round)))
            self._pending_train[node] = (client, ids, protocol.signature(own))
            record.candidates[client] = ids
        return messages

    def evaluate_messages(
        self, server_round: int, arrays: ArrayRecord, config: Optional[ConfigRecord], node_ids: Iterable[int]
    ) -> list:
        """One evaluate message per node, carrying the client's own latest model."""
        server_round = _count(server_round, "server_round", 1)
        nodes = self.register(node_ids)
        self._record(server_round)
        messages = []
        self._pending_evaluate = {}
        for node in nodes:
            client = self._index[node]
            content = protocol.evaluate_instruction(
                self.models.get(client, arrays), server_round=server_round, client=client, config=config
            )
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.EVALUATE, group_id=str(server_round)))
            self._pending_evaluate[node] = client
        return messages

    # --- clients and state ------------------------------------------------------------------------

    def register(self, node_ids: Iterable[int]) -> list:
        """Gives the nodes not seen before the next dense client indices (in node-id order) and
        returns those of ``node_ids`` that have an index. The first call sizes the affinity matrix
        (``num_clients``, or the number of nodes given); without ``num_clients`` later nodes grow it."""
        node_ids = [int(n) for n in node_ids]
        new = sorted({n for n in node_ids if n not in self._index})
        if self.affinity is None and (new or self.num_clients):
            capacity = self.num_clients or len(new)
            self.affinity = Affinity.from_preset(self.preset, capacity, seed=self._affinity_seed, **self._affinity_options)
        elif self.num_clients is None and len(self.node_ids) + len(new) > self.affinity.num_clients:
            self.affinity.grow(len(self.node_ids) + len(new))
        for node in new:
            if len(self.node_ids) >= self.affinity.num_clients:
                if not self._capacity_warned:
                    _log.warning("FedFomo: the affinity matrix holds %d clients (num_clients); node %d and any "
                                 "later ones are not sampled", self.affinity.num_clients, node)
                    self._capacity_warned = True
                break
            self._index[node] = len(self.node_ids)
            self.node_ids.append(node)
        return [n for n in node_ids if n in self._index]

    def client_index(self, node_id: int) -> int:
        """The dense client index of a Flower node id."""
        try:
            return self._index[int(node_id)]
        except KeyError:
            raise ValueError(f"node_id {node_id} is not a client of this strategy (known: {self.node_ids})") from None

    @property
    def affinity_matrix(self) -> Optional[np.ndarray]:
        """[N, N] copy of the affinity matrix (None before the first round)."""
        return None if self.affinity is None else self.affinity.matrix.copy()

    def _record(self, server_round: int) -> FedFomoRound:
        if not self.rounds or self.rounds[-1].round != server_round:
            self.rounds.append(FedFomoRound(server_round))
        return self.rounds[-1]

    @staticmethod
    def _fail(where: dict, client: int, reason: str) -> None:
        where[client] = reason
        _log.warning("FedFomo: client %d: %s", client, reason)

    def _sample(self, grid: Grid, fraction: float, minimum: int) -> list:
        """Waits for enough nodes (as Flower's sample_nodes), then draws from the registered ones
        with the strategy's seeded generator (Flower's own draw uses the global ``random``)."""
        need = max(self.min_available_nodes, minimum)
        tries = 0
        while len(nodes := list(grid.get_node_ids())) < need:
            if tries % 50 == 0:  # every 10 s
                _log.info("Waiting for nodes to connect: %d connected (minimum required: %d)", len(nodes), need)
            tries += 1
            time.sleep(0.2)
        known = self.register(sorted(nodes))
        size = min(max(int(len(nodes) * fraction), minimum), len(known))
        chosen = self._rng.choice(len(known), size=size, replace=False)
        return sorted((known[k] for k in chosen), key=self._index.__getitem__)
