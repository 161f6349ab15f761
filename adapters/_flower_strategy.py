"""The FedFomo strategy for Flower's Message API (``flwr.serverapp.strategy.Strategy``).

There is no global model: the server keeps every client's latest model and the affinity matrix,
sends each sampled client its own model with M candidates picked from its row, and adds the scores
the client returns to that row. What is chosen and stored is the server state's; this module
samples nodes, binds them to stable client ids, writes and reads the messages
(:mod:`._flower_protocol`, every reply validated), checkpoints every round and records what
happened.

Client identity: a node is asked once for its stable id (``partition-id`` from its node config,
or a ``client-id``), when it is first drawn, and bound to it; Flower's node ids, which change when
a SuperNode restarts, never key anything. What each round records, and the checkpoint's reader,
are in :mod:`._flower_records`. Replies are matched to the message they answer (``reply_to_message_id``), so
error replies the SuperLink sends on a node's behalf are recorded with their reason.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable
from typing import Any, Callable, Optional, Union

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from .._atomic import atomic_write
from .._validate import count, flag, fraction, real
from ..presets import Preset, as_preset
from ..server import Server
from . import _flower_protocol as protocol
from ._flower_layout import TRANSPORTS, ModelLayout
from ._flower_records import (
    FORMAT,
    FedFomoRound,
    capped,
    capped_counts,
    client_metrics,
    mean_and_median,
    payload_bytes,
    read_checkpoint,
    reply_bytes,
    server_metrics_record,
)

__all__ = ["FedFomo"]

_log = logging.getLogger("flwr")  # Flower's logger: our lines appear with its own
_STATE_FILE = "strategy.json"


class FedFomo(Strategy):
    """FedFomo (Zhang et al., ICLR 2021) as a Flower strategy.

    m:                    M, candidates per client per round
    preset:               a preset name or a fomo_core.Preset (server choices and the clients'
                          fomo_step options)
    num_clients:          N, the number of clients (stable ids); the number of nodes connected
                          at the first round when None
    seed:                 seeds node sampling and the affinity's selection
    epsilon, epsilon_decay: override the preset's exploration schedule
    fraction_train, min_train_nodes, min_available_nodes: as Flower's FedAvg
    fraction_evaluate:    None (default): every client that trains evaluates its new model in
                          its train reply, nothing more; a number: that fraction of the
                          connected nodes (at least ``min_evaluate_nodes``) is evaluated, drawn
                          from the clients that train first (their evaluation folded into the
                          train reply; a model changes only when its client trains), then from
                          the others (one evaluate message each)
    candidate_dtype:      "float32" (each array's own dtype), "float16" or "bfloat16" for the
                          candidates on the wire (a client's own model always travels in full)
    state_dir:            folder of the checkpoint written atomically after every round; a
                          strategy started on a folder holding one resumes from it
    train_metrics_aggr_fn, evaluate_metrics_aggr_fn: ``fn(list[RecordDict], weighted_by_key) ->
                          MetricRecord`` over the validated replies (Flower's signature); the
                          default gives the mean and the median over clients (each personalised
                          model counts once; the median is what one lying client cannot move
                          beyond its neighbours' values)
    weighted_by_key:      passed to the aggregation functions ("num-examples")
    count_cap_ratio:      the aggregation functions see a ``weighted_by_key`` count above this
                          multiple of the median of the other replies' counts lowered to it
    arrayrecord_key, configrecord_key, metricrecord_key: record names in the messages
    model_store:          a ``.npy`` file to hold the N x P model table on disk (a
                          :mod:`fomo_core.model_store` store) instead of in memory
    identify_all:         False: a node is asked for its client id when it is first sampled
                          (a round's start costs O(participants)); True: every connected node is
                          asked before it can be sampled (O(N) at the first round), which makes
                          the sampled clients independent of Flower's node ids (the same seed
                          gives the same run also when fractions are below 1)
    identify_timeout:     seconds to wait for new nodes to say their client id
    node_wait_timeout:    seconds a round waits for ``min_available_nodes``; after that it
                          proceeds with the nodes connected if they are at least the minimum
                          the round needs (``min_train_nodes``, ``min_evaluate_nodes``), so a
                          lost node cannot stall the run
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
        fraction_evaluate: Optional[float] = None,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        candidate_dtype: str = "float32",
        state_dir: Optional[Union[str, os.PathLike]] = None,
        train_metrics_aggr_fn: Optional[Callable[[list, str], MetricRecord]] = None,
        evaluate_metrics_aggr_fn: Optional[Callable[[list, str], MetricRecord]] = None,
        weighted_by_key: str = "num-examples",
        count_cap_ratio: float = 10.0,
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        metricrecord_key: str = "metrics",
        model_store: Optional[Union[str, os.PathLike]] = None,
        identify_all: bool = False,
        identify_timeout: float = 120.0,
        node_wait_timeout: float = 60.0,
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
        self.fraction_evaluate = None if fraction_evaluate is None else fraction(fraction_evaluate, "fraction_evaluate")
        self.min_train_nodes = count(min_train_nodes, "min_train_nodes")
        self.min_evaluate_nodes = count(min_evaluate_nodes, "min_evaluate_nodes")
        self.min_available_nodes = count(min_available_nodes, "min_available_nodes")
        self.num_clients = None if num_clients is None else count(num_clients, "num_clients", low=1)
        self.seed = None if seed is None else count(seed, "seed")
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
        self.count_cap_ratio = real(count_cap_ratio, "count_cap_ratio", low=1.0)
        self.keys = protocol.RecordKeys(arrayrecord_key, configrecord_key, metricrecord_key)
        self.identify_all = flag(identify_all, "identify_all")
        # seconds; ValueError for any bad value, as always
        self.identify_timeout = real(
            identify_timeout, "identify_timeout", low=0.0, low_open=True, type_error=ValueError
        )
        self.node_wait_timeout = real(node_wait_timeout, "node_wait_timeout", low=0.0)
        self.affinity_history = flag(affinity_history, "affinity_history")

        self._rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        self.state: Optional[Server] = None
        self.layout: Optional[ModelLayout] = None
        self.client_ids: list = []  # dense index -> stable id (None: not yet claimed)
        self._index: dict = {}  # stable id -> dense index
        self._node_client: dict = {}  # Flower node id -> dense index (this run's nodes)
        self._top_free = -1  # no free index above this one (named ids fill from the top)
        self.refused_nodes: dict = {}  # node id -> why it has no client
        self.rounds: list = []
        self._pending_train: list = []  # (message, client, ids, evaluate)
        self._pending_evaluate: list = []  # (message, client)
        self._evaluate_only: list = []  # nodes to evaluate without training this round
        self._scratch: Optional[np.ndarray] = None
        self._evaluated: list = []  # validated train replies carrying an evaluation, this round
        self._evaluate_client_fn: Optional[Callable] = None  # start()'s, for its run
        self._pending_identify: list = []  # (message, node) of the id queries sent
        self._connected: list = []  # the nodes connected when the round started
        self._next: Optional[tuple] = None  # the next round's (train, evaluate) nodes, drawn
        self._rng_before_next: Optional[dict] = None  # the generator before that draw
        self._last_round: Optional[int] = None  # start()'s last round (no draw beyond it)

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
            "\t├──> Sampling: fraction train %.2f | evaluate %s, minimum nodes train %d | evaluate %d | available %d"
            " (waited for at most %g s)",
            self.fraction_train,
            "the training clients" if self.fraction_evaluate is None else f"{self.fraction_evaluate:.2f}",
            self.min_train_nodes,
            self.min_evaluate_nodes,
            self.min_available_nodes,
            self.node_wait_timeout,
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
        evaluate_client_fn: Optional[Callable[[int, str, ArrayRecord], Optional[MetricRecord]]] = None,
    ) -> Result:
        """Runs rounds ``start .. num_rounds`` (start = 1, or the round after the checkpoint in
        ``state_dir``), training and evaluating in one message per client where they coincide.

        Returns Flower's Result with the aggregated metrics per round and, in ``arrays``, every
        client's personalised model as one flat float32 array per stable client id (the layered
        record of one client: :meth:`model_record`; empty with a ``model_store``).

        ``evaluate_fn`` (server-side evaluation of a global model) is not supported: there is
        none. ``evaluate_client_fn(server_round, client_id, arrays) -> MetricRecord | None`` is
        the server's own evaluation of a personalised model, where the server has data of the
        client's distribution (a simulation, a held-out set per client): called after every
        round for each client whose upload was accepted, with that model. Its values (mean and
        median over the clients) are in ``Result.evaluate_metrics_serverapp`` and
        ``rounds[r].server_metrics``; no client can move them by what it reports."""
        if evaluate_fn is not None:
            raise ValueError(
                "evaluate_fn is not supported by FedFomo: there is no global model (each client evaluates its "
                "own; evaluate_client_fn evaluates the personalised models on the server)"
            )
        if evaluate_client_fn is not None and not callable(evaluate_client_fn):
            raise TypeError(
                "evaluate_client_fn must be callable (server_round, client_id, ArrayRecord) -> MetricRecord | None, "
                f"got {type(evaluate_client_fn).__name__}"
            )
        self._evaluate_client_fn = evaluate_client_fn
        num_rounds = count(num_rounds, "num_rounds")
        self._last_round = num_rounds
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
            self._record(current).started = time.time()
            replies = grid.send_and_receive(
                messages=self.configure_train(current, initial_arrays, train_config, grid), timeout=timeout
            )
            _, train_metrics = self.aggregate_train(current, replies)
            if train_metrics is not None:
                result.train_metrics_clientapp[current] = train_metrics
            messages = list(self.configure_evaluate(current, initial_arrays, evaluate_config, grid))
            replies = grid.send_and_receive(messages=messages, timeout=timeout) if messages else []
            evaluate_metrics = self.aggregate_evaluate(current, replies)
            if evaluate_metrics is not None:
                result.evaluate_metrics_clientapp[current] = evaluate_metrics
            self.end_round(current, time.perf_counter() - t0)
            if self.rounds[-1].server_metrics:
                result.evaluate_metrics_serverapp[current] = server_metrics_record(self.rounds[-1])
        _log.info("FedFomo finished in %.2fs", time.time() - t_start)
        result.arrays = self.models_record()
        return result

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sends each client of the round its own model and its M candidates (see
        :meth:`train_messages`), and, in the same exchange, asks the nodes drawn for the next
        round that it does not know yet for their client id.

        A round's nodes are drawn when the round before it starts, so that their id queries
        travel with that round's messages and cost no exchange of their own; the first round
        (and a resumed run's first) draws its own and asks its new nodes first. A node drawn
        that has gone by its round is left out (the round draws anew if fewer than
        ``min_train_nodes`` are left). The clients that train are evaluated in their train reply
        (``fraction_evaluate`` None); a ``fraction_evaluate`` draws from them first (a
        personalised model changes only when its client trains), then from the others."""
        self.initialise(arrays)
        self._pending_train, self._pending_evaluate, self._evaluate_only, self._evaluated = [], [], [], []
        self._pending_identify = []
        evaluating = self.fraction_evaluate is not None and self.fraction_evaluate > 0
        nodes = self._connected_nodes(grid, max(self.min_train_nodes, self.min_evaluate_nodes if evaluating else 0))
        self._connected = nodes
        self._ensure_state(len(nodes))
        if self.identify_all:
            self.identify_new(grid, nodes, connected=nodes, server_round=server_round)
        planned, self._next = self._next, None
        train, evaluate = self._still_connected(planned, nodes) if planned is not None else (None, None)
        if train is None:
            train, evaluate = self._draw(nodes)
        self.identify_new(grid, train + evaluate, connected=nodes, server_round=server_round)
        # the generator as it was before the next round's draw: what a checkpoint keeps, so that
        # a resumed run draws that round's nodes as this run does
        self._rng_before_next = self._rng.bit_generator.state
        queries = []
        if self._last_round is None or server_round < self._last_round:
            self._next = self._draw(nodes)
            queries = self._identify_messages(self._next[0] + self._next[1], server_round)
        train = self._in_client_order([n for n in train if n in self._node_client])
        evaluate = {n for n in evaluate if n in self._node_client}
        self._evaluate_only = [n for n in self._in_client_order(evaluate) if n not in set(train)]
        _log.info(
            "configure_train: %d of %d nodes train (%d of them also evaluate), %d more evaluate, %d new nodes asked "
            "for their client id for the next round",
            len(train),
            len(nodes),
            len(evaluate) - len(self._evaluate_only),
            len(self._evaluate_only),
            len(queries),
        )
        return self.train_messages(server_round, train, config, evaluate=evaluate) + queries

    def _draw(self, nodes: list) -> tuple:
        """(train, evaluate) node lists of a round, drawn from ``nodes`` (sorted node ids; with
        ``identify_all`` the bound ones, in client order)."""
        pool = [n for n in self._in_client_order(nodes) if n in self._node_client] if self.identify_all else nodes
        train = self._sample(pool, self.fraction_train, self.min_train_nodes)
        evaluate = list(train) if self.fraction_evaluate is None else self._sample_evaluate(pool, train)
        return train, evaluate

    def _still_connected(self, planned: tuple, nodes: list) -> tuple:
        """The planned (train, evaluate) lists without the nodes gone since; (None, None) when
        fewer than ``min_train_nodes`` of the planned ones are left."""
        connected = set(nodes)
        train, evaluate = ([n for n in part if n in connected] for part in planned)
        if len(train) < min(self.min_train_nodes, len(planned[0])):
            return None, None
        return train, evaluate

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple:
        """Validates every reply; a valid one's model and scores go to the server state, anything
        else is recorded in the round's ``failed`` with its reason (never raised). Returns no
        ArrayRecord (the personalised models stay on the server) and the aggregated metrics."""
        record = self._record(server_round)
        replies = self._read_identify_replies(replies, record)
        by_id = {entry[0].metadata.message_id: entry for entry in self._pending_train}
        # the global model weighs contributions by their counts: capped as the metrics' are, so one
        # client claiming a huge count cannot take it over
        reported = [protocol.reported_examples(reply, self.keys) for reply in replies]
        caps = iter(capped([c for c in reported if c is not None], self.count_cap_ratio))
        counts = [None if c is None else next(caps) for c in reported]
        answered, used = set(), []
        for reply, num_examples in zip(replies, counts):
            size = self._count_reply(record, reply)
            entry = self._match(reply, by_id, "aggregate_train")
            if entry is None:
                record.bytes_rejected += size
                continue
            message, client, ids, evaluate = entry
            answered.add(client)
            try:
                self._check_reply(reply, message)
                parsed = self._read_train(reply.content, client, ids, evaluate)
                self.state.receive(
                    client,
                    parsed.params,
                    ids,
                    parsed.scores,
                    self_score=parsed.self_score,
                    global_update=parsed.global_update,
                    num_examples=parsed.num_examples if num_examples is None else num_examples,
                )
            except Exception as e:  # a client can send anything: record it, never crash
                record.bytes_rejected += size
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
            return None, self.train_metrics_aggr_fn(self._capped([c for _, c, _ in used]), self.weighted_by_key)
        metrics = MetricRecord({"num-clients": len(used), "bytes-down": record.bytes_down, "bytes-up": record.bytes_up})
        mean_and_median(metrics, "baseline-loss", [p.baseline_loss for _, _, p in used])
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
            self._record(server_round).bytes_down += payload_bytes(content)
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
            size = self._count_reply(record, reply)
            entry = self._match(reply, by_id, "aggregate_evaluate")
            if entry is None:
                record.bytes_rejected += size
                continue
            message, client = entry
            answered.add(client)
            try:
                self._check_reply(reply, message)
                evaluation, _ = protocol.read_evaluate_reply(
                    reply.content, keys=self.keys, client_id=self.client_ids[client]
                )
            except Exception as e:
                record.bytes_rejected += size
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
            return self.evaluate_metrics_aggr_fn(self._capped(contents), self.weighted_by_key)
        return client_metrics(record)

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
        cache: dict = {}  # one record per (client, transport) per round, shared by the messages

        def model_record(j: int, row: np.ndarray, transport: str) -> ArrayRecord:
            if (j, transport) not in cache:
                cache[j, transport] = self.layout.record(row, transport)
            return cache[j, transport]

        messages = []
        g = self.state.global_params()  # the fomo-core round's global model (None for the peers')
        global_model = None if g is None else self.layout.record(np.asarray(g), self.candidate_dtype)
        for node in node_ids:
            client = self._node_client[node]
            ids, rows = self.state.candidates(client)
            ids = [int(i) for i in ids]
            content = protocol.train_instruction(
                model_record(client, self.state.model(client), "float32"),  # its own model in full
                [model_record(j, row, self.candidate_dtype) for j, row in zip(ids, rows)],
                ids,
                keys=self.keys,
                server_round=server_round,
                client_id=self.client_ids[client],
                norm=self.preset.client.norm,
                eps=self.preset.client.eps,
                transport=self.candidate_dtype,
                evaluate=node in evaluate,
                config=config,
                global_model=None if self.state.global_params(client) is None else global_model,
            )
            record.bytes_down += payload_bytes(content)
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
        self._top_free = n - 1

    def _store(self, num_clients: int) -> Optional[np.ndarray]:
        if self.model_store is None:
            return None
        from ..model_store import open_model_store

        return open_model_store(self.model_store, num_clients, self.layout.size)

    def _connected_nodes(self, grid: Grid, minimum: int) -> list:
        """The connected nodes that were not refused, sorted, once ``min_available_nodes`` are
        connected (as Flower's sample_nodes), or once ``node_wait_timeout`` has passed with at
        least ``minimum`` (and one) connected."""
        need, floor = max(self.min_available_nodes, minimum), max(minimum, 1)
        start = time.monotonic()
        logged = -math.inf
        while True:
            nodes = sorted(int(n) for n in grid.get_node_ids())
            waited = time.monotonic() - start
            if len(nodes) >= need:
                break
            if waited >= self.node_wait_timeout and len(nodes) >= floor:
                _log.warning(
                    "FedFomo: %d nodes connected after waiting %.0f s for %d; the round proceeds with them",
                    len(nodes),
                    waited,
                    need,
                )
                break
            if waited - logged >= 10:
                _log.info("Waiting for nodes to connect: %d connected (minimum required: %d)", len(nodes), need)
                logged = waited
            time.sleep(0.2)
        return [n for n in nodes if n not in self.refused_nodes]

    def _in_client_order(self, nodes: Iterable[int]) -> list:
        """Bound nodes by client index, then the others by node id."""
        bound = sorted((n for n in nodes if n in self._node_client), key=self._node_client.__getitem__)
        return bound + sorted(n for n in nodes if n not in self._node_client)

    def identify_new(self, grid: Grid, node_ids: Iterable[int], *, connected: list, server_round: int) -> None:
        """Asks the nodes among ``node_ids`` that are neither bound nor refused for their client id."""
        new = [n for n in node_ids if n not in self._node_client and n not in self.refused_nodes]
        if new:
            self.identify(grid, new, connected=connected, server_round=server_round)

    def identify(self, grid: Grid, node_ids: list, *, connected: list, server_round: int) -> None:
        """Asks each node for its stable client id (one QUERY message) and binds it."""
        self._connected = connected
        messages = self._identify_messages(node_ids, server_round)
        replies = grid.send_and_receive(messages, timeout=self.identify_timeout)
        self._read_identify_replies(replies, self._record(server_round))

    def _identify_messages(self, node_ids: Iterable[int], server_round: int) -> list:
        """One QUERY message to each node among ``node_ids`` that is neither bound nor refused
        (pending until :meth:`_read_identify_replies`)."""
        messages = []
        for node in dict.fromkeys(node_ids):
            if node in self._node_client or node in self.refused_nodes:
                continue
            message = Message(
                protocol.identify_instruction(self.keys),
                dst_node_id=node,
                message_type=MessageType.QUERY,
                group_id=f"identify-{server_round}",
            )
            self._pending_identify.append((message, node))
            messages.append(message)
        return messages

    def _read_identify_replies(self, replies: Iterable[Message], record: FedFomoRound) -> list:
        """Binds the nodes whose replies to the pending id queries name a client; returns the
        other replies. A node that names none is refused; one that did not answer (or whose
        answer is an error reply) is asked again when it is next drawn."""
        by_id = {m.metadata.message_id: node for m, node in self._pending_identify}
        self._pending_identify = []
        others, answered = [], set()
        for reply in replies:
            node = by_id.get(reply.metadata.reply_to_message_id)
            if node is None:
                others.append(reply)
                continue
            size = self._count_reply(record, reply)
            answered.add(node)
            try:
                if reply.has_error():
                    raise ValueError(f"error reply (code {reply.error.code}): {reply.error.reason}")
                self.bind(node, protocol.read_identify_reply(reply.content, self.keys), self._connected)
            except Exception as e:
                record.bytes_rejected += size
                _log.warning("FedFomo: node %d not bound: %s", node, e)
                if "error reply" not in str(e):  # a node that failed to answer is asked again later
                    self.refused_nodes[node] = str(e)
        for node in by_id.values():
            if node not in answered:
                _log.warning("FedFomo: node %d did not say its client id; asked again when next drawn", node)
        return others

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
        # other ids fill the slots from the top, leaving the low ones to partition ids; the scan
        # only moves down (a slot once taken stays taken), so binding N clients costs O(N)
        while self._top_free >= 0 and self.client_ids[self._top_free] is not None:
            self._top_free -= 1
        if self._top_free < 0:
            raise ValueError(f"all {n} client slots are taken (num_clients); client {client_id!r} refused")
        return self._top_free

    def client_index(self, client_id: Any) -> int:
        """The dense index of a stable client id."""
        try:
            return self._index[protocol.check_client_id(client_id)]
        except KeyError:
            raise ValueError(
                f"client_id {client_id!r} is not a client of this strategy (known: {[c for c in self.client_ids if c]})"
            ) from None

    @staticmethod
    def _sample_size(nodes: list, fraction: float, minimum: int) -> int:
        return 0 if fraction == 0.0 else min(max(int(len(nodes) * fraction), minimum), len(nodes))

    def _choose(self, nodes: list, size: int) -> list:
        """``size`` of ``nodes`` at random, in their order."""
        if size == 0:
            return []
        return [nodes[k] for k in sorted(self._rng.choice(len(nodes), size=size, replace=False))]

    def _sample(self, nodes: list, fraction: float, minimum: int) -> list:
        return self._choose(nodes, self._sample_size(nodes, fraction, minimum))

    def _sample_evaluate(self, nodes: list, train: list) -> list:
        """The nodes to evaluate: a sample of ``train`` when that has enough, else all of
        ``train`` and a sample of the others."""
        size = self._sample_size(nodes, self.fraction_evaluate, self.min_evaluate_nodes)
        if size <= len(train):
            return self._choose(train, size)
        picked = set(train)
        return train + self._choose([n for n in nodes if n not in picked], size - len(train))

    def end_round(self, server_round: int, seconds: float = 0.0) -> None:
        """Commits the round's uploads (visible from the next round), records it and writes the
        checkpoint."""
        record = self._record(server_round)
        record.seconds = float(seconds)
        self.state.end_round()
        if self.affinity_history:
            record.affinity = self.state.affinity.matrix.copy()
        if self._evaluate_client_fn is not None:
            for client in sorted(record.scores):
                cid = self.client_ids[client]
                metrics = self._evaluate_client_fn(server_round, cid, self.layout.record(self.state.model(client)))
                if metrics is not None:
                    record.server_metrics[client] = {k: float(v) for k, v in metrics.items()}

        def percent(value: Optional[float]) -> str:
            return "n/a" if value is None else f"{100 * value:.1f}%"

        _log.info(
            "round %d: %d clients updated, %d failed, accuracy reported by the clients %s (median %s)%s, "
            "%.1f MB down / %.1f MB up",
            server_round,
            len(record.scores),
            len(record.failed),
            percent(record.mean_accuracy),
            percent(record.median_accuracy),
            "" if record.server_accuracy is None else f", measured by the server {percent(record.server_accuracy)}",
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
        """A round's client evaluations (when it has any) and the server's own, in Flower's Result."""
        if rec.accuracy:
            result.evaluate_metrics_clientapp[rec.round] = client_metrics(rec)
        if rec.server_metrics:
            result.evaluate_metrics_serverapp[rec.round] = server_metrics_record(rec)

    def _count_reply(self, record: FedFomoRound, reply: Message) -> int:
        """Adds a reply's payload to the round's bytes received (whatever becomes of it)."""
        size = reply_bytes(reply)
        record.bytes_up += size
        return size

    def _capped(self, contents: list) -> list:
        return capped_counts(contents, self.weighted_by_key, self.keys.metrics, self.count_cap_ratio)

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
            "format": FORMAT,
            "server": os.path.basename(server_file),
            "round": self.state.round,
            "layout": self.layout.to_json(),
            "candidate_dtype": self.candidate_dtype,
            "client_ids": self.client_ids,
            "nodes": {str(node): client for node, client in self._node_client.items()},
            "rng": self._rng.bit_generator.state if self._rng_before_next is None else self._rng_before_next,
            "rounds": [r.to_json() for r in self.rounds],
        }
        data = json.dumps(meta).encode()
        atomic_write(os.path.join(folder, _STATE_FILE), lambda f: f.write(data))
        for name in os.listdir(folder):  # earlier rounds' server states
            if name.startswith("server-r") and name != meta["server"]:
                os.unlink(os.path.join(folder, name))

    def _resume(self, layout: ModelLayout) -> None:
        path = os.path.join(self.state_dir, _STATE_FILE)
        meta = read_checkpoint(path)
        if ModelLayout.from_json(meta["layout"]) != layout:
            raise ValueError(f"state_dir {self.state_dir!r} holds models of another layout than initial_arrays")
        state = Server.load(os.path.join(self.state_dir, meta["server"]), models=self._store(len(meta["client_ids"])))
        if state.m != self.m or state.policy != self.policy:
            raise ValueError(
                f"state_dir {self.state_dir!r} was written with m={state.m}, {state.policy}; "
                f"this strategy has m={self.m}, {self.policy}"
            )
        if state.num_clients != len(meta["client_ids"]) or state.round != meta["round"]:
            raise ValueError(
                f"{path} names {len(meta['client_ids'])} clients at round {meta['round']}, but its server state "
                f"{meta['server']!r} holds {state.num_clients} at round {state.round}"
            )
        self.state = state
        self.num_clients = self.state.num_clients
        self.client_ids = list(meta["client_ids"])
        self._index = {cid: i for i, cid in enumerate(self.client_ids) if cid is not None}
        self._top_free = len(self.client_ids) - 1
        # the nodes bound before the restart keep their clients (a SuperLink with a database keeps
        # its node ids); a node id that no longer exists is never sampled
        self._node_client = {node: c for node, c in meta["nodes"].items() if self.client_ids[c] is not None}
        self._rng.bit_generator.state = meta["rng"]  # as before the next round's draw
        self._next = None
        self.rounds = meta["rounds"]
        _log.info(
            "FedFomo: resumed from %s at round %d (%d clients known)", self.state_dir, self.next_round, len(self._index)
        )
