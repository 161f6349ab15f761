"""The poisoned-client guard: how far a candidate may be from the client's model, relative to it.

The ops take the guard as an absolute ``max_distance``; a bound that fits every model size and
training stage is a multiple of the local model's norm, ``ratio * ||theta_i||``: honest candidates
sit at a fraction of that (clients start from one model and move by training), while scaled,
noised and constant poison models sit orders of magnitude beyond it.

>>> bound = fc.distance_bound(local, 3.0)
>>> step = fc.fomo_step(local, candidates, L0, L, max_distance=bound)

The client round (:mod:`fomo_core.round`) guards the candidates that would get weight more finely,
from the layout its adapter knows (:class:`GuardLayout`):

- *layer by layer* (:func:`layer_distances`): each weight tensor, and each layer (a weight with
  the bias and normalisation parameters after it), may be at most ``guard`` times its own norm
  from the client's: a poison concentrated in one small layer hides in a bound over the whole
  model;
- *rebalanced* (:func:`rebalance`): a distance bound cannot see what keeps the model's function.
  In a ReLU network, a hidden unit's incoming weights times ``a > 0`` and its outgoing weights
  divided by ``a`` compute exactly what the model did, so a copy of a good model rescaled that
  way has as good a loss; but its layers are out of balance, and the next local training wrecks
  it. Every such unit has one rescaling for each value of its balance ``||incoming||^2 -
  ||outgoing||^2``, which gradient descent keeps as it was at the start ("layers are automatically
  balanced", Du, Hu and Lee, NeurIPS 2018). The round rescales each candidate's units to the
  client's own balance before measuring and using it: any such rescaling is undone, whatever its
  size, the function stays the same, and an honest candidate from the same initial model barely
  moves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple, Optional

import numpy as np

from ._models import floating_leaves, is_torch, parse_model
from ._validate import choice, count, real, to_host
from .choices import Norm, allowed
from .layout import offsets_of

__all__ = [
    "distance_bound",
    "model_norm",
    "guard_layers",
    "layer_distances",
    "rebalance",
    "Balancer",
    "GuardLayout",
    "Link",
    "dense_layout",
]


def _leaf_sum(leaf: Any, norm: Norm) -> float:
    if is_torch(leaf):
        import torch

        values = leaf.detach().resolve_neg()
        order = 2 if norm == "l2" else 1
        total = float(torch.linalg.vector_norm(values, ord=order, dtype=torch.float64))
        return total * total if norm == "l2" else total
    values = np.asarray(leaf).astype(np.float64).ravel()
    return float(np.dot(values, values)) if norm == "l2" else float(np.abs(values).sum())


def model_norm(params: Any, *, norm: Norm = "l2") -> float:
    """||theta|| over the floating-point entries of a model (flat, layer list or mapping), summed
    in float64: sqrt of the sum of squares (``"l2"``) or the sum of magnitudes (``"l1"``)."""
    choice(norm, "norm", allowed(Norm))
    structure, leaves = parse_model(params, "params")
    total = sum(_leaf_sum(leaf, norm) for leaf in floating_leaves(structure, leaves))
    return math.sqrt(total) if norm == "l2" else total


def distance_bound(local_params: Any, ratio: float, *, norm: Norm = "l2") -> float:
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


def layer_distances(
    local: Any, candidates: Any, layout: Optional[GuardLayout] = None, *, norm: Norm = "l2"
) -> np.ndarray:
    """[M] float64: for every candidate, the largest over the layers (:func:`guard_layers`) of its
    distance from ``local`` there over the norm of ``local`` there.

    local:      the flat model measured from, [P] (NumPy or torch), or the list of its arrays in
                the layout's order (then every candidate is such a list too: read where it is)
    candidates: [M, P] (an array, or a sequence of M flat models), or M lists of arrays
    layout:     a :class:`GuardLayout` of [P]; None: the whole model is one layer
    norm:       "l2" (the arrays of a layer combine their squares) or "l1"

    The distance kernel reads every array once. A layer where the local model's norm is 0 gives 0
    for a candidate equal to it there and infinity otherwise; a layer where either is NaN is left
    out (a non-finite candidate is rejected by the ops anyway; a non-finite local model has no
    norm to measure from), and NaN comes back only when every layer is NaN (no bound rejects it).
    """
    choice(norm, "norm", allowed(Norm))
    from .ops import candidate_distances  # the compiled kernels load on first use

    listed = isinstance(local, (list, tuple))
    shapes, offsets = _checked_lists(local, layout) if listed else _checked(local, layout)
    rows = len(candidates)
    two_d = hasattr(candidates, "shape") and len(candidates.shape) == 2
    power = 2 if norm == "l2" else 1  # what adds up across the arrays of a layer
    dist, own = np.zeros((rows, len(shapes))), np.zeros(len(shapes))
    for k, (start, shape) in enumerate(zip(offsets, shapes)):
        stop = start + math.prod(shape)
        if listed:
            layer, part = local[k].reshape(-1), [c[k].reshape(-1) for c in candidates]
        else:
            layer = local[start:stop]
            part = candidates[:, start:stop] if two_d else [c[start:stop] for c in candidates]
        zero = layer * 0  # the local model's norm there: its distance from 0
        own[k] = float(np.asarray(to_host(candidate_distances(zero, [layer], norm=norm)))[0]) ** power
        if rows:
            dist[:, k] = np.asarray(to_host(candidate_distances(layer, part, norm=norm))) ** power
    groups = guard_layers(shapes)
    out = np.empty((rows, len(groups)))
    for g, group in enumerate(groups):
        d, n = dist[:, list(group)].sum(axis=1) ** (1 / power), own[list(group)].sum() ** (1 / power)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[:, g] = np.where(d == 0, 0.0, d / n)
    return np.fmax.reduce(out, axis=1)  # NaN only where every layer is NaN


def _checked(model: Any, layout: Optional[GuardLayout]) -> tuple:
    """(shapes, offsets) of ``layout`` over the flat ``model`` [P] (one layer when None), the
    layout checked: shapes of non-negative sizes covering [P], links between weights whose unit
    counts agree."""
    size = int(model.shape[0])
    if layout is not None and not isinstance(layout, GuardLayout):
        raise TypeError(f"layout must be a fomo_core.guard.GuardLayout or None, got {type(layout).__name__}")
    try:
        shapes = [(size,)] if layout is None else [tuple(count(d, "dimension") for d in s) for s in layout.shapes]
    except (TypeError, ValueError) as e:
        raise ValueError(f"layout.shapes must be sequences of sizes >= 0: {e}") from None
    offsets, total = offsets_of(shapes)
    if total != size:
        raise ValueError(f"the layout's shapes cover {total} elements, but the model has {size}")
    for link in () if layout is None else layout.links:
        _check_link(link, shapes)
    return shapes, offsets


def _checked_lists(model: Sequence, layout: Optional[GuardLayout]) -> tuple:
    """:func:`_checked` for a model given as the list of its arrays in ``layout``'s order."""
    if layout is None:
        raise ValueError("a model given as a list of arrays needs a layout (the shapes of its arrays)")
    sizes = [math.prod(a.shape) for a in model]
    shapes, offsets = _checked(np.empty(sum(sizes)), layout)
    if sizes != [math.prod(s) for s in shapes]:
        raise ValueError(f"the model's arrays have shapes {[tuple(a.shape) for a in model]}, the layout {shapes}")
    return shapes, offsets


