"""What one FedFomo round does, as two small explicit objects: the client's policy and the server's.

The published implementations agree on the formula and disagree on almost everything around it:
which model the client measures from, whether its own model is a candidate, which tensors are
measured and moved, what BatchNorm statistics become, what happens when nothing helps or a loss is
not finite, and how the server picks candidates and keeps the affinity. A :class:`ClientPolicy`
and a :class:`ServerPolicy` name each of those choices; a preset (:mod:`fomo_core.presets`) is
one of each. Every field is read by the shared client round (:mod:`fomo_core.round`) or the
shared server (:class:`fomo_core.Server`).

Every preset federates and then trains. The authors' loop reads "train, then federate" because
its round boundary falls between the two; the sequence of models is the same, and what it needs
is the baseline ``"last_update"`` (the model saved right after the previous federated update,
before the training that followed) with the client's freshly trained model as a candidate.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, Optional, get_origin, get_type_hints

from ._validate import choice as _one_of
from ._validate import count, flag, fraction, real
from .choices import (
    AffinityInit,
    AffinityUpdate,
    Baseline,
    Buffers,
    ClientGlobalModel,
    DropLast,
    EvaluationMode,
    FreeRiders,
    IncludeSelf,
    KeepTraining,
    Measure,
    NonFinite,
    Norm,
    NothingHelps,
    Pool,
    Selection,
    SelfCandidate,
    ServerGlobalModel,
    Tie,
    Uploads,
    ValidationLoss,
    allowed,
)

__all__ = ["ClientPolicy", "ServerPolicy", "GUARD"]

# The fomo-core preset's guard: a candidate that would get weight is rejected when some layer of it
# is farther from the client's than GUARD x that layer's norm (benchmarks/bench_guard.py measures
# the honest candidates: at most 1.33 x, with clients several rounds behind; x10 poison is 9 x).
GUARD = 3.0


class _Policy:
    def _check_choices(self) -> None:
        """Every field typed by a ``Literal`` (:mod:`fomo_core.choices`) holds one of its values."""
        for name, choice in _choice_fields(type(self)):
            _one_of(getattr(self, name), name, allowed(choice))

    def as_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes: Any):
        """A copy with some fields changed (checked like the constructor's)."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {unknown[0]!r}; fields: {sorted(names)}")
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict):
        if not isinstance(data, dict):
            raise TypeError(f"a {cls.__name__} must be read from a dict, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise ValueError(f"a {cls.__name__} needs exactly the fields {sorted(names)}, got {sorted(data)}")
        return cls(**data)


@functools.cache
def _choice_fields(cls: type) -> tuple:
    """(name, Literal type) of the fields of a policy class that are choices, in field order."""
    hints = get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in fields(cls) if get_origin(hints[f.name]) is Literal)


