"""The poisoned-client guard: how far a candidate may be from the client's model, relative to it.

The ops take the guard as an absolute ``max_distance``; a bound that fits every model size and
training stage is a multiple of the local model's norm, ``ratio * ||theta_i||``: honest candidates
sit at a fraction of that (clients start from one model and move by training), while scaled,
noised and constant poison models sit orders of magnitude beyond it.

>>> bound = fc.distance_bound(local, 3.0)
>>> step = fc.fomo_step(local, candidates, L0, L, max_distance=bound)

The client round (:mod:`fomo_core.round`) applies a finer guard to the candidates that would get
weight, from the layout its adapter knows (:class:`GuardLayout`, :func:`layer_changes`):

- *layer by layer*: each weight tensor, and each layer (a weight with the bias and normalisation
  parameters after it), may be at most ``guard`` times its own norm from the client's; a poison
  concentrated in one small layer hides in a bound over the whole model;
- *balance*: a distance bound cannot see what keeps the model's function. In a ReLU network, a
  hidden unit's incoming weights times ``a`` and its outgoing weights divided by ``a`` compute
  exactly what the model did, so a copy of a good model rescaled that way has as good a loss; but
  its layers are out of balance, and the next local training wrecks it. Gradient descent keeps,
  for every such unit, ``||incoming||^2 - ||outgoing||^2`` as it was at the start (exactly in the
  limit of small steps: "layers are automatically balanced", Du, Hu and Lee, NeurIPS 2018), so
  clients that started from one model agree on it however long each trained, while a rescaling
  by ``a`` moves it by about ``2 |log a|`` of the unit's squared norms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple, Optional

import numpy as np

from ._models import floating_leaves, parse_model
from ._validate import choice, real, to_host
from .layout import offsets_of

__all__ = [
    "distance_bound",
    "model_norm",
    "guard_layers",
    "layer_changes",
    "outside_guard",
    "GuardLayout",
    "Link",
    "dense_layout",
    "LayerChanges",
]


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
    """The groups of arrays the distance bound applies to, as indices into ``shapes`` (the arrays
    of a flat model, in order): every array of two or more dimensions (a weight) on its own, and
    every layer: a weight with the 1-D (or 0-D) arrays after it (its bias, a normalisation's scale
    and shift; alone, a bias initialised at zero has no norm to measure from). 1-D arrays before
    any weight form a layer of their own."""
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


class Link(NamedTuple):
    """Two weight arrays joined by positively homogeneous operations (ReLU, max or average
    pooling, flattening, dropout: ``f(a z) = a f(z)`` for ``a > 0``), as indices into the layout's
    shapes: ``weight_in`` makes the hidden units (with ``bias_in``, or None), ``weight_out`` reads
    them. ``order``: "out_in" (torch: units are the first axis of weight_in and the second of
    weight_out, which may hold several columns per unit after a flattening) or "in_out"
    (scikit-learn, Keras: the last axis of weight_in and the first of weight_out)."""

    weight_in: int
    bias_in: Optional[int]
    weight_out: int
    order: str = "out_in"


class GuardLayout(NamedTuple):
    """What the guard knows of a flat model: the ``shapes`` of the arrays laid end to end in it
    (their sizes sum to P) and the ``links`` between its layers (the hidden units the balance
    bound watches; none: distances only)."""

    shapes: tuple
    links: tuple = ()


class LayerChanges(NamedTuple):
    """How candidates moved from the client's model (:func:`layer_changes`).

    distance: [M] the largest over the layers of the candidate's distance from the local model
              there, over the local model's norm there
    balance:  [M] the largest over the links of the change of the units' balance
              ``||incoming||^2 - ||outgoing||^2``, summed over the units in absolute value, over
              their squared norms (the mean of the two models'); 0 without links
    """

    distance: np.ndarray
    balance: np.ndarray


def layer_changes(
    local: Any, candidates: Any, layout: Optional[GuardLayout] = None, *, norm: str = "l2"
) -> LayerChanges:
    """How far every candidate moved from ``local``, layer by layer (:func:`guard_layers`), and
    how much it changed the balance of the hidden units of ``layout``'s links.

    local:      the flat model measured from, [P] (NumPy or torch)
    candidates: [M, P] (an array, or a sequence of M flat models)
    layout:     a :class:`GuardLayout` of [P]; None: the whole model is one layer, no links
    norm:       the distances' norm, "l2" (the arrays of a layer combine their squares) or "l1"
                (the balance is of squared L2 norms whatever ``norm`` says)

    The distances come from the distance kernel, one array at a time; the balance reads the
    linked arrays of every candidate once more, in float64 (extra memory: one array). A layer
    where the local model's norm is 0 gives 0 for a candidate equal to it there and infinity
    otherwise. What is NaN is left out (a non-finite candidate is rejected by the ops anyway; a
    non-finite local model has no norm to measure from): a distance is NaN only when every layer's
    is, a link with a NaN counts as balanced.
    """
    choice(norm, "norm", ("l2", "l1"))
    from .ops import candidate_distances  # the compiled kernels load on first use

    size = int(local.shape[0])
    layout = GuardLayout(((size,),)) if layout is None else layout
    shapes = [tuple(int(d) for d in s) for s in layout.shapes]
    offsets, total = offsets_of(shapes)
    if total != size:
        raise ValueError(f"the layout's shapes cover {total} elements, but the model has {size}")
    rows = len(candidates)
    two_d = hasattr(candidates, "shape") and len(candidates.shape) == 2

    def array(model: Any, k: int) -> Any:
        return model[offsets[k] : offsets[k] + math.prod(shapes[k])]

    def arrays(k: int) -> Any:
        start, stop = offsets[k], offsets[k] + math.prod(shapes[k])
        return candidates[:, start:stop] if two_d else [c[start:stop] for c in candidates]

    power = 2 if norm == "l2" else 1  # what adds up across the arrays of a layer
    dist, own = np.zeros((rows, len(shapes))), np.zeros(len(shapes))
    for k in range(len(shapes)):
        own[k] = model_norm(array(local, k), norm=norm) ** power
        if rows:
            dist[:, k] = np.asarray(to_host(candidate_distances(array(local, k), arrays(k), norm=norm))) ** power
    groups = guard_layers(shapes)
    distance = np.empty((rows, len(groups)))
    for g, group in enumerate(groups):
        d, n = dist[:, list(group)].sum(axis=1) ** (1 / power), own[list(group)].sum() ** (1 / power)
        with np.errstate(divide="ignore", invalid="ignore"):
            distance[:, g] = np.where(d == 0, 0.0, d / n)
    balance = np.zeros((rows, len(layout.links)))
    for j, link in enumerate(layout.links):
        mine = _unit_squares(local, array, link, shapes)
        for m in range(rows):
            theirs = _unit_squares(candidates[m], array, link, shapes)
            change = np.abs((theirs[0] - theirs[1]) - (mine[0] - mine[1])).sum()
            scale = (mine[0] + mine[1] + theirs[0] + theirs[1]).sum() / 2
            with np.errstate(divide="ignore", invalid="ignore"):
                balance[m, j] = 0.0 if change == 0 else change / scale
    # NaN only where every layer (link) is NaN
    return LayerChanges(np.fmax.reduce(distance, axis=1), np.fmax.reduce(balance, axis=1, initial=0.0))


def _unit_squares(model: Any, array: Any, link: Link, shapes: list) -> tuple:
    """(incoming [units], outgoing [units]) float64 NumPy: the squared norms of every hidden unit's
    incoming weights (and bias) and outgoing weights in ``model`` (flat)."""
    into, out = shapes[link.weight_in], shapes[link.weight_out]
    rows_first = link.order == "out_in"
    units = into[0] if rows_first else into[-1]
    w_in = _squares(array(model, link.weight_in))
    w_out = _squares(array(model, link.weight_out))
    incoming = w_in.reshape(units, -1).sum(axis=1) if rows_first else w_in.reshape(-1, units).sum(axis=0)
    if link.bias_in is not None:
        incoming = incoming + _squares(array(model, link.bias_in))
    outgoing = w_out.reshape(out[0], units, -1).sum(axis=(0, 2)) if rows_first else w_out.reshape(units, -1).sum(axis=1)
    return incoming, outgoing


def _squares(values: Any) -> np.ndarray:
    """Element-wise squares in float64 NumPy of a NumPy array or torch tensor (any device)."""
    if hasattr(values, "detach"):
        import torch

        values = values.detach().resolve_neg().to(torch.float64)
        return (values * values).cpu().numpy()
    values = np.asarray(values, dtype=np.float64)
    return values * values


def outside_guard(changes: LayerChanges, ratio: Optional[float], balance: Optional[float]) -> np.ndarray:
    """[M] bool: the candidates some layer of which is farther than ``ratio`` times its norm from
    the client's, or that changed the balance of some link's units by more than ``balance`` (None
    or infinity: no bound)."""
    far = changes.distance > (math.inf if ratio is None else ratio)
    unbalanced = changes.balance > (math.inf if balance is None else balance)
    return far | unbalanced


def dense_layout(spec: Any) -> GuardLayout:
    """The :class:`GuardLayout` of a dense network's flat model (a :class:`fomo_core.DenseSpec`:
    [W_1, b_1, W_2, b_2, ...]): every hidden layer with a ReLU or identity activation links its
    weights to the next layer's."""
    order = "out_in" if spec.weight_layout == "out_in" else "in_out"
    links = tuple(
        Link(2 * k, 2 * k + 1, 2 * k + 2, order)
        for k, activation in enumerate(spec.activations)
        if activation in ("relu", "identity")
    )
    return GuardLayout(tuple(spec.shapes), links)
