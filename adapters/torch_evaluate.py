"""PyTorch adapter: the loss and accuracy of M candidate models of any ``nn.Module`` on one
validation set, without copying a model per candidate.

The candidates are run through ``torch.func.functional_call`` over views of their own buffers (no
``load_state_dict``, no ``deepcopy``), in eval mode under ``no_grad``; every batch of the data is
read once for all candidates. Three ways to run them (``method=``):

- ``"fused"``: a dense ``nn.Sequential`` (Linear + ReLU/Tanh/Sigmoid/Identity) with the default
  cross-entropy goes to fomo_core's fused kernel (:func:`fomo_core.evaluate_dense`,
  ``DenseSpec.from_module``), which reads the candidate buffers in place;
- ``"vmap"``: ``torch.func.vmap`` over the candidates, one batched forward per data batch;
- ``"loop"``: one ``functional_call`` per candidate per data batch.

``method="auto"`` picks "fused" when it applies; otherwise "loop" on CPU and "vmap" on CUDA.
Measured on CPU (benchmarks/bench_evaluate.py, benchmarks/results/evaluate.md; M = 10, B = 100
and 500): vmap turns the M Linear layers into one batched matmul and the M convolutions into one
grouped convolution, which saves dispatches but runs slower per FLOP than M separate calls. With
one thread the loop was as fast or up to 1.15x faster on the MLP and 1.2x (B = 100) to 1.9x
(B = 500) faster on the LeNet CNN; with two threads vmap came ahead only where the per-operator
overhead dominated (the MLP at B = 100), and the LeNet CNN at B = 500 ran 2x faster looped. On
CUDA, where every operator is a kernel launch, vmap's M-fold fewer launches are the better default
(not measured here: no GPU). vmap over state_dicts or modules must first stack their tensors (an
[M, P] copy); the loop never copies.

Candidate formats (``candidates=``):

- a 2-D tensor [M, P] or a sequence of 1-D tensors [P]: flat parameter vectors in
  ``module.parameters()`` order, each parameter flattened row-major (exactly
  ``torch.nn.utils.parameters_to_vector``); buffers (BatchNorm running statistics) are the
  module's own;
- a sequence of state_dicts: parameters by name, buffers taken from the state_dict when present
  (BatchNorm statistics of each candidate) and from the module otherwise;
- a sequence of modules of the same architecture: their parameters and buffers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Callable, Optional

from .._optional import optional_import

with optional_import("fomo_core.adapters.torch"):
    import torch
    from torch import nn
    from torch.func import functional_call, vmap

from fomo_core.dense import DenseSpec, Evaluation
from fomo_core.dense import evaluate_dense as _evaluate_dense

__all__ = ["evaluate_module", "evaluate_candidates", "Evaluation"]

_METHODS = ("auto", "fused", "vmap", "loop")


@contextmanager
def _eval_mode(module: nn.Module):
    """module.eval() for the duration, then every submodule's own training flag back."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


