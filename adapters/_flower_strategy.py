"""The FedFomo strategy for Flower's Message API (``flwr.serverapp.strategy.Strategy``).

There is no global model: the server keeps every client's latest model and the affinity matrix,
sends each sampled client its own model with M candidates picked from its row, and adds the scores
the client returns to that row. What is chosen and stored is the server state's; this module
samples nodes, binds them to stable client ids, writes and reads the messages
(:mod:`._flower_protocol`, every reply validated), checkpoints every round and records what
happened.

Client identity: a node is asked once for its stable id (``partition-id`` from its node config,
or a ``client-id``) and bound to it; Flower's node ids, which change when a SuperNode restarts,
never key anything. Replies are matched to the message they answer (``reply_to_message_id``), so
error replies the SuperLink sends on a node's behalf are recorded with their reason.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from .._atomic import atomic_write
from .._validate import count, fraction, real
from ..presets import Preset, as_preset
from ..server import Server
from . import _flower_protocol as protocol
from ._flower_layout import TRANSPORTS, ModelLayout

__all__ = ["FedFomo", "FedFomoRound"]

_log = logging.getLogger("flwr")  # Flower's logger: our lines appear with its own
_STATE_FILE = "strategy.json"
_FORMAT = "fomo-core/flower-strategy/1"


@dataclass
class FedFomoRound:
    """What happened in one server round (clients by dense index; ``FedFomo.client_ids`` maps
    them to their stable ids).

    candidates:      {client: candidate clients sent to it}
    scores, weights: {client: [M] first-order scores / normalised weights it returned}
    baseline_loss:   {client: validation loss of its model before the update}
    failed:          {client: why its train reply was not used}
    loss, accuracy:  {client: evaluation of its new model on its test data}
    evaluate_failed: {client: why its evaluate reply was not used}
    bytes_down, bytes_up: array payload bytes sent to / received from the clients
    seconds:         wall time of the round on the server
    affinity:        [N, N] after the round (None without ``affinity_history``)
    """

    round: int
    candidates: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)
    baseline_loss: dict = field(default_factory=dict)
    failed: dict = field(default_factory=dict)
    loss: dict = field(default_factory=dict)
    accuracy: dict = field(default_factory=dict)
    evaluate_failed: dict = field(default_factory=dict)
    bytes_down: int = 0
    bytes_up: int = 0
    seconds: float = 0.0
    affinity: Optional[np.ndarray] = None

    @property
    def mean_accuracy(self) -> Optional[float]:
        """Mean personalised accuracy over the clients evaluated this round (None if none)."""
        return float(np.mean(list(self.accuracy.values()))) if self.accuracy else None

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("affinity")
        for key, value in out.items():
            if isinstance(value, dict):
                out[key] = {str(k): v for k, v in value.items()}
        return out

    @classmethod
    def from_json(cls, data: dict) -> FedFomoRound:
        rec = cls(int(data["round"]))
        for key, value in data.items():
            if isinstance(value, dict):
                setattr(rec, key, {int(k): v for k, v in value.items()})
            elif key != "round":
                setattr(rec, key, value)
        return rec


def _payload_bytes(content: RecordDict) -> int:
    return sum(len(a.data) for record in content.array_records.values() for a in record.values())


def _mean_finite(values: Iterable[float]) -> Optional[float]:
    arr = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    return float(arr.mean()) if arr.size else None


class FedFomo(Strategy):
    """FedFomo (Zhang et al., ICLR 2021) as a Flower strategy.

    m:                    M, candidates per client per round
    preset:               a preset name or a fomo_core.Preset (server choices and the clients'
                          fomo_step options)
    num_clients:          N, the number of clients (stable ids); the number of nodes connected
                          at the first round when None
    seed:                 seeds node sampling and the affinity's selection
    epsilon, epsilon_decay: override the preset's exploration schedule
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes,
    min_available_nodes:  as Flower's FedAvg; a client sampled for both trains and evaluates in
                          one message (its evaluation is folded into the train reply)
    candidate_dtype:      "float32" (each array's own dtype), "float16" or "bfloat16" for the
                          candidates on the wire (a client's own model always travels in full)
    state_dir:            folder of the checkpoint written atomically after every round; a
                          strategy started on a folder holding one resumes from it
    train_metrics_aggr_fn, evaluate_metrics_aggr_fn: ``fn(list[RecordDict], weighted_by_key) ->
                          MetricRecord`` over the validated replies (Flower's signature); the
                          default is the mean over clients (each personalised model counts once)
    weighted_by_key:      passed to the aggregation functions ("num-examples")
    arrayrecord_key, configrecord_key, metricrecord_key: record names in the messages
    model_store:          a ``.npy`` file to hold the N x P model table on disk (memory-mapped,
                          :mod:`fomo_core.model_store`) instead of in memory
    identify_timeout:     seconds to wait for new nodes to say their client id
    affinity_history:     keep a copy of the N x N matrix in every round's record
    """

    def __init__(
        self,
        m: int = 5,
        *,
        preset: Union[str, Preset] = "fomo-core",
        num_clients: Optional[int] = None,
        seed: Optional[int] = None,
        epsilon: Optional[float] = None,
        epsilon_decay: Optional[float] = None,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        candidate_dtype: str = "float32",
        state_dir: Optional[Union[str, os.PathLike]] = None,
        train_metrics_aggr_fn: Optional[Callable[[list, str], MetricRecord]] = None,
        evaluate_metrics_aggr_fn: Optional[Callable[[list, str], MetricRecord]] = None,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        metricrecord_key: str = "metrics",
        model_store: Optional[Union[str, os.PathLike]] = None,
        identify_timeout: float = 120.0,
        affinity_history: bool = False,
    ) -> None:
        self.m = count(m, "m", low=1)
        self.preset = as_preset(preset)
        overrides = {k: v for k, v in (("epsilon", epsilon), ("epsilon_decay", epsilon_decay)) if v is not None}
        if overrides and self.preset.server.selection == "top_m":
            raise ValueError(
                f"epsilon and epsilon_decay apply to epsilon-greedy selection; preset {self.preset.name!r} "
                f"selects by {self.preset.server.selection!r}, got epsilon={epsilon!r}, epsilon_decay={epsilon_decay!r}"
            )
        self.policy = self.preset.server.replace(**overrides) if overrides else self.preset.server
        self.fraction_train = fraction(fraction_train, "fraction_train")
        self.fraction_evaluate = fraction(fraction_evaluate, "fraction_evaluate")
        self.min_train_nodes = count(min_train_nodes, "min_train_nodes")
        self.min_evaluate_nodes = count(min_evaluate_nodes, "min_evaluate_nodes")
        self.min_available_nodes = count(min_available_nodes, "min_available_nodes")
        self.num_clients = None if num_clients is None else count(num_clients, "num_clients", low=1)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an integer or None, got {type(seed).__name__}")
        self.seed = seed
        if candidate_dtype not in TRANSPORTS:
            raise ValueError(f"candidate_dtype must be one of {TRANSPORTS}, got {candidate_dtype!r}")
        self.candidate_dtype = candidate_dtype
        self.state_dir = None if state_dir is None else os.fspath(state_dir)
        self.model_store = None if model_store is None else os.fspath(model_store)
        for name, fn in (
            ("train_metrics_aggr_fn", train_metrics_aggr_fn),
            ("evaluate_metrics_aggr_fn", evaluate_metrics_aggr_fn),
        ):
            if fn is not None and not callable(fn):
                raise TypeError(
                    f"{name} must be callable (list[RecordDict], str) -> MetricRecord, got {type(fn).__name__}"
                )
        self.train_metrics_aggr_fn = train_metrics_aggr_fn
        self.evaluate_metrics_aggr_fn = evaluate_metrics_aggr_fn
        if not isinstance(weighted_by_key, str):
            raise TypeError(f"weighted_by_key must be a string, got {type(weighted_by_key).__name__}")
        self.weighted_by_key = weighted_by_key
        self.keys = protocol.RecordKeys(arrayrecord_key, configrecord_key, metricrecord_key)
        # seconds; ValueError for any bad value, as always
        self.identify_timeout = real(
            identify_timeout, "identify_timeout", low=0.0, low_open=True, type_error=ValueError
        )
        if not isinstance(affinity_history, bool):
            raise TypeError(f"affinity_history must be a bool, got {type(affinity_history).__name__}")
        self.affinity_history = affinity_history

        self._rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        self.state: Optional[Server] = None
        self.layout: Optional[ModelLayout] = None
        self.client_ids: list = []  # dense index -> stable id (None: not yet claimed)
        self._index: dict = {}  # stable id -> dense index
        self._node_client: dict = {}  # Flower node id -> dense index (this run's nodes)
        self.refused_nodes: dict = {}  # node id -> why it has no client
        self.rounds: list = []
        self._pending_train: list = []  # (message, client, ids, evaluate)
        self._pending_evaluate: list = []  # (message, client)
        self._evaluate_only: list = []  # nodes to evaluate without training this round
        self._scratch: Optional[np.ndarray] = None
        self._evaluated: list = []  # validated train replies carrying an evaluation, this round

    # --- Strategy interface ---------------------------------------------------------------------

    def summary(self) -> None:
        """Log the strategy's configuration."""
        p, server = self.preset, self.policy
        _log.info(
            "\t├──> FedFomo: M=%d candidates, preset %r (selection %s, epsilon %.3g - %.3g/round), candidates in %s",
            self.m,
            p.name,
            server.selection,
            server.epsilon,
            server.epsilon_decay,
            self.candidate_dtype,
        )
        _log.info("\t│\t└──fomo_step on the clients: norm=%s, eps=%g", p.client.norm, p.client.eps)
        _log.info(
            "\t├──> Sampling: fraction train %.2f | evaluate %.2f, minimum nodes train %d | evaluate %d | available %d",
            self.fraction_train,
            self.fraction_evaluate,
            self.min_train_nodes,
            self.min_evaluate_nodes,
            self.min_available_nodes,
        )
        _log.info("\t└──> Checkpoint: %s", self.state_dir or "none")

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: Optional[ConfigRecord] = None,
        evaluate_config: Optional[ConfigRecord] = None,
        evaluate_fn: Optional[Callable[[int, ArrayRecord], Optional[MetricRecord]]] = None,
    ) -> Result:
        """Runs rounds ``start .. num_rounds`` (start = 1, or the round after the checkpoint in
        ``state_dir``), training and evaluating in one message per client where they coincide.

        Returns Flower's Result with the aggregated metrics per round and, in ``arrays``, every
        client's personalised model as one flat float32 array per stable client id (the layered
        record of one client: :meth:`model_record`; empty with a ``model_store``). ``evaluate_fn``
        (server-side evaluation) is not supported: there is no global model."""
        if evaluate_fn is not None:
            raise ValueError(
                "evaluate_fn is not supported by FedFomo: there is no global model (each client evaluates its own)"
            )
        num_rounds = count(num_rounds, "num_rounds")
        self.initialise(initial_arrays)
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        result = Result()
        for rec in self.rounds:
            self._store_metrics(result, rec)
        _log.info("Starting FedFomo strategy at round %d of %d", self.next_round, num_rounds)
        self.summary()
        t_start = time.time()
        for current in range(self.next_round, num_rounds + 1):
            _log.info("")
            _log.info("[ROUND %s/%s]", current, num_rounds)
            t0 = time.perf_counter()
            replies = grid.send_and_receive(
                messages=self.configure_train(current, initial_arrays, train_config, grid), timeout=timeout
            )
            _, train_metrics = self.aggregate_train(current, replies)
            if train_metrics is not None:
                result.train_metrics_clientapp[current] = train_metrics
            replies = grid.send_and_receive(
                messages=self.configure_evaluate(current, initial_arrays, evaluate_config, grid), timeout=timeout
            )
            evaluate_metrics = self.aggregate_evaluate(current, replies)
            if evaluate_metrics is not None:
                result.evaluate_metrics_clientapp[current] = evaluate_metrics
            self.end_round(current, time.perf_counter() - t0)
        _log.info("FedFomo finished in %.2fs", time.time() - t_start)
        result.arrays = self.models_record()
        return result

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Samples nodes, identifies new ones, and sends each sampled client its own model and its
        M candidates (see :meth:`train_messages`)."""
        self.initialise(arrays)
        self._pending_train, self._pending_evaluate, self._evaluate_only, self._evaluated = [], [], [], []
        nodes = self._bound_nodes(grid, max(self.min_train_nodes, self.min_evaluate_nodes), server_round)
        train = self._sample(nodes, self.fraction_train, self.min_train_nodes)
        evaluate = set(self._sample(nodes, self.fraction_evaluate, self.min_evaluate_nodes))
        self._evaluate_only = [n for n in nodes if n in evaluate and n not in train]
        _log.info(
            "configure_train: %d of %d nodes train (%d of them also evaluate)",
            len(train),
            len(nodes),
            len(evaluate & set(train)),
        )
        return self.train_messages(server_round, train, config, evaluate=evaluate)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple:
        """Validates every reply; a valid one's model and scores go to the server state, anything
        else is recorded in the round's ``failed`` with its reason (never raised). Returns no
        ArrayRecord (the personalised models stay on the server) and the aggregated metrics."""
        record = self._record(server_round)
        by_id = {entry[0].metadata.message_id: entry for entry in self._pending_train}
        answered, used = set(), []
        for reply in replies:
            entry = self._match(reply, by_id, "aggregate_train")
            if entry is None:
                continue
            message, client, ids, evaluate = entry
            answered.add(client)
            try:
                self._check_reply(reply, message)
                parsed = self._read_train(reply.content, client, ids, evaluate)
                record.bytes_up += _payload_bytes(reply.content)
                self.state.receive(
                    client,
                    parsed.params,
                    ids,
                    parsed.scores,
                    self_score=parsed.self_score,
                    global_update=parsed.global_update,
                    num_examples=parsed.num_examples,
                )
            except Exception as e:  # a client can send anything: record it, never crash
                self._fail(record.failed, client, str(e) or type(e).__name__)
                continue
            record.scores[client] = parsed.scores.tolist()
            record.weights[client] = parsed.weights.tolist()
            record.baseline_loss[client] = parsed.baseline_loss
            if parsed.evaluation is not None:
                record.loss[client] = parsed.evaluation.loss
                record.accuracy[client] = parsed.evaluation.accuracy
                self._evaluated.append(reply.content)
            used.append((client, reply.content, parsed))
        for _, client, _, _ in self._pending_train:
            if client not in answered:
                self._fail(record.failed, client, "no reply")
        self._pending_train = []
        _log.info("aggregate_train: %d replies used, %d failed", len(used), len(record.failed))
        if not used:
            return None, None
        if self.train_metrics_aggr_fn is not None:
            return None, self.train_metrics_aggr_fn([c for _, c, _ in used], self.weighted_by_key)
        metrics = MetricRecord({"num-clients": len(used), "bytes-down": record.bytes_down, "bytes-up": record.bytes_up})
        baseline = _mean_finite(p.baseline_loss for _, _, p in used)
        if baseline is not None:
            metrics["baseline-loss"] = baseline
        metrics["helpful-candidates"] = float(np.mean([np.count_nonzero(p.weights > 0) for _, _, p in used]))
        return None, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Evaluate messages for the clients sampled for evaluation that did not train this round
        (the others evaluated in their train reply)."""
        self._pending_evaluate = []
        messages = []
        for node in self._evaluate_only:
            client = self._node_client.get(node)
            if client is None:
                continue
            content = protocol.evaluate_instruction(
                self.layout.record(self.state.model(client)),
                keys=self.keys,
                server_round=server_round,
                client_id=self.client_ids[client],
                config=config,
            )
            self._record(server_round).bytes_down += _payload_bytes(content)
            message = Message(content, dst_node_id=node, message_type=MessageType.EVALUATE, group_id=str(server_round))
            self._pending_evaluate.append((message, client))
            messages.append(message)
        self._evaluate_only = []
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> Optional[MetricRecord]:
        """Validates the evaluate replies, then aggregates this round's evaluations (folded and
        separate): by default their means over clients and their number."""
        record = self._record(server_round)
        by_id = {entry[0].metadata.message_id: entry for entry in self._pending_evaluate}
        contents, self._evaluated = self._evaluated, []
        answered = set()
        for reply in replies:
            entry = self._match(reply, by_id, "aggregate_evaluate")
            if entry is None:
                continue
            message, client = entry
            answered.add(client)
            try:
                self._check_reply(reply, message)
                evaluation, _ = protocol.read_evaluate_reply(
                    reply.content, keys=self.keys, client_id=self.client_ids[client]
                )
            except Exception as e:
                self._fail(record.evaluate_failed, client, str(e) or type(e).__name__)
                continue
            record.loss[client] = evaluation.loss
            record.accuracy[client] = evaluation.accuracy
            contents.append(reply.content)
        for _, client in self._pending_evaluate:
            if client not in answered:
                self._fail(record.evaluate_failed, client, "no reply")
        self._pending_evaluate = []
        if not record.accuracy:
            return None
        if self.evaluate_metrics_aggr_fn is not None:
            return self.evaluate_metrics_aggr_fn(contents, self.weighted_by_key)
        return MetricRecord(
            {
                "loss": float(np.mean(list(record.loss.values()))),
                "accuracy": float(np.mean(list(record.accuracy.values()))),
                "num-clients": len(record.accuracy),
            }
        )

    # --- messages ---------------------------------------------------------------------------------

    def train_messages(
        self,
        server_round: int,
        node_ids: Iterable[int],
        config: Optional[ConfigRecord] = None,
        *,
        evaluate: Iterable[int] = (),
    ) -> list:
        """One train message per (bound) node: the client's latest model, the M candidates the
        server state picks for it, the config and fomo_step options; ``evaluate`` nodes also
        evaluate their new model in the same message."""
        record = self._record(server_round)
        evaluate = set(evaluate)
        cache: dict = {}  # one candidate record per client per round, shared by the messages
        messages = []
        g = self.state.global_params()  # the fomo-core round's global model (None for the peers')
        global_model = None if g is None else self.layout.record(np.asarray(g), self.candidate_dtype)
        for node in node_ids:
            client = self._node_client[node]
            ids, rows = self.state.candidates(client)
            ids = [int(i) for i in ids]
            cands = []
            for j, row in zip(ids, rows):
                if j not in cache:
                    cache[j] = self.layout.record(row, self.candidate_dtype)
                cands.append(cache[j])
            content = protocol.train_instruction(
                self.layout.record(self.state.model(client)),
                cands,
                ids,
                keys=self.keys,
                server_round=server_round,
                client_id=self.client_ids[client],
                norm=self.preset.client.norm,
                eps=self.preset.client.eps,
                transport=self.candidate_dtype,
                evaluate=node in evaluate,
                config=config,
                global_model=global_model,
            )
            record.bytes_down += _payload_bytes(content)
            message = Message(content, dst_node_id=node, message_type=MessageType.TRAIN, group_id=str(server_round))
            self._pending_train.append((message, client, ids, node in evaluate))
            record.candidates[client] = ids
            messages.append(message)
        return messages

    def _read_train(self, content: RecordDict, client: int, ids: list, evaluate: bool):
        if self._scratch is None or self._scratch.size != self.layout.size:
            self._scratch = np.empty(self.layout.size, dtype=np.float32)
        return protocol.read_train_reply(
            content,
            keys=self.keys,
            layout=self.layout,
            candidate_clients=ids,
            client_id=self.client_ids[client],
            evaluate=evaluate,
            out=self._scratch,
        )

    @staticmethod
    def _match(reply: Message, by_id: dict, where: str):
        """The pending entry the reply answers (by message id: Flower's own error replies come
        from the SuperLink, not from the node), or None."""
        entry = by_id.pop(reply.metadata.reply_to_message_id, None)
        if entry is None:
            _log.warning(
                "%s: reply to message %r, which this round did not send (from node %d); ignored",
                where,
                reply.metadata.reply_to_message_id,
                reply.metadata.src_node_id,
            )
        return entry

    @staticmethod
    def _check_reply(reply: Message, message: Message) -> None:
        """ValueError for an error reply (with Flower's code and reason) or a reply sent by
        another node than the one the message went to."""
        if reply.has_error():
            raise ValueError(f"error reply (code {reply.error.code}): {reply.error.reason}")
        if reply.metadata.src_node_id != message.metadata.dst_node_id:
            raise ValueError(
                f"reply from node {reply.metadata.src_node_id} to a message sent to node {message.metadata.dst_node_id}"
            )

    # --- rounds, clients and state ---------------------------------------------------------------

    @property
    def next_round(self) -> int:
        return 1 if self.state is None else self.state.round + 1

    def initialise(self, initial_arrays: ArrayRecord) -> None:
        """Fixes the model layout from ``initial_arrays`` and resumes from ``state_dir`` when it
        holds a checkpoint (its layout must match). Idempotent."""
        if self.layout is not None:
            return
        layout = ModelLayout.of(initial_arrays)
        self.layout = layout
        self._initial = layout.flat_from_record(initial_arrays, "initial_arrays")
        if self.state_dir is not None and os.path.exists(os.path.join(self.state_dir, _STATE_FILE)):
            self._resume(layout)

    def _ensure_state(self, num_nodes: int) -> None:
        if self.state is not None:
            return
        n = self.num_clients or num_nodes
        self.num_clients = n
        self.state = Server(
            n, self._initial, preset=self.preset, m=self.m, seed=self.seed, policy=self.policy, models=self._store(n)
        )
        self.client_ids = [None] * n

    def _store(self, num_clients: int) -> Optional[np.ndarray]:
        if self.model_store is None:
            return None
        from ..model_store import open_model_store

        return open_model_store(self.model_store, num_clients, self.layout.size)

    def _bound_nodes(self, grid: Grid, minimum: int, server_round: int) -> list:
        """Waits for enough nodes (as Flower's sample_nodes), asks new ones for their stable id,
        and returns the connected nodes bound to a client, in client order."""
        need = max(self.min_available_nodes, minimum)
        tries = 0
        while len(nodes := sorted(int(n) for n in grid.get_node_ids())) < need:
            if tries % 50 == 0:
                _log.info("Waiting for nodes to connect: %d connected (minimum required: %d)", len(nodes), need)
            tries += 1
            time.sleep(0.2)
        self._ensure_state(len(nodes))
        new = [n for n in nodes if n not in self._node_client and n not in self.refused_nodes]
        if new:
            self.identify(grid, new, connected=nodes, server_round=server_round)
        return sorted((n for n in nodes if n in self._node_client), key=self._node_client.__getitem__)

    def identify(self, grid: Grid, node_ids: list, *, connected: list, server_round: int) -> None:
        """Asks each node for its stable client id (one QUERY message) and binds it."""
        messages = {}
        for node in node_ids:
            message = Message(
                protocol.identify_instruction(self.keys),
                dst_node_id=node,
                message_type=MessageType.QUERY,
                group_id=f"identify-{server_round}",
            )
            messages[node] = message
        replies = grid.send_and_receive(list(messages.values()), timeout=self.identify_timeout)
        by_id = {m.metadata.message_id: node for node, m in messages.items()}
        answered = set()
        for reply in replies:
            node = by_id.get(reply.metadata.reply_to_message_id)
            if node is None:
                continue
            answered.add(node)
            try:
                if reply.has_error():
                    raise ValueError(f"error reply (code {reply.error.code}): {reply.error.reason}")
                self.bind(node, protocol.read_identify_reply(reply.content, self.keys), connected)
            except Exception as e:
                _log.warning("FedFomo: node %d not bound: %s", node, e)
                if "error reply" not in str(e):  # a node that failed to answer is asked again later
                    self.refused_nodes[node] = str(e)
        for node in node_ids:
            if node not in answered:
                _log.warning("FedFomo: node %d did not say its client id; asked again next round", node)

    def bind(self, node: int, client_id: str, connected: Iterable[int] = ()) -> int:
        """Binds Flower node ``node`` to the client with stable id ``client_id`` and returns its
        dense index: ``int(client_id)`` when it is an integer in [0, N), else the highest free
        index (partition ids keep the low ones). A client bound to another node that is still
        connected is refused (ValueError); one whose node is gone (a restarted SuperNode) moves to
        the new node."""
        client_id = protocol.check_client_id(client_id)
        connected = set(connected)
        index = self._index.get(client_id)
        if index is None:
            index = self._free_index(client_id)
            self._index[client_id] = index
            self.client_ids[index] = client_id
        for other, c in list(self._node_client.items()):
            if c == index and other != node:
                if other in connected:
                    raise ValueError(f"client id {client_id!r} is already bound to connected node {other}")
                _log.info("FedFomo: client %r moves from node %d (gone) to node %d", client_id, other, node)
                del self._node_client[other]
        self._node_client[node] = index
        return index

    def _free_index(self, client_id: str) -> int:
        n = self.num_clients
        if client_id.isdigit() and int(client_id) < n:
            if self.client_ids[int(client_id)] is not None:
                raise ValueError(f"client index {client_id} is taken by client {self.client_ids[int(client_id)]!r}")
            return int(client_id)
        # other ids fill the slots from the top, leaving the low ones to partition ids
        free = [i for i in range(n) if self.client_ids[i] is None]
        if not free:
            raise ValueError(f"all {n} client slots are taken (num_clients); client {client_id!r} refused")
        return free[-1]

    def client_index(self, client_id: Any) -> int:
        """The dense index of a stable client id."""
        try:
            return self._index[protocol.check_client_id(client_id)]
        except KeyError:
            raise ValueError(
                f"client_id {client_id!r} is not a client of this strategy (known: {[c for c in self.client_ids if c]})"
            ) from None

    def _sample(self, nodes: list, fraction: float, minimum: int) -> list:
        if fraction == 0.0 or not nodes:
            return []
        size = min(max(int(len(nodes) * fraction), minimum), len(nodes))
        chosen = self._rng.choice(len(nodes), size=size, replace=False)
        return [nodes[k] for k in sorted(chosen)]

    def end_round(self, server_round: int, seconds: float = 0.0) -> None:
        """Commits the round's uploads (visible from the next round), records it and writes the
        checkpoint."""
        record = self._record(server_round)
        record.seconds = float(seconds)
        self.state.end_round()
        if self.affinity_history:
            record.affinity = self.state.affinity.matrix.copy()
        acc = record.mean_accuracy
        _log.info(
            "round %d: %d clients updated, %d failed, mean accuracy %s, %.1f MB down / %.1f MB up",
            server_round,
            len(record.scores),
            len(record.failed),
            "n/a" if acc is None else f"{acc:.4f}",
            record.bytes_down / 1e6,
            record.bytes_up / 1e6,
        )
        if self.state_dir is not None:
            self.checkpoint()

    def _record(self, server_round: int) -> FedFomoRound:
        if not self.rounds or self.rounds[-1].round != server_round:
            self.rounds.append(FedFomoRound(server_round))
        return self.rounds[-1]

    @staticmethod
    def _fail(where: dict, client: int, reason: str) -> None:
        where[client] = reason
        _log.warning("FedFomo: client %d: %s", client, reason)

    @staticmethod
    def _store_metrics(result: Result, rec: FedFomoRound) -> None:
        if rec.accuracy:
            result.evaluate_metrics_clientapp[rec.round] = MetricRecord(
                {
                    "loss": float(np.mean(list(rec.loss.values()))),
                    "accuracy": float(rec.mean_accuracy),
                    "num-clients": len(rec.accuracy),
                }
            )

    # --- results ------------------------------------------------------------------------------------

    @property
    def affinity_matrix(self) -> Optional[np.ndarray]:
        """[N, N] copy of the affinity matrix (None before the first round)."""
        return None if self.state is None else self.state.affinity.matrix.copy()

    def model(self, client_id: Any) -> np.ndarray:
        """A copy of client ``client_id``'s latest model as a flat float32 row [P]."""
        return np.array(self.state.model(self.client_index(client_id)))

    def model_record(self, client_id: Any) -> ArrayRecord:
        """Client ``client_id``'s latest model as an ArrayRecord of ``initial_arrays``' layout."""
        return self.layout.record(self.state.model(self.client_index(client_id)))

    def models_record(self) -> ArrayRecord:
        """Every bound client's latest model, one flat float32 array per stable id (empty with a
        ``model_store``: the models stay on disk, read them with :meth:`model`)."""
        if self.state is None or self.model_store is not None:
            return ArrayRecord()
        return ArrayRecord(
            {cid: Array(np.array(self.state.model(i))) for i, cid in enumerate(self.client_ids) if cid is not None}
        )

    # --- checkpoint ---------------------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Writes the state to ``state_dir``: the server state, then ``strategy.json`` (the
        commit point: it names the server state's files)."""
        folder = self.state_dir
        os.makedirs(folder, exist_ok=True)
        server_file = os.path.join(folder, f"server-r{self.state.round:06d}.npz")
        self.state.save(server_file)
        meta = {
            "format": _FORMAT,
            "server": os.path.basename(server_file),
            "round": self.state.round,
            "layout": self.layout.to_json(),
            "candidate_dtype": self.candidate_dtype,
            "client_ids": self.client_ids,
            "rng": self._rng.bit_generator.state,
            "rounds": [r.to_json() for r in self.rounds],
        }
        data = json.dumps(meta).encode()
        atomic_write(os.path.join(folder, _STATE_FILE), lambda f: f.write(data))
        for name in os.listdir(folder):  # earlier rounds' server states
            if name.startswith("server-r") and name != meta["server"]:
                os.unlink(os.path.join(folder, name))

    def _resume(self, layout: ModelLayout) -> None:
        with open(os.path.join(self.state_dir, _STATE_FILE)) as f:
            meta = json.load(f)
        if meta.get("format") != _FORMAT:
            raise ValueError(f"state_dir {self.state_dir!r} holds format {meta.get('format')!r}, expected {_FORMAT!r}")
        if ModelLayout.from_json(meta["layout"]) != layout:
            raise ValueError(f"state_dir {self.state_dir!r} holds models of another layout than initial_arrays")
        state = Server.load(os.path.join(self.state_dir, meta["server"]), models=self._store(len(meta["client_ids"])))
        if state.m != self.m or state.policy != self.policy:
            raise ValueError(
                f"state_dir {self.state_dir!r} was written with m={state.m}, {state.policy}; "
                f"this strategy has m={self.m}, {self.policy}"
            )
        self.state = state
        self.num_clients = self.state.num_clients
        self.client_ids = list(meta["client_ids"])
        self._index = {cid: i for i, cid in enumerate(self.client_ids) if cid is not None}
        self._rng.bit_generator.state = meta["rng"]
        self.rounds = [FedFomoRound.from_json(r) for r in meta["rounds"]]
        _log.info(
            "FedFomo: resumed from %s at round %d (%d clients known)", self.state_dir, self.next_round, len(self._index)
        )
