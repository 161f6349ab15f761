"""Hypothesis strategies and array helpers: FedFomo calls over every kind of model fomo_core takes.

A case is a local model, M candidates and losses, drawn over: storage dtype (float32, float64,
float16, bfloat16 via torch), array library (NumPy, torch), model structure (flat 1-D array, list,
tuple or dict of layers, with non-floating entries mixed in), candidates as a 2-D array or a list,
memory layout of every array (contiguous, offset into a bigger buffer, strided, transposed, negative
strides), sizes including 0 and 1, M from 0 to 16, identical and duplicate candidates, NaN/inf/-0.0
in the parameters and NaN/inf in the losses, both norms, eps and all_scores.

Structure and layout come from hypothesis draws (so they shrink); the values come from a NumPy
generator seeded by a drawn integer (drawing thousands of floats one by one would be slow).
Every view lives inside a bigger buffer filled with NaN, so a kernel that reads outside a view
gets NaN and one that writes outside it is caught by :func:`untouched_outside`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from hypothesis import strategies as st

DTYPES = ("float32", "float64", "float16", "bfloat16")
NUMPY_DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16}
TORCH_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
LEAF_VIEWS = ("contiguous", "offset", "strided", "transposed", "reversed")
BLOCK_VIEWS = ("contiguous", "row_offset", "col_strided", "row_strided", "transposed", "reversed")
SPECIALS = (np.nan, np.inf, -np.inf, -0.0)


# ---- arrays ---------------------------------------------------------------------------------


def is_torch(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def to_f64(x: Any) -> np.ndarray:
    """The values of an array as a float64 NumPy array (exact for every storage dtype)."""
    if is_torch(x):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def bits(x: Any) -> np.ndarray:
    """The raw bit patterns of an array's elements (C order), to compare bit for bit."""
    if is_torch(x):
        size = x.element_size()
        itype = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[size]
        raw = x.detach().cpu().contiguous().view(itype).numpy()
        return raw.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[size]).copy()
    a = np.array(x, order="C", copy=True)  # keeps 0-d arrays 0-d, unlike ascontiguousarray
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.itemsize]).copy()


def _permute(a: Any, order: tuple) -> Any:
    return a.permute(order) if is_torch(a) else a.transpose(order)


def _nan_buffer(shape: tuple, dtype: str, backend: str) -> Any:
    if backend == "torch":
        return torch.full(shape, float("nan"), dtype=TORCH_DTYPES[dtype])
    return np.full(shape, np.nan, dtype=NUMPY_DTYPES[dtype])


@dataclass
class Placed:
    """An array placed in memory: `view` (what the caller passes) inside `base` (the buffer)."""

    view: Any
    base: Any
    select: Callable[[Any], Any]  # base -> view; applied to an index array it gives the covered positions

    def covered(self) -> np.ndarray:
        index = np.arange(int(np.prod(self.base.shape)), dtype=np.int64).reshape(tuple(self.base.shape))
        return np.asarray(self.select(index)).reshape(-1)


def _leaf_layout(shape: tuple, view: str, backend: str) -> tuple:
    """(base shape, base -> view) for a leaf of `shape` laid out as `view`."""
    n = int(np.prod(shape)) if shape else 1
    ndim = len(shape)
    if view == "transposed" and ndim < 2:
        view = "strided"
    if view == "reversed" and (backend == "torch" or ndim == 0):
        view = "strided"  # torch has no negative strides
    if view == "strided" and ndim == 0:
        view = "offset"
    if view == "contiguous":
        return shape, lambda b: b
    if view == "offset":
        return (n + 5,), lambda b: b[3 : 3 + n].reshape(shape)
    if view == "strided":
        step = 3
        base = tuple(s + 1 for s in shape[:-1]) + (shape[-1] * step + 2,)
        index = tuple(slice(1, 1 + s) for s in shape[:-1]) + (slice(1, 1 + shape[-1] * step, step),)
        return base, lambda b: b[index]
    if view == "transposed":
        order = tuple(reversed(range(ndim)))
        return tuple(reversed(shape)), lambda b: _permute(b, order)
    if view == "reversed":
        return shape, lambda b: b[..., ::-1]
    raise ValueError(view)