def _check_link(link: Any, shapes: list) -> None:
    """A ValueError naming what is wrong with a link (indices, dimensions, unit counts)."""
    if not isinstance(link, Link):
        raise TypeError(f"layout.links must hold fomo_core.guard.Link, got {type(link).__name__}")
    if link.order not in ("out_in", "in_out"):
        raise ValueError(f"{link}: order must be 'out_in' or 'in_out', got {link.order!r}")
    for name in ("weight_in", "bias_in", "weight_out"):
        k = getattr(link, name)
        if (k is not None or name != "bias_in") and not (isinstance(k, int) and 0 <= k < len(shapes)):
            raise ValueError(f"{link}: {name} must be an index of layout.shapes (0 to {len(shapes) - 1}), got {k!r}")
    into, out = shapes[link.weight_in], shapes[link.weight_out]
    if len(into) < 2 or len(out) < 2:
        raise ValueError(f"{link}: weight_in and weight_out must be weights (2 dimensions or more), got {into}, {out}")
    units = into[0] if link.order == "out_in" else into[-1]
    reads = out[1] * math.prod(out[2:]) if link.order == "out_in" else out[0]
    if units == 0 or reads % units or (link.order == "in_out" and reads != units):
        raise ValueError(f"{link}: weight_out {out} does not read the {units} units of weight_in {into}")
    if link.bias_in is not None and shapes[link.bias_in] != (units,):
        raise ValueError(f"{link}: bias_in must have shape ({units},), got {shapes[link.bias_in]}")


