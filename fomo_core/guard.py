"""The poisoned-client guard: how far a candidate may be from the client's model, relative to it.

The ops take the guard as an absolute ``max_distance``; a bound that fits every model size and
training stage is a multiple of the local model's norm, ``ratio * ||theta_i||``: honest candidates
sit at a fraction of that (clients start from one model and move by training), while scaled,
noised and constant poison models sit orders of magnitude beyond it.

>>> bound = fc.distance_bound(local, 3.0)
>>> step = fc.fomo_step(local, candidates, L0, L, max_distance=bound)

One bound over the whole model misses what keeps the model's function: in a ReLU network, the
hidden layer times ``a`` and the next layer divided by ``a`` compute exactly what the model did,
so such a copy of a good model has a good loss, yet its layers are out of balance and the next
local training wrecks it. The same bound taken *layer by layer* (:func:`guard_ratios`) closes that
door: each weight tensor, and each layer (a weight with the 1-D tensors after it: its bias, a
normalisation's scale and shift), may move at most ``ratio`` times its own norm. The client round
(:mod:`fomo_core.round`) applies it to the candidates that would otherwise get weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple, Optional

import numpy as np

from ._models import floating_leaves, parse_model
from ._validate import choice, real, to_host
from .layout import offsets_of

__all__ = ["distance_bound", "model_norm", "guard_layers", "layer_changes", "outside_guard", "LayerChanges"]


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


def guard_layers(shapes: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    """The groups of arrays the guard bounds, as indices into ``shapes`` (the arrays of a flat model,
    in order): every array of two or more dimensions (a weight) on its own, and every layer: a
    weight with the 1-D (or 0-D) arrays after it (its bias, a normalisation's scale and shift;
    alone, a bias initialised at zero has no norm to measure from). 1-D arrays before any weight
    form a layer of their own. A flat model with no shapes is one layer."""
    groups: list = []
    layer: list = []
    for k, shape in enumerate(shapes):
        if len(shape) >= 2:
            if layer:
                groups.append(tuple(layer))
            groups.append((k,))
            layer = [k]
        else:
            layer.append(k)
    if layer:
        groups.append(tuple(layer))
    return tuple(dict.fromkeys(groups))  # a weight without a bias is one group, not two


class LayerChanges(NamedTuple):
    """How far candidates moved from the client's model, layer by layer (:func:`layer_changes`).

    distance: [M] the largest over the guard's groups of the candidate's distance from the local
              model there, over the local model's norm there
    scale:    [M] the largest over the weight tensors of how much the candidate rescaled their
              units: the norm of the changes of the norms of the tensor's rows (its output units),
              or of its columns (its input units), over the tensor's norm (0 when the candidate
              kept every unit's norm; at most ``distance``)
    """

    distance: np.ndarray
    scale: np.ndarray


def layer_changes(
    local: Any, candidates: Any, shapes: Optional[Sequence[Sequence[int]]] = None, *, norm: str = "l2"
) -> LayerChanges:
    """How far every candidate moved from ``local``, in the guard's groups (:func:`guard_layers`),
    and how much it rescaled the units of each weight tensor.

    local:      the flat model measured from, [P] (NumPy or torch)
    candidates: [M, P] (an array, or a sequence of M flat models)
    shapes:     the shapes of the arrays laid end to end in [P] (their sizes sum to P); None: the
                whole model is one 1-D layer (no weight tensor: scale 0)
    norm:       "l2" (groups combine their arrays' squared distances and norms) or "l1"

    Every candidate array is read twice: by the distance kernel, and for its units' norms (in
    float64, one array at a time: extra memory O(largest array)). A group where the local
    model's norm is 0 gives 0 for a candidate equal to it there and infinity otherwise; a group
    with a NaN is left out (a non-finite candidate is rejected by the ops anyway; a non-finite
    local model has no norm to measure from), and NaN comes back only when every group is NaN
    (no bound rejects it).
    """
    choice(norm, "norm", ("l2", "l1"))
    from .ops import candidate_distances  # the compiled kernels load on first use

    size = int(local.shape[0])
    shapes = [(size,)] if shapes is None else [tuple(int(d) for d in s) for s in shapes]
    offsets, total = offsets_of(shapes)
    if total != size:
        raise ValueError(f"shapes cover {total} elements, but the model has {size}")
    rows = len(candidates)
    two_d = hasattr(candidates, "shape") and len(candidates.shape) == 2
    power = 2 if norm == "l2" else 1  # what adds up across the arrays of a group
    dist, own = np.zeros((rows, len(shapes))), np.zeros(len(shapes))
    scale = np.zeros((rows, len(shapes)))
    for k, (start, shape) in enumerate(zip(offsets, shapes)):
        stop = start + math.prod(shape)
        layer = local[start:stop]
        own[k] = model_norm(layer, norm=norm) ** power
        if rows == 0:
            continue
        part = candidates[:, start:stop] if two_d else [c[start:stop] for c in candidates]
        dist[:, k] = np.asarray(to_host(candidate_distances(layer, part, norm=norm))) ** power
        if len(shape) >= 2:
            units = _unit_norms(layer, shape, power)
            for m in range(rows):
                change = [np.abs(a - b) ** power for a, b in zip(_unit_norms(part[m], shape, power), units)]
                scale[m, k] = max(float(c.sum()) for c in change) ** (1 / power)
            with np.errstate(divide="ignore", invalid="ignore"):
                n = own[k] ** (1 / power)
                scale[:, k] = np.where(scale[:, k] == 0, 0.0, scale[:, k] / n)
    groups = guard_layers(shapes)
    distance = np.empty((rows, len(groups)))
    for g, group in enumerate(groups):
        pick = list(group)
        d, n = dist[:, pick].sum(axis=1) ** (1 / power), own[pick].sum() ** (1 / power)
        with np.errstate(divide="ignore", invalid="ignore"):
            distance[:, g] = np.where(d == 0, 0.0, d / n)
    # NaN only where every group is NaN
    return LayerChanges(np.fmax.reduce(distance, axis=1), np.fmax.reduce(scale, axis=1, initial=0.0))


def _unit_norms(array: Any, shape: Sequence[int], power: int) -> tuple:
    """(rows [shape[0]], columns [shape[1]]) float64 NumPy: the norms (L2 for power 2, L1 for 1)
    of a weight tensor's output units (its first axis) and input units (its second), summed over
    the rest (a convolution's kernel window)."""
    if hasattr(array, "detach"):
        import torch

        values = array.detach().resolve_neg().reshape(shape[0], shape[1], -1).to(torch.float64).abs()
        values = values * values if power == 2 else values
        out = (values.sum(dim=(1, 2)), values.sum(dim=(0, 2)))
        return tuple(o.cpu().numpy() ** (1 / power) for o in out)
    values = np.abs(np.asarray(array, dtype=np.float64).reshape(shape[0], shape[1], -1))
    values = values * values if power == 2 else values
    return values.sum(axis=(1, 2)) ** (1 / power), values.sum(axis=(0, 2)) ** (1 / power)


def outside_guard(changes: LayerChanges, ratio: Optional[float], scale: Optional[float]) -> np.ndarray:
    """[M] bool: the candidates some layer of which moved farther than ``ratio`` times its norm, or
    rescaled the units of some weight tensor by more than ``scale`` times its norm (None or
    infinity: no bound)."""
    far = changes.distance > (math.inf if ratio is None else ratio)
    rescaled = changes.scale > (math.inf if scale is None else scale)
    return far | rescaled
