"""The small real model the client-round tests share (its data: the ``digits`` fixture in conftest)."""

from __future__ import annotations

import torch
from torch import nn


def mlp(seed: int) -> nn.Module:
    """A 64-16-10 MLP, initialised from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