def rebalance(model: Any, reference: Any, layout: GuardLayout) -> Any:
    """A copy of the flat ``model`` [P] with every hidden unit of ``layout``'s links rescaled (its
    incoming weights and bias times a > 0, its outgoing weights divided by a: the same function)
    so that its balance ``||incoming||^2 - ||outgoing||^2`` is the one the unit has in
    ``reference`` [P]. Whatever rescaling the model went through is undone: all rescalings of one
    model give one result. :class:`Balancer` does the same for many models against one reference.
    """
    return Balancer(reference, layout)(model)


class Balancer:
    """Rebalances models to the units' balance in ``reference`` [P] (:func:`rebalance`), whose
    sums of squares it reads once.

    The scales are the unique minimum of a strictly convex function of their logarithms u (the
    sum of the rescaled squared weights minus ``2 sum_j target_j u_j``; its gradient is twice each
    unit's balance minus its target), found by Newton's method (steps by preconditioned conjugate
    gradients on Hessian-vector products, a backtracking line search) on [units, units] sums of
    squares in float64; one hidden layer takes one step, its units being independent. The model
    is then scaled once, in its own dtype. A unit with no incoming or no outgoing weight keeps its
    scale; a model with anything not finite is left as it is.
    """

    def __init__(self, reference: Any, layout: GuardLayout):
        self.layout = layout
        self.shapes, self.offsets = _checked(reference, layout)
        self.units = [_units(self.shapes, link) for link in layout.links]
        sums = self._sums(_stacked([reference]))
        self.targets = np.concatenate([i[0].sum(axis=1) + b[0] - o[0].sum(axis=0) for i, b, o in sums] or [[]])

    def _array(self, flat: Any, k: int) -> Any:
        """Array k of a flat model [P], or of every row of models [B, P]."""
        return flat[..., self.offsets[k] : self.offsets[k] + math.prod(self.shapes[k])]

    def _sums(self, models: Any) -> list:
        """Per link, the squared weights of every model [B, P] (:func:`_unit_sums`)."""
        return [_unit_sums(models, self._array, self.shapes, link, self.layout.links) for link in self.layout.links]

    def __call__(self, model: Any) -> Any:
        return self.many([model])[0]

    def many(self, models: Sequence) -> list:
        """Rebalanced copies of several flat models [P], their scales solved together (one Newton
        iteration's arrays hold all of them: each model follows its own iterates, steps and
        stopping rule, as if alone, up to the rounding of the sums over units)."""
        outs = [model.clone() if hasattr(model, "clone") else np.array(model) for model in models]
        if not self.layout.links or not outs:
            return outs
        for out, scales in zip(outs, self._scales(self._sums(_stacked(models)))):
            if scales is not None:
                for link, a in zip(self.layout.links, np.split(scales, np.cumsum(self.units)[:-1])):
                    _scale_units(out, self._array, link, self.shapes, a)
        return outs

    def _scales(self, sums: list) -> list:
        """Per model (the rows of :meth:`_sums`), the per-unit scales [all linked units], or None
        when its sums are not finite. Arrays over the models are [B, ...]."""
        links = self.layout.links
        finite = np.logical_and.reduce(
            [np.isfinite(x).all(axis=tuple(range(1, x.ndim))) for parts in sums for x in parts]
        )
        if not finite.any():
            return [None] * len(finite)
        if not finite.all():
            sums = [tuple(x[finite] for x in parts) for parts in sums]
        b = int(finite.sum())
        starts = np.concatenate([[0], np.cumsum(self.units)]).astype(int)
        n = int(starts[-1])
        # f(u) = fixed_in . e^2u + fixed_out . e^-2u + sum_c sum_ji c_ji e^2(u_j - u_i) - 2 target . u
        fixed_in, fixed_out = np.zeros((b, n)), np.zeros((b, n))  # squares to units outside the links
        incoming, outgoing = np.zeros((b, n)), np.zeros((b, n))  # every unit's squares, at u = 0
        couplings = []  # (the units of a link, those of the link before, their squared weights [B, ...])
        for k, link in enumerate(links):
            w_in, bias, w_out = sums[k]
            here = slice(starts[k], starts[k + 1])
            before = next((j for j, prev in enumerate(links) if prev.weight_out == link.weight_in), None)
            after = any(nxt.weight_in == link.weight_out for nxt in links)
            fixed_in[:, here] = bias + (w_in.sum(axis=2) if before is None else 0.0)
            fixed_out[:, here] = 0.0 if after else w_out.sum(axis=1)
            incoming[:, here], outgoing[:, here] = w_in.sum(axis=2) + bias, w_out.sum(axis=1)
            if before is not None:
                couplings.append((here, slice(starts[before], starts[before + 1]), w_in))
        free = (incoming > 0) & (outgoing > 0)  # a unit with no weight on one side has no balance
        tolerance = 1e-7 * (incoming + outgoing)  # below float32's rounding of the weights
        terms = _Terms(fixed_in, fixed_out, free, tolerance, tuple(couplings))
        targets = self.targets

        def dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:  # row by row, [B]
            return np.einsum("bn,bn->b", x, y)

        def times(c: np.ndarray, v: np.ndarray) -> np.ndarray:  # c @ v per model
            return np.matmul(c, v[:, :, None])[:, :, 0]

        def times_t(c: np.ndarray, v: np.ndarray) -> np.ndarray:  # c.T @ v per model
            return np.matmul(v[:, None, :], c)[:, 0, :]

        # a coupling's rescaled squares are diag(e^2u_here) c diag(e^-2u_back): products with c only
        def value(q: _Terms, u: np.ndarray) -> np.ndarray:
            total = dot(q.fixed_in, np.exp(2 * u)) + dot(q.fixed_out, np.exp(-2 * u)) - 2 * (u @ targets)
            for here, back, c in q.couplings:
                total += dot(np.exp(2 * u[:, here]), times(c, np.exp(-2 * u[:, back])))
            return total

        def derivatives(q: _Terms, u: np.ndarray) -> tuple:
            """(gradient [B, n], the Hessian's diagonal [B, n], its coupling blocks)."""
            up, down = q.fixed_in * np.exp(2 * u), q.fixed_out * np.exp(-2 * u)
            grad, diagonal, blocks = 2 * (up - down - targets), 4 * (up + down), []
            for here, back, c in q.couplings:
                x, y = np.exp(2 * u[:, here]), np.exp(-2 * u[:, back])
                rows, cols = x * times(c, y), y * times_t(c, x)
                grad[:, here] += 2 * rows
                grad[:, back] -= 2 * cols
                diagonal[:, here] += 4 * rows
                diagonal[:, back] += 4 * cols
                blocks.append((here, back, c, x, y))
            return np.where(q.free, grad, 0.0), np.where(q.free, diagonal, 1.0), blocks

        def newton_step(free: np.ndarray, grad: np.ndarray, diagonal: np.ndarray, blocks: list) -> np.ndarray:
            """-H^-1 grad by conjugate gradients on Hessian-vector products (the Hessian couples
            only the units of consecutive links: no [n, n] matrix is built), Jacobi-preconditioned;
            a model's iterates stop where its own residual is small enough (inexact Newton), and
            the arrays keep only the models still iterating."""

            def hessian_times(v: np.ndarray) -> np.ndarray:
                out = diagonal * v
                for here, back, c, x, y in blocks:
                    out[:, here] -= 4 * x * times(c, y * v[:, back])
                    out[:, back] -= 4 * y * times_t(c, x * v[:, here])
                return np.where(free, out, v)

            step, at = np.zeros(grad.shape), np.arange(len(grad))  # at: the rows still iterating
            x, r = np.zeros(grad.shape), -grad
            z = r / diagonal
            p, rz = z.copy(), dot(r, z)
            enough = 1e-6 * np.sqrt(dot(grad, grad))
            for _ in range(4 * n + 20):
                going = np.sqrt(np.maximum(dot(r, r), 0.0)) > enough
                if not going.all():
                    step[at[~going]] = x[~going]
                    if not going.any():
                        break
                    at, x, r, p, rz, enough, diagonal, free = (
                        a[going] for a in (at, x, r, p, rz, enough, diagonal, free)
                    )
                    blocks = [(here, back, c[going], cx[going], cy[going]) for here, back, c, cx, cy in blocks]
                hp = hessian_times(p)
                alpha = (rz / dot(p, hp))[:, None]
                x, r = x + alpha * p, r - alpha * hp
                z = r / diagonal
                rz, rz_before = dot(r, z), rz
                p = z + (rz / rz_before)[:, None] * p
            else:
                step[at] = x
            return step

        u, at, now = np.zeros((b, n)), np.arange(b), np.zeros((b, n))  # now: u of the rows at
        for _ in range(100):
            grad, diagonal, blocks = derivatives(terms, now)
            going = ~np.all(np.abs(grad) <= terms.tolerance, axis=1)
            if not going.all():  # the models that are solved leave the arrays
                u[at[~going]] = now[~going]
                if not going.any():
                    break
                at, now, grad, diagonal, terms = at[going], now[going], grad[going], diagonal[going], terms.rows(going)
                blocks = [(here, back, c[going], x[going], y[going]) for here, back, c, x, y in blocks]
            step = newton_step(terms.free, grad, diagonal, blocks)
            start, slope, t = value(terms, now), dot(grad, step), np.ones(len(at))
            searching = np.ones(len(at), dtype=bool)
            while True:  # backtracking: Newton's full step can overshoot far from the optimum
                searching &= t > 1e-6
                if not searching.any():
                    break
                searching &= value(terms, now + t[:, None] * step) > start + 1e-4 * t * slope
                t = np.where(searching, t / 2, t)
            now = now + t[:, None] * step
        else:
            u[at] = now
        solved = iter(np.exp(u))
        return [next(solved) if ok else None for ok in finite]