class _Candidates:
    """The M candidates as name -> tensor views, one dict per candidate or stacked for vmap."""

    def __init__(self, module: nn.Module, candidates: Any):
        self.param_names = [n for n, _ in module.named_parameters()]
        self.param_shapes = [p.shape for _, p in module.named_parameters()]
        self.buffer_names = [n for n, _ in module.named_buffers()]
        self.flat: Optional[torch.Tensor] = None  # [M, P] when given so
        self.models: list = []  # per candidate: (params dict, buffers dict)
        total = sum(math.prod(s) for s in self.param_shapes)
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
                self.models.append(self._from_mapping({**dict(cand.named_parameters()), **dict(cand.named_buffers())}, where))
            elif isinstance(cand, Mapping):
                kinds.add("state_dicts")
                self.models.append(self._from_mapping(cand, where))
            else:
                raise TypeError(f"{where} must be a flat tensor, a state_dict or an nn.Module, got {type(cand).__name__}")
        if len(kinds) > 1:
            raise TypeError(f"candidates mixes kinds {sorted(kinds)}; give them all in one form")
        self.kind = kinds.pop() if kinds else "flat"

    def _split(self, vector: torch.Tensor) -> dict:
        """Views of a flat vector [P] (any stride) as the module's parameters."""
        out, at = {}, 0
        for name, shape in zip(self.param_names, self.param_shapes):
            n = math.prod(shape)
            out[name] = vector[at : at + n].view(shape)
            at += n
        return out

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

    def state(self, m: int) -> tuple:
        if self.flat is not None:
            return self._split(self.flat[m]), {}
        return self.models[m]

    def stacked(self) -> tuple:
        """(params [M, ...] by name, buffers [M, ...] by name or None when shared) for vmap."""
        if self.flat is not None:
            out, at = {}, 0
            for name, shape in zip(self.param_names, self.param_shapes):
                n = math.prod(shape)
                out[name] = self.flat[:, at : at + n].view(self.count, *shape)
                at += n
            return out, None
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


def _batches(data: Any, batch_size: Optional[int]) -> Iterable:
    """(X, y) batches from a tensor pair or any iterable of pairs (a DataLoader)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0]):
        X, y = data
        if not torch.is_tensor(y) or y.shape[0] != X.shape[0]:
            raise ValueError(
                f"data must be (X, y) with one target per row of X; X has {X.shape[0]} rows, y "
                f"{'has ' + str(y.shape[0]) if torch.is_tensor(y) and y.ndim else 'is not a tensor'}"
            )
        if batch_size is None or batch_size >= X.shape[0]:
            return [(X, y)]
        return [(X[i : i + batch_size], y[i : i + batch_size]) for i in range(0, X.shape[0], batch_size)]
    if isinstance(data, Iterable) and not torch.is_tensor(data):
        return data
    raise TypeError(f"data must be a pair (X, y) of tensors or an iterable of (X, y) batches, got {type(data).__name__}")


def _unpack(batch: Any, index: int) -> tuple:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError(f"data batch {index} must be a pair (X, y), got {type(batch).__name__}")
    return batch[0], batch[1]


def _loss_sum(loss_fn: Optional[Callable], out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of the per-sample losses."""
    if loss_fn is None:
        return torch.nn.functional.cross_entropy(out, y, reduction="sum").double()
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


def _correct(out: torch.Tensor, y: torch.Tensor) -> float:
    """Correctly classified samples, or NaN when the output/targets are not a classification."""
    if out.ndim == 2 and out.shape[1] > 1 and y.ndim == 1 and not y.is_floating_point():
        return (out.argmax(dim=1) == y).sum().item()
    return math.nan


def _dense_spec(module: nn.Module, loss_fn: Optional[Callable]) -> Optional[DenseSpec]:
    if loss_fn is not None or not isinstance(module, nn.Sequential):
        return None
    try:
        return DenseSpec.from_module(module)
    except (TypeError, ValueError):
        return None


def _fused(spec: DenseSpec, cands: _Candidates, data: Any, batch_size: Optional[int]) -> Evaluation:
    params = cands.layer_lists()
    loss = acc = None
    rows = 0
    for index, batch in enumerate(_batches(data, batch_size)):
        X, y = _unpack(batch, index)
        X = X.reshape(X.shape[0], -1)
        first = cands.first_tensor()
        if first is not None:
            X, y = X.to(first.device), y.to(first.device)
        res = _evaluate_dense(spec, params, X, y)
        b = X.shape[0]
        loss = res.loss * b if loss is None else loss + res.loss * b
        acc = res.accuracy * b if acc is None else acc + res.accuracy * b
        rows += b
    if rows == 0:
        raise ValueError("data holds no samples")
    return Evaluation(loss / rows, acc / rows, "fused")