@dataclass(frozen=True)
class ClientPolicy(_Policy):
    """The client's half of a round.

    baseline:        the model the client measures from (L0, the distances, the update's origin):
                     "current" (its model as it stands: trained last round) or "last_update" (its
                     model right after the last federated update, before the training that
                     followed; the initial model before the first update)
    self_candidate:  "none", or "trained": the client's current (trained) model is always its
                     first candidate, in addition to the ones it receives (the authors'). Any
                     other appearance of its own model comes from the server's selection.
    measure:         "parameters" (trainable parameters only) or "state" (every floating-point
                     entry of the state_dict, BatchNorm statistics included)
    buffers:         what floating-point buffers (BatchNorm statistics) become: "local" (stay the
                     current model's), "scaled" (the current model's times the sum of the
                     weights, as FL-bench computes them) or "moved" (moved by the weights from the
                     baseline's, like the parameters; candidates then carry their buffers)
    nothing_helps:   when no candidate improves on the baseline: "keep" the current model, or
                     "revert" to the baseline (dropping the training since the last update)
    evaluation:      "eval" (candidates in eval mode; with buffers="moved" each with its own
                     BatchNorm statistics, otherwise with the client's) or "train" (train mode:
                     BatchNorm uses batch statistics; no model's running statistics change)
    loss:            the validation loss: "mean" over samples, "batch_mean" (the mean of the
                     per-batch mean losses) or "batch_sum_per_sample" (the per-batch mean losses
                     summed and divided by the number of samples)
    drop_last:       "never", or "if_batchnorm": a last partial validation batch is dropped when
                     the model has BatchNorm layers
    nonfinite:       what a NaN/inf loss does: "adopt_best" (non-finite candidates are rejected;
                     a client whose own loss is not finite adopts its best finite candidate),
                     "reject" (non-finite candidates are rejected; a non-finite own loss rejects
                     every candidate) or "skip_round" (any non-finite loss skips the update)
    norm, eps:       the distance ("l2" or "l1") and the constant added to it in the score
    guard:           the poisoned-client guard, layer by layer: a candidate that would get weight
                     is rejected (score 0, weight 0) when some layer of it is farther from the
                     baseline's than ``guard`` times that layer's norm (a layer: each weight
                     tensor, and each weight with the bias and normalisation parameters after
                     it; the whole model when the adapter knows no layers). A finite poisoned
                     model (parameters of 1e30 with a low loss) would otherwise take the
                     client's model whenever it is the only improving candidate. None (or
                     infinity): no distance bound. None of the peers has a guard.
    rebalance:       the candidates that would get weight are first rescaled, hidden unit by
                     hidden unit, to the balance the client's own model has (where its adapter
                     knows two layers are joined by ReLU-like operations: :mod:`fomo_core.guard`).
                     Their functions do not change, so neither do their losses; what a
                     function-preserving rescaling did to a copy of a good model (a hidden layer
                     times a, the next divided by a: as good a loss, but layers out of balance
                     that the next local training wrecks) is undone, whatever a is.
    global_model:    what the client does with the server's global model (a model trained jointly
                     by every client, as FedAvg's; the server keeps it with
                     ``ServerPolicy.global_model="average"``): "off" (ignored: every peer), or
                     after the FedFomo step it moves part-way toward it, by the share of
                     ``global_steps`` (or not at all) whose model has the lowest validation loss,
                     and sends the server its contribution: "train" (it also trains a copy of the
                     global model locally and sends the change: twice the local training) or
                     "follow" (the change its own model made in local training: no extra training)
    global_steps:    the shares t of the way from the updated model u toward the global model g
                     that are tried, u + t (g - u), each in (0, 1]; t = 0 (staying) always is
    keep_training:   "always" keep the locally trained model, or only "if_not_worse": its
                     validation loss must not exceed the loss before training, otherwise the
                     model before training is kept (the training's change still goes to the
                     global model with global_model="follow")
    """

    baseline: Baseline = "current"
    self_candidate: SelfCandidate = "none"
    measure: Measure = "parameters"
    buffers: Buffers = "local"
    nothing_helps: NothingHelps = "keep"
    evaluation: EvaluationMode = "eval"
    loss: ValidationLoss = "mean"
    drop_last: DropLast = "never"
    nonfinite: NonFinite = "adopt_best"
    norm: Norm = "l2"
    eps: float = 0.0
    guard: Optional[float] = None
    rebalance: bool = False
    global_model: ClientGlobalModel = "off"
    global_steps: tuple = (0.25, 0.5, 0.75, 1.0)
    keep_training: KeepTraining = "always"

    def __post_init__(self) -> None:
        self._check_choices()
        real(self.eps, "eps", low=0.0)
        if self.guard is not None:
            real(self.guard, "guard", low=0.0, finite=False)
        flag(self.rebalance, "rebalance")
        if isinstance(self.global_steps, (str, bytes)) or not hasattr(self.global_steps, "__iter__"):
            raise TypeError(
                f"global_steps must be a sequence of shares in (0, 1], got {type(self.global_steps).__name__}"
            )
        steps = tuple(
            real(t, f"global_steps[{k}]", low=0.0, high=1.0, low_open=True) for k, t in enumerate(self.global_steps)
        )
        if self.global_model != "off" and not steps:
            raise ValueError("global_steps must hold at least one share when global_model is not 'off'")
        object.__setattr__(self, "global_steps", steps)  # a list (from JSON) becomes a tuple
        if self.measure == "state" and self.buffers != "moved":
            raise ValueError("measure='state' measures the buffers, so they must be moved too: buffers='moved'")
        if self.self_candidate == "trained" and self.baseline == "current":
            raise ValueError(
                "self_candidate='trained' needs baseline='last_update': measured from itself, the current "
                "model is at distance 0 and can never be weighed"
            )

    @property
    def carries_buffers(self) -> bool:
        """Models travel with their floating-point buffers (laid out after the parameters)."""
        return self.buffers == "moved"

    def step_options(self) -> dict:
        """The ``norm`` and ``eps`` options of the ops (compute_weights, fomo_step, ...)."""
        return {"norm": self.norm, "eps": self.eps}


