"""fomo-core: fast, framework-agnostic FedFomo for personalised federated learning.

FedFomo (Zhang et al., ICLR 2021) lets each client weigh the models of other clients by how much
they lower its own validation loss per unit of distance, and move towards the helpful ones. This
package computes those first-order weights and the update over flat or per-layer parameter buffers
with compiled kernels, for NumPy arrays and torch tensors alike.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import layout
from ._validate import count
from .affinity import Affinity
from .guard import distance_bound, model_norm
from .policy import ClientPolicy, ServerPolicy
from .presets import PRESETS, Preset, get_preset
from .server import Server

# The compiled kernels (and what is built on them) load on first use, so that the server side
# (Server, Affinity, presets, the Flower strategy) imports where the extension is not built.
_COMPILED = {
    "_C": "._C",
    "DenseSpec": ".dense",
    "evaluate_dense": ".dense",
    "evaluate_candidates": ".dense",
    "Scores": ".ops",
    "StepResult": ".ops",
    "apply_update": ".ops",
    "candidate_distances": ".ops",
    "compute_weights": ".ops",
    "first_order_scores": ".ops",
    "fomo_step": ".ops",
    "ClientRound": ".round",
    "Plan": ".plan",
    "plan": ".plan",
}

if TYPE_CHECKING:  # what __getattr__ loads on first use, named for type checkers (py.typed)
    from . import _C  # noqa: F401 (named for type checkers)
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
    from .round import ClientRound

    __version__: str


def __getattr__(name: str):
    if name == "__version__":
        return build_info()["version"]
    if name in _COMPILED:
        module = importlib.import_module(_COMPILED[name], __name__)
        # Importing ``.plan`` binds the submodule as ``fomo_core.plan``: every name the module
        # provides is bound here at once, so that ``plan`` is the function whichever came first.
        for exported, source in _COMPILED.items():
            if source == _COMPILED[name] and exported != "_C":
                globals()[exported] = getattr(module, exported)
        return module if name == "_C" else globals()[name]
    raise AttributeError(f"module 'fomo_core' has no attribute {name!r}")


__all__ = [
    "Affinity",
    "layout",
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
    "distance_bound",
    "model_norm",
    "Plan",
    "plan",
    "Preset",
    "PRESETS",
    "ClientPolicy",
    "ServerPolicy",
    "ClientRound",
    "Server",
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
    from . import _C

    return dict(_C.build_info())


def has_cuda() -> bool:
    """True only when fomo_core was built with CUDA kernels and a CUDA device is present."""
    from . import _C

    return bool(_C.has_cuda())


_MAX_THREADS = 2**31 - 1  # OpenMP takes a C int


def set_num_threads(n: int) -> None:
    """Threads used by the CPU kernels (OpenMP). Results do not depend on it."""
    n = count(n, "n", low=1, high=_MAX_THREADS, type_error=ValueError)
    from . import _C

    _C.set_num_threads(n)


def get_num_threads() -> int:
    """Threads the CPU kernels will use."""
    from . import _C

    return int(_C.get_num_threads())