def _class_labels(data: Any) -> bool:
    """False when a tensor pair's targets are not class indices (soft labels, regression)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[1]):
        return not data[1].is_floating_point() and data[1].ndim == 1
    return True  # a DataLoader: checked batch by batch by the fused route


def _choose(method: str, cands: _Candidates, spec: Optional[DenseSpec], data: Any) -> str:
    if method != "auto":
        return method
    first = cands.first_tensor()
    on_cuda = first is not None and first.device.type == "cuda"
    if spec is not None and not on_cuda and _class_labels(data):  # the fused route runs on CPU here
        return "fused"
    return "vmap" if on_cuda else "loop"


def evaluate_module(
    module: nn.Module,
    candidates: Any,
    data: Any,
    *,
    loss_fn: Optional[Callable] = None,
    batch_size: Optional[int] = None,
    method: str = "auto",
) -> Evaluation:
    """Mean loss and accuracy of every candidate model on a validation set.

    module:     the architecture (an ``nn.Module``); its own parameters are only used as the
                template (and its buffers for flat candidates)
    candidates: [M, P] tensor or sequence of flat [P] tensors (``module.parameters()`` order), or
                a sequence of M state_dicts or modules (see the module docstring)
    data:       a pair (X, y) of tensors, or an iterable of (X, y) batches (a DataLoader)
    loss_fn:    ``loss_fn(output, target)`` returning per-sample losses [b] or the batch mean;
                default ``torch.nn.functional.cross_entropy``
    batch_size: split a tensor pair into batches of this many rows (default: one batch)
    method:     "auto", "fused", "vmap" or "loop" (see the module docstring)

    Returns an :class:`~fomo_core.dense.Evaluation`: ``loss`` [M] and ``accuracy`` [M] (float64
    tensors on the candidates' device; accuracy is NaN unless the output is [b, C] class scores
    and y class indices) and the ``method`` used. The loss is the mean over all samples.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    cands = _Candidates(module, candidates)
    spec = _dense_spec(module, loss_fn)
    chosen = _choose(method, cands, spec, data)
    if chosen == "fused" and spec is None:
        raise ValueError(
            "method='fused' needs a dense nn.Sequential (Linear + ReLU/Tanh/Sigmoid/Identity) and the default loss"
        )
    first = cands.first_tensor()
    device = first.device if first is not None else torch.device("cpu")
    M = cands.count
    if M == 0:
        empty = torch.zeros(0, dtype=torch.float64, device=device)
        return Evaluation(empty, empty.clone(), chosen)
    if chosen == "fused":
        return _fused(spec, cands, data, batch_size)

    loss_sums = torch.zeros(M, dtype=torch.float64, device=device)
    correct = torch.zeros(M, dtype=torch.float64, device=device)
    rows = 0
    with torch.no_grad(), _eval_mode(module):
        if chosen == "vmap":
            params, buffers = cands.stacked()
            call = vmap(
                lambda p, b, x: functional_call(module, (p, b) if b is not None else p, (x,)),
                in_dims=(0, 0 if buffers is not None else None, None),
            )
        for index, batch in enumerate(_batches(data, batch_size)):
            X, y = _unpack(batch, index)
            X, y = X.to(device), y.to(device)
            if X.is_floating_point() and X.dtype != first.dtype:
                X = X.to(first.dtype)
            if chosen == "vmap":
                outs = call(params, buffers, X)
            else:
                outs = [functional_call(module, cands.state(m), (X,)) for m in range(M)]
            for m in range(M):
                loss_sums[m] += _loss_sum(loss_fn, outs[m], y)
                correct[m] += _correct(outs[m], y)
            rows += int(y.shape[0])
    if rows == 0:
        raise ValueError("data holds no samples")
    return Evaluation(loss_sums / rows, correct / rows, chosen)


#: The name :func:`evaluate_module` had before 0.2: the same function, kept so that existing code
#: keeps working (``fomo_core.evaluate_candidates``, now ``fomo_core.evaluate_dense``, shared it).
evaluate_candidates = evaluate_module