@dataclass(frozen=True)
class ServerPolicy(_Policy):
    """The server's half of a round: whom each client receives, and the affinity.

    selection:       "epsilon_greedy" (top-M; with probability epsilon all M at random instead),
                     "epsilon_greedy_per_slot" (each of the M places is the best remaining
                     client, or with probability epsilon a random one: the authors') or "top_m"
    pool:            whom a client may receive: "uploaded" (every client with a model on the
                     server), "last_round" (the clients that uploaded in the previous round) or
                     "all_capped" (all N clients, initial models included, but at most as many as
                     uploaded in the previous round: PFLlib)
    include_self:    "never" (the client is not in its own pool), "compete" (it is, like any
                     other) or "always" (it competes, and is added when not picked: FL-bench)
    tie:             ties in affinity broken "random"ly, by "lowest_index" first, or "torch_topk":
                     exactly as ``torch.topk`` orders them (PFLlib and FL-bench; needs torch, and
                     selection="top_m")
    epsilon:         the exploration probability at round 0 (epsilon-greedy selections)
    epsilon_decay:   subtracted from epsilon every round (floored at 0)
    affinity_init:   "self" (0, with ``self_affinity`` on the diagonal) or "identity"
    self_affinity:   the diagonal value for affinity_init="self"
    affinity_update: "raw" (A[i, n] += s_n) or "normalised" (A[i, n] += s_n / |sum_m s_m|, the sum
                     floored at 1e-9 as the authors do)
    affinity_k:      entries each client's affinity row keeps besides its own (the top k by value;
                     the others read 0): memory O(N k) and selection O(k + M) per client. None
                     keeps every entry, the dense matrix; so does any k >= N - 1
    uploads:         when an uploaded model is sent to others: from the "next_round", or
                     "immediately" (later clients of the same round already receive it, as
                     FL-bench's serial trainer does)
    free_riders:     "allow", or "exclude": a client whose latest upload is a free ride (a mix of
                     the models it was sent and its own last one, no training of its own:
                     :mod:`fomo_core.free_riding`) is sent no candidates and offered to no one
                     until it uploads a model of its own
    global_model:    "off", or "average": the server also keeps a global model (the initial model
                     at first) and at the end of every round moves it by the mean of the
                     contributions the clients sent (weighted by their number of training
                     samples): FedAvg's model when every client trains a copy of it
                     (``ClientPolicy.global_model="train"``)
    global_guard:    a contribution longer than ``global_guard`` times the global model's norm,
                     or not finite, is rejected (the round goes on without it); None: no bound
    """

    selection: Selection = "epsilon_greedy"
    pool: Pool = "uploaded"
    include_self: IncludeSelf = "never"
    tie: Tie = "random"
    epsilon: float = 0.3
    epsilon_decay: float = 0.05
    affinity_init: AffinityInit = "self"
    self_affinity: float = 0.1
    affinity_update: AffinityUpdate = "raw"
    uploads: Uploads = "next_round"
    affinity_k: Optional[int] = 16
    free_riders: FreeRiders = "allow"
    global_model: ServerGlobalModel = "off"
    global_guard: Optional[float] = None

    def __post_init__(self) -> None:
        self._check_choices()
        if self.global_guard is not None:
            real(self.global_guard, "global_guard", low=0.0, finite=False)
        if self.tie == "torch_topk" and self.selection != "top_m":
            raise ValueError("tie='torch_topk' orders a top-M selection: it needs selection='top_m'")
        fraction(self.epsilon, "epsilon")
        real(self.epsilon_decay, "epsilon_decay", low=0.0)
        real(self.self_affinity, "self_affinity")
        if self.affinity_k is not None:
            count(self.affinity_k, "affinity_k", low=1)
