"""One FedFomo client round, framework-free: the order of the steps and their timing.

The framework adapters (torch.py, numpy.py) supply how to evaluate and train their models; the
round itself (evaluate baseline and candidates, fomo_step, then train: docs/concepts/round.md) is the
same for all of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from .. import fomo_step

__all__ = ["ClientRound", "fedfomo_update", "timed", "as_float64"]


@dataclass
class ClientRound:
    """What one FedFomo client round produced.

    params:               the client's flat parameters after the update and local training, [P]
                          (the client's live buffer: copy it to keep it)
    weights:              [M] float64 normalised weights given to the candidates
    scores:               [M] float64 first-order scores (for ``Affinity.update``)
    baseline_loss:        validation loss of the client's model before the update
    candidate_losses:     [M] validation losses of the candidates
    candidate_accuracies: [M] their validation accuracies
    eval_seconds, step_seconds, train_seconds: time spent evaluating, in fomo_step (weights and
                          update) and in local training
    """

    params: Any
    weights: np.ndarray
    scores: np.ndarray
    baseline_loss: float
    candidate_losses: np.ndarray
    candidate_accuracies: np.ndarray
    eval_seconds: float
    step_seconds: float
    train_seconds: float


def as_float64(x: Any) -> np.ndarray:
    """A float64 NumPy copy of a vector of any array type (torch included)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def fedfomo_update(
    params: Any,
    candidates: Any,
    evaluate: Callable[[Any], tuple],
    step_options: dict,
    *,
    baseline: Any,
    loaded: Optional[Callable[[], Any]] = None,
) -> ClientRound:
    """Steps 1-4 of a round over the client's flat buffer ``params`` [P] (no training).

    evaluate(models [K, P]) -> (losses [K], accuracies [K]) on the client's validation data;
    ``baseline`` is ``params`` as a [1, P] model for it. fomo_step writes the update into
    ``params`` in place; ``loaded()`` then hands it to the model when the model does not read
    ``params`` directly. ``train_seconds`` is 0 (see :func:`timed`).
    """
    t0 = time.perf_counter()
    base_loss, _ = evaluate(baseline)
    losses, accuracies = evaluate(candidates)
    base_loss, losses, accuracies = float(as_float64(base_loss)[0]), as_float64(losses), as_float64(accuracies)
    t1 = time.perf_counter()
    res = fomo_step(params, candidates, base_loss, losses, out=params, **step_options)
    if loaded is not None:
        loaded()
    t2 = time.perf_counter()
    return ClientRound(
        params=params,
        weights=as_float64(res.weights),
        scores=as_float64(res.scores),
        baseline_loss=base_loss,
        candidate_losses=losses,
        candidate_accuracies=accuracies,
        eval_seconds=t1 - t0,
        step_seconds=t2 - t1,
        train_seconds=0.0,
    )


def timed(fn: Callable[[], Any]) -> float:
    """Seconds taken by fn()."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
