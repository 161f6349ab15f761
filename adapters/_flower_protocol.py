"""What FedFomo's Flower messages carry: the record keys, and how both sides write and read them.

The strategy (server) and the ClientApp handlers (client) both go through these functions, so the
two ends cannot disagree on the layout. Flower's own strategies send one ``"arrays"`` and one
``"config"`` record; FedFomo sends each client its own model *and* its own candidates:

train instruction (server -> client i)
    ``"arrays"``         ArrayRecord: client i's latest model as the server holds it (its baseline)
    ``"candidate.<k>"``  ArrayRecord: the k-th candidate model, k = 0..M-1
    ``"config"``         ConfigRecord: ``"server-round"``, ``"client"`` (i, the dense client index),
                         ``"candidate-clients"`` (the candidates' dense indices, in order),
                         ``"norm"``, ``"eps"`` (the fomo_step options of the strategy's preset),
                         plus the user's train config (the strategy's keys win)
train reply (client i -> server)
    ``"arrays"``         ArrayRecord: the model after the FedFomo update and local training
    ``"metrics"``        MetricRecord: ``"num-examples"``, ``"candidate-clients"`` (echoed),
                         ``"scores"``, ``"weights"``, ``"candidate-losses"`` ([M] each),
                         ``"baseline-loss"``, ``"eval-seconds"``, ``"step-seconds"``,
                         ``"train-seconds"``, and ``"partition-id"`` when the node has one
evaluate instruction: ``"arrays"`` (client i's latest model) and ``"config"``
evaluate reply:       ``"metrics"`` with ``"loss"``, ``"accuracy"``, ``"num-examples"``

Client indices (not Flower node ids, which are unsigned 64-bit and do not fit every record type)
name the candidates; the strategy maps node ids to indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

__all__ = [
    "ARRAYS",
    "CONFIG",
    "METRICS",
    "CANDIDATE_PREFIX",
    "TrainInstruction",
    "TrainReply",
    "EvaluateReply",
    "train_instruction",
    "read_train_instruction",
    "train_reply",
    "read_train_reply",
    "evaluate_instruction",
    "evaluate_reply",
    "read_evaluate_reply",
    "signature",
]

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
CANDIDATE_PREFIX = "candidate."
_TRAIN_LISTS = ("scores", "weights", "candidate-losses")
_TRAIN_SCALARS = ("num-examples", "baseline-loss", "eval-seconds", "step-seconds", "train-seconds")


def signature(record: ArrayRecord) -> dict:
    """{key: (dtype, shape)} of an ArrayRecord: what two models must share to be exchanged."""
    return {k: (a.dtype, tuple(a.shape)) for k, a in record.items()}


def _config(base: Optional[ConfigRecord], entries: dict) -> ConfigRecord:
    config = ConfigRecord(dict(base.items()) if base is not None else {})
    for key, value in entries.items():
        config[key] = value
    return config


# --- train -------------------------------------------------------------------------------------


@dataclass
class TrainInstruction:
    """A train instruction as the client reads it. candidates: [M] ArrayRecords."""

    model: ArrayRecord
    candidates: list
    candidate_clients: list
    config: ConfigRecord


def train_instruction(
    model: ArrayRecord,
    candidates: list,
    candidate_clients: list,
    *,
    server_round: int,
    client: int,
    norm: str,
    eps: float,
    config: Optional[ConfigRecord] = None,
) -> RecordDict:
    """The content of client ``client``'s train message: its model, its M candidates and the
    config (the user's ``config`` entries, then the strategy's)."""
    content = RecordDict({ARRAYS: model})
    for k, candidate in enumerate(candidates):
        content[f"{CANDIDATE_PREFIX}{k}"] = candidate
    content[CONFIG] = _config(
        config,
        {
            "server-round": int(server_round),
            "client": int(client),
            "candidate-clients": [int(c) for c in candidate_clients],
            "norm": str(norm),
            "eps": float(eps),
        },
    )
    return content


def read_train_instruction(content: RecordDict) -> TrainInstruction:
    """The parts of a train message, checked: a model, a config naming M candidate clients and
    exactly the M candidate records ``candidate.0`` .. ``candidate.<M-1>``."""
    if ARRAYS not in content.array_records:
        raise ValueError(f"message content must hold the client's model as ArrayRecord {ARRAYS!r}, got keys {list(content)}")
    if CONFIG not in content.config_records:
        raise ValueError(f"message content must hold a ConfigRecord {CONFIG!r}, got keys {list(content)}")
    config = content.config_records[CONFIG]
    ids = config.get("candidate-clients")
    if not isinstance(ids, list):
        raise ValueError(f"config['candidate-clients'] must be a list of client indices, got {ids!r}")
    keys = [f"{CANDIDATE_PREFIX}{k}" for k in range(len(ids))]
    found = sorted(k for k in content.array_records if k.startswith(CANDIDATE_PREFIX))
    if sorted(keys) != found:
        raise ValueError(
            f"message content must hold {len(ids)} candidate ArrayRecords {keys}, got {found}"
        )
    candidates = [content.array_records[k] for k in keys]
    return TrainInstruction(content.array_records[ARRAYS], candidates, [int(c) for c in ids], config)


@dataclass
class TrainReply:
    """A train reply as the server reads it.

    model:            the client's new model
    scores, weights, candidate_losses: [M] float64, in the order of ``candidate_clients``
    baseline_loss:    the client's validation loss before the update
    num_examples:     its training-set size
    partition_id:     the node's ``partition-id`` (simulations), or None
    seconds:          {"eval", "step", "train"} time spent by the client
    """

    model: ArrayRecord
    candidate_clients: list
    scores: np.ndarray
    weights: np.ndarray
    candidate_losses: np.ndarray
    baseline_loss: float
    num_examples: int
    partition_id: Optional[int]
    seconds: dict


def train_reply(model: ArrayRecord, result: Any, candidate_clients: list, *, num_examples: int,
                partition_id: Optional[int] = None) -> RecordDict:
    """The content of a train reply from a :class:`fomo_core.adapters.ClientRound` ``result``."""
    metrics = MetricRecord(
        {
            "num-examples": int(num_examples),
            "candidate-clients": [int(c) for c in candidate_clients],
            "scores": [float(s) for s in result.scores],
            "weights": [float(w) for w in result.weights],
            "candidate-losses": [float(v) for v in result.candidate_losses],
            "baseline-loss": float(result.baseline_loss),
            "eval-seconds": float(result.eval_seconds),
            "step-seconds": float(result.step_seconds),
            "train-seconds": float(result.train_seconds),
        }
    )
    if partition_id is not None:
        metrics["partition-id"] = int(partition_id)
    return RecordDict({ARRAYS: model, METRICS: metrics})


def read_train_reply(content: RecordDict, candidate_clients: list, model_signature: dict) -> TrainReply:
    """The parts of a train reply, checked against what was sent: the candidates echoed in the
    same order, one score, weight and loss per candidate, a model with the same keys, dtypes and
    shapes (``model_signature``, from :func:`signature`) as the one sent. ValueError otherwise."""
    if ARRAYS not in content.array_records:
        raise ValueError(f"reply must hold the client's model as ArrayRecord {ARRAYS!r}, got keys {list(content)}")
    if METRICS not in content.metric_records:
        raise ValueError(f"reply must hold a MetricRecord {METRICS!r}, got keys {list(content)}")
    model = content.array_records[ARRAYS]
    got = signature(model)
    if got != model_signature:
        raise ValueError(f"reply model has arrays {got}, expected {model_signature} (the model sent)")
    metrics = content.metric_records[METRICS]
    missing = [k for k in ("candidate-clients", *_TRAIN_LISTS, *_TRAIN_SCALARS) if k not in metrics]
    if missing:
        raise ValueError(f"reply metrics lack {missing}")
    echoed = [int(c) for c in metrics["candidate-clients"]]
    if echoed != [int(c) for c in candidate_clients]:
        raise ValueError(f"reply metrics['candidate-clients'] is {echoed}, expected {list(candidate_clients)} (as sent)")
    lists = {}
    for key in _TRAIN_LISTS:
        values = np.asarray(metrics[key], dtype=np.float64)
        if values.shape != (len(echoed),):
            raise ValueError(f"reply metrics[{key!r}] has {values.size} values, expected {len(echoed)} (one per candidate)")
        lists[key] = values
    if np.isinf(lists["scores"]).any():
        raise ValueError(f"reply metrics['scores'] must be finite or NaN (not measured), got {lists['scores'].tolist()}")
    pid = metrics.get("partition-id")
    return TrainReply(
        model=model,
        candidate_clients=echoed,
        scores=lists["scores"],
        weights=lists["weights"],
        candidate_losses=lists["candidate-losses"],
        baseline_loss=float(metrics["baseline-loss"]),
        num_examples=int(metrics["num-examples"]),
        partition_id=None if pid is None else int(pid),
        seconds={k: float(metrics[f"{k}-seconds"]) for k in ("eval", "step", "train")},
    )


# --- evaluate ----------------------------------------------------------------------------------


@dataclass
class EvaluateReply:
    loss: float
    accuracy: float
    num_examples: int


def evaluate_instruction(model: ArrayRecord, *, server_round: int, client: int,
                         config: Optional[ConfigRecord] = None) -> RecordDict:
    """The content of client ``client``'s evaluate message: its own latest model and the config."""
    return RecordDict(
        {ARRAYS: model, CONFIG: _config(config, {"server-round": int(server_round), "client": int(client)})}
    )


def evaluate_reply(loss: float, accuracy: float, *, num_examples: int) -> RecordDict:
    return RecordDict(
        {METRICS: MetricRecord({"loss": float(loss), "accuracy": float(accuracy), "num-examples": int(num_examples)})}
    )


def read_evaluate_reply(content: RecordDict) -> EvaluateReply:
    if METRICS not in content.metric_records:
        raise ValueError(f"reply must hold a MetricRecord {METRICS!r}, got keys {list(content)}")
    metrics = content.metric_records[METRICS]
    missing = [k for k in ("loss", "accuracy", "num-examples") if k not in metrics]
    if missing:
        raise ValueError(f"reply metrics lack {missing}")
    return EvaluateReply(float(metrics["loss"]), float(metrics["accuracy"]), int(metrics["num-examples"]))
