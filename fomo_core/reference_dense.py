"""Plain-NumPy float64 twin of :func:`fomo_core.evaluate_candidates`, the oracle of the tests.

Written from the definitions in fomo_core/dense.py, one candidate and one sample set at a time,
with no tiling and no shared code with the kernels: the forward pass layer by layer, then
log-softmax through the max-shifted log-sum-exp, softplus for the logistic output, or the squared
error. Accuracy: the first largest logit (softmax) or z > 0 (logistic) equals the label, and a
sample whose loss is NaN counts as wrong. The tables below are keyed by the names of the
extension's tables (``fomo_core._C.ACTIVATIONS`` and ``_C.OUTPUTS``); the tests check that they
cover every one.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ._models import as_float64
from .dense import DenseSpec, layers_from_flat

__all__ = ["evaluate_candidates", "forward", "ACTIVATE", "PER_SAMPLE"]


def _logistic(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))  # never overflows
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


#: activation name -> the function, elementwise on float64 arrays
ACTIVATE = {
    "identity": lambda z: z,
    "relu": lambda z: np.where(z < 0, 0.0, z),  # NaN stays NaN
    "tanh": np.tanh,
    "logistic": _logistic,
}


def _softmax(z: np.ndarray, y: np.ndarray) -> tuple:
    labels = y.astype(np.int64)
    top = z.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return lse - z[np.arange(len(z)), labels], np.argmax(z, axis=1) == labels


def _binary_logistic(z: np.ndarray, y: np.ndarray) -> tuple:
    labels = y.astype(np.int64)
    zz = z[:, 0]
    return np.maximum(zz, 0) + np.log1p(np.exp(-np.abs(zz))) - labels * zz, (zz > 0).astype(np.int64) == labels


def _squared_error(z: np.ndarray, y: np.ndarray) -> tuple:
    return ((z - y.reshape(len(z), -1)) ** 2).mean(axis=1), None


#: output name -> (per-sample loss [B], correct [B] or None for regression) from z [B, C] and y
PER_SAMPLE = {"softmax": _softmax, "logistic": _binary_logistic, "squared_error": _squared_error}


def _layers(spec: DenseSpec, candidate: Any) -> list:
    """[(W [n_out, n_in], b [n_out])] in float64 from a flat vector or a layer list."""
    if isinstance(candidate, (list, tuple)):
        arrays = [as_float64(a) for a in candidate]
        pairs = list(zip(arrays[0::2], arrays[1::2]))
    else:
        pairs = list(zip(*layers_from_flat(spec, as_float64(candidate))))
    if spec.weight_layout == "in_out":
        pairs = [(w.T, b) for w, b in pairs]
    return pairs


def forward(spec: DenseSpec, candidate: Any, X: Any) -> np.ndarray:
    """The output layer's values z [B, C] (logits, or predictions for squared error)."""
    h = as_float64(X)
    layers = _layers(spec, candidate)
    for index, (w, b) in enumerate(layers):
        h = h @ w.T + b
        if index < len(layers) - 1:
            h = ACTIVATE[spec.activations[index]](h)
    return h


def evaluate_candidates(
    spec: DenseSpec, candidate_params: Any, X: Any, y: Any, *, sample_weight: Optional[Any] = None
) -> tuple[np.ndarray, np.ndarray]:
    """(loss [M], accuracy [M]) in float64, candidate by candidate."""
    candidates = list(candidate_params)
    y = as_float64(y)
    rows = as_float64(X).shape[0]
    w = np.ones(rows) if sample_weight is None else as_float64(sample_weight)
    losses, accuracies = np.zeros(len(candidates)), np.zeros(len(candidates))
    for m, candidate in enumerate(candidates):
        per_sample, correct = PER_SAMPLE[spec.output](forward(spec, candidate, X), y)
        losses[m] = np.sum(w * per_sample) / np.sum(w)
        if correct is None:
            accuracies[m] = np.nan
        else:
            correct = correct & ~np.isnan(per_sample)
            accuracies[m] = np.sum(w * correct) / np.sum(w)
    return losses, accuracies
