"""Rewrites of a candidate's forward that give the same values, faster, for the torch evaluation
routes (adapters/torch_evaluate.py): torch function modes that the forwards run under.

- :class:`Rewrites` (the mode): ``max_pool2d`` over non-overlapping windows (kernel = stride, no padding,
  dilation 1, floor mode: nn.MaxPool2d(k)) as elementwise maxima of strided slices (rows, then
  columns):
  the same values bit for bit (a maximum is exact and propagates NaN alike), several times faster
  than torch's NCHW max_pool2d kernel on CPU.
- :class:`SharedFirstLayer`: every candidate's first layer reads the same input X, so the M
  convolutions become one wide call (their weights stacked along the output channels) whose
  output is cut back per candidate; a layer with few output channels (LeNet's 6) fills the vector
  units far better so. Used only where the forwards stay bit for bit what they are alone: checked
  on the first candidate's layer and the last candidate's whole forward, once per shape in the
  process.
"""

from __future__ import annotations

import math
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Optional

from .._optional import optional_import

with optional_import("fomo_core.adapters.torch"):
    import torch
    from torch.nn import functional as F
    from torch.overrides import TorchFunctionMode

__all__ = ["Rewrites", "window_max", "SharedFirstLayer", "Forward", "may_call", "same_bits"]


def pair2(value: Any) -> Optional[tuple]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return tuple(value)
    if isinstance(value, (tuple, list)) and len(value) == 1 and isinstance(value[0], int):
        return (value[0], value[0])
    return None


def window_max(x: torch.Tensor, kernel: tuple) -> torch.Tensor:
    """max_pool2d(x, kernel) for stride = kernel, no padding, floor mode: the maximum over the
    kernel[0] strided row slices, then over the kernel[1] strided column slices of that (a
    maximum is exact, so the same values; kh + kw - 2 elementwise maxima instead of kh * kw - 1)."""
    kh, kw = kernel
    h, w = x.shape[-2] // kh * kh, x.shape[-1] // kw * kw
    rows = x[..., 0:h:kh, :w]
    for i in range(1, kh):
        rows = torch.maximum(rows, x[..., i:h:kh, :w])
    out = rows[..., 0::kw]
    for j in range(1, kw):
        out = torch.maximum(out, rows[..., j::kw])
    return out


class Rewrites(TorchFunctionMode):
    """The mode a candidate's forward runs under: max_pool2d over non-overlapping windows by
    :func:`window_max` (``pool``; every other pooling configuration runs as called), and a
    ``layer`` hook (:class:`SharedFirstLayer`'s recording or replay) that sees every other call.
    One mode, so that each torch call of the forward pays one Python dispatch."""

    def __init__(self, pool: bool = True, layer: Optional[Callable] = None):
        super().__init__()
        self.pool, self.layer = pool, layer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.max_pool2d and self.pool:
            kernel = self._windows(*args, **kwargs)
            if kernel is not None:
                return window_max(args[0], kernel)
        if self.layer is not None:
            return self.layer(func, args, kwargs)
        return func(*args, **kwargs)

    @staticmethod
    def _windows(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
        kernel = pair2(kernel_size)
        stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and not stride) else pair2(stride)
        if (
            kernel is None
            or stride != kernel
            or pair2(padding) != (0, 0)
            or pair2(dilation) != (1, 1)
            or ceil_mode
            or return_indices
            or not torch.is_tensor(input)
            or input.ndim not in (3, 4)
            or min(kernel) < 1
            or input.shape[-2] < kernel[0]
            or input.shape[-1] < kernel[1]
        ):
            return None
        return kernel


# the wide call's output is at most this large, else every candidate calls its own layer
WIDE_BYTES = 256 << 20

# the layers shared: convolutions, whose few output channels (LeNet's 6) fill the vector units badly
# alone; a linear layer's product is a matrix product that runs well per candidate
_WIDE_OPS = (F.conv1d, F.conv2d, F.conv3d)


def _layer_call(func: Callable, args: tuple, kwargs: dict) -> Optional[tuple]:
    """(weight, bias, the other arguments) of a convolution call (groups 1), or None."""
    if func not in _WIDE_OPS:
        return None
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    if set(bound) - set(names) or "weight" not in bound or bound.get("groups", 1) != 1:
        return None
    weight, bias = bound["weight"], bound.get("bias")
    if not torch.is_tensor(weight) or (bias is not None and not torch.is_tensor(bias)):
        return None
    rest = {k: v for k, v in bound.items() if k not in ("input", "weight", "bias")}
    return weight, bias, rest


