"""One FedFomo client round, framework-free: a :class:`ClientPolicy` applied to flat buffers.

The adapters (``fomo_core.adapters.torch``, ``.numpy``) supply how their models are evaluated and
trained; what the round does with the losses (the baseline, the client's own model as a candidate,
what is measured and moved, nothing-helps, non-finite losses, the move toward the server's global
model, whether local training is kept) is decided here, once, for all of them: :func:`federate`
(the federated half) and :func:`train_round` (the training half). The maths is
:func:`fomo_core.fomo_step` / :func:`fomo_core.apply_update`.

Layout of a flat model [P]: the parameters first (``measured`` elements when only parameters are
measured), then, when the policy carries buffers, the floating-point buffers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ._models import as_float64, copy_leaf
from ._validate import count
from .guard import Balancer, GuardLayout, layer_distances
from .ops import apply_update, fomo_step
from .policy import ClientPolicy

__all__ = [
    "ClientRound",
    "federate",
    "federate_client",
    "train_round",
    "train_client",
    "batch_loss",
    "as_float64",
    "timed",
    "check_client_options",
]


def check_client_options(
    train_fn: Optional[Callable],
    train_data: Any,
    epochs: Any,
    eval_batch_size: Any,
    default_training: str,
    global_train_data: Any = None,
) -> None:
    """The options every adapter's client takes for its training and evaluation, checked alike
    (ValueError for any bad value, TypeError for a train_fn that cannot be called).
    ``default_training`` names the adapter's own loop in the message when data is missing."""
    if train_fn is None and train_data is None:
        raise ValueError(f"train_data is required unless train_fn is given ({default_training} needs data)")
    if train_fn is not None and global_train_data is not None:
        raise ValueError(f"global_train_data is data for {default_training}, which train_fn replaces: give one of them")
    if train_fn is not None and not callable(train_fn):
        raise TypeError(f"train_fn must be callable, got {type(train_fn).__name__}")
    count(epochs, "epochs", type_error=ValueError)
    if eval_batch_size is not None:
        count(eval_batch_size, "eval_batch_size", low=1, type_error=ValueError)


@dataclass
class ClientRound:
    """What one FedFomo client round produced.

    params:               the client's flat model after the round, [P] (its live buffer: copy it
                          to keep it)
    weights:              [M] float64 normalised weights of the candidates it received
    scores:               [M] float64 first-order scores of those candidates (for the affinity;
                          0 where rejected)
    self_weight, self_score: the weight and score of its own trained model when the policy makes
                          it a candidate (self_candidate="trained"), else None
    baseline_loss:        validation loss of the baseline
    candidate_losses:     [M] validation losses of the candidates received
    candidate_accuracies: [M] their validation accuracies
    outcome:              "updated", "nothing_helps" (kept or reverted per the policy),
                          "skipped" (a non-finite loss with nonfinite="skip_round") or "adopted"
                          (a non-finite own loss: the best finite candidate was adopted)
    eval_seconds, step_seconds, train_seconds: time spent evaluating, in the weights and update,
                          and in local training
    guard_rejected:       [M] bool: the candidates the policy's guard rejected (score 0, weight
                          0): they would have had weight, but some layer of theirs is farther
                          from the client's than the guard allows
    global_step:          the share t of the way toward the global model the client moved
                          (0.0: it stayed), None when its policy ignores the global model
    update_loss:          validation loss of the model after the federated update (FedFomo's step
                          and the move toward the global model), when the policy computed it
    global_update:        the client's contribution to the global model [P] (the server's
                          ``receive(..., global_update=)``), None when there is none
    training:             "kept" (the locally trained model) or "reverted" (keep_training=
                          "if_not_worse" and training made the validation loss worse)
    """

    params: Any
    weights: np.ndarray
    scores: np.ndarray
    self_weight: Optional[float]
    self_score: Optional[float]
    baseline_loss: float
    candidate_losses: np.ndarray
    candidate_accuracies: np.ndarray
    outcome: str
    eval_seconds: float
    step_seconds: float
    train_seconds: float = 0.0
    guard_rejected: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    global_step: Optional[float] = None
    update_loss: Optional[float] = None
    global_update: Any = None
    training: str = "kept"