def _block_layout(m: int, p: int, view: str, backend: str) -> tuple:
    """(base shape, base -> view) for a [M, P] candidate block laid out as `view`."""
    if view == "reversed" and backend == "torch":
        view = "row_strided"
    if view == "contiguous":
        return (m, p), lambda b: b
    if view == "row_offset":  # rows of a wider matrix, starting mid-row
        return (m + 1, p + 3), lambda b: b[1:, 2 : 2 + p]
    if view == "col_strided":
        return (m, 2 * p + 1), lambda b: b[:, 1 : 1 + 2 * p : 2]
    if view == "row_strided":
        return (2 * m + 1, p), lambda b: b[1 : 1 + 2 * m : 2]
    if view == "transposed":  # column-major [M, P]
        return (p, m), lambda b: _permute(b, (1, 0))
    if view == "reversed":
        return (m, p), lambda b: b[::-1, ::-1]
    raise ValueError(view)


def place(values: np.ndarray, dtype: str, backend: str, layout: tuple) -> Placed:
    """Stores float64 `values` as `dtype` in a NaN-filled buffer, at the view `layout` describes."""
    base_shape, select = layout
    base = _nan_buffer(base_shape, dtype, backend)
    view = select(base)
    if backend == "torch":
        view.copy_(torch.from_numpy(np.array(values, dtype=np.float64, order="C")).to(view.dtype))
    else:
        view[...] = values
    return Placed(view, base, select)


def place_leaf(values: np.ndarray, dtype: str, backend: str, view: str) -> Placed:
    return place(values, dtype, backend, _leaf_layout(tuple(values.shape), view, backend))


def untouched_outside(placed: Placed, base_bits_before: np.ndarray) -> bool:
    """Whether every element of the buffer outside the view kept its bits."""
    outside = np.ones(base_bits_before.size, dtype=bool)
    outside[placed.covered()] = False
    return np.array_equal(bits(placed.base).reshape(-1)[outside], base_bits_before.reshape(-1)[outside])


# ---- models ---------------------------------------------------------------------------------


@dataclass
class ModelLayout:
    """How a model is built: its kind, and for each entry a key, a shape and whether it floats."""

    kind: str  # flat | list | tuple | dict
    keys: list
    shapes: list
    floating: list

    @property
    def float_shapes(self) -> list:
        return [s for s, f in zip(self.shapes, self.floating) if f]

    def num_elements(self) -> int:
        return int(sum(int(np.prod(s)) if s else 1 for s in self.float_shapes))


def assemble(layout: ModelLayout, leaves: list) -> Any:
    """The model of `layout` holding `leaves` (one per entry, in order)."""
    if layout.kind == "flat":
        return leaves[0]
    if layout.kind == "dict":
        return dict(zip(layout.keys, leaves))
    return tuple(leaves) if layout.kind == "tuple" else list(leaves)


def entries(layout: ModelLayout, model: Any) -> list:
    """The entries of a model of `layout`, in order."""
    if layout.kind == "flat":
        return [model]
    if layout.kind == "dict":
        return [model[k] for k in layout.keys]
    return list(model)


def float_entries(layout: ModelLayout, model: Any) -> list:
    return [e for e, f in zip(entries(layout, model), layout.floating) if f]


def flat_values(layout: ModelLayout, model: Any) -> np.ndarray:
    """All floating values of a model as one float64 vector (leaf by leaf, C order)."""
    parts = [to_f64(e).reshape(-1) for e in float_entries(layout, model)]
    return np.concatenate(parts) if parts else np.zeros(0)


def _integer_leaf(shape: tuple, backend: str, value: int) -> Any:
    """A non-floating entry such as BatchNorm's num_batches_tracked."""
    if backend == "torch":
        return torch.full(shape, value, dtype=torch.int64)
    return np.full(shape, value, dtype=np.int64)


