"""PyTorch adapter: the loss and accuracy of M candidate models of any ``nn.Module`` on one
validation set, without copying a model per candidate.

:func:`evaluate_module` gives each candidate's mean loss and accuracy, :func:`evaluate_batches`
its loss on every batch (the policies whose validation loss is a mean of batch means). The
candidates run through ``torch.func.functional_call`` over views of their own tensors under
``torch.inference_mode``, every batch of the data read once for all of them, by one of three
routes: the fused dense kernel (:func:`fomo_core.evaluate_candidates`), one forward per candidate,
or ``torch.func.vmap`` over the candidates. Early stopping: :mod:`._early_stop`; the forwards'
rewrites: :mod:`._torch_fast`. The measurements behind the routes: the Benchmarks page of the
documentation (candidate evaluation).
"""

from __future__ import annotations

import functools
import math
import time
import warnings
import weakref
from collections.abc import Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from .._optional import optional_import

with optional_import("fomo_core.adapters.torch"):
    import torch
    from torch import nn
    from torch.func import functional_call, vmap
    from torch.nn import functional as F

from fomo_core._validate import count
from fomo_core.dense import DenseSpec, Evaluation
from fomo_core.dense import evaluate_candidates as _evaluate_fused
from fomo_core.layout import offsets_of, split

from ._early_stop import EarlyStop, StopTracker
from ._torch_batches import batches, check_pair
from ._torch_fast import Forward, Rewrites, SharedFirstLayer, may_call, same_bits

__all__ = [
    "evaluate_module",
    "evaluate_batches",
    "dense_spec",
    "Evaluation",
    "BatchEvaluation",
    "EarlyStopped",
    "EarlyStop",
]

_METHODS = ("auto", "fused", "vmap", "loop")