def timed(fn: Callable[[], Any]) -> float:
    """Seconds taken by fn()."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _rows(candidates: Any) -> list:
    """The candidates [M, P] (array or sequence) as a list of 1-D rows (views, no copy)."""
    return [candidates[k] for k in range(len(candidates))]


def federate_client(
    client: Any,
    candidates: Any,
    *,
    copy: Callable[[Any, Any], None],
    measured: Optional[int] = None,
    global_params: Any = None,
) -> ClientRound:
    """:func:`federate` for an adapter's client, from its ``policy``, flat model ``params`` [P]
    (written in place), ``evaluate``, ``last_update`` (the baseline the policy may name) and,
    when it has one, ``guard_layout`` (its measured part's layers, for the guard)."""
    policy, params, evaluate, baseline = client.policy, client.params, client.evaluate, client.last_update
    layout = getattr(client, "guard_layout", None)
    return federate(
        policy,
        params,
        candidates,
        evaluate,
        baseline=baseline,
        measured=measured,
        layout=layout,
        copy=copy,
        global_params=global_params,
    )


def train_client(client: Any, result: ClientRound, *, copy: Callable[[Any, Any], None], global_params: Any = None):
    """:func:`train_round` for an adapter's client (its ``policy``, ``params``, ``train`` and
    ``evaluate``; the copy of the global model trains on its ``global_train_data`` when that is
    set: ``train(global_train_data)``; ``loss_of_flat_alone``, when it has it: see
    :func:`train_round`)."""
    data = getattr(client, "global_train_data", None)
    train_round(
        client.policy,
        client.params,
        result,
        client.train,
        client.evaluate,
        copy=copy,
        global_params=global_params,
        train_global=None if data is None else lambda: client.train(data),
        loss_of_flat_alone=getattr(client, "loss_of_flat_alone", False),
    )


def _rebalanced(balance: Balancer, models: list, measured: int) -> list:
    """Copies of the flat ``models`` whose first ``measured`` elements are rebalanced, all in one
    solve (:meth:`fomo_core.guard.Balancer.many`); what rides behind them is copied as it is."""
    if not models or measured == len(models[0]):
        return balance.many(models)
    outs = [model.clone() if hasattr(model, "clone") else np.array(model) for model in models]
    for out, part in zip(outs, balance.many([model[:measured] for model in models])):
        out[:measured] = part
    return outs


def batch_loss(loss: str, per_batch: Any, sizes: Any) -> np.ndarray:
    """The validation loss [K] of K models from their mean losses per batch [batches, K] and the
    batch sizes [batches], as a :class:`ClientPolicy` ``loss`` says: "mean" over all samples,
    "batch_mean" (the mean of the batch means) or "batch_sum_per_sample" (their sum over the
    number of samples)."""
    per_batch, sizes = np.asarray(per_batch), np.asarray(sizes)
    if loss == "batch_mean":
        return per_batch.mean(axis=0)
    total = float(sizes.sum())
    if loss == "batch_sum_per_sample":
        return per_batch.sum(axis=0) / total
    return (per_batch * sizes[:, None]).sum(axis=0) / total


def federate(
    policy: ClientPolicy,
    params: Any,
    candidates: Any,
    evaluate: Callable[[list], tuple],
    *,
    baseline: Any = None,
    measured: Optional[int] = None,
    layout: Optional[GuardLayout] = None,
    copy: Callable[[Any, Any], None],
    global_params: Any = None,
) -> ClientRound:
    """Steps 1-4 of a round (no training) under ``policy``, and the move toward the server's global
    model when the policy makes one, writing the new model into ``params``.

    params:     the client's flat model [P], written in place
    candidates: [M, P] (an array or a sequence of flat models) as received
    evaluate:   evaluate(list of K flat models [P]) -> (losses [K], accuracies [K]) on the
                client's validation data, per the policy's evaluation mode and loss
    baseline:   the flat model at the last federated update [P] (policy.baseline="last_update");
                ignored for "current", where the baseline is ``params`` itself
    measured:   how many leading elements the distance covers (the parameters when buffers ride
                behind them); default all P
    layout:     the layers of those ``measured`` elements (a :class:`fomo_core.guard.GuardLayout`:
                the arrays' shapes, and which layers are joined by ReLU-like operations), for the
                policy's guard and rebalancing (:mod:`fomo_core.guard`); None: the whole model is
                one layer, nothing is rebalanced
    copy:       copy(dst, src) for flat models (the framework's in-place copy)
    global_params: the server's global model [P], the same type as ``params``; with a policy whose
                global_model is not "off" the client then moves part-way toward it (see
                :class:`ClientPolicy`); ignored otherwise
    """
    own_is_baseline = policy.baseline == "current"
    if not own_is_baseline and baseline is None:
        raise ValueError("baseline is required with policy.baseline='last_update'")
    base = params if own_is_baseline else baseline
    received = _rows(candidates)
    cands = ([params] if policy.self_candidate == "trained" else []) + received
    n_self = len(cands) - len(received)

    t0 = time.perf_counter()
    # One call for the baseline and the candidates: the same evaluation route for all of them, so a
    # candidate equal to the baseline gets exactly its loss (a score of 0, not rounding / eps).
    all_losses, all_accuracies = (as_float64(v) for v in evaluate([base, *cands]))
    base_loss, losses, accuracies = float(all_losses[0]), all_losses[1:], all_accuracies[1:]
    t1 = time.perf_counter()

    all_finite = math.isfinite(base_loss) and bool(np.isfinite(losses).all())
    p = len(params) if measured is None else measured
    whole = p == len(params)
    fused_in_place = own_is_baseline and whole and policy.nonfinite != "skip_round"
    measured_base = base if whole else base[:p]
    if policy.rebalance and layout is not None and layout.links and (losses < base_loss).any():
        # the candidates that can get weight, in the client's own balance (the same functions)
        balance = Balancer(base if whole else base[:p], layout)
        improving = [k for k, loss in enumerate(losses) if loss < base_loss]
        for k, rebalanced in zip(improving, _rebalanced(balance, [cands[k] for k in improving], p)):
            cands[k] = rebalanced
    measured_cands = cands if whole else [c[:p] for c in cands]
    options = policy.step_options()
    guarded = np.zeros(len(cands), dtype=bool)
    if policy.guard is not None and math.isfinite(policy.guard):
        distances = layer_distances(measured_base, measured_cands, layout, norm=policy.norm)
        # Only candidates that improve on the baseline are rejected (as a non-finite loss is:
        # score 0); a far one that does not keeps its negative score, which the affinity needs. A
        # baseline whose loss is not finite improves on nothing and measures nothing (adopt_best).
        guarded = (distances > policy.guard) & (losses < base_loss)
    step_losses = np.where(guarded, np.nan, losses)
    if fused_in_place:
        # The common case in one fused pass; no weight leaves the model bit for bit as it was.
        res = fomo_step(params, cands, base_loss, step_losses, out=params, **options)
    else:
        res = fomo_step(measured_base, measured_cands, base_loss, step_losses, **options)
    weights, scores = as_float64(res.weights), as_float64(res.scores)
    scores = np.where(np.isnan(scores), 0.0, scores)

    outcome = "updated" if weights.sum() > 0 else "nothing_helps"
    if policy.nonfinite == "skip_round" and not all_finite:
        outcome, weights = "skipped", np.zeros_like(weights)
    elif policy.nonfinite == "adopt_best" and not math.isfinite(base_loss) and np.isfinite(step_losses).any():
        # A diverged client would otherwise never recover: its own loss can't be beaten.
        best = int(np.nanargmin(np.where(np.isfinite(step_losses), step_losses, np.nan)))
        weights = np.zeros_like(weights)
        weights[best] = 1.0
        copy(params, cands[best])
        outcome = "adopted"
    if not fused_in_place and outcome == "updated":
        if n_self:  # params is a candidate too: the update can't be written over it
            copy(params, apply_update(base, cands, weights))
        else:
            apply_update(base, cands, weights, out=params)
    elif not fused_in_place and outcome == "nothing_helps" and policy.nothing_helps == "revert" and base is not params:
        copy(params, base)
    t2 = time.perf_counter()
    global_step = update_loss = None
    if policy.global_model != "off" and global_params is not None:
        unchanged = own_is_baseline and outcome in ("nothing_helps", "skipped")  # still the baseline
        global_step, update_loss, mix_seconds = _toward_global(
            policy.global_steps, params, global_params, evaluate, copy, base_loss if unchanged else None
        )
        t1 += mix_seconds  # the evaluations of the mixes count as evaluation time
        t2 = time.perf_counter()

    return ClientRound(
        params=params,
        weights=weights[n_self:],
        scores=scores[n_self:],
        self_weight=float(weights[0]) if n_self else None,
        self_score=float(scores[0]) if n_self else None,
        baseline_loss=base_loss,
        candidate_losses=losses[n_self:],
        candidate_accuracies=accuracies[n_self:],
        outcome=outcome,
        eval_seconds=t1 - t0,
        step_seconds=t2 - t1,
        guard_rejected=guarded[n_self:],
        global_step=global_step,
        update_loss=update_loss,
    )


def _toward_global(steps: tuple, params: Any, global_params: Any, evaluate: Callable, copy: Callable, loss: Any):
    """Moves ``params`` (u, the model after FedFomo's step) in place to the mix u + t (g - u) with
    the lowest validation loss among t in ``steps`` (t = 1 is g itself), or leaves it where it is
    unless one is strictly lower. ``loss``: u's loss when already known (else it is evaluated
    with the mixes). Returns (the share taken, the loss of the model kept, seconds evaluating)."""
    if tuple(global_params.shape) != tuple(params.shape):
        raise ValueError(f"global_params has shape {tuple(global_params.shape)}, expected {tuple(params.shape)}")
    mixes = [global_params if t == 1.0 else params + t * (global_params - params) for t in steps]
    t0 = time.perf_counter()
    losses, _ = evaluate(mixes if loss is not None else [params, *mixes])
    seconds = time.perf_counter() - t0
    losses = as_float64(losses)
    if loss is None:
        loss, losses = float(losses[0]), losses[1:]
    finite = np.where(np.isfinite(losses), losses, np.inf)
    best = int(np.argmin(finite))
    if not finite[best] < loss and math.isfinite(loss):
        return 0.0, float(loss), seconds
    if not math.isfinite(finite[best]):  # nothing finite to move to
        return 0.0, float(loss), seconds
    copy(params, mixes[best])
    return float(steps[best]), float(finite[best]), seconds


def _still_baseline(policy: ClientPolicy, result: ClientRound) -> bool:
    """Whether :func:`federate` left the client's model bit for bit as the baseline it evaluated:
    its own model (baseline "current"), which no candidate moved (nothing helped, or the round was
    skipped) and no move toward the global model changed (that sets ``update_loss`` itself)."""
    return policy.baseline == "current" and result.outcome in ("nothing_helps", "skipped") and not result.global_step


def train_round(
    policy: ClientPolicy,
    params: Any,
    result: ClientRound,
    train: Callable[[], Any],
    evaluate: Callable[[list], tuple],
    *,
    copy: Callable[[Any, Any], None],
    global_params: Any = None,
    train_global: Optional[Callable[[], Any]] = None,
    loss_of_flat_alone: bool = False,
) -> None:
    """The training half of a round under ``policy``: local training of ``params`` [P] in place by
    ``train()``, and what the policy adds around it (recorded in ``result``):

    - global_model="train": a copy of ``global_params`` [P] is trained first (``train_global()``,
      default ``train()``, on the model loaded with it), and its change is ``result.global_update``;
    - global_model="follow": the change local training made to ``params`` is the contribution;
    - keep_training="if_not_worse": when training raised the validation loss above
      ``result.update_loss``, the model before training is restored. That loss is the baseline's
      when the update left the model as the baseline (the model ``params`` held for
      :func:`federate`, baseline "current", nothing moved it), else it is evaluated: before
      training, or, with ``loss_of_flat_alone`` (``evaluate``'s loss of a model depends on the flat
      model alone: nothing that training changes outside it, such as BatchNorm statistics kept in
      a module, nor the random numbers training draws), after it, in one call with the trained
      model (one evaluation route for both).
    """
    t0 = time.perf_counter()
    contributes = policy.global_model != "off" and global_params is not None
    if contributes and policy.global_model == "train":
        own = copy_leaf(params)
        copy(params, global_params)
        (train if train_global is None else train_global)()
        result.global_update = params - global_params
        copy(params, own)
    keep_before = policy.keep_training == "if_not_worse" or (contributes and policy.global_model == "follow")
    before = copy_leaf(params) if keep_before else None
    checks = policy.keep_training == "if_not_worse"
    if checks and result.update_loss is None and _still_baseline(policy, result):
        result.update_loss = result.baseline_loss
    if checks and result.update_loss is None and not loss_of_flat_alone:
        result.update_loss = float(as_float64(evaluate([params])[0])[0])
    train()
    if contributes and policy.global_model == "follow":
        result.global_update = params - before
    if checks:
        if result.update_loss is None:  # the model before training and the trained one, together
            both = as_float64(evaluate([before, params])[0])
            result.update_loss, trained_loss = float(both[0]), float(both[1])
        else:
            trained_loss = float(as_float64(evaluate([params])[0])[0])
        if not trained_loss <= result.update_loss and math.isfinite(result.update_loss):
            copy(params, before)
            result.training = "reverted"
    result.train_seconds = time.perf_counter() - t0
