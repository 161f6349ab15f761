"""What a FedFomo round records and how it is kept: :class:`FedFomoRound`, the payload bytes of a
message, the summaries of the clients' reports (mean and median; counts capped against the other
clients') and of the server's own measurements, and the checked reader of a checkpoint's
``strategy.json``.

Imports NumPy and Flower only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from .._validate import count
from . import _flower_protocol as protocol

__all__ = [
    "FedFomoRound",
    "FORMAT",
    "capped_counts",
    "client_metrics",
    "mean_and_median",
    "payload_bytes",
    "read_checkpoint",
    "reply_bytes",
    "server_metrics_record",
]

FORMAT = "fomo-core/flower-strategy/1"
MAX_STATE_BYTES = 1 << 30  # a checkpoint's metadata (its round records grow with rounds x clients)


@dataclass
class FedFomoRound:
    """What happened in one server round (clients by dense index; ``FedFomo.client_ids`` maps
    them to their stable ids).

    candidates:      {client: candidate clients sent to it}
    scores, weights: {client: [M] first-order scores / normalised weights it returned}
    baseline_loss:   {client: validation loss of its model before the update}
    failed:          {client: why its train reply was not used}
    loss, accuracy:  {client: evaluation of its new model on its test data}, as the client
                     reported it
    evaluate_failed: {client: why its evaluate reply was not used}
    server_metrics:  {client: {name: value}} the server's own evaluation of the model the
                     client uploaded this round (``evaluate_client_fn``)
    bytes_down, bytes_up: payload bytes sent to / received from the clients (array data, and
                     8 per number and 1 per character of the other records); ``bytes_up``
                     counts every reply, rejected ones included
    bytes_rejected:  the part of ``bytes_up`` in replies that were not used
    started:         the round's start (seconds since the epoch)
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
    server_metrics: dict = field(default_factory=dict)
    bytes_down: int = 0
    bytes_up: int = 0
    bytes_rejected: int = 0
    started: float = 0.0
    seconds: float = 0.0
    affinity: Optional[np.ndarray] = None

    @property
    def mean_accuracy(self) -> Optional[float]:
        """Mean personalised accuracy the clients evaluated this round reported (None if none)."""
        return float(np.mean(list(self.accuracy.values()))) if self.accuracy else None

    @property
    def median_accuracy(self) -> Optional[float]:
        """Median of the accuracies the clients reported: one client claiming any value moves it
        at most to a neighbouring client's value (None if none)."""
        return float(np.median(list(self.accuracy.values()))) if self.accuracy else None

    @property
    def server_accuracy(self) -> Optional[float]:
        """Mean of the server's own measurements of ``"accuracy"`` (None without any)."""
        values = [m["accuracy"] for m in self.server_metrics.values() if "accuracy" in m]
        return float(np.mean(values)) if values else None

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("affinity")
        for key, value in out.items():
            if isinstance(value, dict):
                out[key] = {str(k): v for k, v in value.items()}
        return out

    @classmethod
    def from_json(cls, data: dict) -> FedFomoRound:
        """The record :meth:`to_json` wrote (ValueError for a field it does not have)."""
        known = {f.name for f in fields(cls)} - {"round", "affinity"}
        unknown = set(data) - known - {"round"}
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)[:5]}")
        rec = cls(int(data["round"]))
        for key, value in data.items():
            if isinstance(value, dict):
                setattr(rec, key, {int(k): v for k, v in value.items()})
            elif key != "round":
                setattr(rec, key, value)
        return rec


def _value_bytes(value: Any) -> int:
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, list):
        return sum(_value_bytes(v) for v in value)
    return 8


def payload_bytes(content: RecordDict) -> int:
    """Array data, and 8 per number and 1 per character or byte of the other records."""
    total = 0
    for record in content.values():
        if isinstance(record, ArrayRecord):
            total += sum(len(a.data) for a in record.values())
        else:
            total += sum(_value_bytes(v) for v in record.values())
    return total


def reply_bytes(reply: Message) -> int:
    return payload_bytes(reply.content) if reply.has_content() else 0


