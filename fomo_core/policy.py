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

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Optional

from ._validate import choice as _one_of
from ._validate import count, fraction, real

__all__ = ["ClientPolicy", "ServerPolicy", "GUARD"]

# The fomo-core preset's guard: candidates farther than 3 x the norm of the client's own model are
# rejected. Chosen from benchmarks/bench_attacks.py: honest candidates measured at most 0.73 x
# (improving ones at most 0.11 x); x10 scaled, noise and 1e30 poison models sit at 9 x and beyond.
GUARD = 3.0


class _Policy:
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
    guard:           the poisoned-client guard: a candidate farther from the baseline than
                     ``guard`` times the baseline's own norm is rejected (score 0, weight 0),
                     however low its loss; None (or infinity) turns it off. A finite poisoned model
                     (parameters of 1e30 with a low loss) would otherwise take the client's model
                     whenever it is the only improving candidate. None of the peers has it.
    """

    baseline: str = "current"
    self_candidate: str = "none"
    measure: str = "parameters"
    buffers: str = "local"
    nothing_helps: str = "keep"
    evaluation: str = "eval"
    loss: str = "mean"
    drop_last: str = "never"
    nonfinite: str = "adopt_best"
    norm: str = "l2"
    eps: float = 0.0
    guard: Optional[float] = None

    def __post_init__(self) -> None:
        _one_of(self.baseline, "baseline", ("current", "last_update"))
        _one_of(self.self_candidate, "self_candidate", ("none", "trained"))
        _one_of(self.measure, "measure", ("parameters", "state"))
        _one_of(self.buffers, "buffers", ("local", "scaled", "moved"))
        _one_of(self.nothing_helps, "nothing_helps", ("keep", "revert"))
        _one_of(self.evaluation, "evaluation", ("eval", "train"))
        _one_of(self.loss, "loss", ("mean", "batch_mean", "batch_sum_per_sample"))
        _one_of(self.drop_last, "drop_last", ("never", "if_batchnorm"))
        _one_of(self.nonfinite, "nonfinite", ("adopt_best", "reject", "skip_round"))
        _one_of(self.norm, "norm", ("l2", "l1"))
        real(self.eps, "eps", low=0.0)
        if self.guard is not None:
            real(self.guard, "guard", low=0.0, finite=False)
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
    """

    selection: str = "epsilon_greedy"
    pool: str = "uploaded"
    include_self: str = "never"
    tie: str = "random"
    epsilon: float = 0.3
    epsilon_decay: float = 0.05
    affinity_init: str = "self"
    self_affinity: float = 0.1
    affinity_update: str = "raw"
    uploads: str = "next_round"
    affinity_k: Optional[int] = 16

    def __post_init__(self) -> None:
        _one_of(self.uploads, "uploads", ("next_round", "immediately"))
        _one_of(self.selection, "selection", ("epsilon_greedy", "epsilon_greedy_per_slot", "top_m"))
        _one_of(self.pool, "pool", ("uploaded", "last_round", "all_capped"))
        _one_of(self.include_self, "include_self", ("never", "compete", "always"))
        _one_of(self.tie, "tie", ("random", "lowest_index", "torch_topk"))
        if self.tie == "torch_topk" and self.selection != "top_m":
            raise ValueError("tie='torch_topk' orders a top-M selection: it needs selection='top_m'")
        fraction(self.epsilon, "epsilon")
        real(self.epsilon_decay, "epsilon_decay", low=0.0)
        _one_of(self.affinity_init, "affinity_init", ("self", "identity"))
        real(self.self_affinity, "self_affinity")
        _one_of(self.affinity_update, "affinity_update", ("raw", "normalised"))
        if self.affinity_k is not None:
            count(self.affinity_k, "affinity_k", low=1)