class _Terms(NamedTuple):
    """The rebalancing objective's terms for the models being solved, [B, ...] each (see
    :meth:`Balancer._scales`): squares to units outside the links, the units that have a balance,
    the stopping tolerances, and the couplings (units here, the link's before, their squares)."""

    fixed_in: np.ndarray
    fixed_out: np.ndarray
    free: np.ndarray
    tolerance: np.ndarray
    couplings: tuple

    def rows(self, keep: np.ndarray) -> _Terms:
        """The terms of the models ``keep`` selects (a boolean mask over the rows)."""
        return _Terms(*(a[keep] for a in self[:4]), tuple((here, back, c[keep]) for here, back, c in self.couplings))


def _units(shapes: list, link: Link) -> int:
    """How many hidden units a link has (the output units of its incoming weight)."""
    into = shapes[link.weight_in]
    return into[0] if link.order == "out_in" else into[-1]


def _unit_sums(models: Any, array: Any, shapes: list, link: Link, links: tuple) -> tuple:
    """(incoming [B, units, inputs], bias [B, units], outgoing [B, outputs, units]) float64 NumPy
    of models [B, P]: a link's squared weights summed over everything but the units they join (a
    convolution's window; the positions a flattening laid out per channel). ``inputs`` are the
    units of the link before when there is one, else every input element; ``outputs`` likewise."""
    units = _units(shapes, link)
    before = next((prev for prev in links if prev.weight_out == link.weight_in), None)
    w_in = _squares(array(models, link.weight_in))
    w_out = _squares(array(models, link.weight_out))
    b = len(w_in)
    if link.order == "out_in":
        incoming = w_in.reshape(b, units, -1)
        outgoing = w_out.reshape(b, shapes[link.weight_out][0], units, -1).sum(axis=3)
    else:
        incoming = w_in.reshape(b, -1, units).transpose(0, 2, 1)
        outgoing = w_out.reshape(b, units, -1).transpose(0, 2, 1)
    if before is not None:  # group the inputs by the previous link's units
        inputs = _units(shapes, before)
        if link.order == "out_in":
            incoming = w_in.reshape(b, units, inputs, -1).sum(axis=3)
        else:
            incoming = w_in.reshape(b, inputs, -1, units).sum(axis=2).transpose(0, 2, 1)
    bias = _squares(array(models, link.bias_in)) if link.bias_in is not None else np.zeros((b, units))
    return incoming, bias, outgoing


