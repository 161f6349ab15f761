"""The poisoned-client guard's relative rule: a distance bound from the local model's own norm.

The ops take the guard as an absolute ``max_distance``; a bound that fits every model size and
training stage is a multiple of the local model's norm, ``ratio * ||theta_i||``: honest candidates
sit at a fraction of that (clients start from one model and move by training), while scaled,
noised and constant poison models sit orders of magnitude beyond it.

>>> bound = fc.distance_bound(local, 3.0)
>>> step = fc.fomo_step(local, candidates, L0, L, max_distance=bound)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._models import floating_leaves, parse_model
from ._validate import choice, real

__all__ = ["distance_bound", "model_norm"]


def _leaf_sum(leaf: Any, norm: str) -> float:
    if type(leaf).__module__.split(".")[0] == "torch":
        import torch

        values = leaf.detach().resolve_neg()
        order = 2 if norm == "l2" else 1
        total = float(torch.linalg.vector_norm(values, ord=order, dtype=torch.float64))
        return total * total if norm == "l2" else total
    values = np.asarray(leaf).astype(np.float64).ravel()
    return float(np.dot(values, values)) if norm == "l2" else float(np.abs(values).sum())


def model_norm(params: Any, *, norm: str = "l2") -> float:
    """||theta|| over the floating-point entries of a model (flat, layer list or mapping), summed
    in float64: sqrt of the sum of squares (``"l2"``) or the sum of magnitudes (``"l1"``)."""
    choice(norm, "norm", ("l2", "l1"))
    structure, leaves = parse_model(params, "params")
    total = sum(_leaf_sum(leaf, norm) for leaf in floating_leaves(structure, leaves))
    return math.sqrt(total) if norm == "l2" else total


def distance_bound(local_params: Any, ratio: float, *, norm: str = "l2") -> float:
    """``ratio * model_norm(local_params)``: the ``max_distance`` of the relative guard (a ratio of
    infinity: no guard). A local model that is not finite gives infinity too (its own loss is not
    finite either, and the round's non-finite rule decides)."""
    ratio = real(ratio, "ratio", low=0.0, finite=False)
    if math.isnan(ratio):
        raise ValueError("ratio must be a number >= 0 (infinity: no guard), got nan")
    if math.isinf(ratio):
        return math.inf
    bound = ratio * model_norm(local_params, norm=norm)
    return bound if math.isfinite(bound) else math.inf
