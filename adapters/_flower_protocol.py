"""What FedFomo's Flower messages carry: the record keys, and how both sides write and read them.

The strategy (server) and the ClientApp handlers (client) both go through these functions, so the
two ends cannot disagree on the layout. Record names follow Flower's FedAvg (``"arrays"``,
``"config"``, ``"metrics"``) and can be changed (:class:`RecordKeys`).

identify (server -> a node seen for the first time; a QUERY message)
    ``<config>``          ConfigRecord ``{"fedfomo": "identify"}``
identify reply
    ``<config>``          ConfigRecord ``{"client-id": str}``: the node's stable client id (its
                          ``partition-id``, or a ``client-id`` from its node config)
train instruction (server -> client)
    ``<arrays>``          the client's latest model as the server holds it (its baseline), in the
                          model's own dtypes
    ``candidate.<k>``     the k-th candidate model, k = 0..M-1, in ``candidate-dtype``
    ``global.model``      the server's global model, in ``candidate-dtype``, when its preset keeps
                          one (fomo-core's round)
    ``<config>``          ``"server-round"``, ``"client-id"``, ``"candidate-clients"`` (the
                          candidates' dense indices), ``"candidate-dtype"``, ``"norm"``, ``"eps"``,
                          ``"evaluate"`` (bool: also evaluate the new model), plus the user's
                          train config (the strategy's keys win)
train reply
    ``<arrays>``          the model after the FedFomo update and local training
    ``global.update``     the client's contribution to the global model (its change to it), when
                          it received one and its policy contributes
    ``<config>``          ``{"client-id": str}`` (must be the client the message was sent to)
    ``<metrics>``         ``"num-examples"``, ``"candidate-clients"`` (echoed), ``"scores"``,
                          ``"weights"``, ``"candidate-losses"`` ([M] each), ``"baseline-loss"``,
                          ``"eval-seconds"``, ``"step-seconds"``, ``"train-seconds"``,
                          ``"self-score"`` when the preset makes the client's own trained model
                          a candidate; with
                          ``evaluate``: ``"loss"``, ``"accuracy"``, ``"num-eval-examples"`` of the
                          new model on the client's test data (one message per client per round)
evaluate instruction / reply (only for clients evaluated without training this round)
    ``<arrays>`` + ``<config>`` / ``<metrics>`` with ``"loss"``, ``"accuracy"``,
    ``"num-eval-examples"`` and ``<config>`` ``{"client-id": str}``

Every reader checks types, counts, ranges and finiteness and raises ValueError with the reason;
the strategy turns that into a recorded failed reply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from .._validate import count, real
from ._flower_layout import TRANSPORTS, ModelLayout

__all__ = [
    "RecordKeys",
    "CANDIDATE_PREFIX",
    "GLOBAL_MODEL",
    "GLOBAL_UPDATE",
    "MAX_NUM_EXAMPLES",
    "TrainInstruction",
    "TrainReply",
    "Evaluation",
    "identify_instruction",
    "is_identify",
    "identify_reply",
    "read_identify_reply",
    "train_instruction",
    "read_train_instruction",
    "train_reply",
    "read_train_reply",
    "evaluate_instruction",
    "evaluate_reply",
    "read_evaluate_reply",
    "check_client_id",
]

CANDIDATE_PREFIX = "candidate."
GLOBAL_MODEL = "global.model"  # the server's global model in a train instruction
GLOBAL_UPDATE = "global.update"  # a client's contribution to it in a train reply
MAX_NUM_EXAMPLES = 2**40  # a count beyond this is a lie, not a dataset
MAX_SECONDS = 1e7
MAX_CLIENT_ID_LENGTH = 128
_TIMES = ("eval-seconds", "step-seconds", "train-seconds")


@dataclass(frozen=True)
class RecordKeys:
    """Names of the records in FedFomo's messages (Flower's FedAvg: ``arrayrecord_key``,
    ``configrecord_key``; replies' metrics under ``metrics``)."""

    arrays: str = "arrays"
    config: str = "config"
    metrics: str = "metrics"

    def __post_init__(self) -> None:
        for name in ("arrays", "config", "metrics"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or value.startswith((CANDIDATE_PREFIX, "global.")):
                raise ValueError(
                    f"record key {name} must be a non-empty string not starting with {CANDIDATE_PREFIX!r} "
                    f"or 'global.', got {value!r}"
                )
        if len({self.arrays, self.config, self.metrics}) != 3:
            raise ValueError(f"record keys must differ, got {self}")


def check_client_id(value: Any, role: str = "client-id") -> str:
    """A stable client id: a non-empty printable string of at most 128 characters."""
    if isinstance(value, bool) or not isinstance(value, (str, int, np.integer)):
        raise ValueError(f"{role} must be a string or an integer, got {type(value).__name__}")
    text = str(int(value)) if isinstance(value, (int, np.integer)) else value
    if not text or len(text) > MAX_CLIENT_ID_LENGTH or not text.isprintable():
        raise ValueError(f"{role} must be 1 to {MAX_CLIENT_ID_LENGTH} printable characters, got {text[:40]!r}")
    return text


# --- checked reads of single values --------------------------------------------------------------


def _get(record: Any, key: str, role: str) -> Any:
    if key not in record:
        raise ValueError(f"{role} lacks {key!r}")
    return record[key]


# A record holds what a peer sent: a wrong value there is bad data whatever its kind (ValueError).


def _integer(record: Any, key: str, role: str, low: int, high: int) -> int:
    return count(_get(record, key, role), f"{role}[{key!r}]", low=low, high=high, type_error=ValueError)


def _real(
    record: Any, key: str, role: str, low: float = -math.inf, high: float = math.inf, finite: bool = True
) -> float:
    """``finite=False``: NaN and infinities pass (a diverged model's loss; kept out of the means)."""
    return real(_get(record, key, role), f"{role}[{key!r}]", low=low, high=high, finite=finite, type_error=ValueError)


def _reals(record: Any, key: str, role: str, count: int) -> np.ndarray:
    value = _get(record, key, role)
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        raise ValueError(f"{role}[{key!r}] must be a list of numbers, got {type(value).__name__}")
    if len(value) != count:
        raise ValueError(f"{role}[{key!r}] has {len(value)} values, expected {count} (one per candidate)")
    return np.asarray(value, dtype=np.float64)


def _only(records: Any, expected: set, role: str) -> None:
    extra = set(records.keys()) - expected
    if extra:
        raise ValueError(f"{role} holds unexpected records {sorted(extra)[:5]}")


def _config(base: Optional[ConfigRecord], entries: dict) -> ConfigRecord:
    config = ConfigRecord(dict(base.items()) if base is not None else {})
    for key, value in entries.items():
        config[key] = value
    return config


def _reply_metrics(content: RecordDict, keys: RecordKeys, client_id: str, role: str, *, arrays: set) -> MetricRecord:
    """The reply's MetricRecord, after checking it holds only the expected records (ArrayRecords
    ``arrays``, one MetricRecord, one ConfigRecord) and names the client it was sent to."""
    _only(content.array_records, arrays, f"{role} ArrayRecords")
    _only(content.metric_records, {keys.metrics}, f"{role} MetricRecords")
    _only(content.config_records, {keys.config}, f"{role} ConfigRecords")
    _reply_client_id(content, keys, client_id, role)
    if keys.metrics not in content.metric_records:
        raise ValueError(f"{role} must hold a MetricRecord {keys.metrics!r}, got keys {list(content)}")
    return content.metric_records[keys.metrics]


def _reply_client_id(content: RecordDict, keys: RecordKeys, expected: str, role: str) -> None:
    if keys.config not in content.config_records:
        raise ValueError(f"{role} lacks its ConfigRecord {keys.config!r} (the client id)")
    got = check_client_id(_get(content.config_records[keys.config], "client-id", role), f"{role} client-id")
    if got != expected:
        raise ValueError(f"{role} is for client {got!r}, but the message was sent to client {expected!r}")


# --- identify ------------------------------------------------------------------------------------


def identify_instruction(keys: RecordKeys) -> RecordDict:
    return RecordDict({keys.config: ConfigRecord({"fedfomo": "identify"})})


def is_identify(content: RecordDict, keys: RecordKeys) -> bool:
    config = content.config_records.get(keys.config)
    return config is not None and config.get("fedfomo") == "identify"


def identify_reply(client_id: str, keys: RecordKeys) -> RecordDict:
    return RecordDict({keys.config: ConfigRecord({"client-id": check_client_id(client_id)})})


def read_identify_reply(content: RecordDict, keys: RecordKeys) -> str:
    if keys.config not in content.config_records:
        raise ValueError(f"identify reply lacks its ConfigRecord {keys.config!r}")
    return check_client_id(_get(content.config_records[keys.config], "client-id", "identify reply"))


# --- train ---------------------------------------------------------------------------------------


@dataclass
class TrainInstruction:
    """A train instruction as the client reads it: records, not yet decoded to parameters."""

    model: ArrayRecord
    candidates: list
    candidate_clients: list
    transport: str
    evaluate: bool
    config: ConfigRecord
    global_model: Optional[ArrayRecord] = None


def train_instruction(
    model: ArrayRecord,
    candidates: list,
    candidate_clients: list,
    *,
    keys: RecordKeys,
    server_round: int,
    client_id: str,
    norm: str,
    eps: float,
    transport: str,
    evaluate: bool,
    config: Optional[ConfigRecord] = None,
    global_model: Optional[ArrayRecord] = None,
) -> RecordDict:
    """The content of a client's train message: its model, its M candidates, the server's global
    model when there is one, and the config (the user's ``config`` entries, then the strategy's)."""
    content = RecordDict({keys.arrays: model})
    for k, candidate in enumerate(candidates):
        content[f"{CANDIDATE_PREFIX}{k}"] = candidate
    if global_model is not None:
        content[GLOBAL_MODEL] = global_model
    content[keys.config] = _config(
        config,
        {
            "server-round": int(server_round),
            "client-id": str(client_id),
            "candidate-clients": [int(c) for c in candidate_clients],
            "candidate-dtype": str(transport),
            "norm": str(norm),
            "eps": float(eps),
            "evaluate": bool(evaluate),
        },
    )
    return content


def read_train_instruction(content: RecordDict, keys: RecordKeys) -> TrainInstruction:
    """The parts of a train message, checked: a model, a config naming M candidate clients and
    exactly the M candidate records ``candidate.0`` .. ``candidate.<M-1>``."""
    if keys.arrays not in content.array_records:
        raise ValueError(
            f"message content must hold the client's model as ArrayRecord {keys.arrays!r}, got keys {list(content)}"
        )
    if keys.config not in content.config_records:
        raise ValueError(f"message content must hold a ConfigRecord {keys.config!r}, got keys {list(content)}")
    config = content.config_records[keys.config]
    ids = config.get("candidate-clients")
    if not isinstance(ids, list):
        raise ValueError(f"config['candidate-clients'] must be a list of client indices, got {ids!r}")
    expected = [f"{CANDIDATE_PREFIX}{k}" for k in range(len(ids))]
    found = sorted(k for k in content.array_records if k.startswith(CANDIDATE_PREFIX))
    if sorted(expected) != found:
        raise ValueError(f"message content must hold {len(ids)} candidate ArrayRecords {expected}, got {found}")
    transport = config.get("candidate-dtype", "float32")
    if transport not in TRANSPORTS:
        raise ValueError(f"config['candidate-dtype'] must be one of {TRANSPORTS}, got {transport!r}")
    return TrainInstruction(
        content.array_records[keys.arrays],
        [content.array_records[k] for k in expected],
        [int(c) for c in ids],
        transport,
        bool(config.get("evaluate", False)),
        config,
        content.array_records.get(GLOBAL_MODEL),
    )


@dataclass
class Evaluation:
    """A client's evaluation of its own latest model: loss, accuracy in [0, 1], test-set size."""

    loss: float
    accuracy: float
    num_examples: int


@dataclass
class TrainReply:
    """A train reply as the server reads it, every field checked.

    params:           [P] float32 the client's new model (validated bytes, finite)
    scores:           [M] float64 raw scores, finite or NaN (not measured)
    weights:          [M] float64 in [0, 1], summing to at most 1
    candidate_losses: [M] float64 (NaN or inf for a diverged candidate)
    self_score:       the score of its own trained model when its policy makes that a candidate
    baseline_loss:    the client's validation loss before the update (may be NaN or inf)
    num_examples:     its training-set size
    seconds:          {"eval", "step", "train"}
    evaluation:       its evaluation of the new model, or None
    metrics:          the reply's MetricRecord (for the user's metric aggregation)
    global_update:    [P] float32 its contribution to the global model (validated, finite), or None
    """

    params: np.ndarray
    scores: np.ndarray
    weights: np.ndarray
    candidate_losses: np.ndarray
    self_score: Optional[float]
    baseline_loss: float
    num_examples: int
    seconds: dict
    evaluation: Optional[Evaluation]
    metrics: MetricRecord
    global_update: Optional[np.ndarray] = None


def train_reply(
    model: ArrayRecord,
    result: Any,
    candidate_clients: list,
    *,
    keys: RecordKeys,
    client_id: str,
    num_examples: int,
    evaluation: Optional[Evaluation] = None,
    global_update: Optional[ArrayRecord] = None,
) -> RecordDict:
    """The content of a train reply from a client round ``result`` (scores, weights,
    candidate_losses, baseline_loss, eval/step/train_seconds), with the client's contribution to
    the global model (``global_update``, in the model's layout) when it has one."""
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
    if getattr(result, "self_score", None) is not None:
        metrics["self-score"] = float(result.self_score)
    if evaluation is not None:
        metrics["loss"] = float(evaluation.loss)
        metrics["accuracy"] = float(evaluation.accuracy)
        metrics["num-eval-examples"] = int(evaluation.num_examples)
    content = RecordDict(
        {keys.arrays: model, keys.metrics: metrics, keys.config: ConfigRecord({"client-id": str(client_id)})}
    )
    if global_update is not None:
        content[GLOBAL_UPDATE] = global_update
    return content


def _read_evaluation(metrics: MetricRecord, role: str) -> Evaluation:
    return Evaluation(
        loss=_real(metrics, "loss", role, low=0.0),
        accuracy=_real(metrics, "accuracy", role, low=0.0, high=1.0),
        num_examples=_integer(metrics, "num-eval-examples", role, 0, MAX_NUM_EXAMPLES),
    )


def read_train_reply(
    content: RecordDict,
    *,
    keys: RecordKeys,
    layout: ModelLayout,
    candidate_clients: list,
    client_id: str,
    evaluate: bool,
    out: Optional[np.ndarray] = None,
) -> TrainReply:
    """The parts of a train reply, every one checked against what was sent: only the expected
    records; the client id the message went to; a model of ``layout`` whose bytes match its
    dtypes and shapes, all finite (read into ``out``, a scratch row [P], when given); the
    candidates echoed in order; one score, weight and loss per candidate; counts, times and (with
    ``evaluate``) the evaluation in range. ValueError with the reason otherwise."""
    role = "reply"
    metrics = _reply_metrics(content, keys, client_id, role, arrays={keys.arrays, GLOBAL_UPDATE})
    echoed = _get(metrics, "candidate-clients", f"{role} metrics")
    if not isinstance(echoed, list) or any(isinstance(c, bool) or not isinstance(c, int) for c in echoed):
        raise ValueError(f"{role} metrics['candidate-clients'] must be a list of integers, got {type(echoed).__name__}")
    if echoed != [int(c) for c in candidate_clients]:
        raise ValueError(
            f"{role} metrics['candidate-clients'] is {echoed[:16]}, expected {list(candidate_clients)} (as sent)"
        )
    m = len(echoed)
    scores = _reals(metrics, "scores", f"{role} metrics", m)
    if np.isinf(scores).any():
        raise ValueError(f"{role} metrics['scores'] must be finite or NaN (not measured), got {scores.tolist()}")
    weights = _reals(metrics, "weights", f"{role} metrics", m)
    if not (np.isfinite(weights).all() and (weights >= 0).all() and weights.sum() <= 1 + 1e-6):
        raise ValueError(f"{role} metrics['weights'] must be in [0, 1] and sum to at most 1, got {weights.tolist()}")
    losses = _reals(metrics, "candidate-losses", f"{role} metrics", m)
    baseline = _real(metrics, "baseline-loss", f"{role} metrics", finite=False)
    self_score = _real(metrics, "self-score", f"{role} metrics") if "self-score" in metrics else None
    num_examples = _integer(metrics, "num-examples", f"{role} metrics", 0, MAX_NUM_EXAMPLES)
    seconds = {k.split("-")[0]: _real(metrics, k, f"{role} metrics", 0.0, MAX_SECONDS) for k in _TIMES}
    evaluation = _read_evaluation(metrics, f"{role} metrics") if evaluate else None
    if keys.arrays not in content.array_records:
        raise ValueError(
            f"{role} must hold the client's model as ArrayRecord {keys.arrays!r}, got keys {list(content)}"
        )
    params = layout.flat_from_record(content.array_records[keys.arrays], f"{role} model", out=out)
    update = content.array_records.get(GLOBAL_UPDATE)
    update = None if update is None else layout.flat_from_record(update, f"{role} {GLOBAL_UPDATE!r}")
    return TrainReply(
        params, scores, weights, losses, self_score, baseline, num_examples, seconds, evaluation, metrics, update
    )


def reported_examples(reply: Any, keys: RecordKeys) -> Optional[int]:
    """A train reply's (a Message's) claimed training-set size, read before the replies are so
    that the round can cap every claim against the others', or None when it has none in range
    (an error reply, or one refused when it is read)."""
    if reply.has_error():
        return None
    try:
        return _integer(
            reply.content.metric_records[keys.metrics], "num-examples", "reply metrics", 0, MAX_NUM_EXAMPLES
        )
    except (KeyError, TypeError, ValueError):
        return None


# --- evaluate ------------------------------------------------------------------------------------


def evaluate_instruction(
    model: ArrayRecord, *, keys: RecordKeys, server_round: int, client_id: str, config: Optional[ConfigRecord] = None
) -> RecordDict:
    """The content of a client's evaluate message: its own latest model and the config."""
    return RecordDict(
        {
            keys.arrays: model,
            keys.config: _config(config, {"server-round": int(server_round), "client-id": str(client_id)}),
        }
    )


def evaluate_reply(evaluation: Evaluation, *, keys: RecordKeys, client_id: str) -> RecordDict:
    return RecordDict(
        {
            keys.metrics: MetricRecord(
                {
                    "loss": float(evaluation.loss),
                    "accuracy": float(evaluation.accuracy),
                    "num-eval-examples": int(evaluation.num_examples),
                }
            ),
            keys.config: ConfigRecord({"client-id": str(client_id)}),
        }
    )


def read_evaluate_reply(content: RecordDict, *, keys: RecordKeys, client_id: str) -> tuple:
    """(Evaluation, MetricRecord) of an evaluate reply, checked like a train reply's."""
    role = "evaluate reply"
    metrics = _reply_metrics(content, keys, client_id, role, arrays=set())
    return _read_evaluation(metrics, f"{role} metrics"), metrics