@contextmanager
def _module_mode(module: nn.Module, training: bool):
    """module.train(training) for the duration, then every submodule's own training flag back."""
    flags = [(m, m.training) for m in module.modules()]
    module.train(training)
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _rows_independent(module: nn.Module, training: bool) -> bool:
    """Whether every row's output is independent of the other rows of its batch: not with
    BatchNorm using batch statistics (train mode, or no running statistics) nor with dropout in
    train mode (masks drawn per batch)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (training or m.running_mean is None):
            return False
        if training and isinstance(m, nn.modules.dropout._DropoutNd):
            return False
    return True


# Rows per forward where none is asked for, on the loop route over CPU: a forward over more rows
# than its activations keep in the caches costs more per row. benchmarks/probe_forward.py (one thread,
# CPU time per row): ResNet-18 over 256 rows 16.4 ms in forwards of 16-64 rows against 19.4 in one;
# LeNet over 1,024 rows 0.067 ms in forwards of 256 against 0.091 in one, 0.108 in forwards of 32.
# Both are near their best where the first convolution's output of one forward is 4 MiB: so the
# forwards hold as many rows as keep it within that.
FORWARD_BYTES = 4 << 20


def _forward_rows(module: nn.Module, X: torch.Tensor) -> Optional[int]:
    """How many rows of 4-D input X one forward of ``module`` takes by default: as many as keep its
    first Conv2d's output within FORWARD_BYTES (at least 1); None (all of them) without a Conv2d."""
    conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None or X.ndim != 4:
        return None
    size = 1
    for n, k, s, d, p in zip(X.shape[2:], conv.kernel_size, conv.stride, conv.dilation, _padding(conv)):
        size *= max(1, (n + 2 * p - d * (k - 1) - 1) // s + 1)
    return max(1, FORWARD_BYTES // (conv.out_channels * size * X.element_size()))


def _padding(conv: nn.Conv2d) -> tuple:
    """The convolution's padding per side as numbers ("same": half the dilated kernel)."""
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        return tuple(d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation))
    return tuple(conv.padding)


class _Candidates:
    """The M candidates as name -> tensor views, one dict per candidate or stacked for vmap."""

    def __init__(self, module: nn.Module, candidates: Any):
        self.param_names = [n for n, _ in module.named_parameters()]
        self.param_shapes = [p.shape for _, p in module.named_parameters()]
        self.param_offsets, total = offsets_of(self.param_shapes)
        self.buffer_names = [n for n, _ in module.named_buffers()]
        self.flat: Optional[torch.Tensor] = None  # [M, P] when given so
        self.models: list = []  # per candidate: (params dict, buffers dict)
        if torch.is_tensor(candidates):
            if candidates.ndim != 2 or candidates.shape[1] != total:
                raise ValueError(
                    f"candidates has shape {tuple(candidates.shape)}, expected (M, {total}) (flat vectors in "
                    "module.parameters() order)"
                )
            self.flat = candidates
            self.kind = "flat"
            self.count = int(candidates.shape[0])
            return
        if isinstance(candidates, (Mapping, nn.Module)) or not isinstance(candidates, Sequence):
            raise TypeError(
                "candidates must be a tensor [M, P] or a sequence of flat tensors, state_dicts or modules, "
                f"got {type(candidates).__name__}"
            )
        self.count = len(candidates)
        kinds = set()
        for m, cand in enumerate(candidates):
            where = f"candidates[{m}]"
            if torch.is_tensor(cand):
                kinds.add("flat")
                if cand.shape != (total,):
                    raise ValueError(f"{where} has shape {tuple(cand.shape)}, expected ({total},)")
                self.models.append((self._split(cand), {}))
            elif isinstance(cand, nn.Module):
                kinds.add("modules")
                self.models.append(
                    self._from_mapping({**dict(cand.named_parameters()), **dict(cand.named_buffers())}, where)
                )
            elif isinstance(cand, Mapping):
                kinds.add("state_dicts")
                self.models.append(self._from_mapping(cand, where))
            else:
                raise TypeError(
                    f"{where} must be a flat tensor, a state_dict or an nn.Module, got {type(cand).__name__}"
                )
        if len(kinds) > 1:
            raise TypeError(f"candidates mixes kinds {sorted(kinds)}; give them all in one form")
        self.kind = kinds.pop() if kinds else "flat"
        if self.kind == "flat" and self.count:
            self.flat = _rows_as_matrix(list(candidates))  # rows of one [M, P] buffer: no stacking

    def _split(self, vector: torch.Tensor) -> dict:
        """Views of a flat vector [P] (any stride) as the module's parameters."""
        return dict(zip(self.param_names, split(vector, self.param_shapes, self.param_offsets)))

    def _from_mapping(self, mapping: Mapping, where: str) -> tuple:
        params = {}
        for name, shape in zip(self.param_names, self.param_shapes):
            if name not in mapping:
                raise ValueError(f'{where} has no entry "{name}" (a parameter of module)')
            t = mapping[name]
            if not torch.is_tensor(t) or t.shape != shape:
                got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
                raise ValueError(f'{where}["{name}"] has shape {got}, expected {tuple(shape)}')
            params[name] = t
        buffers = {n: mapping[n] for n in self.buffer_names if n in mapping and torch.is_tensor(mapping[n])}
        return params, buffers

    @functools.cached_property
    def states(self) -> list:
        """Per candidate (params by name, buffers by name), the flat ones cut once."""
        if self.flat is not None and not self.models:
            return [(self._split(self.flat[m]), {}) for m in range(self.count)]
        return self.models

    def state(self, m: int) -> tuple:
        return self.states[m]

    def stacked(self) -> tuple:
        """(params [M, ...] by name, buffers [M, ...] by name or None when shared) for vmap."""
        if self.flat is not None:
            return dict(zip(self.param_names, split(self.flat, self.param_shapes, self.param_offsets))), None
        params = {n: torch.stack([p[n] for p, _ in self.models]) for n in self.param_names}
        have = [n for n in self.buffer_names if all(n in b for _, b in self.models)]
        buffers = {n: torch.stack([b[n] for _, b in self.models]) for n in have} or None
        return params, buffers

    def first_tensor(self) -> Optional[torch.Tensor]:
        if self.flat is not None:
            return self.flat
        return next(iter(self.models[0][0].values()), None) if self.models else None

    def layer_lists(self) -> Any:
        """What the fused kernel takes: the [M, P] tensor, or per candidate its parameter list."""
        if self.flat is not None:
            return self.flat
        return [[p[n] for n in self.param_names] for p, _ in self.models]


def _rows_as_matrix(rows: list) -> Optional[torch.Tensor]:
    """The [M, P] tensor whose consecutive rows the 1-D tensors `rows` are (a candidate bank's
    rows), as a view; None when they are not laid out so."""
    first = rows[0]
    if first.stride() != (1,) or any(
        r.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
        or r.stride() != (1,)
        or r.dtype != first.dtype
        or r.storage_offset() != first.storage_offset() + k * first.numel()
        for k, r in enumerate(rows)
    ):
        return None
    return first.as_strided((len(rows), first.numel()), (first.numel(), 1))


def _unpack(batch: Any, index: int) -> tuple:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError(f"data batch {index} must be a pair (X, y), got {type(batch).__name__}")
    return batch[0], batch[1]


def _upcast(out: torch.Tensor) -> torch.Tensor:
    """16-bit outputs (autocast) in float32 for the loss."""
    return out.float() if out.dtype in (torch.bfloat16, torch.float16) else out


def _loss_sum(loss_fn: Optional[Callable], out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of the per-sample losses."""
    if loss_fn is None:
        return F.cross_entropy(_upcast(out), y, reduction="sum").double()
    value = loss_fn(out, y)
    if not torch.is_tensor(value):
        value = torch.as_tensor(value)
    if value.ndim == 0:
        return value.double() * y.shape[0]  # a batch mean
    if value.shape[0] != y.shape[0]:
        raise ValueError(
            f"loss_fn returned shape {tuple(value.shape)}; expected a scalar (batch mean) or one loss per sample "
            f"({y.shape[0]})"
        )
    return value.double().sum()


def dense_spec(module: nn.Module, *, output: str = "softmax") -> DenseSpec:
    """The :class:`~fomo_core.DenseSpec` of a torch ``nn.Sequential`` of Linear layers (with bias)
    and ReLU, Tanh, Sigmoid or Identity activations (Flatten, Identity and Dropout are no-ops in
    eval mode). The flat layout is the module's ``parameters()`` order, weight layout "out_in";
    ``output`` as DenseSpec's."""
    if not isinstance(module, nn.Sequential):
        raise TypeError(f"module must be a torch.nn.Sequential, got {type(module).__name__}")
    names = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "logistic"}
    neutral = (nn.Identity, nn.Dropout, nn.Flatten)
    sizes: list = []
    acts: list = []
    pending = None  # activation seen after the latest Linear
    for index, layer in enumerate(module):
        where = f"module[{index}]"
        if isinstance(layer, nn.Linear):
            if layer.bias is None:
                raise ValueError(f"{where} is a Linear layer without bias; the fused kernel needs biases")
            if sizes and layer.in_features != sizes[-1]:
                raise ValueError(f"{where} has in_features={layer.in_features}, expected {sizes[-1]}")
            if sizes:
                acts.append(pending or "identity")
            else:
                sizes.append(layer.in_features)
            sizes.append(layer.out_features)
            pending = None
        elif type(layer) in names:
            if not sizes:
                raise ValueError(f"{where} is an activation before the first Linear layer")
            if pending is not None:
                raise ValueError(f"{where} is a second activation after one Linear layer")
            pending = names[type(layer)]
        elif isinstance(layer, neutral):
            if isinstance(layer, nn.Flatten) and sizes:
                raise ValueError(f"{where} is a Flatten after a Linear layer; only a leading Flatten is supported")
        else:
            raise ValueError(
                f"{where} is {type(layer).__name__}; DenseSpec supports Linear, ReLU, Tanh, Sigmoid, "
                "Identity, Dropout and a leading Flatten"
            )
    if not sizes:
        raise ValueError("module has no Linear layer")
    if pending is not None:
        raise ValueError(
            f"module ends with an activation ({pending}); the output layer must be a Linear layer "
            "(the loss applies softmax or the logistic function itself)"
        )
    if any(p.dtype != next(module.parameters()).dtype for p in module.parameters()):
        raise TypeError("module's parameters must share one dtype")
    return DenseSpec(tuple(sizes), tuple(acts), "out_in", output)


def _dense_spec(module: nn.Module, loss_fn: Optional[Callable], training: bool = False) -> Optional[DenseSpec]:
    """The fused kernel's spec of module, or None where that route does not apply (a user loss;
    dropout, which the kernel treats as eval mode's identity, in train mode)."""
    if loss_fn is not None or not isinstance(module, nn.Sequential):
        return None
    if training and any(isinstance(m, nn.modules.dropout._DropoutNd) for m in module.modules()):
        return None
    try:
        return dense_spec(module)
    except (TypeError, ValueError):
        return None


def _class_labels(data: Any) -> bool:
    """False when a tensor pair's targets are not class indices (soft labels, regression)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[1]):
        return not data[1].is_floating_point() and data[1].ndim == 1
    return True  # a DataLoader: checked batch by batch by the fused route


# --- the routes: each evaluates the candidates `active` on one forward's rows X [n, ...], whose
# --- consecutive groups of `sizes` rows are the batches the losses are reduced over -----------------


def _per_group(loss_fn: Optional[Callable], out: torch.Tensor, y: torch.Tensor, sizes: tuple) -> tuple:
    """(loss sums [G] float64, correct counts [G] float64, NaN when not a classification) of one
    candidate's output, per group of consecutive rows. One group: the batch's sum as
    :func:`_loss_sum` takes it; several (a forward over many batches): the default cross-entropy
    per sample, summed per group in float64, or a user loss called per group."""
    classify = out.ndim == 2 and out.shape[1] > 1 and y.ndim == 1 and not y.is_floating_point()
    if len(sizes) == 1:
        loss = _loss_sum(loss_fn, out, y)[None]
        hits = (out.argmax(dim=1) == y).sum().to(torch.float64)[None] if classify else None
    else:
        groups = torch.repeat_interleave(
            torch.arange(len(sizes), device=out.device), torch.as_tensor(sizes, device=out.device)
        )
        if loss_fn is None and classify:
            per_sample = F.cross_entropy(_upcast(out), y, reduction="none").double()
            loss = torch.zeros(len(sizes), dtype=torch.float64, device=out.device).index_add_(0, groups, per_sample)
        else:
            loss = torch.stack([_loss_sum(loss_fn, o, t) for o, t in zip(out.split(sizes), y.split(sizes))])
        hits = None
        if classify:
            right = (out.argmax(dim=1) == y).to(torch.float64)
            hits = torch.zeros(len(sizes), dtype=torch.float64, device=out.device).index_add_(0, groups, right)
    if hits is None:
        hits = torch.full((len(sizes),), math.nan, dtype=torch.float64, device=out.device)
    return loss, hits


class _Fused:
    def __init__(self, spec: DenseSpec, cands: _Candidates):
        self.spec, self.cands = spec, cands
        self.params = cands.layer_lists()

    def __call__(self, active: np.ndarray, X: torch.Tensor, y: torch.Tensor, sizes: tuple) -> tuple:
        params = self.params
        if len(active) < self.cands.count:  # rows read in place: a list of views, never a copy
            params = [params[m] for m in active]
        losses, correct = [], []
        for x, t in zip(X.split(sizes), y.split(sizes)):
            res = _evaluate_fused(self.spec, params, x.reshape(x.shape[0], -1), t)
            losses.append(res.loss.double() * x.shape[0])
            correct.append(res.accuracy.double() * x.shape[0])
        return torch.stack(losses), torch.stack(correct)


# Convolutions on CPU run faster over channels_last (NHWC) input: 0.77x of the CPU time on the
# ResNet-18 and LeNet of benchmarks/probe_forward.py, the same function to float32 rounding. The loop
# hands 4-D input to a model with convolutions so; a module whose forward cannot take it (a .view
# of a convolution's output raises) is remembered and gets its input as given.
_TAKES_CHANNELS_LAST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _Loop:
    def __init__(self, module: nn.Module, cands: _Candidates, loss_fn: Optional[Callable], training: bool):
        self.module, self.loss_fn = module, loss_fn
        states = cands.states
        if training:  # train mode updates running statistics: on scratch copies, made once per call
            own = {n: b.clone() for n, b in module.named_buffers()}
            states = [(p, {**own, **{n: b.clone() for n, b in bufs.items()}}) for p, bufs in states]
        self.states = [{**p, **b} for p, b in states]  # one dict per candidate, merged once
        self.forward = Forward(module, {name for state in self.states for name in state})
        # the rewrites only where the forward may call their ops (a pure torch.nn MLP runs bare)
        self.pool = may_call(module, (nn.MaxPool2d,))
        self.share = may_call(module, (nn.modules.conv._ConvNd,))

    def __call__(self, active: np.ndarray, X: torch.Tensor, y: torch.Tensor, sizes: tuple) -> tuple:
        if not (self.share and X.ndim == 4 and X.device.type == "cpu" and _TAKES_CHANNELS_LAST.get(self.module, True)):
            return self._run(active, X, y, sizes)
        try:
            result = self._run(active, X.contiguous(memory_format=torch.channels_last), y, sizes)
        except RuntimeError:
            if _TAKES_CHANNELS_LAST.get(self.module):  # it did before: an error of this input
                raise
            _TAKES_CHANNELS_LAST[self.module] = False  # e.g. a .view of a convolution's output
            return self._run(active, X, y, sizes)
        _TAKES_CHANNELS_LAST[self.module] = True
        return result

    def _run(self, active: np.ndarray, X: torch.Tensor, y: torch.Tensor, sizes: tuple) -> tuple:
        shared = SharedFirstLayer(self.module, self.states, active if self.share else active[:1], X)
        outs = {}

        def forward(k: int, share: bool = True) -> torch.Tensor:
            with shared.candidate(k) if share else nullcontext() as layer:
                with Rewrites(self.pool, layer) if self.pool or layer is not None else nullcontext():
                    return self.forward(self.states[active[k]], X)

        outs[0] = forward(0)
        if shared.pending:  # a shape not seen before: the last candidate alone and shared, compared
            last = len(active) - 1
            outs[last] = forward(last, share=False)
            shared.settle(same_bits(forward(last), outs[last]))
        parts = [_per_group(self.loss_fn, outs[k] if k in outs else forward(k), y, sizes) for k in range(len(active))]
        return torch.stack([p[0] for p in parts], dim=1), torch.stack([p[1] for p in parts], dim=1)


class _Vmap:
    def __init__(self, module: nn.Module, cands: _Candidates, loss_fn: Optional[Callable]):
        self.module, self.cands, self.loss_fn = module, cands, loss_fn
        self.pool = may_call(module, (nn.MaxPool2d,))
        self.params, self.buffers = cands.stacked()
        self.rows = np.arange(cands.count)
        self.call = self._call(self.buffers is not None)

    def _call(self, with_buffers: bool):
        module = self.module
        return vmap(
            lambda p, b, x: functional_call(module, (p, b) if b is not None else p, (x,)),
            in_dims=(0, 0 if with_buffers else None, None),
        )

    def _select(self, active: np.ndarray) -> None:
        """Keeps only the candidates `active` stacked (early stopping drops rows; a copy each time
        the set shrinks, at most M times)."""
        if len(active) == len(self.rows) and (active == self.rows).all():
            return
        pos = torch.as_tensor(np.searchsorted(self.rows, active), device=next(iter(self.params.values())).device)
        self.params = {n: t.index_select(0, pos) for n, t in self.params.items()}
        if self.buffers is not None:
            self.buffers = {n: t.index_select(0, pos) for n, t in self.buffers.items()}
        self.rows = active.copy()

    def __call__(self, active: np.ndarray, X: torch.Tensor, y: torch.Tensor, sizes: tuple) -> tuple:
        self._select(active)
        if X.ndim == 4:
            X = X.contiguous(memory_format=torch.channels_last)
        with warnings.catch_warnings():
            # functorch's note that an op (as_strided_ in adaptive pooling) has no batching rule and
            # runs per candidate: a speed remark, measured in the benchmarks, not a fault
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
            with Rewrites() if self.pool else nullcontext():
                outs = self.call(self.params, self.buffers, X)
        parts = [_per_group(self.loss_fn, outs[k], y, sizes) for k in range(len(active))]
        return torch.stack([p[0] for p in parts], dim=1), torch.stack([p[1] for p in parts], dim=1)


# --- the route "auto" takes ------------------------------------------------------------------------

# Measured by process CPU time, once per (architecture, candidate form and count, input shape and
# dtype, threads) in the process: later calls and other clients of the same model reuse it.
_measured_routes: dict = {}


def _route_key(module: nn.Module, cands: _Candidates, active: np.ndarray, X: torch.Tensor) -> tuple:
    shapes = tuple((n, tuple(t.shape), t.dtype) for n, t in module.state_dict(keep_vars=True).items())
    architecture = (type(module).__module__, type(module).__qualname__, repr(module), shapes)
    return (architecture, cands.kind, len(active), tuple(X.shape), X.dtype, torch.get_num_threads())


def _measure_routes(routes: dict, active: np.ndarray, X: torch.Tensor, y: torch.Tensor, sizes: tuple) -> tuple:
    """Times loop and vmap on this batch by the process's CPU time (its worker threads included;
    time given to other processes not), alternately, twice each after one warm-up call, and
    returns (the route with the lower best time, its result on this batch); vmap must win by 10%,
    since the loop gives the per-candidate forward bit for bit."""
    best = {name: math.inf for name in routes}
    results = {name: run(active, X, y, sizes) for name, run in routes.items()}  # first calls pay one-off costs
    for _ in range(2):
        for name, run in routes.items():
            t0 = time.process_time()
            run(active, X, y, sizes)
            best[name] = min(best[name], time.process_time() - t0)
    chosen = "vmap" if best["vmap"] < 0.9 * best["loop"] else "loop"
    return chosen, results[chosen]


def _choose(method: str, cands: _Candidates, spec: Optional[DenseSpec], data: Any, training: bool, autocast) -> str:
    """The route, or "measure" when auto must time loop against vmap on the first batch."""
    if method == "fused" and spec is None:
        raise ValueError(
            "method='fused' needs a dense nn.Sequential (Linear + ReLU/Tanh/Sigmoid/Identity) and the default loss"
            + (", without dropout in train mode" if training else "")
        )
    if method == "fused" and autocast is not None:
        raise ValueError("autocast applies to the torch routes ('vmap', 'loop'), not to method='fused'")
    if method == "vmap" and training:
        raise ValueError("method='vmap' evaluates in eval mode; in train mode use 'loop' or 'auto'")
    if method != "auto":
        return method
    first = cands.first_tensor()
    on_cuda = first is not None and first.device.type == "cuda"
    if spec is not None and autocast is None and not on_cuda and _class_labels(data):  # fused: CPU here
        return "fused"
    if training:
        return "loop"
    if on_cuda:
        return "vmap"
    return "loop" if torch.get_num_threads() == 1 else "measure"


class _Runner:
    """The candidates on the chosen route, batch after batch; "measure" becomes a route on the
    first batch (measured, or as measured before in the process)."""

    def __init__(self, module, cands, spec, chosen: str, loss_fn, training: bool):
        self.module, self.cands, self.spec, self.loss_fn, self.training = module, cands, spec, loss_fn, training
        self.method = chosen
        self.routes: dict = {}

    def _route(self, name: str):
        if name not in self.routes:
            if name == "fused":
                self.routes[name] = _Fused(self.spec, self.cands)
            elif name == "loop":
                self.routes[name] = _Loop(self.module, self.cands, self.loss_fn, self.training)
            else:
                self.routes[name] = _Vmap(self.module, self.cands, self.loss_fn)
        return self.routes[name]

    def __call__(self, active: np.ndarray, X: torch.Tensor, y: torch.Tensor, sizes: tuple) -> tuple:
        if self.method != "measure":
            return self._route(self.method)(active, X, y, sizes)
        key = _route_key(self.module, self.cands, active, X)
        known = _measured_routes.get(key)
        if known is not None:
            self.method = known
            return self._route(known)(active, X, y, sizes)
        routes = {name: self._route(name) for name in ("loop", "vmap")}
        self.method, result = _measure_routes(routes, active, X, y, sizes)
        _measured_routes[key] = self.method
        return result


@contextmanager
def _evaluating(module: nn.Module, training: bool, device: torch.device, autocast):
    """Inference mode, the module in eval (or train) mode and the requested autocast, for the
    duration."""
    precision = torch.autocast(device.type, dtype=autocast) if autocast is not None else nullcontext()
    with torch.inference_mode(), _module_mode(module, training), precision:
        yield


def _checked(
    module: Any, candidates: Any, method: str, batch_size: Any, loss_fn: Optional[Callable], training: bool, autocast
) -> tuple:
    """The checks both evaluations make; (the candidates, the fused kernel's spec or None)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if batch_size is not None:
        count(batch_size, "batch_size", low=1, type_error=ValueError)
    if autocast is not None and autocast not in (torch.bfloat16, torch.float16):
        raise ValueError(f"autocast must be None, torch.bfloat16 or torch.float16, got {autocast!r}")
    cands = _Candidates(module, candidates)
    spec = _dense_spec(module, loss_fn, training)
    return cands, spec


def _on_device(X: torch.Tensor, y: torch.Tensor, first: Optional[torch.Tensor], device: torch.device) -> tuple:
    X, y = X.to(device), y.to(device)
    if X.is_floating_point() and first is not None and X.dtype != first.dtype:
        X = X.to(first.dtype)
    return X, y


@dataclass(frozen=True)
class EarlyStopped(Evaluation):
    """An :class:`Evaluation` made with early stopping.

    samples: [M] int64, the validation samples each candidate was evaluated on; a candidate with
             fewer than the whole set was stopped, and its loss and accuracy are means over those
             samples only (its loss is then above ``early_stop.baseline_loss`` with the stated
             confidence, so its FedFomo weight is 0 as it would have been)
    """

    samples: Any = None
    stopped: Any = None  # [M] bool: the candidates stopped before the end of the data


def evaluate_module(
    module: nn.Module,
    candidates: Any,
    data: Any,
    *,
    loss_fn: Optional[Callable] = None,
    batch_size: Optional[int] = None,
    method: str = "auto",
    autocast: Optional[torch.dtype] = None,
    early_stop: Optional[EarlyStop] = None,
) -> Evaluation:
    """Mean loss and accuracy of every candidate model on a validation set, in eval mode.

    module:     the architecture (an ``nn.Module``); its own parameters are only used as the
                template (and its buffers for flat candidates)
    candidates: the M candidates, in one of three forms:

                - a 2-D tensor [M, P] or a sequence of 1-D tensors [P]: flat parameter vectors
                  in ``module.parameters()`` order, each parameter flattened row-major (exactly
                  ``torch.nn.utils.parameters_to_vector``); buffers (BatchNorm running
                  statistics) are the module's own;
                - a sequence of state_dicts: parameters by name, buffers taken from the
                  state_dict when present (BatchNorm statistics of each candidate) and from the
                  module otherwise;
                - a sequence of modules of the module's architecture: their parameters and
                  buffers.
    data:       a pair (X, y) of tensors, or an iterable of (X, y) batches (a DataLoader)
    loss_fn:    ``loss_fn(output, target)`` returning per-sample losses [b] or the batch mean;
                default ``torch.nn.functional.cross_entropy``
    batch_size: rows per forward when data is a tensor pair (default: ``early_stop.batch_size``
                with early stopping; on the loop route over CPU, a model with a Conv2d gets as
                many rows per forward as keep its first convolution's output within
                ``FORWARD_BYTES`` (4 MiB; measured: larger forwards cost more per row, the
                Benchmarks page); otherwise all of them at once)
    method:     the route:

                - "fused": a dense ``nn.Sequential`` (Linear + ReLU/Tanh/Sigmoid/Identity) with
                  the default cross-entropy goes to fomo_core's fused kernel
                  (:func:`fomo_core.evaluate_candidates`, :func:`dense_spec`), which reads the
                  candidate buffers in place;
                - "loop": one forward per candidate: the losses of the plain per-candidate loop
                  (``load_state_dict`` + forward) bit for bit. On CPU a model with
                  convolutions gets 4-D input in channels_last (faster: about 0.8x the CPU
                  time of NCHW on a ResNet-18), so bit for bit the plain loop over channels_last
                  input, and NCHW's losses to float32 rounding; a forward that cannot take
                  channels_last (a ``.view`` of a convolution's output) gets its input as given;
                - "vmap": ``torch.func.vmap`` over the candidates, one batched forward (4-D
                  inputs in channels_last); losses to float32 rounding;
                - "auto" (default): "fused" where it applies, "vmap" on CUDA, and on CPU "loop"
                  when torch runs one thread; with more threads it times loop against vmap on
                  the first batch by the process's CPU time, once per architecture, input
                  shape, candidate count and thread count in the process, and keeps vmap when
                  it is 10% faster.
    autocast:   None (default: the candidates' own dtype) or a reduced-precision dtype
                (``torch.bfloat16``) to run the torch routes under ``torch.autocast``. Its speed
                depends on the CPU and the thread count (faster or slower: the Benchmarks page),
                and the losses move by the dtype's rounding (~1e-2 relative per layer in the
                worst case for bfloat16), which can change which candidates improve on a close
                baseline. Not for the fused route.
    early_stop: an :class:`EarlyStop` (opt-in): evaluate in batches and stop a candidate once its
                loss is confidently above ``early_stop.baseline_loss``; returns an
                :class:`EarlyStopped` evaluation (with ``samples`` per candidate)

    Returns an :class:`~fomo_core.dense.Evaluation`: ``loss`` [M] and ``accuracy`` [M] (float64
    tensors on the candidates' device; accuracy is NaN unless the output is [b, C] class scores
    and y class indices) and the ``method`` used. The loss is the mean over all samples.
    """
    cands, spec = _checked(module, candidates, method, batch_size, loss_fn, False, autocast)
    if early_stop is not None and not isinstance(early_stop, EarlyStop):
        raise TypeError(f"early_stop must be an EarlyStop or None, got {type(early_stop).__name__}")
    chosen = _choose(method, cands, spec, data, False, autocast)
    first = cands.first_tensor()
    device = first.device if first is not None else torch.device("cpu")
    M = cands.count
    make = EarlyStopped if early_stop is not None else Evaluation
    pair = check_pair(data)
    if M == 0:
        empty = torch.zeros(0, dtype=torch.float64, device=device)
        extra = {"samples": np.zeros(0, dtype=np.int64), "stopped": np.zeros(0, dtype=bool)} if early_stop else {}
        return make(empty, empty.clone(), chosen.replace("measure", "loop"), **extra)

    runner = _Runner(module, cands, spec, chosen, loss_fn, False)
    tracker = StopTracker(early_stop, M, pair[0].shape[0] if pair is not None else None) if early_stop else None
    order = None
    if batch_size is None and early_stop is None and pair is not None and chosen == "loop" and device.type == "cpu":
        batch_size = _forward_rows(module, pair[0])
    if early_stop is not None:
        batch_size = early_stop.batch_size if batch_size is None else batch_size
        if pair is not None:  # a seeded random order: the batches are a random sample of the set
            order = torch.randperm(pair[0].shape[0], generator=torch.Generator().manual_seed(early_stop.seed))

    loss_sums = torch.zeros(M, dtype=torch.float64, device=device)
    correct = torch.zeros(M, dtype=torch.float64, device=device)
    samples = np.zeros(M, dtype=np.int64)
    active = np.arange(M)
    rows = 0
    with _evaluating(module, False, device, autocast):
        for index, batch in enumerate(batches(data, batch_size, order)):
            X, y = _unpack(batch, index)
            b = int(y.shape[0])
            if len(active) == 0:  # every candidate stopped: only count the remaining rows
                rows += b
                continue
            X, y = _on_device(X, y, first, device)
            batch_loss, batch_correct = runner(active, X, y, (b,))
            index_t = torch.as_tensor(active, device=device)
            loss_sums.index_add_(0, index_t, batch_loss[0].to(device=device, dtype=torch.float64))
            correct.index_add_(0, index_t, batch_correct[0].to(device=device, dtype=torch.float64))
            samples[active] += b
            rows += b
            if tracker is not None:
                tracker.add(active, (batch_loss[0].double() / b).cpu().numpy(), b)
                active = np.flatnonzero(tracker.active)
                if len(active) == 0 and pair is not None:
                    rows = int(pair[0].shape[0])
                    break
    if rows == 0:
        raise ValueError("data holds no samples")
    counts = torch.as_tensor(samples, dtype=torch.float64, device=device)
    extra = {"samples": samples, "stopped": samples < rows} if early_stop is not None else {}
    return make(loss_sums / counts, correct / counts, runner.method, **extra)


@dataclass(frozen=True)
class BatchEvaluation:
    """The loss and accuracy of M candidates on each of G batches.

    loss:     [G, M] float64, each candidate's mean loss on each batch
    accuracy: [G, M] float64, its accuracy there (NaN when not a classification)
    sizes:    [G] int64 NumPy, the rows of each batch
    method:   the route used
    """

    loss: Any
    accuracy: Any
    sizes: Any
    method: str


def _batch_sizes(data: Any, pair: Optional[tuple], batch_size: Optional[int], drop_last: bool) -> tuple:
    """(the batches as a list of (X, y), or None for a tensor pair; the rows of each batch)."""
    if pair is not None:
        n = int(pair[0].shape[0])
        size = n if batch_size is None else batch_size
        sizes = [size] * (n // size) + ([n % size] if n % size else []) if n else []
        listed = None
    else:
        listed = [_unpack(batch, index) for index, batch in enumerate(data)]
        sizes = [int(y.shape[0]) for _, y in listed]
    if drop_last and len(sizes) > 1 and sizes[-1] < sizes[0]:
        sizes = sizes[:-1]
        listed = listed[:-1] if listed is not None else None
    return listed, sizes


def _grouped(X: torch.Tensor, y: torch.Tensor, sizes: list, most: Optional[int]) -> list:
    """Forwards of consecutive batches (rows of ``sizes``) of X and y, each of at most ``most``
    rows but at least one batch (None: one forward): (X rows, y rows, the batches' sizes)."""
    chunks, start, group, rows = [], 0, [], 0
    for size in sizes:
        if group and most is not None and rows + size > most:
            chunks.append((X[start : start + rows], y[start : start + rows], tuple(group)))
            start, group, rows = start + rows, [], 0
        group.append(size)
        rows += size
    chunks.append((X[start : start + rows], y[start : start + rows], tuple(group)))
    return chunks


def evaluate_batches(
    module: nn.Module,
    candidates: Any,
    data: Any,
    *,
    batch_size: Optional[int] = None,
    training: bool = False,
    drop_last: bool = False,
    loss_fn: Optional[Callable] = None,
    method: str = "auto",
    autocast: Optional[torch.dtype] = None,
) -> BatchEvaluation:
    """The mean loss and accuracy of every candidate on every batch of a validation set: what the
    policies whose loss is a mean of batch means ("batch_mean", "batch_sum_per_sample") reduce.

    data, candidates, loss_fn, method, autocast: as :func:`evaluate_module`'s
    batch_size: the rows of a batch when data is a tensor pair (default: one batch); the batches
                of an iterable are its own
    training:   evaluate in train mode (BatchNorm normalises each batch by its own statistics;
                no running statistics change, the module's or the candidates')
    drop_last:  leave out a last batch smaller than the first

    Where no row's output depends on the others in its batch (eval mode, or train mode without
    BatchNorm or dropout) and data is a tensor pair, all the rows go through each model in one
    forward (on the loop route over CPU, a model with a Conv2d: consecutive batches grouped into
    forwards of at most :func:`evaluate_module`'s default rows) and the losses are reduced per
    batch afterwards: the same batch losses to float32 rounding (a forward over more rows may sum
    in another order), and the memory of a forward over the whole set (give a DataLoader to bound
    it). Otherwise each batch is its own forward.
    Returns a :class:`BatchEvaluation`.
    """
    cands, spec = _checked(module, candidates, method, batch_size, loss_fn, training, autocast)
    chosen = _choose(method, cands, spec, data, training, autocast)
    first = cands.first_tensor()
    device = first.device if first is not None else torch.device("cpu")
    pair = check_pair(data)
    listed, sizes = _batch_sizes(data, pair, batch_size, drop_last)
    if not sizes or not sum(sizes):
        raise ValueError("data holds no samples")
    M = cands.count
    if pair is not None:
        rows = sum(sizes)
        X, y = pair[0][:rows], pair[1][:rows]
        if _rows_independent(module, training):
            most = _forward_rows(module, X) if chosen == "loop" and device.type == "cpu" else None
            chunks = _grouped(X, y, sizes, most)
        else:
            chunks = [(x, t, (x.shape[0],)) for x, t in zip(X.split(sizes), y.split(sizes))]
    else:
        chunks = [(x, t, (x.shape[0],)) for x, t in listed]
    loss = torch.zeros((len(sizes), M), dtype=torch.float64, device=device)
    correct = torch.zeros_like(loss)
    runner = _Runner(module, cands, spec, chosen, loss_fn, training)
    active = np.arange(M)
    with _evaluating(module, training, device, autocast):
        g = 0
        for X, y, groups in chunks:
            if M:
                X, y = _on_device(X, y, first, device)
                batch_loss, batch_correct = runner(active, X, y, groups)
                loss[g : g + len(groups)] = batch_loss.to(device=device, dtype=torch.float64)
                correct[g : g + len(groups)] = batch_correct.to(device=device, dtype=torch.float64)
            g += len(groups)
    counts = torch.as_tensor(sizes, dtype=torch.float64, device=device)[:, None]
    method_used = runner.method if M else chosen.replace("measure", "loop")
    return BatchEvaluation(loss / counts, correct / counts, np.asarray(sizes, dtype=np.int64), method_used)


#: Old names of this module's functions: each still gives the function, with a DeprecationWarning
#: (``fomo_core.evaluate_candidates`` is the fused dense evaluation, another function).
_RENAMED = {"evaluate_candidates": "evaluate_module"}


def deprecated_name(module: str, name: str) -> Any:
    """The function an old name of ``module`` stands for, with a DeprecationWarning naming the new
    one (a module's ``__getattr__``: it runs only for names the module does not define)."""
    if name not in _RENAMED:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    new = _RENAMED[name]
    warnings.warn(
        f"{module}.{name} is deprecated and will be removed in 0.3: call {module}.{new} (the same function); "
        "fomo_core.evaluate_candidates is the fused evaluation of a DenseSpec, another function",
        DeprecationWarning,
        stacklevel=3,
    )
    return globals()[new]


def __getattr__(name: str) -> Any:
    return deprecated_name(__name__, name)