@dataclass
class Case:
    """One drawn FedFomo call and how its arrays were built."""

    dtype: str
    backend: str
    layout: ModelLayout
    local: Any
    candidates: Any
    local_loss: float
    losses: np.ndarray
    weights: np.ndarray  # arbitrary weights for apply_update (zeros, negatives, > 1)
    norm: str
    eps: float
    all_scores: bool
    m: int
    leaf_views: list
    candidate_form: str
    rng_seed: int
    placed: list = field(default_factory=list)  # every Placed input, to check nothing was written

    @property
    def num_elements(self) -> int:
        return self.layout.num_elements()

    def candidate_models(self) -> list:
        """The candidates as a list of models (rows of a 2-D block as flat models)."""
        if self.layout.kind == "flat" and not isinstance(self.candidates, (list, tuple)):
            return [self.candidates[i] for i in range(self.m)]
        return list(self.candidates)

    def magnitude(self, weights: np.ndarray) -> np.ndarray:
        """S = |x| + sum_k |w_k| |c_k - x| per floating element (see tolerances.update_bound)."""
        x = flat_values(self.layout, self.local)
        s = np.abs(x)
        for w, c in zip(weights, self.candidate_models()):
            if w != 0:
                s = s + abs(w) * np.abs(flat_values(self.layout, c) - x)
        return s

    def input_bits(self) -> list:
        return [bits(p.base) for p in self.placed]

    def make_out(self, views: list) -> tuple:
        """A separate output model of the local model's structure (NaN-filled buffers at the given
        views) and its Placed floating leaves."""
        leaves, placed = [], []
        float_index = 0
        for entry, floating in zip(entries(self.layout, self.local), self.layout.floating):
            if floating:
                values = np.full(tuple(entry.shape), np.nan)
                p = place_leaf(values, self.dtype, self.backend, views[float_index % len(views)])
                leaves.append(p.view)
                placed.append(p)
                float_index += 1
            else:
                leaves.append(entry.clone() if is_torch(entry) else entry.copy())
        return assemble(self.layout, leaves), placed


# Sizes 0 and 1 on purpose, but most draws hold a few to a few hundred elements.
sizes = st.one_of(st.integers(2, 40), st.integers(41, 200), st.integers(2, 200), st.sampled_from([0, 1]))
dims = st.one_of(st.integers(1, 7), st.integers(2, 7), st.integers(0, 3))
leaf_shapes = st.one_of(
    st.just(()),  # a 0-d leaf (a scalar parameter)
    st.tuples(sizes),
    st.tuples(dims, dims),
    st.tuples(dims, dims, dims),
)


@st.composite
def model_layouts(draw) -> ModelLayout:
    kind = draw(st.sampled_from(["flat", "list", "tuple", "dict"]))
    if kind == "flat":
        return ModelLayout("flat", [None], [(draw(sizes),)], [True])
    shapes = draw(
        st.one_of(
            st.lists(leaf_shapes, min_size=1, max_size=4),
            st.lists(leaf_shapes, min_size=2, max_size=4),
            st.lists(leaf_shapes, min_size=0, max_size=4),
        )
    )  # [] too: a model without layers
    floating = [True] * len(shapes)
    if draw(st.booleans()):  # a non-floating entry like num_batches_tracked, anywhere
        at = draw(st.integers(0, len(shapes)))
        shapes.insert(at, draw(st.sampled_from([(), (3,)])))
        floating.insert(at, False)
    keys = [f"layer{i}.{'weight' if f else 'num_batches_tracked'}" for i, f in enumerate(floating)]
    return ModelLayout(kind, keys, shapes, floating)


def _losses(rng: np.random.Generator, local_loss: float, m: int, specials: bool) -> np.ndarray:
    """Candidate losses around the local one: better, worse, equal, and (optionally) NaN/inf."""
    base = local_loss if np.isfinite(local_loss) else 1.0
    losses = base + rng.uniform(-1.0, 1.0, m) * rng.choice([1e-3, 0.5, 2.0], m)
    losses[rng.random(m) < 0.1] = base
    if specials and m:
        hit = rng.integers(0, m, size=rng.integers(1, 3))
        losses[hit] = rng.choice([np.nan, np.inf, -np.inf], size=hit.size)
    return losses


