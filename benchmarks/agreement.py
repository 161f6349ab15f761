"""How far two floating-point computations of the same quantity may lie apart: the tolerances of the
benchmarks' agreement checks, derived from the dtype and from the magnitudes compared (as the
kernels' tolerance table in the tests is), never a fixed absolute tolerance.

With u the unit roundoff of a dtype (half its machine epsilon), a sum of n terms computed in that
dtype in any order is within (n - 1) u of the exact sum, relative to the sum of the terms'
magnitudes; a dot product likewise. Two implementations that each round their own sums may differ
by both errors: hence the factor 2 below. A float32 norm over millions of elements (PFLlib's
distance, torch.norm of the concatenated differences) has no useful worst-case bound of that kind
(torch accumulates long runs in float32): its actual rounding is measured against a float64 norm
of the same differences (:func:`distance_rtol`) and carried through.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

UNIT = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def accumulation_length(module: nn.Module) -> int:
    """The summed fan-in of the module's linear and convolution layers: how many products the
    deepest chain of sums in one forward accumulates (each layer's outputs are sums over its
    fan-in of the previous layer's)."""
    total = 0
    for m in module.modules():
        if isinstance(m, nn.Linear):
            total += m.in_features
        elif isinstance(m, nn.modules.conv._ConvNd):
            total += m.in_channels // m.groups * math.prod(m.kernel_size)
    return total


def loss_rtol(module: nn.Module, rows: int, classes: int, dtype: torch.dtype = torch.float32) -> float:
    """Relative tolerance between two computations of a mean cross-entropy over ``rows`` samples by
    the same model in ``dtype`` (other kernels, batch shapes or summation orders): the forward's
    accumulations (:func:`accumulation_length` terms, first order: each sum's error relative to
    its value), the log-sum-exp over ``classes``, and the sum of ``rows`` non-negative per-sample
    losses, rounded on both sides."""
    return 2 * (accumulation_length(module) + classes + rows + 4) * UNIT[dtype]


def autocast_rtol(module: nn.Module, rows: int, classes: int, dtype: torch.dtype) -> float:
    """Relative tolerance of a mean cross-entropy computed under ``torch.autocast`` to a 16-bit
    ``dtype`` against float32: every linear and convolution layer's input and weight rounded to
    it and its output rounded again (three roundings of the dtype's unit per layer, first order;
    the sums themselves run in float32), on top of :func:`loss_rtol`."""
    layers = sum(isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) for m in module.modules())
    return 3 * layers * UNIT[dtype] + loss_rtol(module, rows, classes)


def distance_rtol(local: torch.Tensor, candidates: list) -> float:
    """The largest relative rounding of the peer's float32 distances, torch.norm of the float32
    differences, against a float64 norm of the same differences (local [P] and the M candidates
    [P] as float32 tensors)."""
    worst = 0.0
    for c in candidates:
        diff = c - local  # float32, as the peer forms it
        exact = float(torch.linalg.vector_norm(diff.double()))
        worst = max(worst, abs(float(torch.norm(diff)) - exact) / exact if exact else 0.0)
    return worst


def weight_rtol(distance_error: float, num_candidates: int, dtype: torch.dtype = torch.float32) -> float:
    """Relative tolerance between two computations of the normalised FedFomo weights from the same
    losses, one with float64 distances and one with distances off by ``distance_error`` relative
    (:func:`distance_rtol`): the distance's error and the float32 rounding of each difference,
    carried into the score (one subtraction, one division, a result rounded to float32 on the
    peer's side) and twice into the weight (its own score and the sum), plus the M additions and
    the division of the normalisation."""
    u = UNIT[dtype]
    score = distance_error + 5 * u
    return 2 * score + (num_candidates + 2) * u


def update_bound(
    local: np.ndarray, candidates: list, weights: np.ndarray, weight_error: float, dtype: torch.dtype = torch.float32
) -> np.ndarray:
    """Per-element bound on two float computations of the update from the same local model [P] and
    candidates (M arrays [P]): x + sum w (c - x) (fomo-core) against sum w c (the peer), with
    weights that agree to ``weight_error`` relative. Each side accumulates M + 4 roundings of its
    terms' magnitudes (|x| + sum w |c - x|, and sum w |c|); the sum of the peer's weights is 1 to
    M u, which scales x; the weights' own difference moves the result by up to weight_error
    times sum w |c - x|; both round the result once more to the dtype."""
    u = UNIT[dtype]
    m = len(candidates)
    value = local.copy()
    moved, own = np.abs(local), np.zeros_like(local)
    for c, w in zip(candidates, weights):
        if w != 0.0:
            value += w * (c - local)
            moved += w * np.abs(c - local)
            own += w * np.abs(c)
    spread = moved - np.abs(local)  # sum w |c - x|
    return (m + 4) * u * (moved + own) + m * u * np.abs(local) + weight_error * spread + 2 * u * np.abs(value)
