"""Rewrites of a candidate's forward that give the same values, faster, for the torch evaluation
routes (adapters/torch_evaluate.py): torch function modes that the forwards run under.

- :class:`FastPool`: ``max_pool2d`` over non-overlapping windows (kernel = stride, no padding,
  dilation 1, floor mode: nn.MaxPool2d(k)) as elementwise maxima of strided slices (rows, then
  columns):
  the same values bit for bit (a maximum is exact and propagates NaN alike), several times faster
  than torch's NCHW max_pool2d kernel on CPU.
- :class:`SharedFirstLayer`: every candidate's first layer reads the same input X, so the M
  products become one wide call (their weights stacked along the outputs: conv2d or linear) whose
  output is cut back per candidate; a layer with few output channels (LeNet's 6) fills the vector
  units far better so. Used only where the forwards stay bit for bit what they are alone: checked
  on the first candidate's layer and the last candidate's whole forward, once per shape in the
  process.
"""

from __future__ import annotations

import math
import weakref
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Optional

from .._optional import optional_import

with optional_import("fomo_core.adapters.torch"):
    import torch
    from torch.nn import functional as F
    from torch.overrides import TorchFunctionMode

__all__ = ["FastPool", "window_max", "SharedFirstLayer", "same_bits"]


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


class FastPool(TorchFunctionMode):
    """Routes F.max_pool2d with non-overlapping windows to :func:`window_max`; everything else,
    and every other pooling configuration, runs as called."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.max_pool2d:
            kernel = self._windows(*args, **kwargs)
            if kernel is not None:
                return window_max(args[0], kernel)
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

_WIDE_OPS = (F.conv1d, F.conv2d, F.conv3d, F.linear)


def _layer_call(func: Callable, args: tuple, kwargs: dict) -> Optional[tuple]:
    """(weight, bias, the other arguments) of a conv (groups 1) or linear call, or None."""
    if func not in _WIDE_OPS:
        return None
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")[: 3 if func is F.linear else 7]
    bound = dict(zip(names, args))
    bound.update(kwargs)
    if set(bound) - set(names) or "weight" not in bound or bound.get("groups", 1) != 1:
        return None
    weight, bias = bound["weight"], bound.get("bias")
    if not torch.is_tensor(weight) or (bias is not None and not torch.is_tensor(bias)):
        return None
    rest = {k: v for k, v in bound.items() if k not in ("input", "weight", "bias")}
    return weight, bias, rest


class _Record(TorchFunctionMode):
    """Runs a forward as it is and remembers its first conv/linear call on the input X itself."""

    def __init__(self, X: torch.Tensor):
        super().__init__()
        self.X, self.call = X, None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.call is None and args and args[0] is self.X:
            layer = _layer_call(func, args, kwargs)
            if layer is not None:
                self.call = (func, *layer, out)
        return out


class _Replay(TorchFunctionMode):
    """Runs a forward as it is, but answers its first call ``func(X, weight, bias, **rest)`` (the
    same input, weight and bias tensors and the same other arguments) by ``output``."""

    def __init__(self, X: torch.Tensor, func: Callable, weight: torch.Tensor, bias: Any, rest: dict, output):
        super().__init__()
        self.X, self.func, self.weight, self.bias, self.rest, self.output = X, func, weight, bias, rest, output

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
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
    that layer (one tensor, a contiguous part per candidate), which its forward takes instead of calling the layer (only a
    call with the same input, tensors and arguments). For a shape and count not seen before,
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

    def candidate(self, k: int):
        """The mode candidate ``active[k]``'s forward runs under."""
        if k == 0 and self.layer is _UNKNOWN:
            return self._recording()
        if self.outputs is None or self.outputs[k] is None:
            return nullcontext()
        func, name, bias_name, rest = self.layer
        model = self.states[self.active[k]]
        output, self.outputs[k] = self.outputs[k], None  # each output is taken once
        return _Replay(self.X, func, model[name], None if bias_name is None else model[bias_name], rest, output)

    def settle(self, same: bool) -> None:
        """Records whether the shared layer gave the last candidate's forward bit for bit."""
        self.exact[self.key] = same
        self.pending = False
        if not same:
            self.outputs = None

    @contextmanager
    def _recording(self):
        recorder = _Record(self.X)
        with recorder:
            yield
        self.layer = self._layer(recorder.call)
        self.known[self.shape] = self.layer
        if self.layer is None:
            return
        first_out = recorder.call[-1]
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
        # the wide output's size: per input row (all but the last dimension of a linear layer's
        # input, the batch of a convolution's) the outputs times the spatial positions (about the input's)
        row = self.X.shape[-1] if func is F.linear else math.prod(self.X.shape[-(weight.ndim - 1) :])
        positions = 1 if func is F.linear else row // self.X.shape[-(weight.ndim - 1)]
        size = self.X.numel() // max(row, 1) * weight.shape[0] * positions * len(models) * self.X.element_size()
        if size > WIDE_BYTES:
            return False
        wide_weight = torch.cat([m[name] for m in models])
        wide_bias = None if bias_name is None else torch.cat([m[bias_name] for m in models])
        wide = func(self.X, wide_weight, wide_bias, **rest)
        # the outputs: the last dimension of a linear layer's, the channels of a convolution's; each
        # candidate's laid out as its own call gives it (a strided view can round otherwise downstream)
        dim = wide.ndim - 1 if func is F.linear else (1 if self.X.ndim == weight.ndim else 0)
        per_model = wide.unflatten(dim, (len(models), weight.shape[0])).movedim(dim, 0).contiguous()
        self.outputs = list(per_model.unbind(0))
        return True


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors hold the same bits (NaN payloads and signed zeros included)."""
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
    )
