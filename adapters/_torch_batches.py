"""(X, y) batches from what users give the torch adapter: a tensor pair or any iterable of pairs (a
DataLoader). One function for evaluation (in order, or in a seeded order for early stopping) and
for local training (shuffled by the caller's generator)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

from .._optional import optional_import

with optional_import("fomo_core.adapters.torch"):
    import torch

__all__ = ["check_pair", "batches"]


def check_pair(data: Any) -> Optional[tuple]:
    """(X, y) when data is a tensor pair (checked: one target per row), None when it is some other
    iterable of batches; TypeError for anything else."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0]):
        X, y = data
        if not torch.is_tensor(y) or y.shape[0] != X.shape[0]:
            raise ValueError(
                f"data must be (X, y) with one target per row of X; X has {X.shape[0]} rows, y "
                f"{'has ' + str(y.shape[0]) if torch.is_tensor(y) and y.ndim else 'is not a tensor'}"
            )
        return X, y
    if isinstance(data, Iterable) and not torch.is_tensor(data):
        return None
    raise TypeError(
        f"data must be a pair (X, y) of tensors or an iterable of (X, y) batches, got {type(data).__name__}"
    )


def batches(data: Any, batch_size: Optional[int], order: Optional[torch.Tensor] = None) -> Iterable:
    """The (X, y) batches of ``data``: a tensor pair cut into batches of ``batch_size`` rows (one
    batch when None), visited in ``order`` (a permutation of the rows) when given; any other
    iterable is returned as it is."""
    pair = check_pair(data)
    if pair is None:
        return data
    X, y = pair
    n = X.shape[0]
    size = n if batch_size is None else batch_size
    if order is None:
        return [(X, y)] if size >= n else [(X[i : i + size], y[i : i + size]) for i in range(0, n, size)]
    order = order.to(X.device)
    return ((X[idx], y[idx]) for idx in (order[i : i + size] for i in range(0, n, max(size, 1))))
