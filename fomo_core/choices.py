"""The allowed values of the policies' choice fields, one ``Literal`` type each.

Each type is the one table of its values: it is the type hint of the field of
:class:`~fomo_core.policy.ClientPolicy` or :class:`~fomo_core.policy.ServerPolicy` (and of the
functions that take the same choice), the policies' checks read their values from it
(:func:`allowed`), and type checkers see them. What each value does is said where the field is.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

__all__ = [
    "Norm",
    "Baseline",
    "SelfCandidate",
    "Measure",
    "Buffers",
    "NothingHelps",
    "EvaluationMode",
    "ValidationLoss",
    "DropLast",
    "NonFinite",
    "ClientGlobalModel",
    "KeepTraining",
    "Selection",
    "Pool",
    "IncludeSelf",
    "Tie",
    "AffinityInit",
    "AffinityUpdate",
    "Uploads",
    "FreeRiders",
    "ServerGlobalModel",
    "allowed",
]

# ---- the client's policy ----

Norm = Literal["l2", "l1"]
"""The distance between models: "l2" (the square root of the sum of squares) or "l1" (the sum of magnitudes)."""

Baseline = Literal["current", "last_update"]
"""``ClientPolicy.baseline``: the model the client measures from."""

SelfCandidate = Literal["none", "trained"]
"""``ClientPolicy.self_candidate``: whether the client's trained model is always a candidate."""

Measure = Literal["parameters", "state"]
"""``ClientPolicy.measure``: which entries the distance reads."""

Buffers = Literal["local", "scaled", "moved"]
"""``ClientPolicy.buffers``: what floating-point buffers (BatchNorm statistics) become."""

NothingHelps = Literal["keep", "revert"]
"""``ClientPolicy.nothing_helps``: the model kept when no candidate improves on the baseline."""

EvaluationMode = Literal["eval", "train"]
"""``ClientPolicy.evaluation``: the mode candidates are evaluated in."""

ValidationLoss = Literal["mean", "batch_mean", "batch_sum_per_sample"]
"""``ClientPolicy.loss``: how the validation loss is averaged."""

DropLast = Literal["never", "if_batchnorm"]
"""``ClientPolicy.drop_last``: whether a last partial validation batch is dropped."""

NonFinite = Literal["adopt_best", "reject", "skip_round"]
"""``ClientPolicy.nonfinite``: what a NaN or infinite loss does."""

ClientGlobalModel = Literal["off", "train", "follow"]
"""``ClientPolicy.global_model``: what the client does with the server's global model."""

KeepTraining = Literal["always", "if_not_worse"]
"""``ClientPolicy.keep_training``: whether the locally trained model is always kept."""

# ---- the server's policy ----

Selection = Literal["epsilon_greedy", "epsilon_greedy_per_slot", "top_m"]
"""``ServerPolicy.selection``: how each client's candidates are picked."""

Pool = Literal["uploaded", "last_round", "all_capped"]
"""``ServerPolicy.pool``: whom a client may receive."""

IncludeSelf = Literal["never", "compete", "always"]
"""``ServerPolicy.include_self``: whether a client is in its own pool."""

Tie = Literal["random", "lowest_index", "torch_topk"]
"""``ServerPolicy.tie``: how ties in affinity are broken."""

AffinityInit = Literal["self", "identity"]
"""``ServerPolicy.affinity_init``: the affinity matrix's diagonal at the start."""

AffinityUpdate = Literal["raw", "normalised"]
"""``ServerPolicy.affinity_update``: what a score adds to the affinity matrix."""

Uploads = Literal["next_round", "immediately"]
"""``ServerPolicy.uploads``: when an uploaded model is sent to others."""

FreeRiders = Literal["allow", "exclude"]
"""``ServerPolicy.free_riders``: whether free riders are sent candidates."""

ServerGlobalModel = Literal["off", "average"]
"""``ServerPolicy.global_model``: whether the server keeps a global model."""


def allowed(choice: Any) -> tuple[str, ...]:
    """The values of one of these types, in the order written (``allowed(Norm) == ("l2", "l1")``)."""
    return get_args(choice)
