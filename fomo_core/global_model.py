"""The server's global model for the fomo-core round: FedAvg's model, kept beside the personal ones.

FedFomo weighs each peer's model on its own. Where no single peer's model beats a client's own
(label skew without latent groups), it finds nothing helpful and becomes local training, while an
average of many weak models would have helped. So the fomo-core preset keeps one model trained
jointly by every client, as FedAvg's, and each client moves part-way toward it when that lowers
its validation loss (:class:`fomo_core.ClientPolicy` ``global_model``). This module is the server
side: the model, and each round the mean of the clients' contributions (their changes to it).

>>> g = GlobalModel(init_params, guard=3.0)
>>> g.receive(update_i, weight=num_examples_i)      # for every client of the round
>>> g.end_round()                                   # g.params += weighted mean of the updates
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from ._models import as_float64, is_torch
from ._validate import real

#: The NumPy dtype a global model of each dtype is checkpointed in (NumPy has no bfloat16;
#: float32 holds it exactly).
STORED_DTYPE = {"float16": "float16", "float32": "float32", "float64": "float64", "bfloat16": "float32"}

__all__ = ["GlobalModel"]


def _norm(x: np.ndarray) -> float:
    # einsum, not a BLAS dot: a multithreaded BLAS on a busy machine costs milliseconds per call
    return math.sqrt(float(np.einsum("i,i->", x, x)))


class GlobalModel:
    """A global model [P] moved every round by the weighted mean of the clients' contributions.

    init_params: the initial model, flat [P] (NumPy or torch: ``params`` keeps its type, dtype and
                 device)
    guard:       a contribution whose L2 norm exceeds ``guard`` times the global model's is
                 rejected, like a non-finite one; None: no bound (nor while the global model's
                 norm is 0, as an all-zero initial model's: it gives no scale)

    A round's contributions are summed in float64 and applied once, at :meth:`end_round`; a round
    without any leaves the model as it was.
    """

    def __init__(self, init_params: Any, *, guard: Optional[float] = None):
        if not (hasattr(init_params, "shape") and len(init_params.shape) == 1):
            raise ValueError("init_params must be a flat model, a 1-D array or tensor [P]")
        self.params = init_params.detach().clone() if is_torch(init_params) else np.array(init_params)
        self.guard = None if guard is None else real(guard, "guard", low=0.0, finite=False)
        self._sum = np.zeros(self.params.shape[0], dtype=np.float64)
        self._weight = 0.0
        self._bound = self._compute_bound()
        self.accepted = 0
        self.rejected = 0

    def bound(self) -> float:
        """The longest contribution accepted this round (L2)."""
        return self._bound

    def _compute_bound(self) -> float:
        if self.guard is None or math.isinf(self.guard):
            return math.inf
        norm = _norm(as_float64(self.params))
        # a model of norm 0 (an all-zero initial model) gives no scale to bound by
        return self.guard * norm if math.isfinite(norm) and norm > 0 else math.inf

    def receive(self, update: Any, weight: float = 1.0) -> bool:
        """Takes one client's contribution [P] (its change to the global model) with ``weight``
        (its number of training samples, > 0). Returns False, and leaves the round as it was, for
        a contribution that is not finite or longer than the guard allows; raises ValueError for
        one of the wrong shape."""
        weight = real(weight, "weight", low=0.0, low_open=True)
        if tuple(update.shape) != tuple(self.params.shape):
            raise ValueError(f"global_update has shape {tuple(update.shape)}, expected {tuple(self.params.shape)}")
        u = as_float64(update)
        norm = _norm(u)
        if not math.isfinite(norm) or norm > self.bound():
            self.rejected += 1
            return False
        self._sum += weight * u
        self._weight += weight
        self.accepted += 1
        return True

    def end_round(self) -> None:
        """Applies the weighted mean of this round's accepted contributions."""
        if self._weight > 0:
            step = self._sum / self._weight
            if is_torch(self.params):
                import torch

                self.params += torch.from_numpy(step).to(dtype=self.params.dtype, device=self.params.device)
            else:
                self.params += step.astype(self.params.dtype)
        self._sum[...] = 0.0
        self._weight = 0.0
        self._bound = self._compute_bound()

    @property
    def dtype_name(self) -> str:
        """The model's dtype: "float32", "float64", "float16" (or torch's "bfloat16")."""
        return str(self.params.dtype).removeprefix("torch.")

    def state(self) -> dict:
        """The arrays to checkpoint (between rounds): the model in its own dtype [P] (bfloat16,
        which NumPy lacks, as float32: exactly), so a checkpoint holds 4P bytes of a float32
        model, not 8P."""
        if not is_torch(self.params):
            return {"global_params": np.array(self.params)}
        import torch

        stored = getattr(torch, STORED_DTYPE[self.dtype_name])
        return {"global_params": self.params.detach().cpu().to(stored).numpy().copy()}

    def load_state(self, state: dict) -> None:
        """Restores :meth:`state`'s arrays."""
        params = np.asarray(state["global_params"])
        if params.shape != tuple(self.params.shape) or not np.isfinite(params).all():
            raise ValueError(
                f"global_params has shape {params.shape} or values that do not fit {tuple(self.params.shape)}"
            )
        if is_torch(self.params):
            import torch

            self.params.copy_(torch.from_numpy(params))
        else:
            self.params[...] = params
        self._bound = self._compute_bound()