@st.composite
def cases(
    draw,
    max_m: int = 16,
    specials: bool = True,
    dtypes=DTYPES,
    backends=("numpy", "torch"),
    leaf_views=LEAF_VIEWS,
    block_views=BLOCK_VIEWS,
) -> Case:
    """A FedFomo call; the keyword arguments narrow what is drawn."""
    dtype = draw(st.sampled_from(dtypes))
    backend = "torch" if dtype == "bfloat16" else draw(st.sampled_from(backends))
    layout = draw(model_layouts())
    m = draw(st.one_of(st.integers(1, max_m), st.integers(2, max_m), st.integers(0, max_m)))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([1e-6, 1e-3, 1.0, 100.0]))
    n_float = sum(layout.floating)
    local_views = [draw(st.sampled_from(leaf_views)) for _ in range(n_float)]
    candidate_form = "list"
    if layout.kind == "flat":
        candidate_form = draw(st.sampled_from(["list"] + [f"block_{v}" for v in block_views]))
    param_specials = specials and draw(st.integers(0, 5)) == 0
    loss_specials = specials and draw(st.integers(0, 7)) == 0
    local_loss = 2.0
    if specials and draw(st.integers(0, 15)) == 0:
        local_loss = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    norm = draw(st.sampled_from(["l2", "l1"]))
    eps = draw(st.sampled_from([0.0, 0.0, 1e-5, 0.25]))
    all_scores = draw(st.booleans())

    rng = np.random.default_rng(seed)
    float_shapes = layout.float_shapes
    local_values = [scale * rng.standard_normal(s) for s in float_shapes]
    candidate_values = []
    for n in range(m):
        mode = rng.choice(["noise", "noise", "small", "identical", "duplicate"])
        if mode == "duplicate" and n > 0:
            candidate_values.append([v.copy() for v in candidate_values[-1]])
            continue
        spread = {"noise": scale, "small": 1e-3 * scale, "identical": 0.0, "duplicate": scale}[mode]
        candidate_values.append([x + spread * rng.standard_normal(x.shape) for x in local_values])
    if param_specials:
        sizes_ = [v.size for v in local_values]
        if sum(sizes_):
            target = local_values if (m == 0 or rng.random() < 0.4) else candidate_values[rng.integers(0, m)]
            leaf = int(rng.choice(np.flatnonzero(sizes_)))
            flat = target[leaf].reshape(-1)
            flat[rng.integers(0, flat.size, size=rng.integers(1, 3))] = rng.choice(SPECIALS)
            target[leaf] = flat.reshape(target[leaf].shape)
    losses = _losses(rng, local_loss, m, loss_specials)
    weights = np.where(rng.random(m) < 0.3, 0.0, rng.uniform(-1.5, 1.5, m))

    placed: list = []

    def build(values: list, views: list, counter: int) -> Any:
        leaves, fi = [], 0
        for shape, floating in zip(layout.shapes, layout.floating):
            if floating:
                p = place_leaf(values[fi], dtype, backend, views[fi])
                placed.append(p)
                leaves.append(p.view)
                fi += 1
            else:
                leaves.append(_integer_leaf(shape, backend, counter))
        return assemble(layout, leaves)

    local = build(local_values, local_views, 7)
    if candidate_form.startswith("block_"):
        p_size = float_shapes[0][0]
        block = np.array([c[0] for c in candidate_values]).reshape(m, p_size)
        bp = place(block, dtype, backend, _block_layout(m, p_size, candidate_form[len("block_") :], backend))
        placed.append(bp)
        candidates = bp.view
    else:
        candidates = []
        for n, values in enumerate(candidate_values):
            views = [draw(st.sampled_from(leaf_views)) for _ in range(n_float)]
            candidates.append(build(values, views, 100 + n))
    return Case(
        dtype,
        backend,
        layout,
        local,
        candidates,
        local_loss,
        losses,
        weights,
        norm,
        eps,
        all_scores,
        m,
        local_views,
        candidate_form,
        seed,
        placed,
    )