class _Record:
    """A hook that runs every call as it is and remembers the first conv call on the input X."""

    def __init__(self, X: torch.Tensor):
        self.X, self.call = X, None

    def __call__(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        out = func(*args, **kwargs)
        if self.call is None and args and args[0] is self.X:
            layer = _layer_call(func, args, kwargs)
            if layer is not None:
                self.call = (func, *layer, out)
        return out


class _Replay:
    """A hook that runs every call as it is, but answers the first call ``func(X, weight, bias,
    **rest)`` (the same input, weight and bias tensors and the same other arguments) by ``output``."""

    def __init__(self, X: torch.Tensor, func: Callable, weight: torch.Tensor, bias: Any, rest: dict, output):
        self.X, self.func, self.weight, self.bias, self.rest, self.output = X, func, weight, bias, rest, output

    def __call__(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        if self.output is not None and func is self.func and args and args[0] is self.X:
            layer = _layer_call(func, args, kwargs)
            if layer is not None and layer[0] is self.weight and layer[1] is self.bias and layer[2] == self.rest:
                out, self.output = self.output, None
                return out
        return func(*args, **kwargs)


_UNKNOWN = object()


class SharedFirstLayer:
    """The first layer of M candidates over their shared input as one wide call.

    module: the architecture; states: per candidate its tensors by name (what functional_call
    gets); active: the candidates evaluated, in order. Run candidate ``active[k]``'s forward under
    ``candidate(k)``. The first time a module sees an input shape, candidate 0's forward is
    recorded: its first conv/linear call on X tells which tensors are the layer's weight and bias
    (remembered for the module and shape). The wide call then gives every candidate's output of
    that layer (one tensor, a contiguous part per candidate), which its forward takes instead of
    calling the layer (only a call with the same input, tensors and arguments). For a shape and count not seen before,
    ``pending`` is set after the first forward: the caller runs the last candidate both ways and
    calls ``settle`` with whether the two agree bit for bit, before the others run. Where it does
    not apply (no such call, a wide output above WIDE_BYTES) or would change a bit, every forward
    runs as it is.
    """

    # per module: (input shape, dtype, device, mode) -> (op, weight name, bias name, other arguments) or None
    layers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    # (op, weight shape, input shape, dtype, device, count, threads) -> whether the forwards agree bit for bit
    exact: dict = {}

    def __init__(self, module: Any, states: list, active: Any, X: torch.Tensor):
        self.states, self.active, self.X = states, [int(m) for m in active], X
        self.known = self.layers.setdefault(module, {})
        self.shape = (tuple(X.shape), X.dtype, X.device, module.training)
        self.layer = self.known.get(self.shape, _UNKNOWN) if len(self.active) > 1 else None
        self.outputs: Optional[list] = None
        self.pending = False
        self.key = None
        if self.layer not in (None, _UNKNOWN):
            verdict = self.exact.get(self._key(self.layer))
            if verdict is None:
                self.layer = _UNKNOWN  # a new count: decided around candidate 0's forward
            elif verdict:
                self._widen()

    @contextmanager
    def candidate(self, k: int):
        """The layer hook (for :class:`Rewrites`) candidate ``active[k]``'s forward runs with,
        None when it runs as it is; candidate 0's forward is recorded when the layer is unknown."""
        if k == 0 and self.layer is _UNKNOWN:
            recorder = _Record(self.X)
            yield recorder
            self._recorded(recorder.call)
        elif self.outputs is None or self.outputs[k] is None:
            yield None
        else:
            func, name, bias_name, rest = self.layer
            model = self.states[self.active[k]]
            output, self.outputs[k] = self.outputs[k], None  # each output is taken once
            yield _Replay(self.X, func, model[name], None if bias_name is None else model[bias_name], rest, output)

    def settle(self, same: bool) -> None:
        """Records whether the shared layer gave the last candidate's forward bit for bit."""
        self.exact[self.key] = same
        self.pending = False
        if not same:
            self.outputs = None

    def _recorded(self, call: Optional[tuple]) -> None:
        self.layer = self._layer(call)
        self.known[self.shape] = self.layer
        if self.layer is None:
            return
        first_out = call[-1]
        if not self._widen():
            return
        if self.key not in self.exact:
            if same_bits(self.outputs[0], first_out) and torch.isfinite(first_out).all():
                self.pending = True
            else:  # not exact here (or a diverged candidate: decide another time)
                if torch.isfinite(first_out).all():
                    self.exact[self.key] = False
                self.outputs = None
                return
        self.outputs[0] = None  # candidate 0 has run

    def _layer(self, call: Optional[tuple]) -> Optional[tuple]:
        """(op, weight name, bias name, other arguments) of a recorded first layer, or None."""
        if call is None:
            return None
        func, weight, bias, rest, _ = call
        first = self.states[self.active[0]]
        name = next((n for n, t in first.items() if t is weight), None)
        bias_name = None if bias is None else next((n for n, t in first.items() if t is bias), None)
        if name is None or (bias is not None and bias_name is None):
            return None
        return func, name, bias_name, rest

    def _key(self, layer: tuple) -> tuple:
        func, name = layer[0], layer[1]
        weight = self.states[self.active[0]][name]
        count, threads = len(self.active), torch.get_num_threads()
        return (func, tuple(weight.shape), tuple(self.X.shape), self.X.dtype, self.X.device, count, threads)

    def _widen(self) -> bool:
        """Every active candidate's output of the layer from one wide call (self.outputs)."""
        func, name, bias_name, rest = self.layer
        models = [self.states[m] for m in self.active]
        weight = models[0][name]
        self.key = self._key(self.layer)
        if not self.exact.get(self.key, True) or any(
            m[name].dtype != weight.dtype or m[name].device != weight.device for m in models
        ):
            return False
        # the wide output's size: per input row the output channels times the spatial positions
        # (about the input's)
        row = math.prod(self.X.shape[-(weight.ndim - 1) :])
        positions = row // max(self.X.shape[-(weight.ndim - 1)], 1)
        size = self.X.numel() // max(row, 1) * weight.shape[0] * positions * len(models) * self.X.element_size()
        if size > WIDE_BYTES:
            return False
        wide_weight = torch.cat([m[name] for m in models])
        wide_bias = None if bias_name is None else torch.cat([m[bias_name] for m in models])
        wide = func(self.X, wide_weight, wide_bias, **rest)
        # the outputs are the channels (dimension 1 of a batch, 0 of one sample); each candidate's laid
        # out as its own call gives it (a strided view can round otherwise downstream)
        dim = 1 if self.X.ndim == weight.ndim else 0
        per_model = wide.unflatten(dim, (len(models), weight.shape[0])).movedim(dim, 0).contiguous()
        self.outputs = list(per_model.unbind(0))
        return True


class Forward:
    """``module``'s forward with other tensors in place of its parameters and buffers, by name: what
    ``torch.func.functional_call`` does, without its search of the module tree on every call (the
    places of every name, all of a tied tensor's, are found once). The module's own tensors are
    back when the call returns or raises."""

    def __init__(self, module: Any, names: Any):
        places: dict = {}  # id of the module's tensor -> every (table, attribute) holding it
        by_name: dict = {}
        tensors = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
        for name, tensor in tensors:
            owner, _, attr = name.rpartition(".")
            sub = module.get_submodule(owner)
            table = sub._parameters if attr in sub._parameters else sub._buffers
            by_name[name] = places.setdefault(id(tensor), [])
            by_name[name].append((table, attr))
        self.module = module
        self.places = {name: by_name[name] for name in names}

    def __call__(self, state: dict, *args: Any) -> Any:
        saved = []
        try:
            for name, tensor in state.items():
                for table, attr in self.places[name]:
                    saved.append((table, attr, table[attr]))
                    table[attr] = tensor
            return self.module(*args)
        finally:
            for table, attr, original in reversed(saved):
                table[attr] = original


def may_call(module: Any, kinds: tuple) -> bool:
    """Whether a forward of ``module`` may call the ops of the layer classes ``kinds``: one of its
    submodules is such a layer, or is a class of its own (whose forward may call any op)."""
    return any(isinstance(m, kinds) or not type(m).__module__.startswith("torch.nn.") for m in module.modules())


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors hold the same bits (NaN payloads and signed zeros included)."""
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
    )