def _stacked(models: Sequence) -> Any:
    """Flat models [P] as one [B, P] array of their kind (torch or NumPy)."""
    if is_torch(models[0]):
        import torch

        return torch.stack([m.detach() for m in models])
    return np.stack([np.asarray(m) for m in models])


def _scale_units(model: Any, array: Any, link: Link, shapes: list, a: np.ndarray) -> None:
    """Multiplies every hidden unit's incoming weights and bias by a [units] and divides its
    outgoing weights by it, in place in the flat, contiguous ``model``."""
    out = shapes[link.weight_out]
    units = _units(shapes, link)
    if is_torch(model):
        import torch

        a = torch.as_tensor(a, dtype=model.dtype, device=model.device)
    else:
        a = a.astype(model.dtype)
    w_in, w_out = array(model, link.weight_in), array(model, link.weight_out)
    if link.order == "out_in":
        view = w_in.reshape(units, -1)
        view *= a[:, None]
        view = w_out.reshape(out[0], units, -1)
        view /= a[None, :, None]
    else:
        view = w_in.reshape(-1, units)
        view *= a[None, :]
        view = w_out.reshape(units, -1)
        view /= a[:, None]
    if link.bias_in is not None:
        bias = array(model, link.bias_in)
        bias *= a


def _squares(values: Any) -> np.ndarray:
    """Element-wise squares in float64 NumPy of a NumPy array or torch tensor (any device)."""
    if is_torch(values):
        import torch

        values = values.detach().resolve_neg().to(torch.float64, copy=True)
        return values.mul_(values).cpu().numpy()
    values = np.asarray(values, dtype=np.float64)
    return values * values


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
