"""fomo-core: fast, framework-agnostic FedFomo for personalised federated learning.

FedFomo (Zhang et al., ICLR 2021) lets each client weigh the models of other clients by how much
they lower its own validation loss per unit of distance, and move towards the helpful ones. This
package computes those first-order weights and the update over flat or per-layer parameter buffers
with compiled kernels, for NumPy arrays and torch tensors alike.
"""

from __future__ import annotations

from . import _C
from .affinity import Affinity
from .dense import DenseSpec, evaluate_candidates, evaluate_dense
from .ops import (
    Scores,
    StepResult,
    apply_update,
    candidate_distances,
    compute_weights,
    first_order_scores,
    fomo_step,
)
from .presets import PRESETS, Preset, get_preset

__version__ = _C.build_info()["version"]

__all__ = [
    "Affinity",
    "DenseSpec",
    "evaluate_dense",
    "evaluate_candidates",
    "Scores",
    "StepResult",
    "apply_update",
    "candidate_distances",
    "compute_weights",
    "first_order_scores",
    "fomo_step",
    "Preset",
    "PRESETS",
    "get_preset",
    "build_info",
    "has_cuda",
    "set_num_threads",
    "get_num_threads",
]


def build_info() -> dict:
    """How this copy was built: version, compiler, OpenMP and threads (and ``parallel_threshold``,
    the element-candidate pairs of work below which the CPU kernels run on one thread), SIMD level,
    CUDA."""
    return dict(_C.build_info())


def has_cuda() -> bool:
    """True only when fomo_core was built with CUDA kernels and a CUDA device is present."""
    return bool(_C.has_cuda())


def set_num_threads(n: int) -> None:
    """Threads used by the CPU kernels (OpenMP). Results do not depend on it."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    """Threads the CPU kernels will use."""
    return int(_C.get_num_threads())