def read_checkpoint(path: str) -> dict:
    """``strategy.json`` read and checked: every entry of the expected type (ValueError naming
    the file and the entry otherwise); ``nodes`` as {int node id: client index} and ``rounds``
    as FedFomoRound records."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_STATE_BYTES + 1)
        if len(data) > MAX_STATE_BYTES:
            raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
        meta = json.loads(data)
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is not a readable FedFomo checkpoint ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path} holds format {found!r}, expected {FORMAT!r}")

    def entry(key: str, kind: type) -> Any:
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise ValueError(f"{path}: entry {key!r} must be a {kind.__name__}, got {type(meta.get(key)).__name__}")
        return meta[key]

    server = entry("server", str)
    if not re.fullmatch(r"server-r\d{6,}\.npz", server):
        raise ValueError(f"{path}: entry 'server' must name a server-r<round>.npz file beside it, got {server[:80]!r}")
    entry("layout", dict), entry("rng", dict)
    count(entry("round", int), f"{path}: entry 'round'", type_error=ValueError)
    ids = entry("client_ids", list)
    for i, cid in enumerate(ids):
        if cid is not None:
            protocol.check_client_id(cid, f"{path}: client_ids[{i}]")
    if len({c for c in ids if c is not None}) != sum(c is not None for c in ids):
        raise ValueError(f"{path}: entry 'client_ids' names a client twice")
    nodes = {}
    for node, client in meta.get("nodes", {}).items():  # absent in checkpoints of earlier versions
        if not (node.isdigit() and isinstance(client, int) and not isinstance(client, bool) and 0 <= client < len(ids)):
            raise ValueError(f"{path}: entry 'nodes' maps {node[:40]!r} to {client!r}, expected a node id and a client")
        nodes[int(node)] = client
    meta["nodes"] = nodes
    try:
        meta["rounds"] = [FedFomoRound.from_json(r) for r in entry("rounds", list)]
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise ValueError(f"{path}: entry 'rounds' holds a malformed round record ({type(e).__name__}: {e})") from None
    return meta


def capped_counts(contents: list, key: str, where: str, ratio: float) -> list:
    """The replies as the metric aggregation functions see them: a count ``key`` (in the
    MetricRecord ``where``) above ``ratio`` times the median of the other replies' counts is
    lowered to that cap (in a copy), so one client cannot outweigh the others by claiming a huge
    count."""
    counts = {}
    for i, content in enumerate(contents):
        value = content.metric_records[where].get(key) if where in content.metric_records else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            counts[i] = value
    out = list(contents)
    for i, cap in zip(counts, capped(list(counts.values()), ratio)):
        if counts[i] > cap:
            copy = RecordDict(dict(contents[i].items()))
            copy[where] = MetricRecord({**dict(contents[i].metric_records[where].items()), key: type(counts[i])(cap)})
            out[i] = copy
    return out


def capped(counts: list, ratio: float) -> list:
    """Each count lowered to at most ``ratio`` times the median of the other counts (as they are
    with fewer than two)."""
    if len(counts) < 2:
        return list(counts)
    order = sorted(range(len(counts)), key=counts.__getitem__)
    ranked = [float(counts[i]) for i in order]
    out = list(counts)
    for rank, i in enumerate(order):
        out[i] = min(counts[i], ratio * _median_without(ranked, rank))
    return out


def _median_without(ranked: list, rank: int) -> float:
    """The median of the sorted list ``ranked`` without its element at ``rank``."""
    n = len(ranked) - 1

    def at(i: int) -> float:
        return ranked[i if i < rank else i + 1]

    return at(n // 2) if n % 2 else 0.5 * (at(n // 2 - 1) + at(n // 2))


def mean_and_median(metrics: MetricRecord, name: str, values: Iterable[float]) -> None:
    """``name`` (the mean) and ``name-median`` of the finite values into ``metrics`` (nothing
    when none is finite)."""
    arr = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if arr.size:
        metrics[name] = float(arr.mean())
        metrics[f"{name}-median"] = float(np.median(arr))


def client_metrics(rec: FedFomoRound) -> MetricRecord:
    """The evaluations the clients reported in a round: mean and median of loss and accuracy."""
    metrics = MetricRecord({"num-clients": len(rec.accuracy)})
    mean_and_median(metrics, "loss", rec.loss.values())
    mean_and_median(metrics, "accuracy", rec.accuracy.values())
    return metrics


def server_metrics_record(rec: FedFomoRound) -> MetricRecord:
    """The server's own evaluations in a round: mean and median of every value it measured."""
    metrics = MetricRecord({"num-clients": len(rec.server_metrics)})
    for name in sorted({k for m in rec.server_metrics.values() for k in m}):
        mean_and_median(metrics, name, [m[name] for m in rec.server_metrics.values() if name in m])
    return metrics
